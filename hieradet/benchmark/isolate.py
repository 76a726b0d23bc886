"""``--isolate``: every model timed in fresh processes of its own, one after another, in rounds.

It exists because the allocator state one model leaves behind slows the next one down: on the 2-core development
machine detectron2's ViTDet-B backbone took 12.8 s alone but 16.0-19.3 s alternating with another backbone in one
process (its relpos tensors are hundreds of MB, allocated afresh in every block).
"""

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence, Tuple

__all__ = ["CHILD_SETTINGS", "child_settings", "isolated_times", "time_in_this_process"]

# the settings a child process needs to time one model like the parent would
CHILD_SETTINGS = (
    "part", "size", "batch", "dtype", "device", "iters", "warmup", "discard", "threads", "timer", "seed",
    "no_full_detections", "opts", "model", "weights",
)  # fmt: skip


def child_settings(args) -> Dict[str, object]:
    """The :data:`CHILD_SETTINGS` of parsed command-line ``args`` (an ``argparse.Namespace``), as a dict."""
    return {k: getattr(args, k, None) for k in CHILD_SETTINGS}


def time_in_this_process(spec: str, settings: Dict[str, object]) -> Dict[str, object]:
    """Builds ``spec`` and times its inference as ``settings`` say; the first ``discard`` fraction is dropped.
    Returns ``{"pid", "times_ms", "median_ms"}`` (per image)."""
    import torch

    from .models import build
    from .timing import summarize, time_inference

    s = settings
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])
    weights = s.get("weights") if spec == s.get("model") else None  # --weights belong to the first model
    model = build(spec, s["part"], s["size"], s["opts"], not s["no_full_detections"], weights)
    (times,) = time_inference([model], s["batch"], s["iters"], s["warmup"], s["device"], s["dtype"], s["timer"])
    kept = times[int(len(times) * s["discard"]) :]
    return {
        "pid": os.getpid(),
        "times_ms": [1000.0 * t / s["batch"] for t in kept],
        "median_ms": summarize(times, s["batch"], s["discard"])["median_ms"],
    }


def isolated_times(specs: Sequence[str], args, log=print) -> Tuple[List[List[float]], List[List[int]]]:
    """Seconds per kept iteration of each model, every model timed in ``args.rounds`` fresh processes.

    Round ``r`` runs one process per model, in turn; each process warms up, times ``args.iters`` iterations and
    drops its own first ``args.discard`` fraction. The kept times of all rounds are pooled. Returns the pooled
    times and, per model, the ids of the processes that timed it.
    """
    settings = json.dumps(child_settings(args))
    pooled: List[List[float]] = [[] for _ in specs]
    pids: List[List[int]] = [[] for _ in specs]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, spec in enumerate(specs):
                out = os.path.join(tmp, f"{r}_{k}.json")
                cmd = [sys.executable, "-m", "hieradet.benchmark.isolated_child", spec, out, settings]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                    raise RuntimeError(f"--isolate: the process timing {spec!r} failed:\n" + "\n".join(tail))
                with open(out) as f:
                    child = json.load(f)
                pids[k].append(child["pid"])
                pooled[k].extend(t * args.batch / 1000.0 for t in child["times_ms"])
                log(f"  round {r + 1}/{args.rounds}  {spec:24s} {child['median_ms']:10.1f} ms/im (own process)")
    return pooled, pids
