"""Shrinks a detector LazyConfig for CPU smoke runs (tests, debugging): a few-block, narrow backbone,
narrow heads, few proposals, small images. Everything else (detector type, position embedding,
relpos placement, windows, LVIS settings, ...) is left as the config has it."""

from detectron2.layers import ShapeSpec

__all__ = ["make_tiny"]


def _shrink_aug(aug, image_size: int) -> None:
    for key in ("target_height", "target_width"):
        if key in aug:
            aug[key] = image_size
    if "crop_size" in aug:
        aug.crop_size = (image_size, image_size)
    if "short_edge_length" in aug:
        aug.short_edge_length = image_size
        aug.max_size = image_size


def make_tiny(cfg, image_size: int = 128, channels: int = 32, batch_size: int = 2, num_classes=None):
    """Edits a loaded Mask / Cascade Mask R-CNN LazyConfig (HieraDet+FPN or ViT+SimpleFeaturePyramid) in place.

    Args:
        cfg: the config (``model``, and ``dataloader`` if present, are changed).
        image_size (int): training crop / test size and the backbone's ``img_size`` (a multiple of 32).
        channels (int): FPN and head width (the backbone gets about half of it).
        batch_size (int): ``dataloader.train.total_batch_size``.
        num_classes (int or None): if given, ``model.roi_heads.num_classes``.
    """
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    model = cfg.model
    bb = model.backbone
    if "bottom_up" in bb:  # HieraDet + FPN
        bb.bottom_up.update(embed_dim=max(8, channels // 4), num_heads=1, stages=(1, 1, 2, 1), global_blocks=(3,))
        bb.bottom_up.img_size = image_size
    elif "net" in bb:  # ViT + SimpleFeaturePyramid
        bb.net.update(embed_dim=channels, depth=2, num_heads=2, global_blocks=(1,))
        bb.net.img_size = image_size
    else:
        raise ValueError("make_tiny needs model.backbone.bottom_up (FPN) or model.backbone.net (SimpleFeaturePyramid)")
    bb.out_channels = channels

    model.proposal_generator.head.in_channels = channels
    model.proposal_generator.pre_nms_topk = (200, 100)
    model.proposal_generator.post_nms_topk = (50, 50)
    model.proposal_generator.batch_size_per_image = 64
    rh = model.roi_heads
    rh.batch_size_per_image = 32
    if num_classes is not None:
        rh.num_classes = num_classes
    heads = rh.box_heads if "box_heads" in rh else [rh.box_head]
    predictors = rh.box_predictors if "box_predictors" in rh else [rh.box_predictor]
    for head in heads:
        head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
        head.conv_dims = [channels] if head.conv_dims else []
        head.fc_dims = [2 * channels]
    for p in predictors:
        p.input_shape = ShapeSpec(channels=2 * channels)
        p.test_topk_per_image = 20
        if p.get("use_fed_loss") and num_classes is not None:
            p.fed_loss_num_classes = max(1, num_classes // 2)
    rh.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
    rh.mask_head.conv_dims = [channels, channels]

    if "dataloader" in cfg:
        dl = cfg.dataloader
        for aug in list(dl.train.mapper.augmentations) + list(dl.test.mapper.augmentations):
            _shrink_aug(aug, image_size)
        dl.train.total_batch_size = batch_size
        dl.train.num_workers = 0
        dl.test.num_workers = 0
    return cfg
