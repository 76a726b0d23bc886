"""Where one inference forward spends its time, op by op (``tools/benchmark.py --profile N``)."""

from typing import Dict, List

import torch

from .models import Benchmarked
from .timing import _autocast, _sync

__all__ = ["profile_inference"]


def profile_inference(
    model: Benchmarked, batch: int = 1, device: str = "cpu", dtype: str = "fp32", top: int = 15
) -> List[Dict]:
    """The ``top`` (op, input shapes) pairs of one inference forward by self time, after one untimed forward.

    Returns dicts with ``op``, ``shapes`` (the inputs' shapes), ``calls``, ``self_ms`` and ``share`` (of the
    forward's total self time). Self time is the op's own time without the ops it calls; on the CPU the page
    faults of a fresh output are charged to the op that first writes it (often ``aten::copy_`` inside
    ``aten::addmm``, which writes the bias before the product).
    """
    from torch.profiler import ProfilerActivity, profile

    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    dev = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    model.module.to(dev).eval()
    inputs = model.inputs(batch, dev)
    with torch.inference_mode(), _autocast(dev, dtype):
        model.forward(inputs)
        _sync(dev)
        with profile(activities=activities, record_shapes=True) as prof:
            model.forward(inputs)
            _sync(dev)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "shapes": [list(s) for s in e.input_shapes if s],
            "calls": e.count,
            "self_ms": e.self_cpu_time_total / 1000.0,
            "share": e.self_cpu_time_total / total,
        }
        for e in rows
    ]
