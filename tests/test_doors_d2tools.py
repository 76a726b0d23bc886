"""detectron2's own tools on a stock config: its public API used as its ``tools/lazyconfig_train_net.py`` uses it
(``instantiate(cfg.model)``, ``DetectionCheckpointer``, ``SimpleTrainer`` / ``AMPTrainer``, ``inference_on_dataset``
with the config's evaluator) builds and loads our exact model, and its ``model_final.pth`` evaluates through our tool
to the same metrics (tiny shrunk config, generated data, a converted SAM 2 trunk of that size)."""

import os
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import AMPTrainer, SimpleTrainer, hooks
from detectron2.evaluation import inference_on_dataset

from hieradet.checkpoint import (
    HieraDetCheckpointer,
    apply_checkpoint_layout,
    build_converted_checkpoint,
    convert_state_dict,
)
from hieradet.solver import OutsideLoopWarning

ROOT = Path(__file__).resolve().parents[1]
# a user config derived from the stock one, shrunk for a CPU (make_tiny: a 8-wide HieraDet with stages 1-1-2-1)
TINY_CONFIG = """
from detectron2.config import LazyConfig

from hieradet.testing import make_tiny

_cfg = make_tiny(LazyConfig.load({base!r}), image_size=64, num_classes=4)
model, dataloader, optimizer, lr_multiplier, train = (
    _cfg.model, _cfg.dataloader, _cfg.optimizer, _cfg.lr_multiplier, _cfg.train
)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    from hieradet.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("d2tools")
    data = generate_synthetic_dataset(str(root), num_train=4, num_val=2, image_size=64, fmt="coco", mask_format="rle")
    for split in ("train", "val"):
        register_coco_instances(f"doors_d2_{split}", {}, data[split], os.path.join(data["image_root"], split))
    torch.manual_seed(0)
    trunk = sam2_hieradet.Hiera(
        embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
    )  # fmt: skip
    with torch.no_grad():
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
    raw = {"model": {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}}
    weights = root / "sam2_tiny_converted.pth"
    torch.save(build_converted_checkpoint(convert_state_dict(raw)), weights)
    config = root / "tiny_mask_rcnn_hieradet_t.py"
    config.write_text(TINY_CONFIG.format(base=str(ROOT / "configs/COCO/mask_rcnn_hieradet_t_100ep.py")))
    return root, data, str(weights), str(config)


def _overrides(root, weights):
    return [
        "dataloader.train.dataset.names=doors_d2_train",
        "dataloader.test.dataset.names=doors_d2_val",
        "dataloader.train.mapper.instance_mask_format=bitmask",
        "train.device=cpu",
        "train.amp.enabled=False",  # AMPTrainer needs CUDA
        "train.max_iter=2",
        f"train.output_dir={root / 'd2_out'}",
        f"train.init_checkpoint={weights}",
    ]


def test_detectron2s_own_loop_trains_our_exact_model_and_our_tool_scores_its_file_the_same(setup, load_tool):
    root, data, weights, config = setup
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config), _overrides(root, weights))

    # detectron2's lazyconfig_train_net.py, step by step through its public API
    os.makedirs(cfg.train.output_dir, exist_ok=True)  # its default_setup does
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    with pytest.warns(OutsideLoopWarning, match="install_input_guard") as record:  # what only our loop does, once
        optim = instantiate(cfg.optimizer)
    assert len([w for w in record if w.category is OutsideLoopWarning]) == 1
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, instantiate(cfg.dataloader.train), optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=False)

    # the model it loaded is the one our path builds: the layout came with the weights
    ours_cfg = LazyConfig.apply_overrides(LazyConfig.load(config), _overrides(root, weights))
    apply_checkpoint_layout(ours_cfg, weights, log=lambda line: None)
    ours = instantiate(ours_cfg.model).eval()
    HieraDetCheckpointer(ours).load(weights)
    assert model.backbone.bottom_up.pos_embed.mode == "abswin_single"
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d2_out, our_out = model.eval().backbone.bottom_up(x), ours.backbone.bottom_up(x)  # the FPN is not loaded
    assert all(torch.equal(d2_out[k], our_out[k]) for k in our_out)

    model.train()
    trainer.train(0, cfg.train.max_iter)
    d2_metrics = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    final = Path(cfg.train.output_dir) / "model_final.pth"
    assert final.is_file()

    # our tool, --eval-only on the file detectron2's loop wrote: the same metrics, in the same format
    tool = load_tool("lazyconfig_train_net")
    args = ["--config-file", config, "--eval-only"] + _overrides(root, str(final))
    args += [f"train.output_dir={root / 'our_out'}"]
    ours_metrics = tool.main(tool.build_parser().parse_args(args))
    assert set(ours_metrics) == set(d2_metrics) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert set(ours_metrics[task]) == set(d2_metrics[task])
        for key, value in d2_metrics[task].items():
            assert ours_metrics[task][key] == pytest.approx(value, nan_ok=True), (task, key)
