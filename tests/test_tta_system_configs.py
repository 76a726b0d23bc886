"""configs/COCO/system/: the paper's Tab. 11 settings (Cascade, 1280 px, linear soft-NMS, +/- TTA)."""

import os

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from hieradet.modeling.soft_nms import SoftNMSCascadeROIHeads, SoftNMSFastRCNNOutputLayers
from hieradet.modeling.tta import GeneralizedRCNNTTA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = os.path.join(REPO, "configs", "COCO", "system")
BASES = {
    "b": "cascade_mask_rcnn_hieradet_b_100ep",
    "bplus": "cascade_mask_rcnn_hieradet_bplus_100ep",
    "l": "cascade_mask_rcnn_hieradet_l_100ep",
    "h": "cascade_mask_rcnn_hieradet_h_75ep",
}


def _load(name):
    return LazyConfig.load(os.path.join(SYSTEM, name + ".py"))


@pytest.mark.parametrize("size", sorted(BASES))
def test_system_config_settings(size):
    cfg = _load(f"cascade_mask_rcnn_hieradet_{size}_1280_softnms")
    base = LazyConfig.load(os.path.join(REPO, "configs", "COCO", BASES[size] + ".py"))
    bu = cfg.model.backbone.bottom_up
    assert bu.img_size == 1280 and cfg.model.backbone.square_pad == 1280  # follows img_size
    assert bu.embed_dim == base.model.backbone.bottom_up.embed_dim and bu.stages == base.model.backbone.bottom_up.stages
    expected_dp = 0.6 if size == "h" else base.model.backbone.bottom_up.drop_path_rate
    assert bu.drop_path_rate == expected_dp
    train_augs = cfg.dataloader.train.mapper.augmentations
    assert train_augs[1].target_height == train_augs[1].target_width == 1280
    assert tuple(train_augs[2].crop_size) == (1280, 1280)
    test_aug = cfg.dataloader.test.mapper.augmentations[0]
    assert test_aug.short_edge_length == test_aug.max_size == 1280
    assert cfg.model.roi_heads._target_ is SoftNMSCascadeROIHeads
    preds = cfg.model.roi_heads.box_predictors
    assert len(preds) == 3
    assert all(p._target_ is SoftNMSFastRCNNOutputLayers and p.soft_nms_method == "linear" for p in preds)
    # schedule and optimizer are the 1024 px config's
    assert cfg.train.max_iter == base.train.max_iter and cfg.optimizer.lr == base.optimizer.lr

    tta = _load(f"cascade_mask_rcnn_hieradet_{size}_1280_softnms_tta")
    assert tta.model._target_ is GeneralizedRCNNTTA
    assert tta.model.flip and max(tta.model.min_sizes) <= tta.model.max_size
    inner = OmegaConf.to_container(tta.model.model, resolve=False)
    assert inner == OmegaConf.to_container(cfg.model, resolve=False)
    assert "_single_scale_model" not in tta


def test_tta_system_config_runs_end_to_end(synthetic_coco):
    """The B TTA config with a tiny backbone and small test scales: detections with masks on a real image."""
    from detectron2.data import DatasetCatalog

    cfg = _load("cascade_mask_rcnn_hieradet_b_1280_softnms_tta")
    cfg = LazyConfig.apply_overrides(
        cfg,
        [
            "model.model.backbone.bottom_up.embed_dim=16",
            "model.model.backbone.bottom_up.stages=[1,1,2,1]",
            "model.model.backbone.bottom_up.global_blocks=[3]",
            "model.model.backbone.bottom_up.img_size=128",
            f"model.model.roi_heads.num_classes={synthetic_coco.num_classes}",
            "model.model.proposal_generator.post_nms_topk=[100,30]",
            "model.min_sizes=[96]",
            "model.max_size=160",
        ],
    )
    heads = cfg.model.model.roi_heads
    for h in heads.box_heads:  # narrow heads: the 256-wide convs dominate the CPU time
        h.conv_dims, h.fc_dims = [32], [64]
    for p in heads.box_predictors:
        p.input_shape.channels = 64
        p.test_topk_per_image = 10
    heads.mask_head.conv_dims = [32, 32]
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    assert isinstance(model.model.roi_heads, SoftNMSCascadeROIHeads)
    from PIL import Image

    path = DatasetCatalog.get(synthetic_coco.val_name)[0]["file_name"]
    img = np.asarray(Image.open(path).convert("RGB"))
    inp = {"image": torch.as_tensor(img.transpose(2, 0, 1).copy()), "height": img.shape[0], "width": img.shape[1]}
    with torch.no_grad():
        out = model([inp])[0]["instances"]
    assert len(out) > 0
    assert out.pred_masks.shape[1:] == img.shape[:2]
    assert (out.scores[1:] <= out.scores[:-1]).all()
    assert out.pred_classes.max() < synthetic_coco.num_classes
