"""Recipe settings outside hieradet's loop: a stock config's ``instantiate(cfg.optimizer)`` clips the gradient norm in
detectron2's own ``SimpleTrainer`` / ``AMPTrainer`` exactly as a manual ``clip_grad_norm_`` + AdamW and as
``do_train`` do; a config built outside ``do_train`` warns once about what only that loop applies (and not inside
it); ``do_train`` fails before iteration 0 when the evaluator cannot run."""

import copy
import itertools
import json
import os
import sys
import warnings

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from hieradet.engine import check_evaluator, do_train
from hieradet.engine.guards import install_input_guard
from hieradet.engine.hooks import DeterministicResumeHook
from hieradet.engine.train_loop import _build_optimizer
from hieradet.solver import AdamW, OutsideLoopWarning, clip_gradient_norm, hieradet_loop
from hieradet.testing import make_tiny

CONFIG = "configs/COCO/mask_rcnn_hieradet_t_100ep.py"
SIZE = 64
CLIP = 1e-3  # far below the norm of a detector's gradient: every step is clipped


@pytest.fixture(scope="module")
def coco_rle(tmp_path_factory):
    """A registered generated COCO dataset with RLE masks (LSJ's crop of polygons would need shapely)."""
    from hieradet.data import generate_synthetic_dataset, register_synthetic_dataset

    root = tmp_path_factory.mktemp("loop_settings")
    generate_synthetic_dataset(str(root), num_train=4, num_val=2, image_size=SIZE, fmt="coco", mask_format="rle")
    train, val = register_synthetic_dataset(str(root), prefix=f"loop_settings_{root.name}")
    return {"train": train, "val": val}


def _tiny(overrides=()):
    cfg = make_tiny(LazyConfig.load(CONFIG), image_size=SIZE, num_classes=3)
    return LazyConfig.apply_overrides(cfg, ["train.device=cpu", "train.amp.enabled=False", *overrides])


def _batch():
    g = torch.Generator().manual_seed(0)
    inst = Instances((SIZE, SIZE))
    inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0], [20.0, 24.0, 60.0, 56.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    masks[0, 8:40, 8:40] = masks[1, 24:56, 20:60] = True
    inst.gt_masks = BitMasks(masks)
    image = (torch.rand(3, SIZE, SIZE, generator=g) * 255).to(torch.uint8)
    return [{"image": image, "instances": inst, "height": SIZE, "width": SIZE}]


def _grad_norm(model):
    return float(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    )


def _d2_step(trainer_cls, cfg, model, **kw):
    """One step of detectron2's trainer, with the optimizer the config instantiates (as its tool does)."""
    cfg.optimizer.params.model = model
    with pytest.warns(OutsideLoopWarning):
        optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer._hieradet_clip == CLIP
    trainer = trainer_cls(model.train(), itertools.repeat(_batch()), optimizer, **kw)
    torch.manual_seed(0)  # RPN / ROI sampling
    trainer.train(0, 1)
    return optimizer


def _manual_step(cfg, model, scale=1.0):
    """The same step by hand: clip_grad_norm_ over all parameters, then torch's AdamW with the config's groups."""
    cfg.optimizer.params.model = model
    with hieradet_loop():
        groups = instantiate(cfg.optimizer.params)
    o = cfg.optimizer
    optimizer = torch.optim.AdamW(
        groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.get("eps", 1e-8)
    )
    torch.manual_seed(0)
    with EventStorage(0):  # the RPN / ROI heads log into it
        loss = sum(model.train()(_batch()).values())
    (loss * scale).backward()
    for p in model.parameters():
        if p.grad is not None:
            p.grad /= scale
    raw = _grad_norm(model)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], CLIP)
    optimizer.step()
    return raw


def _assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-7, msg=name)


def test_detectron2s_simple_trainer_clips_with_the_configs_optimizer():
    cfg = _tiny([f"train.clip_grad_norm={CLIP}", "optimizer.lr=1e-3", "optimizer.weight_decay=0.05"])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0.05  # the usual overrides still apply
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    manual = copy.deepcopy(model)
    before = copy.deepcopy(model)
    optimizer = _d2_step(SimpleTrainer, cfg, model)
    raw = _manual_step(cfg, manual)
    assert optimizer.last_grad_norm == pytest.approx(raw, rel=1e-4) and raw > 100 * CLIP
    assert _grad_norm(model) == pytest.approx(CLIP, rel=1e-4)  # the trainer's step clipped the gradients
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}  # no decay on norms, biases, pos-embeds
    _assert_same_weights(model, manual)
    assert any(not torch.equal(x, y) for x, y in zip(model.state_dict().values(), before.state_dict().values()))
    # the optimizer state is a plain AdamW's: it loads into torch's own
    plain = torch.optim.AdamW(
        [{"params": g["params"]} for g in optimizer.param_groups], lr=cfg.optimizer.lr, weight_decay=0.0
    )
    plain.load_state_dict(optimizer.state_dict())
    assert plain.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


@pytest.mark.parametrize("fused", [False, True])
def test_detectron2s_amp_trainer_clips_the_unscaled_gradients(monkeypatch, fused):
    """AMPTrainer's step is ``grad_scaler.step(optimizer)``: it unscales before a plain step; a fused step gets the
    gradients scaled and must clip at the scaled threshold. Run here on the CPU with a CPU GradScaler (fp32)."""
    # AMPTrainer.run_step asserts CUDA: answer yes to it alone (its CUDA autocast then disables itself on this CPU)
    run_step = AMPTrainer.run_step.__code__
    monkeypatch.setattr(torch.cuda, "is_available", lambda: sys._getframe(1).f_code is run_step)
    # eps near the clipped gradients' size: AdamW's step then depends on the threshold, not only on the signs
    cfg = _tiny([f"train.clip_grad_norm={CLIP}", f"optimizer.fused={fused}", "optimizer.eps=1e-6"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    manual = copy.deepcopy(model)
    scale = 2.0**12
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autocast.*")  # CUDA autocast on CPU tensors does nothing
        optimizer = _d2_step(AMPTrainer, cfg, model, grad_scaler=scaler, precision=torch.float32)
    assert bool(getattr(optimizer, "_step_supports_amp_scaling", False)) is fused
    assert scaler.get_scale() == scale  # no inf/NaN: the step was taken
    raw = _manual_step(cfg, manual, scale=scale)
    assert optimizer.last_grad_norm == pytest.approx(raw, rel=1e-4)  # measured on the unscaled gradients
    if not fused:  # GradScaler unscaled the gradients in place, then the step clipped them
        assert _grad_norm(model) == pytest.approx(CLIP, rel=1e-4)
    _assert_same_weights(model, manual)


def test_our_loop_clips_once_and_steps_as_detectron2s_trainer(tmp_path, coco_rle):
    """do_train and detectron2's trainer (with the seeded-resume hook the warning names) give the same weights."""
    data = coco_rle
    names = [
        f"dataloader.train.dataset.names={data['train']}",
        f"dataloader.test.dataset.names={data['val']}",
        "dataloader.train.mapper.instance_mask_format=bitmask",
        "dataloader.train.total_batch_size=2",
        "train.max_iter=1",
        "train.seed=0",
        f"train.clip_grad_norm={CLIP}",
    ]
    cfg = _tiny(names)
    torch.manual_seed(0)
    start = tmp_path / "start.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, start)  # every weight, FPN and heads included

    ours = _tiny(names + [f"train.output_dir={tmp_path / 'ours'}", f"train.init_checkpoint={start}"])
    ours.train.eval_period = 0
    ours.dataloader.evaluator = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutsideLoopWarning)  # never inside our loop
        do_train(ours)
    final = torch.load(tmp_path / "ours" / "model_final.pth", weights_only=False)["model"]
    with open(tmp_path / "ours" / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert rows and all(row["grad_norm"] > CLIP for row in rows)  # logged, before clipping

    d2 = _tiny(names + [f"train.output_dir={tmp_path / 'd2'}"])
    model = instantiate(d2.model)
    install_input_guard(model)
    DetectionCheckpointer(model).load(str(start))
    d2.optimizer.params.model = model
    optimizer = instantiate(d2.optimizer)  # no warning left: only the seeded-resume hook is added below, by hand
    trainer = SimpleTrainer(model, instantiate(d2.dataloader.train), optimizer)
    trainer.register_hooks(
        [DeterministicResumeHook(seed=0), hooks.LRScheduler(scheduler=instantiate(d2.lr_multiplier))]
    )
    trainer.train(0, 1)
    assert _grad_norm(model) == pytest.approx(CLIP, rel=1e-4)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, final[name], rtol=0, atol=1e-7, msg=name)


def test_the_warning_fires_once_outside_our_loop_and_names_what_is_lost(recwarn):
    cfg = _tiny(["train.total_batch_size=4", "train.seed=5"])
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    instantiate(cfg.optimizer)
    instantiate(cfg.lr_multiplier)
    lost = [w for w in recwarn if issubclass(w.category, OutsideLoopWarning)]
    assert len(lost) == 1
    text = str(lost[0].message)
    assert "train.total_batch_size=4" in text and "2 images per step" in text and "apply_total_batch_size" in text
    assert "train.seed=5" in text and "DeterministicResumeHook" in text
    assert "install_input_guard" in text and "tools/lazyconfig_train_net.py" in text

    recwarn.clear()  # the same build inside our loop: silent
    with hieradet_loop():
        instantiate(cfg.optimizer)
    assert not [w for w in recwarn if issubclass(w.category, OutsideLoopWarning)]

    recwarn.clear()  # outside, with nothing lost (guarded model, no seed, the loader's batch): silent too
    cfg = _tiny()
    model = instantiate(cfg.model)
    install_input_guard(model)
    cfg.optimizer.params.model = model
    instantiate(cfg.optimizer)
    assert not [w for w in recwarn if issubclass(w.category, OutsideLoopWarning)]


def test_clip_settings_that_disagree_are_refused():
    cfg = _tiny(["train.clip_grad_norm=1.0", "optimizer.clip_grad_norm=2.0"])
    cfg.optimizer.params.model = instantiate(cfg.model)
    with pytest.raises(ValueError, match="disagree; set only train.clip_grad_norm"):
        _build_optimizer(cfg)
    cfg = _tiny(["train.clip_grad_norm=0"])  # 0: off, as before
    cfg.optimizer.params.model = instantiate(cfg.model)
    assert getattr(_build_optimizer(cfg), "_hieradet_clip", None) is None
    assert isinstance(AdamW(torch.nn.Linear(2, 2).parameters(), clip_grad_norm=None), torch.optim.AdamW)
    with pytest.raises(ValueError, match="already clips"):
        clip_gradient_norm(AdamW(torch.nn.Linear(2, 2).parameters(), clip_grad_norm=1.0), 1.0)


@pytest.mark.parametrize("module", ["faster_coco_eval", "pycocotools"])
def test_a_missing_evaluation_package_fails_before_iteration_0(tmp_path, coco_rle, monkeypatch, module):
    cfg = _tiny(
        [
            f"dataloader.train.dataset.names={coco_rle['train']}",
            f"dataloader.test.dataset.names={coco_rle['val']}",
            f"train.output_dir={tmp_path}",
            "train.max_iter=1",
        ]
    )
    if module == "pycocotools":
        cfg.dataloader.evaluator.backend = "pycocotools"
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    built = []
    monkeypatch.setattr("hieradet.engine.train_loop.build_model", lambda cfg: built.append(cfg))
    with pytest.raises(ImportError, match=f"needs the `{module}` package.*pip install"):
        do_train(cfg)
    assert not built  # before the model, let alone iteration 0
    assert not os.path.exists(tmp_path / "metrics.json")


def test_an_unregistered_evaluator_dataset_fails_before_iteration_0(tmp_path, coco_rle, monkeypatch):
    cfg = _tiny(
        [
            f"dataloader.train.dataset.names={coco_rle['train']}",
            f"dataloader.test.dataset.names={coco_rle['val']}",
            "dataloader.evaluator.dataset_name=no_such_val",
            f"train.output_dir={tmp_path}",
        ]
    )
    monkeypatch.setattr("hieradet.engine.train_loop.build_model", lambda cfg: pytest.fail("built the model"))
    with pytest.raises(KeyError, match="'no_such_val' is not registered"):
        do_train(cfg)


def test_an_lvis_evaluator_needs_the_lvis_package_whatever_its_backend(monkeypatch):
    cfg = LazyConfig.load("configs/LVIS/mask_rcnn_hieradet_b_100ep.py")
    assert cfg.dataloader.evaluator.get("backend", "faster") == "faster"
    monkeypatch.setitem(sys.modules, "lvis", None)
    with pytest.raises(ImportError, match=r"needs the `lvis` package to read the LVIS ground truth.*--no-deps lvis"):
        check_evaluator(cfg)
