"""The LazyConfigs under configs/: every one loads and builds, and resolves to the papers' recipes.

The expected numbers below are the papers' (Bolya et al. 2024 Tab. 16 and App. A.3 for HieraDet; the ViTDet
recipe for the fixed ViTDet); the test reads the configs' values and compares.
"""

import math
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from omegaconf import OmegaConf

from hieradet.data.samplers import ResumableTrainingSampler
from hieradet.engine import do_test, do_train
from hieradet.modeling import HieraDet
from hieradet.modeling.vit import ViT
from hieradet.solver import get_optimizer_params
from hieradet.testing import make_tiny

ROOT = Path(__file__).resolve().parents[1]
# the papers' COCO / LVIS configs (LSJ recipe); configs/demo etc. are small CPU configs tested with their tools
CONFIGS = sorted(
    p.relative_to(ROOT).as_posix()
    for d in ("COCO", "LVIS")
    for p in (ROOT / "configs" / d).rglob("*.py")
    if "common" not in p.parts
)
PROJECT_CONFIGS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in (ROOT / "projects").glob("*/configs/**/*.py")
    if "common" not in p.parts and not p.name.startswith("_")
)
RECIPES = [c for c in CONFIGS if "/ablations/" not in c and "/system/" not in c]
ABLATIONS = [c for c in CONFIGS if "/ablations/" in c]

# Bolya et al. 2024, Tab. 16 (COCO) and App. A.3 (LVIS lr; LVIS always 100 epochs).
HIERA_TAB16 = {
    "b": dict(lr=1.4e-4, drop_path=0.2, layer_decay=0.85, epochs=100, lvis_lr=1.4e-4),
    "bplus": dict(lr=7e-5, drop_path=0.3, layer_decay=0.85, epochs=100, lvis_lr=1.4e-4),
    "l": dict(lr=1.2e-4, drop_path=0.45, layer_decay=0.9, epochs=100, lvis_lr=2.4e-4),
    "h": dict(lr=6e-5, drop_path=0.55, layer_decay=0.925, epochs=75, lvis_lr=6e-5),
}
# HieraDet-T/S are not in Tab. 16. The rule (the configs' docstrings): Tab. 16's B lr and epochs, drop path scaled
# down with the depth (T: 12 blocks, S: 16; B: 24), a layer decay that keeps the stem's lr factor near B's.
HIERA_TS = {
    "t": dict(drop_path=0.1, layer_decay=0.75, blocks=12),
    "s": dict(drop_path=0.15, layer_decay=0.8, blocks=16),
}
# Bolya et al. 2024, Tab. 16: global attention layers; and Hiera's stage ends (0-based last block of each stage).
HIERA_GLOBAL = {"b": (12, 16, 20), "bplus": (12, 16, 20), "l": (23, 33, 43), "h": (23, 33, 43)}
HIERA_STAGE_ENDS = {"b": (1, 4, 20, 23), "bplus": (1, 4, 20, 23), "l": (1, 7, 43, 47), "h": (1, 7, 43, 47)}
# ViTDet (Li et al. 2022): COCO and LVIS recipes.
VITDET = {
    "b": dict(lr=1e-4, drop_path=0.1, layer_decay=0.7, epochs=100, lvis_lr=2e-4, lvis_drop_path=0.1, depth=12),
    "l": dict(lr=1e-4, drop_path=0.4, layer_decay=0.8, epochs=100, lvis_lr=2e-4, lvis_drop_path=0.4, depth=24),
    "h": dict(lr=1e-4, drop_path=0.5, layer_decay=0.9, epochs=75, lvis_lr=1e-4, lvis_drop_path=0.4, depth=32),
}
VIT_GLOBAL = {"b": (2, 5, 8, 11), "l": (5, 11, 17, 23), "h": (7, 15, 23, 31)}
IMAGES_PER_EPOCH = {"COCO": 118_000, "LVIS": 100_000}  # COCO train2017 ~118k, LVIS v1 train ~100k images


def _parse(path):
    """configs/<DATASET>/<detector>_<family>_<size>_<N>ep.py -> (dataset, cascade?, family, size)."""
    parts = Path(path).parts
    stem = Path(path).stem
    cascade = stem.startswith("cascade_")
    family = "hieradet" if "_hieradet_" in stem else "vitdet"
    size = stem.split(f"_{family}_")[1].split("_")[0]
    return parts[1], cascade, family, size


def _load(path):
    return LazyConfig.load(str(ROOT / path))


def _backbone(cfg):
    bb = cfg.model.backbone
    return bb.bottom_up if "bottom_up" in bb else bb.net


def test_config_inventory():
    """COCO: Mask and Cascade for HieraDet T/S/B/B+/L/H and ViTDet B/L/H; LVIS for B/B+/L/H and ViTDet B/L/H;
    the Tab. 3 / Tab. 5 ablation grids (relpos all/none/global x abs-win on/off)."""
    names = {Path(c).stem for c in CONFIGS if c.startswith("configs/COCO/") and "/ablations/" not in c}
    for det in ("mask_rcnn", "cascade_mask_rcnn"):
        for size, ep in [("t", 100), ("s", 100), ("b", 100), ("bplus", 100), ("l", 100), ("h", 75)]:
            assert f"{det}_hieradet_{size}_{ep}ep" in names
        for size, ep in [("b", 100), ("l", 100), ("h", 75)]:
            assert f"{det}_vitdet_{size}_{ep}ep" in names
    lvis = {Path(c).stem for c in CONFIGS if c.startswith("configs/LVIS/")}
    for det in ("mask_rcnn", "cascade_mask_rcnn"):
        assert {f"{det}_hieradet_{s}_100ep" for s in ("b", "bplus", "l", "h")} <= lvis
        assert {f"{det}_vitdet_{s}_100ep" for s in ("b", "l", "h")} <= lvis
    abl = {Path(c).stem for c in ABLATIONS}
    for fam in ("vitdet", "hieradet"):
        for pe in ("interp", "abswin"):
            for rp in ("all", "none", "global"):
                assert f"mask_rcnn_{fam}_l_100ep_{pe}_relpos_{rp}" in abl


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_values_match_the_papers(path):
    dataset, cascade, family, size = _parse(path)
    cfg = _load(path)
    bb = _backbone(cfg)
    lvis = dataset == "LVIS"

    # optimizer: AdamW, wd 0.1, betas (0.9, 0.999), layer decay wired in
    assert issubclass(cfg.optimizer._target_, torch.optim.AdamW)  # hieradet.solver.AdamW: clips in step()
    assert cfg.optimizer.weight_decay == 0.1 and tuple(cfg.optimizer.betas) == (0.9, 0.999)
    assert cfg.optimizer.params._target_ is get_optimizer_params
    assert cfg.optimizer.params.base_lr == cfg.optimizer.lr  # "${..lr}"

    # data: LSJ [0.1, 2.0] at 1024, batch 64
    batch = cfg.dataloader.train.total_batch_size
    assert batch == 64
    augs = {a._target_.__name__: a for a in cfg.dataloader.train.mapper.augmentations}
    assert (augs["ResizeScale"].min_scale, augs["ResizeScale"].max_scale) == (0.1, 2.0)
    assert augs["ResizeScale"].target_height == augs["ResizeScale"].target_width == 1024
    assert tuple(augs["FixedSizeCrop"].crop_size) == (1024, 1024)
    assert "RandomFlip" in augs
    assert bb.img_size == 1024

    if family == "hieradet" and size in HIERA_TAB16:
        rec = HIERA_TAB16[size]
        lr, dp, ld = (rec["lvis_lr"] if lvis else rec["lr"]), rec["drop_path"], rec["layer_decay"]
        epochs = 100 if lvis else rec["epochs"]
        assert tuple(bb.window_size) == (8, 4, 14, 7)
        assert tuple(bb.global_blocks) == HIERA_GLOBAL[size]
        ends = tuple(int(x) - 1 for x in torch.tensor(list(bb.stages)).cumsum(0))
        assert ends == HIERA_STAGE_ENDS[size]
        assert bb.relpos == "global" and bb.pos_embed == "auto"
        assert (bb.pos_embed_window, bb.pos_embed_global) == (8, 7)
        assert cfg.optimizer.params.weight_decay_bias == 0.0
        assert cfg.model.backbone.square_pad == 1024  # "${.bottom_up.img_size}"
    elif family == "hieradet":  # T / S: not in Tab. 16; our extrapolation of it (HIERA_TS)
        rec, b = HIERA_TS[size], HIERA_TAB16["b"]
        lr, dp, ld, epochs = b["lr"], rec["drop_path"], rec["layer_decay"], b["epochs"]
        assert sum(bb.stages) == rec["blocks"]
        assert 0 < dp < b["drop_path"] and 0.5 < ld < b["layer_decay"]
        # the stem's lr factor ld ** (blocks + 1) stays near B's (24 blocks), neither far above nor below it
        assert 1.0 < ld ** (rec["blocks"] + 1) / b["layer_decay"] ** (24 + 1) < 1.5
        assert tuple(bb.window_size) == (8, 4, 14, 7)
    else:
        rec = VITDET[size]
        lr = rec["lvis_lr"] if lvis else rec["lr"]
        dp = rec["lvis_drop_path"] if lvis else rec["drop_path"]
        ld, epochs = rec["layer_decay"], (100 if lvis else rec["epochs"])
        assert bb.window_size == 14 and bb.depth == rec["depth"]
        assert tuple(bb.global_blocks) == VIT_GLOBAL[size]
        assert bb.relpos == "global" and bb.pos_embed == "auto"  # the fix; the rest is ViTDet's
        assert cfg.model.backbone.square_pad == 1024  # "${.net.img_size}"

    assert math.isclose(cfg.optimizer.lr, lr, rel_tol=1e-9)
    assert math.isclose(bb.drop_path_rate, dp, rel_tol=1e-9)
    assert math.isclose(cfg.optimizer.params.lr_decay_rate, ld, rel_tol=1e-9)

    # epochs -> iterations, and the step schedule follows train.max_iter
    n = IMAGES_PER_EPOCH[dataset]
    assert cfg.train.max_iter == round(epochs * n / batch)
    sched = cfg.lr_multiplier.scheduler
    assert sched.num_updates == cfg.train.max_iter
    assert list(sched["values"]) == pytest.approx([1.0, 0.1, 0.01])
    assert 0.85 < sched.milestones[0] / cfg.train.max_iter < sched.milestones[1] / cfg.train.max_iter < 1.0
    assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(250)

    # detector
    rh = cfg.model.roi_heads
    if cascade:
        assert rh._target_ is CascadeROIHeads
        assert [m.thresholds for m in rh.proposal_matchers] == [[0.5], [0.6], [0.7]]
        predictors = list(rh.box_predictors)
    else:
        assert rh._target_ is StandardROIHeads
        predictors = [rh.box_predictor]
    if lvis:
        assert rh.num_classes == 1203
        # repeat-factor sampling, resumable
        assert cfg.dataloader.train.sampler._target_ is ResumableTrainingSampler
        rf = cfg.dataloader.train.sampler.repeat_factors
        assert rf._target_ == RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
        assert rf.repeat_thresh == 0.001
        assert cfg.dataloader.evaluator.max_dets_per_image == 300
        assert cfg.dataloader.train.dataset.names == "lvis_v1_train"
        for p in predictors:
            assert p.use_fed_loss and p.use_sigmoid_ce and p.test_topk_per_image == 300
    else:
        assert rh.num_classes == 80
        assert cfg.dataloader.train.dataset.names == "coco_2017_train"
        assert cfg.dataloader.train.sampler._target_ is ResumableTrainingSampler
        sampler = OmegaConf.to_container(cfg.dataloader.train.sampler)  # unresolved: the size is the dataset's
        assert sampler["size"] == "${..dataset}" and sampler["shuffle"]


@pytest.mark.parametrize("path", ABLATIONS)
def test_ablation_configs_change_only_the_position_embedding_and_relpos(path):
    stem = Path(path).stem
    parent = _load(f"configs/COCO/{stem.split('_100ep_')[0]}_100ep.py")
    cfg = _load(path)
    pe, rp = stem.split("_100ep_")[1].split("_relpos_")
    bb, pbb = _backbone(cfg), _backbone(parent)
    assert bb.relpos == rp
    assert bb.pos_embed == {"interp": "interpolate", "abswin": "abswin"}[pe]
    if "hieradet" in stem and pe == "interp":  # an original Hiera checkpoint: its 56x56 grid
        assert (bb.pos_embed_window, bb.pos_embed_global) == (56, None)
    for key in ("drop_path_rate", "global_blocks", "window_size", "img_size"):
        assert bb[key] == pbb[key]
    assert cfg.optimizer.lr == parent.optimizer.lr
    if "hieradet" in stem and pe == "interp":
        # the interpolated embedding is retrained: no layer decay (Ryali et al. 2023; Bolya et al. 2024 footnote 2)
        assert cfg.optimizer.params.lr_decay_rate == 1.0 and parent.optimizer.params.lr_decay_rate == 0.9
    else:  # abs-win HieraDet ablations and every ViTDet ablation (Tab. 3: "the same training setup as Li et al.")
        assert cfg.optimizer.params.lr_decay_rate == parent.optimizer.params.lr_decay_rate
    assert OmegaConf.to_container(cfg.optimizer.params) == {
        **OmegaConf.to_container(parent.optimizer.params),
        "lr_decay_rate": cfg.optimizer.params.lr_decay_rate,
    }
    assert cfg.optimizer.lr == parent.optimizer.lr and cfg.train.max_iter == parent.train.max_iter


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_builds_a_working_model_at_small_size(path):
    cfg = _load(path)
    wrapper = cfg.model if "backbone" not in cfg.model else None  # e.g. a test-time-augmentation wrapper
    if wrapper is not None:
        cfg.model = wrapper.model
    # LVIS keeps its 1203 classes: the federated-loss weights come from the lvis_v1_train metadata
    make_tiny(cfg, image_size=64, num_classes=None if "/LVIS/" in path else 3)
    if wrapper is not None:
        wrapper.model = cfg.model
        model = instantiate(wrapper).model
        cfg.model = wrapper.model
    else:
        model = instantiate(cfg.model)
    backbone = model.backbone.bottom_up if hasattr(model.backbone, "bottom_up") else model.backbone.net
    assert isinstance(backbone, (HieraDet, ViT))
    assert model.backbone.padding_constraints["square_size"] == 64
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters()
    )
    sched = instantiate(cfg.lr_multiplier)
    assert sched(0.0) == pytest.approx(0.001) and sched(0.5) == pytest.approx(1.0)
    # forward passes: the one-iteration training + evaluation tests below


@pytest.mark.parametrize("path", PROJECT_CONFIGS)
def test_project_configs_load(path):
    cfg = _load(path)
    assert "model" in cfg and "_target_" in cfg.model


def test_layer_decay_and_weight_decay_groups_from_a_config():
    cfg = make_tiny(_load("configs/COCO/mask_rcnn_hieradet_b_100ep.py"), image_size=64, num_classes=3)
    cfg.model.backbone.bottom_up.relpos = "all"
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    opt = instantiate(cfg.optimizer)
    lr, ld, n = cfg.optimizer.lr, cfg.optimizer.params.lr_decay_rate, model.backbone.bottom_up.num_blocks
    assert n == 5
    hyper = {}
    for g in opt.param_groups:
        for p in g["params"]:
            hyper[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(model.named_parameters())

    def h(name):
        return hyper[id(named[name])]

    assert h("backbone.bottom_up.patch_embed.proj.weight") == pytest.approx((lr * ld ** (n + 1), 0.1))
    assert h("backbone.bottom_up.pos_embed.window_embed") == pytest.approx((lr * ld ** (n + 1), 0.0))
    assert h("backbone.bottom_up.pos_embed.global_embed") == pytest.approx((lr * ld ** (n + 1), 0.0))
    assert h("backbone.bottom_up.blocks.2.attn.qkv.weight") == pytest.approx((lr * ld ** (n - 2), 0.1))
    assert h("backbone.bottom_up.blocks.2.attn.qkv.bias") == pytest.approx((lr * ld ** (n - 2), 0.0))
    assert h("backbone.bottom_up.blocks.3.attn.rel_pos_h")[1] == 0.0
    assert h("backbone.bottom_up.blocks.0.norm1.weight")[1] == 0.0
    assert h("backbone.fpn_lateral2.weight") == pytest.approx((lr, 0.1))
    assert h("backbone.fpn_lateral2.norm.weight") == pytest.approx((lr, 0.0))  # detectron2's channels-first LN
    assert h("roi_heads.box_predictor.cls_score.weight") == pytest.approx((lr, 0.1))


# detectron2's projects/ViTDet configs: optimizer.params of each size (get_default_optimizer_params with
# lr_factor_func=get_vit_lr_decay_rate(num_layers, rate)); ViT-H (COCO 75 ep and LVIS): overrides={} and
# weight_decay_norm=None.
VITDET_D2_PARAMS = {
    "b": dict(num_layers=12, lr_decay_rate=0.7, overrides={"pos_embed": {"weight_decay": 0.0}}, weight_decay_norm=0.0),
    "l": dict(num_layers=24, lr_decay_rate=0.8, overrides={"pos_embed": {"weight_decay": 0.0}}, weight_decay_norm=0.0),
    "h": dict(num_layers=32, lr_decay_rate=0.9, overrides={}, weight_decay_norm=None),
}
VITDET_CONFIGS = [c for c in CONFIGS if "_vitdet_" in Path(c).stem and "/system/" not in c]


def _hyper_by_name(model, optimizer):
    """``{parameter name: (lr, weight_decay)}`` as ``optimizer`` will apply them."""
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def test_vitdet_configs_cover_b_l_h_coco_lvis_mask_and_cascade():
    kinds = {(_parse(c)[0], _parse(c)[1], _parse(c)[3]) for c in VITDET_CONFIGS if "/ablations/" not in c}
    assert kinds == {(d, c, s) for d in ("COCO", "LVIS") for c in (False, True) for s in ("b", "l", "h")}


@pytest.mark.parametrize("path", VITDET_CONFIGS)
def test_vitdet_optimizer_groups_equal_vitdets_per_parameter(path):
    """Every parameter outside our tiled embedding gets exactly the (lr, weight decay) detectron2's
    get_default_optimizer_params + get_vit_lr_decay_rate give it with ViTDet's settings for that size (a
    shallow model; the real depth for the lr-decay factors); our embedding gets ViTDet's pos_embed rule."""
    from functools import partial

    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
    from detectron2.solver import get_default_optimizer_params

    size = _parse(path)[3]
    ref = VITDET_D2_PARAMS[size]
    cfg = make_tiny(_load(path), image_size=64, num_classes=3)
    assert issubclass(cfg.optimizer._target_, torch.optim.AdamW) and cfg.optimizer.weight_decay == 0.1
    rh = cfg.model.roi_heads
    for predictor in rh.box_predictors if "box_predictors" in rh else [rh.box_predictor]:
        predictor.use_fed_loss = False  # LVIS: the class weights need the dataset; no parameters involved
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    cfg.optimizer.params.num_blocks = ref["num_layers"]  # the real depth (the tiny model has 2 blocks)
    ours = _hyper_by_name(model, instantiate(cfg.optimizer))

    lr = cfg.optimizer.lr
    d2_groups = get_default_optimizer_params(
        model,
        base_lr=lr,
        weight_decay_norm=ref["weight_decay_norm"],
        overrides=dict(ref["overrides"]),
        lr_factor_func=partial(get_vit_lr_decay_rate, num_layers=ref["num_layers"], lr_decay_rate=ref["lr_decay_rate"]),
    )
    theirs = _hyper_by_name(model, torch.optim.AdamW(d2_groups, lr=lr, weight_decay=0.1))

    embed = {n for n in ours if n.startswith("backbone.net.pos_embed.")}
    assert embed and set(ours) == set(theirs)
    mismatched = {n: (ours[n], theirs[n]) for n in ours if n not in embed and ours[n] != pytest.approx(theirs[n])}
    assert not mismatched, f"{len(mismatched)} differ from ViTDet's groups, e.g. {list(mismatched.items())[:3]}"
    # our tiled embedding: ViTDet's pos_embed rule (layer 0; no weight decay in B/L, decayed in H)
    embed_wd = ref["overrides"].get("pos_embed", {}).get("weight_decay", 0.1)
    stem_lr = lr * ref["lr_decay_rate"] ** (ref["num_layers"] + 1)
    for n in embed:
        assert ours[n] == pytest.approx((stem_lr, embed_wd)), n
    # the kinds the audit named, spelled out: detectron2's channels-first LN decayed, biases decayed
    assert ours["backbone.simfp_2.1.weight"][1] == 0.1
    assert ours["backbone.net.blocks.0.attn.qkv.bias"][1] == 0.1
    assert ours["backbone.net.blocks.0.norm1.weight"][1] == (0.1 if size == "h" else 0.0)
    head = "box_predictor" if "box_predictor" in rh else "box_predictor.0"
    assert ours[f"roi_heads.{head}.cls_score.weight"] == pytest.approx((lr, 0.1))


def test_lvis_fed_loss_weights_come_from_the_training_set(synthetic_lvis):
    cfg = _load("configs/LVIS/mask_rcnn_hieradet_b_100ep.py")
    make_tiny(cfg, image_size=64, num_classes=synthetic_lvis.num_classes)
    cfg.dataloader.train.dataset.names = synthetic_lvis.train_name
    model = instantiate(cfg.model)
    weights = model.roi_heads.box_predictor.fed_loss_cls_weights
    from detectron2.data import MetadataCatalog

    counts = [c["image_count"] for c in MetadataCatalog.get(synthetic_lvis.train_name).class_image_count]
    assert torch.allclose(weights, torch.tensor(counts, dtype=torch.float32) ** 0.5)


def _train_one_iteration_and_evaluate(path, data, tmp_path, rle_bitmask):
    cfg = make_tiny(_load(path), image_size=128, num_classes=data.num_classes)
    cfg.dataloader.train.dataset.names = data.train_name
    cfg.dataloader.test.dataset.names = data.val_name
    if rle_bitmask:
        cfg.dataloader.train.mapper.instance_mask_format = "bitmask"
    cfg.train.update(device="cpu", max_iter=1, output_dir=str(tmp_path), eval_period=0, log_period=1)
    cfg.train.checkpointer.period = 10
    results = do_train(cfg)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert 0.0 <= results[task]["AP"] <= 100.0
    assert (tmp_path / "model_final.pth").is_file()


# One training iteration + one evaluation, on generated data, for a representative config of each kind in
# the default run, for every config in the slow run.
FAST_TRAIN = [
    "configs/COCO/mask_rcnn_hieradet_b_100ep.py",
    "configs/COCO/cascade_mask_rcnn_vitdet_b_100ep.py",
    "configs/COCO/ablations/mask_rcnn_hieradet_l_100ep_interp_relpos_all.py",
]


@pytest.fixture(scope="module")
def coco_rle(tmp_path_factory):
    """COCO-format data with RLE masks: LSJ's crop of *polygon* masks needs shapely, which the stack lacks."""
    from types import SimpleNamespace

    from hieradet.data import generate_synthetic_dataset, register_synthetic_dataset

    root = tmp_path_factory.mktemp("coco_rle")
    generate_synthetic_dataset(str(root), num_train=8, num_val=4, image_size=128, fmt="coco", mask_format="rle")
    train, val = register_synthetic_dataset(str(root), prefix="test_configs_coco_rle")
    return SimpleNamespace(train_name=train, val_name=val, num_classes=4)


@pytest.mark.parametrize("path", FAST_TRAIN)
def test_one_iteration_and_evaluation_coco(path, coco_rle, tmp_path):
    _train_one_iteration_and_evaluate(path, coco_rle, tmp_path, rle_bitmask=True)


# test-time augmentation configs evaluate only (tests/test_tta_system_configs.py runs them)
TTA_CONFIGS = [c for c in CONFIGS if c.endswith("_tta.py")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [c for c in CONFIGS if c.startswith("configs/COCO/") and c not in FAST_TRAIN + TTA_CONFIGS]
)
def test_one_iteration_and_evaluation_coco_all(path, coco_rle, tmp_path):
    _train_one_iteration_and_evaluate(path, coco_rle, tmp_path, rle_bitmask=True)


@pytest.mark.parametrize("path", TTA_CONFIGS)
def test_training_a_tta_config_is_refused_by_name(path, tmp_path):
    cfg = _load(path)
    cfg.train.output_dir = str(tmp_path)
    with pytest.raises(ValueError, match="test-time augmentation wrapper .* --eval-only"):
        do_train(cfg)
    assert not any(tmp_path.iterdir())  # refused before building anything or writing


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(c, marks=[] if c == "configs/LVIS/cascade_mask_rcnn_hieradet_b_100ep.py" else [pytest.mark.slow])
        for c in CONFIGS
        if c.startswith("configs/LVIS/")
    ],
)
def test_one_iteration_and_evaluation_lvis(path, synthetic_lvis, tmp_path):
    import shapely  # noqa: F401  (an install requirement: LSJ cropping of LVIS polygon masks needs it)

    _train_one_iteration_and_evaluate(path, synthetic_lvis, tmp_path, rle_bitmask=False)


def test_lvis_config_evaluates_with_the_lvis_evaluator(synthetic_lvis):
    cfg = make_tiny(_load("configs/LVIS/cascade_mask_rcnn_vitdet_b_100ep.py"), image_size=128)
    cfg.model.roi_heads.num_classes = synthetic_lvis.num_classes
    cfg.dataloader.train.dataset.names = synthetic_lvis.train_name
    cfg.dataloader.test.dataset.names = synthetic_lvis.val_name
    model = instantiate(cfg.model).eval()
    results = do_test(cfg, model)
    assert set(results) == {"bbox", "segm"}
    assert {"AP", "APr", "APc", "APf"} <= set(results["bbox"])


# ---------------------------------------------------------------------------------------------------------------
# batch-size rescaling (hieradet.solver.rescale_batch / apply_total_batch_size)


def _lr_at(cfg, iters):
    sched = instantiate(cfg.lr_multiplier)
    return [sched(i / cfg.train.max_iter) for i in iters]


def test_rescale_batch_keeps_the_recipe_per_epoch():
    from hieradet.solver import rescale_batch

    base = _load("configs/COCO/mask_rcnn_hieradet_b_100ep.py")
    cfg = rescale_batch(_load("configs/COCO/mask_rcnn_hieradet_b_100ep.py"), 16)
    assert cfg.dataloader.train.total_batch_size == 16
    assert cfg.optimizer.lr == pytest.approx(base.optimizer.lr / 4)  # linear scaling
    assert cfg.train.max_iter == round(100 * 118_000 / 16) == 4 * base.train.max_iter
    assert list(cfg.lr_multiplier.scheduler.milestones) == [4 * m for m in base.lr_multiplier.scheduler.milestones]
    assert cfg.lr_multiplier.scheduler.num_updates == cfg.train.max_iter
    assert cfg.train.eval_period == 4 * base.train.eval_period
    assert cfg.train.checkpointer.period == 4 * base.train.checkpointer.period
    # the multiplier at the same epoch is the same: warm-up (250 -> 1000 iterations) and both drops
    k = [0, 100, 249, 250, 5000, *base.lr_multiplier.scheduler.milestones, base.train.max_iter - 1]
    assert _lr_at(cfg, [4 * i for i in k]) == pytest.approx(_lr_at(base, k))
    assert _lr_at(cfg, [999])[0] < 1.0 and _lr_at(cfg, [1000])[0] == pytest.approx(1.0)
    # the optimizer's base_lr follows optimizer.lr
    assert OmegaConf.to_container(cfg.optimizer.params)["base_lr"] == "${..lr}"


def test_rescale_batch_hivit_recipe_and_bad_input():
    from hieradet.solver import rescale_batch

    base = _load("projects/HiViT/configs/COCO/mask_rcnn_hivit_b_1x.py")
    cfg = rescale_batch(_load("projects/HiViT/configs/COCO/mask_rcnn_hivit_b_1x.py"), 32)
    assert cfg.optimizer.lr == pytest.approx(2 * base.optimizer.lr)
    assert cfg.train.max_iter == round(12 * 118_000 / 32)
    assert cfg.lr_multiplier.warmup_length * cfg.train.max_iter == pytest.approx(250)  # 500 at 16 -> 250 at 32
    for bad in (0, -8, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            rescale_batch(base, bad)


def test_train_total_batch_size_rescales_once_and_a_bare_batch_override_warns():
    import warnings

    from hieradet.solver import apply_total_batch_size

    base = _load("configs/COCO/mask_rcnn_hieradet_b_100ep.py")
    assert base.train.total_batch_size is None and base.train.recipe.total_batch_size == 64
    cfg = _load("configs/COCO/mask_rcnn_hieradet_b_100ep.py")
    cfg.train.total_batch_size = 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_total_batch_size(cfg)
        apply_total_batch_size(cfg)  # idempotent: do_train may see the same config again (--resume)
    assert cfg.dataloader.train.total_batch_size == 16 and cfg.train.max_iter == 4 * base.train.max_iter
    assert cfg.optimizer.lr == pytest.approx(base.optimizer.lr / 4)

    bare = _load("configs/COCO/mask_rcnn_hieradet_b_100ep.py")
    bare.dataloader.train.total_batch_size = 16
    with pytest.warns(UserWarning, match=r"cover 25 epochs instead of 100.*train\.total_batch_size=16"):
        apply_total_batch_size(bare)
    assert bare.train.max_iter == base.train.max_iter  # trained as asked, only warned

    both = _load("configs/COCO/mask_rcnn_hieradet_b_100ep.py")
    both.dataloader.train.total_batch_size = 16
    both.train.total_batch_size = 32
    with pytest.raises(ValueError, match="both change the recipe's batch of 64"):
        apply_total_batch_size(both)


def test_do_train_applies_the_batch_size_option_before_building(tmp_path):
    cfg = _load("configs/COCO/mask_rcnn_hieradet_b_100ep.py")
    cfg.train.output_dir = str(tmp_path)
    cfg.dataloader.train.total_batch_size = 16
    cfg.train.total_batch_size = 32
    with pytest.raises(ValueError, match="both change the recipe's batch"):
        do_train(cfg)


# ---------------------------------------------------------------------------------------------------------------
# the generated recipe table


def test_every_detection_config_names_its_paper_target_itself():
    """A child config inherits its parent's ``train`` (e.g. a cascade from its Mask R-CNN): each file must set
    its own target so that the table never shows a parent's number."""
    from hieradet.solver.recipe_table import detection_configs

    paths = detection_configs(ROOT)
    assert set(CONFIGS) <= set(paths) and set(PROJECT_CONFIGS) <= set(paths)
    missing = [p for p in paths if "train.paper_target = " not in (ROOT / p).read_text()]
    assert not missing


def test_recipe_row_is_read_from_the_config():
    from hieradet.solver.recipe_table import recipe_row

    path = "configs/COCO/ablations/mask_rcnn_hieradet_l_100ep_interp_relpos_all.py"
    row = recipe_row(_load(path), path)
    assert row["backbone"] == "HieraDet-L" and row["detector"] == "Mask R-CNN"
    assert (row["epochs"], row["iters"], row["batch"], row["lr"]) == ("100", "184375", "64", "1.2e-4")
    assert (row["layer decay"], row["drop path"], row["relpos"]) == ("1", "0.45", "all")
    assert row["embedding"].startswith("interpolate") and row["train images"] == "LSJ 1024 [0.1, 2]"
    assert row["paper target"] == "box 55.6 / mask 49.3 (Bolya et al. 2024, Tab. 5)"
    assert row["no weight decay on"] == "norms, biases, pos embed, relpos"

    path = "configs/LVIS/cascade_mask_rcnn_vitdet_h_100ep.py"
    cfg = _load(path)
    row = recipe_row(cfg, path)
    assert (row["backbone"], row["detector"], row["no weight decay on"]) == ("ViTDet-H", "Cascade Mask R-CNN", "none")
    cfg.optimizer.lr = 3e-4  # the row follows the config, not a copy
    assert recipe_row(cfg, path)["lr"] == "3e-4"
    assert recipe_row(_load("configs/COCO/mask_rcnn_vitdet_b_100ep.py"), "x")["no weight decay on"] == (
        "torch norms, pos embed"
    )


@pytest.mark.slow
def test_readme_recipe_table_is_the_generated_one():
    """docs/recipes.md holds exactly what tools/recipe_table.py prints (about 50 s: it loads ~60 configs)."""
    from hieradet.solver.recipe_table import recipe_table, replace_table

    doc = (ROOT / "docs" / "recipes.md").read_text()
    fix = "run: python tools/recipe_table.py --write docs/recipes.md"
    assert replace_table(doc, recipe_table(ROOT)) == doc, fix
    with pytest.raises(ValueError, match="no recipe table markers"):
        replace_table("no table here", "x")


def test_recipe_table_tool_writes_and_checks_a_markdown_file(load_tool, tmp_path, capsys):
    from hieradet.solver.recipe_table import BEGIN, END

    tool, path = load_tool("recipe_table"), "configs/COCO/mask_rcnn_vitdet_b_100ep.py"
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    with pytest.raises(SystemExit, match="out of date"):
        tool.main(["--check", str(doc), path])
    tool.main(["--write", str(doc), path])
    text = doc.read_text()
    assert text.startswith(f"intro\n{BEGIN}\n| config |") and text.endswith(f"{END}\noutro\n")
    assert f"| `{path}` | Mask R-CNN | ViTDet-B |" in text and "old" not in text
    tool.main(["--check", str(doc), path])
    assert "recipe table up to date" in capsys.readouterr().out


def test_get_optimizer_params_names_a_bad_norm_rule():
    with pytest.raises(ValueError, match="norm_types must be one of"):
        get_optimizer_params(torch.nn.Linear(2, 2), norm_types="detectron2")
