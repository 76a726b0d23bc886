"""Timing and memory: alternating inference, training steps, peak memory, the machine's matmul rate.

Method (Ryali et al. 2023 "Hiera", App. A.4): warm-up iterations, then timed iterations, the models alternating
iteration by iteration; the first ``discard`` fraction (25%) of the timed iterations is thrown away and the median
and interquartile spread of the rest are reported per image.
"""

import contextlib
import os
import resource
import statistics
import threading
import time
from typing import Callable, Dict, List, Sequence

import torch

from .models import Benchmarked

__all__ = ["summarize", "time_inference", "time_training", "PeakRSS", "matmul_peak", "training_loss"]


def summarize(times: Sequence[float], batch: int = 1, discard: float = 0.25) -> Dict[str, float]:
    """Per-image statistics (ms) of iteration ``times`` (s), the first ``discard`` fraction dropped."""
    if not times:
        raise ValueError("no timed iterations")
    if not 0 <= discard < 1:
        raise ValueError(f"discard must be in [0, 1), got {discard}")
    kept = list(times)[int(len(times) * discard) :]
    ms = sorted(t * 1000.0 / batch for t in kept)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p25_ms": q[0],
        "p75_ms": q[2],
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(timer: str) -> Callable[[], float]:
    if timer == "wall":
        return time.perf_counter
    if timer == "cpu":
        return time.process_time
    raise ValueError(f"timer must be 'wall' or 'cpu', got {timer!r}")


def _autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype)
    if amp is None:
        raise ValueError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
    return torch.autocast(device_type=device.type, dtype=amp)


def time_inference(
    models: Sequence[Benchmarked],
    batch: int = 1,
    iters: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    dtype: str = "fp32",
    timer: str = "wall",
) -> List[List[float]]:
    """Seconds per iteration for each model, the models alternating iteration by iteration."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    dev = torch.device(device)
    clock = _clock(timer)
    inputs = []
    for m in models:
        m.module.to(dev).eval()
        inputs.append(m.inputs(batch, dev))
    times: List[List[float]] = [[] for _ in models]
    with torch.inference_mode(), _autocast(dev, dtype):
        for it in range(warmup + iters):
            for k, m in enumerate(models):
                _sync(dev)
                t0 = clock()
                m.forward(inputs[k])
                _sync(dev)
                if it >= warmup:
                    times[k].append(clock() - t0)
    return times


class PeakRSS:
    """Context manager sampling this process's resident set every ``interval`` s; ``peak`` is the growth over
    the resident set at entry (bytes)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        """This process's resident set now (bytes; not Linux: the lifetime high-water mark)."""
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.start)
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss() - self.start)


def training_loss(out) -> torch.Tensor:
    """One scalar from a model output: the sum of a detector's loss dict, or of a backbone's features."""
    if isinstance(out, dict):
        vals = list(out.values())
    elif isinstance(out, (list, tuple)):
        vals = list(out)
    else:
        vals = [out]
    return sum(v.float().sum() if v.dim() > 0 else v.float() for v in vals)


def time_training(
    model: Benchmarked,
    batch: int = 1,
    iters: int = 4,
    warmup: int = 1,
    device: str = "cpu",
    dtype: str = "fp32",
    timer: str = "wall",
) -> Dict[str, object]:
    """Forward + backward + AdamW step: seconds per iteration and peak memory (bytes; CUDA: allocated, CPU:
    resident-set growth sampled during the run).

    The steps run inside a detectron2 ``EventStorage`` (its ``iter`` set to each step), as in detectron2's
    trainers: a detector's RPN and ROI heads log training statistics to it and fail outside one.
    """
    from detectron2.utils.events import EventStorage

    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    dev = torch.device(device)
    clock = _clock(timer)
    m = model.module.to(dev).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.0)
    inputs = model.inputs(batch, dev, train=True)
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with PeakRSS() as rss, EventStorage(0) as storage:
        for it in range(warmup + iters):
            storage.iter = it
            _sync(dev)
            t0 = clock()
            with _autocast(dev, dtype):
                loss = training_loss(m(inputs))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(dev)
            if it >= warmup:
                times.append(clock() - t0)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else rss.peak
    m.eval()
    return {"times": times, "peak_mem_bytes": int(peak)}


def matmul_peak(device: str = "cpu", n: int = 2048, iters: int = 20, dtype: str = "fp32") -> float:
    """Best matmul rate of ``n x n`` matrices in ``dtype``, GFLOP/s (2 FLOPs per multiply-add)."""
    dev = torch.device(device)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    a = torch.randn(n, n, device=dev, dtype=dt)
    b = torch.randn(n, n, device=dev, dtype=dt)
    best = float("inf")
    for _ in range(iters + 1):
        _sync(dev)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9
