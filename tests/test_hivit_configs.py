"""projects/HiViT LazyConfigs: the recipe they encode, and one training step of HiViT Mask R-CNN on generated data."""

from pathlib import Path

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.events import EventStorage

from hieradet.modeling.hivit import HiViT, hivit_kwargs
from hieradet.solver import step_milestones

CONFIGS = Path(__file__).resolve().parents[1] / "projects" / "HiViT" / "configs"
ALL_CONFIGS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("[CL]*/*.py"))


def _load(name):
    return LazyConfig.load(str(CONFIGS / name))


def test_the_expected_configs_exist():
    assert set(ALL_CONFIGS) == {
        "COCO/mask_rcnn_hivit_b_1x.py",
        "COCO/mask_rcnn_hivit_b_3x.py",
        "COCO/mask_rcnn_hivit_b_3x_interp.py",
        "COCO/mask_rcnn_hivit_t_3x.py",
        "COCO/mask_rcnn_hivit_s_3x.py",
        "COCO/mask_rcnn_hivit_l_3x.py",
        "COCO/cascade_mask_rcnn_hivit_b_3x.py",
        "COCO/cascade_mask_rcnn_hivit_l_3x.py",
        "LVIS/mask_rcnn_hivit_b_3x.py",
        "LVIS/cascade_mask_rcnn_hivit_b_3x.py",
    }


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_config_loads_with_the_papers_recipe(name):
    cfg = _load(name)
    assert {"model", "optimizer", "train", "dataloader", "lr_multiplier"} <= set(cfg)
    bu = cfg.model.backbone.bottom_up
    assert bu._target_ is HiViT
    assert list(cfg.model.backbone.in_features) == ["scale2", "scale3", "scale4", "scale5"]
    assert bu.window_size == 14 and len(bu.global_blocks) == 4
    assert (bu.pos_embed, bu.relpos) == (("interpolate", "none") if "interp" in name else ("auto", "global"))
    size = name.split("hivit_")[1][0].upper()
    assert bu.embed_dim == hivit_kwargs(size)["embed_dim"] and tuple(bu.depths) == hivit_kwargs(size)["depths"]
    assert bu.global_blocks == hivit_kwargs(size)["global_blocks"]
    # Zhang et al. 2023, App. A: AdamW, layer decay 0.9; 1x lr 3e-4 (paper), 3x lr 1e-4 (authors' 3x config); wd 0.05
    assert issubclass(cfg.optimizer._target_, torch.optim.AdamW)  # hieradet.solver.AdamW: clips in step()
    assert cfg.optimizer.params.lr_decay_rate == 0.9 and cfg.optimizer.weight_decay == 0.05
    one_x = name.endswith("_1x.py")
    assert cfg.optimizer.lr == (3e-4 if one_x else 1e-4)
    batch = cfg.dataloader.train.total_batch_size
    assert batch == 16
    epochs, drops = (12, (9, 11)) if one_x else (36, (27, 33))
    images = 100_000 if name.startswith("LVIS") else 118_000
    assert cfg.train.max_iter == round(epochs * images / batch)
    milestones = cfg.lr_multiplier.scheduler.milestones
    assert tuple(milestones) == step_milestones(cfg.train.max_iter, tuple(d / epochs for d in drops))
    assert [round(m * batch / images, 3) for m in milestones] == list(drops)  # drops after these epochs
    cascade = "cascade" in name
    assert ("box_predictors" in cfg.model.roi_heads) == cascade
    num_classes = 1203 if name.startswith("LVIS") else 80
    assert cfg.model.roi_heads.num_classes == num_classes


def test_training_step_on_generated_data(synthetic_coco):
    """One step of the HiViT-B 1x Mask R-CNN recipe (backbone shrunk, 128 px generated images): the config's
    loader, model and layer-decayed AdamW work together and the step moves stem, main stage and heads."""
    cfg = _load("COCO/mask_rcnn_hivit_b_1x.py")
    cfg.model.backbone.bottom_up.update(embed_dim=64, depths=(1, 1, 2), num_heads=2, global_blocks=(1,), img_size=128)
    cfg.model.roi_heads.num_classes = synthetic_coco.num_classes
    cfg.model.roi_heads.batch_size_per_image = 32
    cfg.model.proposal_generator.post_nms_topk = (64, 64)
    cfg.dataloader.train.dataset.names = synthetic_coco.train_name
    cfg.dataloader.train.total_batch_size = 2
    cfg.dataloader.train.num_workers = 0
    cfg.dataloader.train.mapper.augmentations = [
        L(T.RandomFlip)(horizontal=True),
        L(T.ResizeShortestEdge)(short_edge_length=(96, 128), max_size=160, sample_style="choice"),
    ]
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    bu = model.backbone.bottom_up
    assert isinstance(bu, HiViT) and model.backbone.padding_constraints["square_size"] == 0
    # layer decay 0.9 over 2 main blocks: stem at 0.9^3, block 1 at 0.9, heads at 1
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(bu.patch_embed.merge1.reduction.weight)] == pytest.approx(3e-4 * 0.9**3)
    assert lrs[id(bu.blocks[1].attn.qkv.weight)] == pytest.approx(3e-4 * 0.9)
    assert lrs[id(model.roi_heads.box_predictor.cls_score.weight)] == pytest.approx(3e-4)
    wds = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert wds[id(bu.pos_embed.window_embed)] == 0.0 and wds[id(bu.blocks[1].attn.rel_pos_h)] == 0.0
    assert wds[id(bu.blocks[0].attn.qkv.weight)] == 0.05

    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2 and all(max(d["image"].shape[1:]) <= 160 for d in batch)
    watched = {
        "stem": bu.patch_embed.stage1[0].mlp.fc1.weight,
        "main": bu.blocks[0].attn.qkv.weight,
        "fpn": model.backbone.fpn_lateral2.weight,
        "box_head": model.roi_heads.box_predictor.bbox_pred.weight,
    }
    before = {k: v.detach().clone() for k, v in watched.items()}
    with EventStorage(0):  # the ROI heads log training statistics
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    optimizer.zero_grad()
    total.backward()
    assert bu.blocks[1].attn.rel_pos_h.grad is not None
    optimizer.step()
    for k, v in watched.items():
        assert not torch.equal(before[k], v.detach()), k
    assert MetadataCatalog.get(synthetic_coco.train_name).thing_classes
