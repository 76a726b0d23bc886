"""Parameter and multiply-add counts (fvcore), per module and in total, as detectron2's ``analyze_model``.

fvcore calls a multiply-add a "flop"; we report GMACs and use GFLOP = 2 x GMACs where a rate is computed.
Elementwise ops (adds, softmax, activations) are not counted, as in detectron2. ``scaled_dot_product_attention``,
which fvcore does not know, is counted as its two matrix products (``L_q x L_k x (d_qk + d_v)`` per head), so
SDPA models and models with explicit attention matmuls (detectron2's ViT) count the same. Whole detectors depend
on the input (proposals, detections): they are counted for one image in eval mode.
"""

from collections import Counter
from typing import Dict, Sequence

import torch

from .models import Benchmarked

__all__ = ["count_flops", "count_params", "sdpa_flop_jit", "depth_table", "IGNORED_OPS"]

# elementwise / bookkeeping ops that are not counted (detectron2's list plus ops our models use)
IGNORED_OPS = (
    "aten::add",
    "aten::add_",
    "aten::argmax",
    "aten::argsort",
    "aten::batch_norm",
    "aten::constant_pad_nd",
    "aten::div",
    "aten::div_",
    "aten::exp",
    "aten::gelu",
    "aten::gelu_",
    "aten::log2",
    "aten::max_pool2d",
    "aten::maximum",
    "aten::meshgrid",
    "aten::mul",
    "aten::mul_",
    "aten::neg",
    "aten::nonzero_numpy",
    "aten::reciprocal",
    "aten::repeat_interleave",
    "aten::rsub",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::softmax",
    "aten::sort",
    "aten::sqrt",
    "aten::sub",
    "aten::pad",
    "aten::tile",
    "aten::unflatten",
    "aten::upsample_bicubic2d",
    "torchvision::nms",
)


def _shape(value) -> Sequence[int]:
    return value.type().sizes()


def sdpa_flop_jit(inputs, outputs) -> int:
    """Multiply-adds of ``aten::scaled_dot_product_attention``: ``q @ k^T`` plus ``attn @ v``."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    lq, dqk = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return batch * lq * lk * (dqk + dv)


def _analysis(model: Benchmarked):
    from fvcore.nn import FlopCountAnalysis

    inputs = model.inputs(1, torch.device("cpu"))
    module = model.module.cpu().eval()
    if model.kind == "model":
        from detectron2.utils.analysis import FlopCountAnalysis as D2FlopCountAnalysis

        analysis = D2FlopCountAnalysis(module, inputs)
    else:
        analysis = FlopCountAnalysis(module, (inputs,))
    analysis.set_op_handle(**{k: None for k in IGNORED_OPS})
    analysis.set_op_handle(**{"aten::scaled_dot_product_attention": sdpa_flop_jit})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def count_flops(model: Benchmarked, batch: int = 1) -> Dict[str, object]:
    """Multiply-adds for ``batch`` images: ``total``, ``by_module`` and ``by_operator`` (and the ops skipped)."""
    analysis = _analysis(model)
    with torch.no_grad():
        total = analysis.total()
        by_module = dict(analysis.by_module())
        by_op = dict(analysis.by_operator())
        skipped = dict(Counter(analysis.unsupported_ops()))
    return {
        "total": total * batch,
        "by_module": {k: v * batch for k, v in by_module.items()},
        "by_operator": {k: v * batch for k, v in by_op.items()},
        "unsupported": skipped,
    }


def count_params(module: torch.nn.Module) -> Dict[str, int]:
    """Parameters per module prefix (``""`` is the total), as fvcore's ``parameter_count``."""
    from fvcore.nn import parameter_count

    return dict(parameter_count(module))


def depth_table(values: Dict[str, float], depth: int, scale: float, unit: str) -> str:
    """The entries of ``values`` (keyed by module prefix) down to ``depth`` dots, one per line, divided by ``scale``."""
    rows = [(k or "(total)", v) for k, v in values.items() if (k.count(".") + 1 if k else 0) <= depth]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:{width}s} {v / scale:12.3f} {unit}" for k, v in rows)
