"""Export a detector (the whole R-CNN, see :mod:`hieradet.export.detector`, or its backbone: trunk + FPN / simple
feature pyramid) to ``torch.export`` (``.pt2``) and ONNX with dynamic image height and width, run the exported file,
and compare it with the eager model.

The exported graph takes what detectron2's model takes per image: one float32 ``(3, H, W)`` tensor, 0-255, in the
config's ``input_format``, already resized by the test augmentation. Inside the graph it is normalised with the
model's ``pixel_mean`` / ``pixel_std`` and zero-padded to the backbone's ``size_divisibility`` (or to the fixed
square of a ``square_pad`` backbone) exactly as detectron2's ``ImageList`` does, so one file serves every size from
``min_size`` up to ``max_size``. The abs-win
position embedding (tile + interpolate) is computed in the graph for the actual size (see
:mod:`hieradet.modeling.windows` for what keeps the shape arithmetic symbolic). After export the program is
checked: if a size was specialised to the traced one, or the accepted range is narrower than asked, export refuses
instead of writing a file that would be wrong (or refuse to run) at other sizes.
"""

import contextlib
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ExportError",
    "FeatureGraph",
    "build_model",
    "check_exported",
    "check_image",
    "compare_detections",
    "compare_outputs",
    "describe_detection_diffs",
    "export_features",
    "export_graph",
    "export_model",
    "load_exported",
    "read_test_image",
    "config_max_size",
    "trace",
]

FORMATS = ("onnx", "torch_export")
FILENAMES = {"onnx": "model.onnx", "torch_export": "model.pt2"}
ONNX_OPSET = 18


class ExportError(RuntimeError):
    """The model cannot be exported faithfully (the message names the part and what to do)."""


def _divisibility(backbone: nn.Module) -> Tuple[int, int]:
    """(size_divisibility, square_size) of a detectron2 backbone."""
    pc = getattr(backbone, "padding_constraints", {}) or {}
    div = int(pc.get("size_divisibility", getattr(backbone, "size_divisibility", 0)) or 0)
    return max(div, 1), int(pc.get("square_size", 0) or 0)


class FeatureGraph(nn.Module):
    """The traceable per-image front of a detectron2 model: normalise, pad like ``ImageList``, run the backbone.

    Args:
        model: a detectron2 meta-architecture with ``backbone``, ``pixel_mean`` and ``pixel_std`` (e.g. an
            instantiated ``GeneralizedRCNN``).

    ``forward(image)`` takes a float32 ``(3, H, W)`` image (0-255, the model's ``input_format``) and returns the
    backbone's features as a tuple in :attr:`output_names` order, each ``(1, C, H_i, W_i)``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        for attr in ("backbone", "pixel_mean", "pixel_std"):
            if not hasattr(model, attr):
                raise ExportError(
                    f"{type(model).__name__} has no {attr!r}: export needs a detectron2 meta-architecture "
                    "(e.g. GeneralizedRCNN) with a backbone and pixel_mean / pixel_std"
                )
        self.backbone = model.backbone
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone().reshape(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone().reshape(-1, 1, 1), persistent=False)
        self.size_divisibility, self.square_size = _divisibility(self.backbone)
        self.output_names = sorted(self.backbone.output_shape())
        # smallest side the program takes: the coarsest feature map at least 1 px (torch.export bounds smaller
        # sizes away), and two size-divisibility steps
        strides = [s.stride for s in self.backbone.output_shape().values() if s.stride]
        self.min_size = max([2 * self.size_divisibility] + strides)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x = (image - self.pixel_mean) / self.pixel_std
        H, W = x.shape[-2:]
        d, sq = self.size_divisibility, self.square_size
        if sq:  # square_pad: detectron2 pads every image to the fixed square (the backbone then sees one size)
            x = F.pad(x, (0, sq - W, 0, sq - H))
        else:
            x = F.pad(x, (0, (W + d - 1) // d * d - W, 0, (H + d - 1) // d * d - H))
        feats = self.backbone(x[None])
        return tuple(feats[k] for k in self.output_names)


def check_image(image, max_size: Optional[int] = None, min_size: int = 1) -> None:
    """Raise ``ValueError`` unless ``image`` is what an exported graph takes: a float32 ``(3, H, W)`` tensor or
    array with ``min_size <= H, W <= max_size``."""
    shape = tuple(image.shape)
    dtype = str(image.dtype)
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(
            f"the exported graph takes one (3, H, W) image (channels first, the config's input_format), got shape "
            f"{shape}; convert an HWC array with image.transpose(2, 0, 1) and pass images one at a time"
        )
    if dtype not in ("float32", "torch.float32"):
        raise ValueError(
            f"the exported graph takes float32 pixels in 0-255, got dtype {dtype}; convert with "
            "image.astype('float32') / image.float() (do not normalise: the graph does it)"
        )
    if min(shape[1:]) < min_size or (max_size is not None and max(shape[1:]) > max_size):
        raise ValueError(
            f"image size {shape[1:]} is outside the exported range {min_size}..{max_size} px per side; resize it "
            "as the test augmentation does, or export again with a larger --max-size"
        )


def _dynamic_dims(min_size: int, max_size: int):
    from torch.export import Dim

    return ({1: Dim.DYNAMIC(min=min_size, max=max_size), 2: Dim.DYNAMIC(min=min_size, max=max_size)},)


def _check_dynamic(ep) -> None:
    """Refuse a program whose image height / width were specialised to the traced size."""
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    shape = inputs[0].meta["val"].shape
    static = [name for name, s in zip(("H", "W"), shape[1:]) if not isinstance(s, torch.SymInt)]
    if static:
        raise ExportError(
            f"torch.export specialised the image {' and '.join(static)} to the traced size {tuple(shape[1:])}: a "
            "shape computation in the model is not symbolic, and the file would be wrong at other sizes"
        )


def input_range(ep, max_size: Optional[int] = None) -> Tuple[int, Optional[int]]:
    """(smallest, largest) image side an exported program accepts (``max_size`` where it sets no upper bound)."""
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    lo, hi = 1, max_size
    for s in inputs[0].meta["val"].shape[1:]:
        vr = ep.range_constraints.get(s.node.expr) if isinstance(s, torch.SymInt) else None
        if vr is not None:
            lo = max(lo, int(vr.lower))
            if vr.upper.is_finite:
                hi = int(vr.upper) if hi is None else min(hi, int(vr.upper))
    return lo, hi


def _check_range(ep, min_size: int, max_size: int) -> None:
    """Refuse a program that accepts fewer image sides than ``min_size..max_size`` (a shape computation in the
    model added a bound, e.g. a feature map that must stay larger than one pixel)."""
    lo, hi = input_range(ep, max_size)
    if lo > min_size or hi < max_size:
        raise ExportError(
            f"the exported program accepts image sides of {lo}..{hi} px only, not the requested "
            f"{min_size}..{max_size}: pass a min_size / max_size inside {lo}..{hi} (tools/export_model.py: "
            "--min-size / --max-size)"
        )


def _nms_fake(dets, scores, iou_threshold):
    torch._check(dets.dim() == 2 and dets.size(1) == 4 and scores.dim() == 1 and dets.size(0) == scores.size(0))
    kept = torch.library.get_ctx().new_dynamic_size(min=0)
    torch._check(kept <= dets.size(0))
    return dets.new_empty(kept, dtype=torch.long)


@contextlib.contextmanager
def _nms_may_keep_fewer_than_two():
    """torchvision's fake ``nms`` (its shape function for tracing) declares at least 2 kept boxes (the legacy
    ``create_unbacked_symint`` default), so an exported detector would stop with "Runtime assertion failed for
    expression u >= 2" on an image with 0 or 1 detection. While tracing, a fake that allows 0..n is registered
    on top of it (removed afterwards: torchvision's own comes back)."""
    try:
        import torchvision  # noqa: F401 - defines torchvision::nms
    except ImportError:  # nothing to correct without torchvision
        yield
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    try:
        torch.library.register_fake("torchvision::nms", _nms_fake, lib=lib, allow_override=True)
        yield
    finally:
        lib._destroy()


def trace(module: nn.Module, example: torch.Tensor, min_size: int, max_size: int) -> "torch.export.ExportedProgram":
    """``torch.export`` of a per-image ``module`` with dynamic H and W in ``[min_size, max_size]``.

    Sizes are treated size-obliviously (a window count or a feature side that happens to be 1 at some size is
    not specialised); the result is checked to be dynamic in H and W.
    """
    from torch.fx.experimental import _config as fx_config

    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True), _nms_may_keep_fewer_than_two():
        ep = torch.export.export(module, (example,), dynamic_shapes=_dynamic_dims(min_size, max_size), strict=False)
    _check_dynamic(ep)
    _check_range(ep, min_size, max_size)
    return ep


def _require_onnx_exporter() -> None:
    """torch.onnx's exporter needs onnx and onnxscript: checked before the tracing, which takes a while."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnx and onnxscript ({e}): pip install 'hieradet[export]' (in a checkout: "
            "pip install -e '.[export]')"
        ) from e


def export_features(
    model: nn.Module,
    fmt: str,
    output_dir: str,
    example_hw: Tuple[int, int] = (256, 256),
    min_size: Optional[int] = None,
    max_size: int = 1024,
) -> str:
    """Export the backbone features of ``model`` (see :class:`FeatureGraph`) and return the written path.

    Args:
        model: an eval-mode detectron2 meta-architecture.
        fmt: ``"onnx"`` (``DIR/model.onnx``, opset 18) or ``"torch_export"`` (``DIR/model.pt2``).
        output_dir: directory to write to (created).
        example_hw: size of the traced example; any size in range works, the file is dynamic.
        min_size: smallest side accepted (default: the coarsest stride, at least twice the size divisibility).
        max_size: largest side accepted (the config's padded size).
    """
    return export_graph(FeatureGraph(model).eval(), fmt, output_dir, example_hw, min_size, max_size)


def export_graph(
    graph: nn.Module,
    fmt: str,
    output_dir: str,
    example_hw: Tuple[int, int] = (256, 256),
    min_size: Optional[int] = None,
    max_size: int = 1024,
) -> str:
    """Export a per-image ``graph`` (:class:`FeatureGraph` or :class:`~hieradet.export.DetectorGraph`: a module
    taking one float32 ``(3, H, W)`` image, with ``size_divisibility``, ``square_size`` and ``output_names``) with
    dynamic H and W in ``[min_size, max_size]``; returns the written path. Arguments as :func:`export_features`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if graph.square_size:
        if max_size > graph.square_size:
            raise ValueError(
                f"max_size={max_size} exceeds the backbone's square_pad={graph.square_size}: detectron2 pads every "
                f"image to that square, so images must be at most {graph.square_size} px per side"
            )
    if min_size is None:
        min_size = getattr(graph, "min_size", 2 * graph.size_divisibility)
    if not (min_size <= min(example_hw) and max(example_hw) <= max_size):
        raise ValueError(f"example size {example_hw} must lie in [{min_size}, {max_size}]")
    example = torch.rand(3, *example_hw) * 255
    if fmt == "onnx":
        _require_onnx_exporter()
    ep = trace(graph, example, min_size, max_size)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILENAMES[fmt])
    if fmt == "torch_export":
        torch.export.save(ep, path)
    else:
        from torch.fx.experimental import _config as fx_config

        # the decompositions retrace the program
        with fx_config.patch(backed_size_oblivious=True), _nms_may_keep_fewer_than_two():
            onnx_program = torch.onnx.export(
                ep,
                (example,),
                dynamo=True,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=list(graph.output_names),
                optimize=True,
            )
        onnx_program.save(path)
    return path


class _OrtRunner:
    def __init__(self, path: str, max_size: Optional[int], min_size: int = 1):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - the export extra installs it
            raise ImportError(
                "running an ONNX file needs onnxruntime: pip install 'hieradet[export]' (in a checkout: "
                "pip install -e '.[export]')"
            ) from e
        opts = ort.SessionOptions()
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.max_size, self.min_size = max_size, min_size
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, image) -> List:
        check_image(image, self.max_size, self.min_size)
        arr = image.numpy() if isinstance(image, torch.Tensor) else image
        name = self.session.get_inputs()[0].name
        return [torch.from_numpy(o) for o in self.session.run(None, {name: arr})]


class _Pt2Runner:
    def __init__(self, path: str, max_size: Optional[int], min_size: int = 1):
        ep = torch.export.load(path)
        self.module = ep.module()
        lo, hi = input_range(ep, max_size)  # the program's own bounds: an image outside them is refused up front
        self.max_size, self.min_size = hi, max(min_size, lo)

    def __call__(self, image) -> List:
        check_image(image, self.max_size, self.min_size)
        image = torch.as_tensor(image)
        with torch.no_grad():
            return list(self.module(image))


def load_exported(path: str, max_size: Optional[int] = None, min_size: int = 1):
    """A callable running an exported ``model.onnx`` (onnxruntime, CPU) or ``model.pt2``: ``run(image)`` checks
    the image (:func:`check_image`) and returns the outputs as a list of tensors."""
    if path.endswith(".onnx"):
        return _OrtRunner(path, max_size, min_size)
    if path.endswith(".pt2"):
        return _Pt2Runner(path, max_size, min_size)
    raise ValueError(f"unknown exported file {path!r}: expected a .onnx or .pt2 file")


def compare_outputs(names: Sequence[str], exported: Sequence[torch.Tensor], eager: Sequence[torch.Tensor]) -> Dict:
    """Largest absolute difference per output; a shape mismatch is an error naming the output."""
    diffs = {}
    for name, a, b in zip(names, exported, eager):
        if tuple(a.shape) != tuple(b.shape):
            raise ExportError(f"output {name}: exported shape {tuple(a.shape)} != eager {tuple(b.shape)}")
        diffs[name] = float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    return diffs


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of one call."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def build_model(cfg, checkpoint: Optional[str] = None) -> nn.Module:
    """``cfg.model`` built with the layout of ``checkpoint`` and its weights loaded (as the demo does); eval mode.

    Raises ``FileNotFoundError`` for a missing file and ``hieradet.checkpoint.CheckpointError`` for weights that
    do not fit the config (another layout or model)."""
    from ..engine.predictor import LazyPredictor

    return LazyPredictor(cfg, checkpoint, "cpu").model.eval()


def export_model(
    cfg,
    checkpoint: Optional[str],
    fmt: str,
    output_dir: str,
    backbone_only: bool = False,
    max_size: Optional[int] = None,
    example_hw: Tuple[int, int] = (256, 256),
    min_size: Optional[int] = None,
) -> Tuple[str, nn.Module]:
    """Build ``cfg.model`` with ``checkpoint`` and export it; returns ``(path, model)``.

    The whole detector (:class:`~hieradet.export.DetectorGraph`: boxes, scores, classes[, masks]) by default, the
    backbone features (:class:`FeatureGraph`) with ``backbone_only=True``. ``max_size`` defaults to the config's
    test-time long edge (``ResizeShortestEdge.max_size``) rounded up to the size divisibility, else 1024;
    ``min_size`` to the graph's smallest side. The traced example is ``example_hw`` capped at ``max_size``.
    A model part the detector graph does not re-implement raises :class:`ExportError` naming it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    model = build_model(cfg, checkpoint)
    if max_size is None:
        max_size = config_max_size(cfg, model)
    if backbone_only:
        graph = FeatureGraph(model).eval()
    else:
        from .detector import DetectorGraph

        graph = DetectorGraph(model).eval()
    example_hw = tuple(min(int(s), max_size) for s in example_hw)
    path = export_graph(graph, fmt, output_dir, example_hw=example_hw, min_size=min_size, max_size=max_size)
    return path, model


def config_max_size(cfg, model: nn.Module) -> int:
    """The largest image side the test augmentation produces, rounded up to the backbone's size divisibility."""
    size = 1024
    try:
        for aug in cfg.dataloader.test.mapper.augmentations:
            size = int(aug.get("max_size", 0) or aug.get("short_edge_length", 0) or size)
    except (AttributeError, KeyError, TypeError):
        pass
    d, square = _divisibility(model.backbone)
    return square or (size + d - 1) // d * d


def read_test_image(cfg, model: nn.Module, path: str) -> torch.Tensor:
    """An image file as the exported graph takes it: read in the model's ``input_format``, resized by the config's
    test augmentation, as a float32 (3, H, W) tensor."""
    import detectron2.data.transforms as T
    from detectron2.config import instantiate
    from detectron2.data.detection_utils import read_image

    fmt = getattr(model, "input_format", "BGR")
    image = read_image(path, format=fmt)
    augs = None
    try:
        augs = cfg.dataloader.test.mapper.augmentations
    except (AttributeError, KeyError):
        pass
    aug = T.AugmentationList(instantiate(augs) if augs is not None else [T.ResizeShortestEdge(800, 1333)])
    inp = T.AugInput(image)
    aug(inp)
    return torch.as_tensor(inp.image.astype("float32").transpose(2, 0, 1).copy())


def compare_detections(exported: Sequence[torch.Tensor], eager) -> Dict[str, float]:
    """Differences between an exported detector's outputs ``(boxes, scores, classes[, masks])`` and detectron2's
    ``Instances`` for the same image: ``n_exported``, ``n_eager``, and when the counts agree the largest ``boxes``
    and ``scores`` differences, the number of differing ``classes`` and the smallest per-instance ``mask_iou``."""
    n, m = int(exported[0].shape[0]), len(eager)
    diffs = {"n_exported": float(n), "n_eager": float(m)}
    if n != m:
        return diffs
    diffs["boxes"] = float((exported[0] - eager.pred_boxes.tensor).abs().max()) if n else 0.0
    diffs["scores"] = float((exported[1] - eager.scores).abs().max()) if n else 0.0
    diffs["classes"] = float((exported[2] != eager.pred_classes).sum())
    if len(exported) > 3 and eager.has("pred_masks"):
        a, b = exported[3].bool().flatten(1), eager.pred_masks.bool().flatten(1)
        union = (a | b).sum(1)
        iou = torch.where(union > 0, (a & b).sum(1) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float))
        diffs["mask_iou"] = float(iou.min()) if n else 1.0
    return diffs


def describe_detection_diffs(diffs: Dict[str, float]) -> str:
    """One line for a :func:`compare_detections` result."""
    n, m = int(diffs["n_exported"]), int(diffs["n_eager"])
    if n != m:
        return f"MISMATCH: {n} exported detections, {m} eager"
    text = (
        f"{n} detections as eager; max |boxes diff| {diffs['boxes']:.3g} px, max |scores diff| {diffs['scores']:.3g}, "
        f"{int(diffs['classes'])} classes differ"
    )
    return text + (f", smallest mask IoU {diffs['mask_iou']:.4f}" if "mask_iou" in diffs else "")


def check_exported(
    path, model: nn.Module, images: Sequence[torch.Tensor], max_size: Optional[int] = None, detector: bool = False
):
    """Run the exported file (a path, or a runner from :func:`load_exported`) and the eager model on ``images``;
    returns one dict of differences per image: per feature map (:func:`compare_outputs`) for a backbone file,
    :func:`compare_detections` against ``model([{"image": image}])`` for a whole-detector file (``detector=True``;
    the eager output size is the input size, so nothing is rescaled)."""
    run = load_exported(path, max_size) if isinstance(path, str) else path
    results = []
    if detector:
        for image in images:
            with torch.no_grad():
                eager = model([{"image": image}])[0]["instances"]
            results.append(compare_detections(run(image), eager))
        return results
    graph = FeatureGraph(model).eval()
    for image in images:
        with torch.no_grad():
            eager = graph(image)
        results.append(compare_outputs(graph.output_names, run(image), eager))
    return results
