"""Saved benchmark results (the ``--json`` files of ``tools/benchmark.py``) as a markdown table and a plot."""

import json
import os
from typing import Dict, List, Optional, Sequence

from .presets import PRESETS

__all__ = ["load_results", "markdown_table", "plot_results"]


def load_results(paths: Sequence[str]) -> List[dict]:
    """Reads result files; a missing, unreadable or foreign file is an error naming it."""
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
    """The saved inference results of ``paths`` as one markdown table (one row per model and file)."""
    lines = [
        "| model | part | size | batch | dtype | ms/image (median) | p25-p75 | params (M) | vs first | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in load_results(paths):
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
    """Scatters ms/image against parameters for the saved inference results, one colour per model family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: Dict[str, List[tuple]] = {}
    settings = None
    for r in load_results(paths):
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
