"""The same model in other runtimes, timed beside eager: ``torch.compile``, a ``torch.export`` program (``.pt2``)
and an ONNX file in onnxruntime.

A detector (``part="model"``) is exported whole (:class:`hieradet.export.DetectorGraph`: one float32 ``(3, H, W)``
image in, boxes / scores / classes / masks out), a backbone as itself; both with dynamic height and width, as
``tools/export_model.py`` writes them. Each runtime's rows take the very images the eager row takes (the inputs are
generated from the same seed), so the rows differ only in how the network runs.
"""

import os
from typing import List, Sequence

import torch
from torch import nn

from .models import Benchmarked

__all__ = ["RUNTIMES", "with_runtime", "with_runtimes"]

RUNTIMES = ("eager", "compiled", "torch_export", "onnxruntime")


class _BackboneGraph(nn.Module):
    """A bare backbone as an exportable per-image graph: one ``(3, H, W)`` image in, its features (name order) out."""

    def __init__(self, backbone: nn.Module, size_divisibility: int):
        super().__init__()
        self.backbone = backbone
        self.size_divisibility, self.square_size, self.min_size = size_divisibility, 0, size_divisibility
        with torch.no_grad():
            names = backbone(torch.zeros(1, 3, 2 * size_divisibility, 2 * size_divisibility))
        self.output_names = sorted(names) if isinstance(names, dict) else ["features"]

    def forward(self, image: torch.Tensor):
        out = self.backbone(image[None])
        return tuple(out[k] for k in self.output_names) if isinstance(out, dict) else (out,)


class _Compiled(Benchmarked):
    def __init__(self, m: Benchmarked, backend: str):
        super().__init__(f"{m.name} [compiled:{backend}]", m.module, m.kind, m.img_size)
        target = getattr(m.module, "backbone", None) if m.kind == "model" else None
        # a detector: only its backbone is compiled (what ``train.compile`` does); the heads' data-dependent
        # post-processing stays eager
        if target is not None:
            m.module.backbone = torch.compile(target, backend=backend, dynamic=True)
            self._forward = m.module.forward
        else:
            self._forward = torch.compile(m.module, backend=backend, dynamic=True)

    def forward(self, inputs):
        return self._forward(inputs)


class _Exported(Benchmarked):
    """Runs an exported file per image, through :func:`hieradet.export.load_exported`."""

    def __init__(self, m: Benchmarked, runtime: str, workdir: str):
        from hieradet.export import DetectorGraph, export_graph, load_exported

        super().__init__(f"{m.name} [{runtime}]", m.module, m.kind, m.img_size)
        model = m.module.eval()
        if m.kind == "model":
            graph = DetectorGraph(model)
        else:
            div = int(getattr(model, "size_divisibility", 0) or 32)
            graph = _BackboneGraph(model, div)
        fmt = "onnx" if runtime == "onnxruntime" else "torch_export"
        out = os.path.join(workdir, f"{len(os.listdir(workdir)) if os.path.isdir(workdir) else 0}_{fmt}")
        example = min(256, m.img_size)
        path = export_graph(graph, fmt, out, example_hw=(example, example), max_size=m.img_size)
        self.path = path
        self._run = load_exported(path, max_size=m.img_size, min_size=getattr(graph, "min_size", 1))

    def forward(self, inputs):
        if self.kind == "model":
            return [self._run(item["image"]) for item in inputs]
        return [self._run(image) for image in inputs]


def with_runtime(m: Benchmarked, runtime: str, workdir: str, compile_backend: str = "inductor") -> Benchmarked:
    """``m`` run by ``runtime`` (one of :data:`RUNTIMES`); exported files are written under ``workdir``.

    ``"compiled"`` compiles a new copy's forward (a detector's backbone only) with ``compile_backend``; the export
    runtimes export ``m``'s network with its current weights and score thresholds."""
    if runtime == "eager":
        return m
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    import copy

    clone = Benchmarked(m.name, copy.deepcopy(m.module).eval(), m.kind, m.img_size)
    if runtime == "compiled":
        return _Compiled(clone, compile_backend)
    return _Exported(clone, runtime, workdir)


def with_runtimes(
    models: Sequence[Benchmarked], runtimes: Sequence[str], workdir: str, compile_backend: str = "inductor"
) -> List[Benchmarked]:
    """Each model in each runtime, in that order (model 1 eager, model 1 compiled, ..., model 2 eager, ...)."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; choose from {RUNTIMES}")
    return [with_runtime(m, r, workdir, compile_backend) for m in models for r in runtimes]
