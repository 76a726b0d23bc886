"""Models to time: a preset or LazyConfig built as a backbone or a whole detector, with matching inputs."""

from typing import Optional, Sequence

import torch
from torch import nn

from .presets import build_backbone, model_config

__all__ = ["Benchmarked", "build", "load_config", "prepare_config", "bottom_up"]


class Benchmarked:
    """A model ready to time.

    Args:
        name (str): shown in the results.
        module (nn.Module): the network.
        kind (str): ``"backbone"`` (takes an image tensor) or ``"model"`` (a detectron2 detector, takes dicts).
        img_size (int): side of the square random images.
    """

    def __init__(self, name: str, module: nn.Module, kind: str, img_size: int):
        self.name, self.module, self.kind, self.img_size = name, module, kind, img_size

    def inputs(self, batch: int, device: torch.device, train: bool = False, seed: int = 0):
        """Random inputs for one iteration; with ``train`` a detector's get 4 boxes with masks per image.

        The masks are polygons (the box outlines), as the stock data pipeline gives them (detectron2's
        ``DatasetMapper`` defaults to ``instance_mask_format="polygon"``): the mask loss then rasterises each
        positive proposal's target at 28x28. Full-image ``BitMasks`` would add to every model's peak a transient
        float copy of the image-sized mask of each positive proposal (up to 128: up to 0.5 GiB at 1024 px).
        """
        g = torch.Generator().manual_seed(seed)
        s = self.img_size
        if self.kind == "backbone":
            return torch.randn(batch, 3, s, s, generator=g).to(device)
        from detectron2.structures import Boxes, Instances, PolygonMasks

        num_classes = getattr(getattr(self.module, "roi_heads", None), "num_classes", 80)
        items = []
        for _ in range(batch):
            item = {"image": (torch.rand(3, s, s, generator=g) * 255).to(device), "height": s, "width": s}
            if train:
                n = 4
                xy = torch.rand(n, 2, generator=g) * s * 0.6
                wh = torch.rand(n, 2, generator=g) * s * 0.3 + min(16, s // 8)
                boxes = torch.cat([xy, xy + wh], 1).clamp(max=s)
                outlines = [[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in boxes.tolist()]
                inst = Instances((s, s))
                inst.gt_boxes = Boxes(boxes)
                inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
                inst.gt_masks = PolygonMasks(outlines)
                item["instances"] = inst.to(device)
            items.append(item)
        return items

    def forward(self, inputs):
        return self.module(inputs)


def prepare_config(cfg, weights: Optional[str] = None):
    """Adjusts a loaded LazyConfig before its model is built; returns it.

    With ``weights``, the checkpoint's position-embedding layout is set on the config
    (:func:`hieradet.checkpoint.apply_checkpoint_layout`), so that the timed model is the one those weights need.
    """
    if weights:
        from hieradet.checkpoint import apply_checkpoint_layout

        cfg = apply_checkpoint_layout(cfg, weights)
    return cfg


def load_config(path: str, opts: Sequence[str] = (), weights: Optional[str] = None):
    """Loads LazyConfig ``path`` (a file or a :mod:`hieradet.model_zoo` name) with ``key=value`` overrides, and
    the layout of checkpoint ``weights`` if given."""
    from detectron2.config import LazyConfig

    from hieradet.model_zoo import resolve_config_path

    path = resolve_config_path(path)
    cfg = LazyConfig.load(path)
    if opts:
        cfg = LazyConfig.apply_overrides(cfg, list(opts))
    if "model" not in cfg:
        raise KeyError(f"config {path!r} defines no `model`")
    return prepare_config(cfg, weights)


def bottom_up(model: nn.Module) -> nn.Module:
    """The bottom-up network of a detector (``backbone.bottom_up`` of an FPN, ``backbone.net`` of a
    SimpleFeaturePyramid), or ``model`` itself."""
    backbone = getattr(model, "backbone", model)
    for attr in ("bottom_up", "net"):
        if hasattr(backbone, attr):
            return getattr(backbone, attr)
    return backbone


def build(
    spec: str,
    part: str = "backbone",
    img_size: int = 1024,
    opts: Sequence[str] = (),
    full_detections: bool = True,
    weights: Optional[str] = None,
) -> Benchmarked:
    """Builds preset or LazyConfig ``spec`` (random init) as a backbone (``part="backbone"``) or a whole detector
    (``part="model"``). ``full_detections`` sets a detector's score threshold to 0, so every image goes through
    the mask head with the full detections (random weights would make the count, and the time, arbitrary).
    ``weights`` (LazyConfigs only): a checkpoint whose layout is applied to the config and whose weights are loaded
    through :class:`hieradet.checkpoint.HieraDetCheckpointer`."""
    from detectron2.config import instantiate

    if part not in ("backbone", "model"):
        raise ValueError(f"part must be 'backbone' or 'model', got {part!r}")
    if weights and not spec.endswith(".py"):
        raise ValueError(f"weights={weights!r} need a LazyConfig (a .py file or model_zoo name), not preset {spec!r}")
    if spec.endswith(".py"):
        model = instantiate(load_config(spec, opts, weights).model)
        if weights:
            from hieradet.checkpoint import HieraDetCheckpointer

            HieraDetCheckpointer(model).load(weights)
    elif part == "backbone":
        return Benchmarked(spec, build_backbone(spec, img_size), "backbone", img_size)
    else:
        model = instantiate(model_config(spec, img_size))
    if part == "backbone":
        return Benchmarked(spec, bottom_up(model), "backbone", img_size)
    if full_detections and hasattr(model, "roi_heads"):
        predictors = getattr(model.roi_heads, "box_predictor", None)
        for p in predictors if isinstance(predictors, nn.ModuleList) else [predictors]:
            if p is not None and hasattr(p, "test_score_thresh"):
                p.test_score_thresh = 0.0
    return Benchmarked(spec, model, "model", img_size)
