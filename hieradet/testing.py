"""Tiny models and LazyConfigs for tests, smoke runs and debugging on a CPU.

* :func:`tiny_mask_rcnn`, :func:`tiny_train_config`: real detectron2 Mask R-CNNs (``model_zoo``
  ``common/models/mask_rcnn_fpn.py`` with one of our backbones), only narrow and shallow: one training step on
  128 px images takes well under a second;
* :func:`make_tiny`: shrinks one of the project's own detector configs the same way, keeping everything else
  (detector type, position embedding, relpos placement, windows, LVIS settings, ...) as the config has it.
"""

from typing import Optional, Sequence

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

__all__ = ["BACKBONES", "make_tiny", "tiny_backbone_kwargs", "tiny_mask_rcnn", "tiny_train_config"]

BACKBONES = ("hieradet", "vit", "hivit")  # the built-in families' keys (any registered family's key works)


def tiny_backbone_kwargs(kind: str, img_size: int = 256, **overrides) -> dict:
    """Constructor kwargs of a tiny ``kind`` backbone (a family's key, ``"hieradet"``, ``"vit"``, ``"hivit"``, or
    name) that keeps the real structure: windows, a global block with relpos, abs-win position embeddings. They are
    the family's :attr:`~hieradet.modeling.family.BackboneFamily.tiny_kwargs`."""
    from hieradet.modeling.family import families, get_family

    try:
        fam = get_family(kind)
    except ValueError:
        raise ValueError(f"unknown backbone kind {kind!r}; choose from {tuple(f.key for f in families())}") from None
    kw = dict(fam.tiny_kwargs, img_size=img_size)
    kw.update(overrides)
    return kw


def _backbone_cfg(kind: str, img_size: int, channels: int, **overrides):
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
    from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

    from hieradet.modeling.family import get_family

    kw = tiny_backbone_kwargs(kind, img_size, **overrides)
    net = get_family(kind).cls
    if get_family(kind).neck == "fpn":
        scales = ["scale2", "scale3", "scale4", "scale5"]
        top = L(LastLevelMaxPool)()
        return L(FPN)(bottom_up=L(net)(**kw), in_features=scales, out_channels=channels, top_block=top)
    return L(SimpleFeaturePyramid)(
        net=L(net)(**kw),
        in_feature="last_feat",
        out_channels=channels,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=L(LastLevelMaxPool)(),
        norm="LN",
        square_pad=0,
    )


def tiny_mask_rcnn(
    backbone: str = "hieradet", num_classes: int = 4, img_size: int = 256, channels: int = 32, mask: bool = True, **bb
):
    """LazyConfig of a narrow Mask R-CNN (FPN / SimpleFeaturePyramid at ``channels``) on a tiny backbone.

    Args:
        backbone (str): ``"hieradet"``, ``"vit"``, ``"hivit"`` (or another registered family's key).
        num_classes (int): object classes.
        img_size (int): image size the backbone's global relpos tables are sized for.
        channels (int): neck / head width.
        mask (bool): keep the mask head (``False``: box-only Faster R-CNN).
        **bb: backbone constructor overrides.
    """
    from detectron2 import model_zoo

    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    model.backbone = _backbone_cfg(backbone, img_size, channels, **bb)
    rpn = model.proposal_generator
    rpn.head.in_channels = channels
    rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    rpn.batch_size_per_image = 64
    rpn.pre_nms_topk = (200, 100)
    rpn.post_nms_topk = (50, 50)
    heads = model.roi_heads
    heads.num_classes = num_classes
    heads.batch_size_per_image = 32
    heads.box_head.input_shape = ShapeSpec(channels=channels, height=7, width=7)
    heads.box_head.fc_dims = [64]
    heads.box_predictor.input_shape = ShapeSpec(channels=64)
    heads.box_predictor.test_topk_per_image = 20
    if mask:
        heads.mask_head.input_shape = ShapeSpec(channels=channels, width=14, height=14)
        heads.mask_head.conv_dims = [channels]
    else:
        heads.mask_in_features = heads.mask_pooler = heads.mask_head = None
    return model


def tiny_train_config(
    train_names: Sequence[str],
    test_names: Optional[Sequence[str]],
    output_dir: str,
    num_classes: int,
    backbone: str = "hieradet",
    max_iter: int = 4,
    ims_per_batch: int = 2,
    image_size: int = 128,
    lr: float = 1e-4,
    seed: Optional[int] = 0,
    checkpoint_period: int = 1000,
    augment: bool = True,
    mask: bool = True,
    num_workers: int = 0,
):
    """A complete LazyConfig (``model``, ``optimizer``, ``lr_multiplier``, ``dataloader``, ``train``) for
    ``hieradet.engine.do_train`` on registered datasets, on the CPU.

    The train loader uses :class:`hieradet.data.samplers.ResumableTrainingSampler` (``seed``) and no
    aspect-ratio grouping, so runs are repeatable; ``augment`` adds a random flip and a scale jitter.
    """
    import detectron2.data.transforms as T
    from detectron2 import model_zoo
    from detectron2.data import (
        DatasetMapper,
        build_detection_test_loader,
        build_detection_train_loader,
        get_detection_dataset_dicts,
    )
    from detectron2.solver import WarmupParamScheduler
    from fvcore.common.param_scheduler import CosineParamScheduler
    from omegaconf import OmegaConf

    from hieradet.data.samplers import ResumableTrainingSampler
    from hieradet.evaluation import COCOEvaluator

    train_names, test_names = list(train_names), list(test_names or [])
    cfg = OmegaConf.create()
    cfg.model = tiny_mask_rcnn(backbone, num_classes=num_classes, img_size=image_size, mask=mask)
    cfg.optimizer = model_zoo.get_config("common/optim.py").AdamW
    cfg.optimizer.lr = lr
    cfg.lr_multiplier = L(WarmupParamScheduler)(
        scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=1.0), warmup_length=0.0, warmup_factor=1.0
    )
    augs = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
    if augment:
        augs = [
            L(T.ResizeShortestEdge)(
                short_edge_length=(image_size - 32, image_size), sample_style="range", max_size=image_size
            ),
            L(T.RandomFlip)(horizontal=True),
        ]
    dataset = L(get_detection_dataset_dicts)(names=train_names, filter_empty=False)
    cfg.dataloader = OmegaConf.create()
    cfg.dataloader.train = L(build_detection_train_loader)(
        dataset=dataset,
        sampler=L(ResumableTrainingSampler)(size=dataset, seed=seed),
        mapper=L(DatasetMapper)(is_train=True, augmentations=augs, image_format="BGR", use_instance_mask=mask),
        total_batch_size=ims_per_batch,
        aspect_ratio_grouping=False,
        num_workers=num_workers,
        seed=seed,  # the loader's own generator: creating its iterator draws nothing from the global RNG
    )
    if test_names:
        cfg.dataloader.test = L(build_detection_test_loader)(
            dataset=L(get_detection_dataset_dicts)(names=test_names, filter_empty=False),
            mapper=L(DatasetMapper)(
                is_train=False,
                augmentations=[L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)],
                image_format="BGR",
            ),
            num_workers=0,
        )
        cfg.dataloader.evaluator = L(COCOEvaluator)(dataset_name=test_names[0], output_dir=output_dir)
    cfg.train = model_zoo.get_config("common/train.py").train
    cfg.train.update(
        output_dir=output_dir,
        max_iter=max_iter,
        device="cpu",
        eval_period=0,
        log_period=1,
        seed=seed,
        checkpointer=dict(period=checkpoint_period, max_to_keep=100),
    )
    return cfg


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
