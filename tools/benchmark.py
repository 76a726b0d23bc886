#!/usr/bin/env python
"""Inference / training speed of backbones and whole detectors, side by side in one process.

Models are named presets or LazyConfig files:

* ``hieradet-{t,s,b,b+,l,h}``: our HieraDet (``hieradet_kwargs``), relpos on the global blocks;
* ``vitdet-{b,l,h}``: our fixed ViTDet (``vit_kwargs``: abs-win embedding, relpos on global blocks);
* ``d2-vitdet-{b,l,h}``: detectron2's own ``detectron2.modeling.ViT`` with its published ViTDet recipe
  (relpos in every block, window 14, interpolated embedding); ``d2-vitdet-b-norelpos``: the same
  without relpos;
* ``sam2-hiera-{t,s,b,b+,l}``: SAM 2's ``Hiera`` trunk (windows 8, 4, 14, 7 and the same global blocks;
  no relpos);
* ``path/to/config.py``: ``model`` of a LazyConfig (``key=value`` overrides with ``--opts``).

``--part backbone`` (default) times the bottom-up network (``model.backbone.bottom_up`` /
``model.backbone.net`` of a config); ``--part model`` times the whole detector (a preset becomes a
Mask R-CNN: ours from ``configs/common/models/mask_rcnn_{hieradet,vitdet}.py``, ``d2-vitdet-*`` from
detectron2's own ``common/models/mask_rcnn_vitdet.py``). Whole-model inference uses a score threshold
of 0, so every image goes through the mask head with the full 100 detections (random weights would
otherwise make the detection count, and so the time, arbitrary).

Method (Hiera / abs-win paper, App. A.4): warm-up iterations, then ``--iters`` timed iterations per model,
the models alternating iteration by iteration; the first ``--discard`` fraction (25%) of the timed
iterations is thrown away; the median and the interquartile spread of the rest are reported per image.
With ``--compare`` the ratio of medians (other / first) is printed.

``--isolate`` runs every model in a fresh process of its own instead, one after another, ``--rounds``
times (the models in turn within each round, as the alternation above but across processes); the
timed iterations kept from every round are pooled. It exists because the allocator state one model
leaves behind slows the next one down: on the 2-core development machine detectron2's ViTDet-B backbone
took 12.8 s alone but 16.0-19.3 s alternating with another backbone in one process (its relpos tensors
are hundreds of MB, allocated afresh in every block). Comparisons in the docs are quoted both ways.
``--train`` times forward + backward
+ an AdamW step instead and reports iterations/s and peak memory (CUDA: allocated; CPU: resident set
growth sampled during the run). ``--flops`` adds the achieved GFLOP/s (fvcore counts of
``tools/analyze_model.py``; 1 multiply-add = 2 FLOPs) and ``--matmul-peak`` this machine's sgemm rate.

``python tools/benchmark.py report A.json [B.json ...]`` prints the saved results as a markdown table
and ``python tools/benchmark.py plot A.json [B.json ...] --out speed.png`` plots ms/image against
parameters (backbone results; one point per model and file).

Examples::

    python tools/benchmark.py hieradet-b --compare sam2-hiera-b d2-vitdet-b --size 1024 --iters 8
    python tools/benchmark.py configs/COCO/mask_rcnn_hieradet_b_100ep.py --part model --compare d2-vitdet-b
    python tools/benchmark.py hieradet-t --size 256 --batch 2 --train --iters 4
"""

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "PRESETS",
    "build_backbone",
    "build",
    "Benchmarked",
    "summarize",
    "isolated_times",
    "child_argv",
    "time_inference",
    "time_training",
    "matmul_peak",
    "markdown_table",
    "plot_results",
    "main",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HIERA = {"t": "T", "s": "S", "b": "B", "b+": "B+", "l": "L", "h": "H"}
_VIT = {"b": "B", "l": "L", "h": "H"}
# SAM 2's trunk sizes (sam2 configs): embed, heads, stages, global blocks, windows, background embedding
_SAM2 = {
    "t": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
    "s": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "b": dict(embed_dim=96, num_heads=1, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20)),
    "b+": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20)),
    "l": dict(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
    ),
}

PRESETS = (
    [f"hieradet-{s}" for s in _HIERA]
    + [f"vitdet-{s}" for s in _VIT]
    + [f"d2-vitdet-{s}" for s in _VIT]
    + ["d2-vitdet-b-norelpos"]
    + [f"sam2-hiera-{s}" for s in _SAM2]
)


def _d2_vit_kwargs(size: str, img_size: int, use_rel_pos: bool = True) -> dict:
    from hieradet.modeling.vit import VIT_SIZES

    p = VIT_SIZES[size]
    return dict(
        img_size=img_size,
        patch_size=16,
        embed_dim=p["embed_dim"],
        depth=p["depth"],
        num_heads=p["num_heads"],
        drop_path_rate=p["drop_path_rate"],
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        window_block_indexes=[i for i in range(p["depth"]) if i not in p["global_blocks"]],
        residual_block_indexes=[],
        use_rel_pos=use_rel_pos,
        out_feature="last_feat",
    )


def _parse_preset(name: str):
    name = name.lower()
    for prefix, table in (("hieradet-", _HIERA), ("vitdet-", _VIT), ("sam2-hiera-", _SAM2)):
        if name.startswith(prefix) and name[len(prefix) :] in table:
            return prefix[:-1], name[len(prefix) :]
    if name.startswith("d2-vitdet-"):
        rest = name[len("d2-vitdet-") :]
        if rest in _VIT:
            return "d2-vitdet", rest
        if rest == "b-norelpos":
            return "d2-vitdet-norelpos", "b"
    presets = ", ".join(PRESETS)
    raise ValueError(f"unknown model {name!r}: not a .py LazyConfig file and not a preset ({presets})")


def build_backbone(name: str, img_size: int = 1024) -> nn.Module:
    """The bottom-up network of preset ``name`` (random init), sized for ``img_size`` images."""
    family, size = _parse_preset(name)
    if family == "hieradet":
        from hieradet.modeling import HieraDet, hieradet_kwargs

        return HieraDet(**hieradet_kwargs(_HIERA[size], img_size=img_size))
    if family == "vitdet":
        from hieradet.modeling.vit import ViT, vit_kwargs

        return ViT(**vit_kwargs(_VIT[size], img_size=img_size))
    if family.startswith("d2-vitdet"):
        from detectron2.modeling import ViT as D2ViT

        return D2ViT(**_d2_vit_kwargs(_VIT[size], img_size, use_rel_pos=family == "d2-vitdet"))
    try:
        from sam2.modeling.backbones.hieradet import Hiera
    except ImportError as e:
        raise ImportError(f"{name} needs the `sam2` package (pip install sam2==1.1.0 --no-deps)") from e
    kw = dict(window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(14, 14))
    kw.update(_SAM2[size])
    return Hiera(**kw)


def _model_config(name: str, img_size: int):
    """LazyConfig ``model`` node of a whole Mask R-CNN for preset ``name``."""
    from detectron2 import model_zoo
    from detectron2.config import LazyConfig

    family, size = _parse_preset(name)
    if family == "hieradet":
        from hieradet.modeling import hieradet_kwargs

        model = LazyConfig.load(os.path.join(REPO, "configs/common/models/mask_rcnn_hieradet.py")).model
        model.backbone.bottom_up.update(hieradet_kwargs(_HIERA[size], img_size=img_size))
        model.backbone.square_pad = img_size
    elif family == "vitdet":
        from hieradet.modeling.vit import vit_kwargs

        model = LazyConfig.load(os.path.join(REPO, "configs/common/models/mask_rcnn_vitdet.py")).model
        model.backbone.net.update(vit_kwargs(_VIT[size], img_size=img_size))
        model.backbone.square_pad = img_size
    elif family.startswith("d2-vitdet"):
        model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
        model.backbone.net.update(_d2_vit_kwargs(_VIT[size], img_size, use_rel_pos=family == "d2-vitdet"))
        model.backbone.square_pad = img_size
    else:
        raise ValueError(f"{name}: SAM 2's trunk has no detection config; use it with --part backbone")
    return model


def _load_config_model(path: str, opts: Sequence[str]):
    from detectron2.config import LazyConfig

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    cfg = LazyConfig.load(path)
    if opts:
        cfg = LazyConfig.apply_overrides(cfg, list(opts))
    if "model" not in cfg:
        raise KeyError(f"config {path!r} defines no `model`")
    return cfg.model


def _bottom_up(model: nn.Module) -> nn.Module:
    backbone = getattr(model, "backbone", model)
    for attr in ("bottom_up", "net"):
        if hasattr(backbone, attr):
            return getattr(backbone, attr)
    return backbone


class Benchmarked:
    """A model ready to time: ``run(batch)`` does one inference (or training) iteration."""

    def __init__(self, name: str, module: nn.Module, kind: str, img_size: int):
        self.name, self.module, self.kind, self.img_size = name, module, kind, img_size

    def inputs(self, batch: int, device: torch.device, train: bool = False, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        s = self.img_size
        if self.kind == "backbone":
            return torch.randn(batch, 3, s, s, generator=g).to(device)
        from detectron2.structures import BitMasks, Boxes, Instances

        items = []
        for _ in range(batch):
            item = {"image": (torch.rand(3, s, s, generator=g) * 255).to(device), "height": s, "width": s}
            if train:
                n = 4
                xy = torch.rand(n, 2, generator=g) * s * 0.6
                wh = torch.rand(n, 2, generator=g) * s * 0.3 + 16
                boxes = torch.cat([xy, xy + wh], 1)
                masks = torch.zeros(n, s, s, dtype=torch.bool)
                for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                    masks[i, y0:y1, x0:x1] = True
                inst = Instances((s, s))
                inst.gt_boxes = Boxes(boxes)
                inst.gt_classes = torch.randint(0, 80, (n,), generator=g)
                inst.gt_masks = BitMasks(masks)
                item["instances"] = inst.to(device)
            items.append(item)
        return items

    def forward(self, inputs):
        return self.module(inputs)


def build(
    spec: str,
    part: str = "backbone",
    img_size: int = 1024,
    opts: Sequence[str] = (),
    full_detections: bool = True,
) -> Benchmarked:
    """Build preset or LazyConfig ``spec`` as a backbone (``part="backbone"``) or a whole detector."""
    from detectron2.config import instantiate

    if part not in ("backbone", "model"):
        raise ValueError(f"part must be 'backbone' or 'model', got {part!r}")
    if spec.endswith(".py"):
        cfg = _load_config_model(spec, opts)
        model = instantiate(cfg)
    elif part == "backbone":
        return Benchmarked(spec, build_backbone(spec, img_size), "backbone", img_size)
    else:
        model = instantiate(_model_config(spec, img_size))
    if part == "backbone":
        return Benchmarked(spec, _bottom_up(model), "backbone", img_size)
    if full_detections and hasattr(model, "roi_heads"):
        predictors = getattr(model.roi_heads, "box_predictor", None)
        for p in predictors if isinstance(predictors, nn.ModuleList) else [predictors]:
            if p is not None and hasattr(p, "test_score_thresh"):
                p.test_score_thresh = 0.0
    return Benchmarked(spec, model, "model", img_size)


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


class _PeakRSS:
    """Samples this process's resident set every few ms; ``peak`` is the growth over the start (bytes)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: lifetime high-water mark only
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


def _loss(out) -> torch.Tensor:
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
) -> Dict[str, float]:
    """Forward + backward + AdamW step: seconds per iteration and peak memory (bytes)."""
    dev = torch.device(device)
    clock = _clock(timer)
    m = model.module.to(dev).train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.0)
    inputs = model.inputs(batch, dev, train=True)
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with _PeakRSS() as rss:
        for it in range(warmup + iters):
            _sync(dev)
            t0 = clock()
            with _autocast(dev, dtype):
                loss = _loss(m(inputs))
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
    """Best sgemm (or half/bf16 on ``dtype``) rate of ``n x n`` matrices, GFLOP/s (2 FLOPs per multiply-add)."""
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


def _load_results(paths: Sequence[str]) -> List[dict]:
    results = []
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"results file {p!r} does not exist")
        with open(p) as f:
            try:
                r = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"results file {p!r} is not valid JSON: {e}") from e
        if "models" not in r or "settings" not in r:
            raise ValueError(f"results file {p!r} is not a tools/benchmark.py --json output")
        results.append(r)
    return results


def markdown_table(paths: Sequence[str]) -> str:
    """The saved results of ``paths`` as one markdown table (one row per model and file)."""
    lines = [
        "| model | part | size | batch | dtype | ms/image (median) | p25-p75 | params (M) | vs first | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in _load_results(paths):
        st = r["settings"]
        for m in r["models"]:
            if "median_ms" not in m:
                continue
            ratio = f"{m['ratio_vs_first']:.2f}x" if "ratio_vs_first" in m else "1.00x"
            gf = f"{m['achieved_gflops']:.0f}" if "achieved_gflops" in m else "-"
            lines.append(
                f"| {m['name']} | {st['part']} | {st['size']} | {st['batch']} | {st['dtype']} | "
                f"{m['median_ms']:.0f} | {m['p25_ms']:.0f}-{m['p75_ms']:.0f} | {m['params_m']:.1f} | {ratio} | {gf} |"
            )
    return "\n".join(lines)


def plot_results(paths: Sequence[str], out: str, title: Optional[str] = None) -> str:
    """Scatter ms/image against parameters for the saved results, one colour per model family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: Dict[str, List[tuple]] = {}
    settings = None
    for r in _load_results(paths):
        settings = settings or r["settings"]
        for m in r["models"]:
            if "median_ms" in m:
                family = m["name"].rsplit("-", 1)[0] if m["name"] in PRESETS else m["name"]
                if m["name"] == "d2-vitdet-b-norelpos":
                    family = "d2-vitdet (no relpos)"
                points.setdefault(family, []).append((m["params_m"], m["median_ms"] / 1000.0, m["name"]))
    if not points:
        raise ValueError("no inference results to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for family, pts in sorted(points.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=family)
        for x, y, name in pts:
            ax.annotate(name.rsplit("-", 1)[-1].upper(), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("backbone parameters (M)")
    ax.set_ylabel("inference time (s / image)")
    if title is None and settings is not None:
        title = (
            f"{settings['part']} inference, {settings['size']}x{settings['size']}, batch {settings['batch']}, "
            f"{settings['dtype']}, {settings['device']}"
        )
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def child_argv(args) -> List[str]:
    """The settings of parsed ``args`` as options for one ``--isolate`` child process (one model, timing only)."""
    out = [f"--{k}={getattr(args, k)}" for k in ("part", "size", "batch", "dtype", "device", "iters", "warmup")]
    out += [f"--discard={args.discard}", f"--threads={args.threads}", f"--timer={args.timer}", f"--seed={args.seed}"]
    if args.no_full_detections:
        out.append("--no-full-detections")
    if args.opts:
        out += ["--opts", *args.opts]
    return out


def isolated_times(specs: Sequence[str], args) -> Tuple[List[List[float]], List[List[int]]]:
    """Seconds per kept iteration of each model, every model timed in ``args.rounds`` fresh processes.

    Round ``r`` runs one process per model, in turn; each process warms up, times ``args.iters``
    iterations and drops its own first ``args.discard`` fraction. The kept times of all rounds are pooled.
    Returns the pooled times and, per model, the ids of the processes that timed it.
    """
    import subprocess
    import tempfile

    child_args = child_argv(args)
    pooled: List[List[float]] = [[] for _ in specs]
    pids: List[List[int]] = [[] for _ in specs]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for k, spec in enumerate(specs):
                out = os.path.join(tmp, f"{r}_{k}.json")
                cmd = [sys.executable, os.path.abspath(__file__), spec, "--json", out, *child_args]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                    raise RuntimeError(f"--isolate: the process timing {spec!r} failed:\n" + "\n".join(tail))
                with open(out) as f:
                    child = json.load(f)
                entry = child["models"][0]
                pids[k].append(child["pid"])
                kept = entry["times_ms"][int(len(entry["times_ms"]) * args.discard) :]
                pooled[k].extend(t * args.batch / 1000.0 for t in kept)
                print(f"  round {r + 1}/{args.rounds}  {spec:24s} {entry['median_ms']:10.1f} ms/im (own process)")
    return pooled, pids


def _machine(device: str) -> str:
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


def _report_main(argv: Sequence[str]):
    ap = argparse.ArgumentParser(prog="benchmark.py report|plot")
    ap.add_argument("command", choices=("report", "plot"))
    ap.add_argument("results", nargs="+", help="JSON files written by --json")
    ap.add_argument("--out", default="speed_vs_size.png", help="plot: output PNG")
    ap.add_argument("--title", help="plot: title (default: from the settings of the first file)")
    args = ap.parse_args(argv)
    if args.command == "report":
        text = markdown_table(args.results)
        print(text)
        return text
    path = plot_results(args.results, args.out, args.title)
    print(f"wrote {path}")
    return path


def main(argv: Optional[Sequence[str]] = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("report", "plot"):
        return _report_main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="preset name or LazyConfig .py file")
    ap.add_argument("--compare", nargs="+", default=[], help="other models, run alternately in this process")
    ap.add_argument("--part", choices=("backbone", "model"), default="backbone")
    ap.add_argument("--size", type=int, default=1024, help="square image side (px)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="fp16/bf16: autocast")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=10, help="timed iterations per model")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--discard", type=float, default=0.25, help="fraction of timed iterations dropped first")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time")
    ap.add_argument("--train", action="store_true", help="time training iterations instead")
    ap.add_argument("--flops", action="store_true", help="also report achieved GFLOP/s (fvcore count)")
    ap.add_argument("--matmul-peak", action="store_true", help="also measure this machine's matmul GFLOP/s")
    ap.add_argument("--no-full-detections", action="store_true", help="keep the config's score threshold")
    ap.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value (config files)")
    ap.add_argument("--isolate", action="store_true", help="each model in a fresh process of its own")
    ap.add_argument("--rounds", type=int, default=2, help="--isolate: processes per model, in turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args(argv)

    for name, v in (("--size", args.size), ("--batch", args.batch), ("--iters", args.iters), ("--rounds", args.rounds)):
        if v < 1:
            ap.error(f"{name} must be >= 1, got {v}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    if args.isolate and args.train:
        ap.error("--isolate times inference; --train already runs one model at a time")
    specs = [args.model] + list(args.compare)
    models = [build(s, args.part, args.size, args.opts, full_detections=not args.no_full_detections) for s in specs]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": _machine(args.device),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "pid": os.getpid(),
        "torch": torch.__version__,
        "command": "python tools/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "models": [],
    }
    print(f"{result['date']}  {result['machine']}  load {result['load_avg']}")
    print(f"part={args.part} size={args.size} batch={args.batch} dtype={args.dtype} device={args.device}")
    if args.matmul_peak:
        result["matmul_gflops"] = matmul_peak(args.device, dtype=args.dtype)
        print(f"matmul peak: {result['matmul_gflops']:.1f} GFLOP/s")

    if args.train:
        for m in models:
            r = time_training(m, args.batch, args.iters, args.warmup, args.device, args.dtype, args.timer)
            s = summarize(r["times"], 1, args.discard)
            entry = {
                "name": m.name,
                "it_per_s": 1000.0 / s["median_ms"],
                "iter": s,
                "peak_mem_mb": r["peak_mem_bytes"] / 2**20,
            }
            result["models"].append(entry)
            print(f"{m.name:28s} {entry['it_per_s']:.3f} it/s  peak mem {entry['peak_mem_mb']:.0f} MiB  ({_fmt(s)})")
    else:
        if args.isolate:
            # the timings come from child processes; the models built here give parameters and FLOPs
            times, pids = isolated_times(specs, args)
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
            print(f"{m.name:28s} {_fmt(entry)}  {entry['params_m']:.2f}M params")
        if args.flops:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            from analyze_model import count_flops

            for m, entry in zip(models, result["models"]):
                gmacs = count_flops(m, batch=1)["total"] / 1e9
                entry["gmacs"] = gmacs
                entry["achieved_gflops"] = 2 * gmacs / (entry["median_ms"] / 1000.0)
                line = f"{m.name:28s} {gmacs:.1f} GMACs/im -> {entry['achieved_gflops']:.1f} GFLOP/s"
                if "matmul_gflops" in result:
                    entry["fraction_of_matmul_peak"] = entry["achieved_gflops"] / result["matmul_gflops"]
                    line += f" = {100 * entry['fraction_of_matmul_peak']:.0f}% of matmul peak"
                print(line)
    base = result["models"][0]
    for other in result["models"][1:]:
        if args.train:
            ratio = base["it_per_s"] / other["it_per_s"]
        else:
            ratio = other["median_ms"] / base["median_ms"]
        other["ratio_vs_first"] = ratio
        print(f"{other['name']} / {base['name']}: {ratio:.3f}x the time of {base['name']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
