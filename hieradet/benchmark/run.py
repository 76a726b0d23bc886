"""One benchmark run as ``tools/benchmark.py`` makes it: build the models, time them, count, compare, save."""

import json
import os
import platform
import tempfile
import time
from typing import Dict, Optional

import torch

from .flops import count_flops
from .isolate import isolated_times
from .models import build
from .profile import profile_inference
from .runtimes import with_runtimes
from .timing import matmul_peak, summarize, time_inference, time_training

__all__ = ["run_benchmark", "machine_description"]


def machine_description(device: str) -> str:
    """The GPU's name, or the CPU model with its logical CPUs and torch's thread count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"


def _fmt(s: Dict[str, float]) -> str:
    return f"{s['median_ms']:10.1f} ms/im  [p25 {s['p25_ms']:.1f}, p75 {s['p75_ms']:.1f}]  n={s['n']}"


def run_benchmark(args, command: str = "", log=print) -> dict:
    """Runs the benchmark ``args`` describe (the options of ``tools/benchmark.py``, as an ``argparse.Namespace``:
    ``model``, ``compare``, ``part``, ``size``, ``batch``, ``dtype``, ``device``, ``iters``, ``warmup``, ``discard``,
    ``threads``, ``timer``, ``seed``, ``train``, ``flops``, ``matmul_peak``, ``no_full_detections``, ``opts``,
    ``weights`` (optional), ``isolate``, ``rounds``, ``profile`` (optional), ``runtimes`` and ``compile_backend``
    (optional), ``json``) and returns the results; writes them to ``args.json`` if set."""
    runtimes = list(getattr(args, "runtimes", None) or ["eager"])
    if runtimes != ["eager"] and (args.train or args.isolate):
        raise ValueError("--runtimes times inference in this process: it cannot be combined with --train or --isolate")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    specs = [args.model] + list(args.compare)
    weights = [getattr(args, "weights", None)] + [None] * len(args.compare)  # --weights: the first model's
    models = [build(s, args.part, args.size, args.opts, not args.no_full_detections, w) for s, w in zip(specs, weights)]
    workdir = tempfile.TemporaryDirectory(prefix="hieradet_runtimes_")  # exported files, removed at the end
    if runtimes != ["eager"]:
        models = with_runtimes(models, runtimes, workdir.name, getattr(args, "compile_backend", "inductor"))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_description(args.device),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "pid": os.getpid(),
        "torch": torch.__version__,
        "command": command,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "models": [],
    }
    log(f"{result['date']}  {result['machine']}  load {result['load_avg']}")
    log(f"part={args.part} size={args.size} batch={args.batch} dtype={args.dtype} device={args.device}")
    if args.matmul_peak:
        result["matmul_gflops"] = matmul_peak(args.device, dtype=args.dtype)
        log(f"matmul peak: {result['matmul_gflops']:.1f} GFLOP/s")
    if args.train:
        for m in models:
            r = time_training(m, args.batch, args.iters, args.warmup, args.device, args.dtype, args.timer)
            s = summarize(r["times"], 1, args.discard)
            entry = {"name": m.name, "it_per_s": 1000.0 / s["median_ms"], "iter": s}
            entry["peak_mem_mb"] = r["peak_mem_bytes"] / 2**20
            result["models"].append(entry)
            log(f"{m.name:28s} {entry['it_per_s']:.3f} it/s  peak mem {entry['peak_mem_mb']:.0f} MiB  ({_fmt(s)})")
    else:
        if args.isolate:  # the timings come from child processes; the models built here give parameters and FLOPs
            times, pids = isolated_times(specs, args, log=log)
        else:
            times = time_inference(models, args.batch, args.iters, args.warmup, args.device, args.dtype, args.timer)
        for k, (m, t) in enumerate(zip(models, times)):
            entry = {"name": m.name, "params_m": sum(p.numel() for p in m.module.parameters()) / 1e6}
            # --isolate: the discard was applied in each process; the pooled rest is summarised as is
            entry.update(summarize(t, args.batch, 0.0 if args.isolate else args.discard))
            entry["times_ms"] = [1000.0 * x / args.batch for x in t]
            if args.isolate:
                entry["pids"] = pids[k]
            result["models"].append(entry)
            log(f"{m.name:28s} {_fmt(entry)}  {entry['params_m']:.2f}M params")
        if args.flops:
            for m, entry in zip(models, result["models"]):
                _add_flops(m, entry, result.get("matmul_gflops"), log)
        if getattr(args, "profile", 0):
            for m, entry in zip(models, result["models"]):
                entry["profile"] = profile_inference(m, args.batch, args.device, args.dtype, args.profile)
                log(f"{m.name}: top {args.profile} ops of one forward by self time")
                for r in entry["profile"]:
                    shapes = " ".join("x".join(map(str, s)) for s in r["shapes"])
                    log(f"  {100 * r['share']:5.1f}% {r['self_ms']:9.1f} ms {r['calls']:4d}x {r['op']:40s} {shapes}")
    base = result["models"][0]
    for other in result["models"][1:]:
        if args.train:
            ratio = base["it_per_s"] / other["it_per_s"]
        else:
            ratio = other["median_ms"] / base["median_ms"]
        other["ratio_vs_first"] = ratio
        log(f"{other['name']} / {base['name']}: {ratio:.3f}x the time of {base['name']}")
    workdir.cleanup()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _add_flops(model, entry: dict, matmul_gflops: Optional[float], log) -> None:
    gmacs = count_flops(model, batch=1)["total"] / 1e9
    entry["gmacs"] = gmacs
    entry["achieved_gflops"] = 2 * gmacs / (entry["median_ms"] / 1000.0)
    line = f"{model.name:28s} {gmacs:.1f} GMACs/im -> {entry['achieved_gflops']:.1f} GFLOP/s"
    if matmul_gflops:
        entry["fraction_of_matmul_peak"] = entry["achieved_gflops"] / matmul_gflops
        line += f" = {100 * entry['fraction_of_matmul_peak']:.0f}% of matmul peak"
    log(line)
