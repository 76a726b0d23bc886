"""The evaluation benchmark (hieradet.benchmark.scoring, tools/benchmark.py eval) at a small scale."""

import json
import os
import subprocess
import sys

import pytest

from hieradet.benchmark.scoring import benchmark, make_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("fmt,iou_type", [("coco", "bbox"), ("lvis", "segm")])
def test_benchmark_small(fmt, iou_type):
    lines = []
    out = benchmark(fmt, iou_type, num_images=25, num_categories=8, dets_per_image=15, print_fn=lines.append, seed=1)
    assert out["max_abs_diff"] < 1e-6
    assert out["reference_s"] > 0 and out["fast_s"] > 0
    assert out["speedup"] == pytest.approx(out["reference_s"] / out["fast_s"])
    assert out["num_images"] == 25 and 0 < out["num_dets"] <= 25 * 15
    assert 1 < out["AP_fast"] < 99
    assert len(lines) == 1 and lines[0].startswith(f"{fmt} {iou_type}: 25 images")


def test_make_problem_is_deterministic_and_checked():
    assert make_problem(num_images=5, num_categories=4, seed=3) == make_problem(num_images=5, num_categories=4, seed=3)
    with pytest.raises(ValueError, match="at least 3 categories for lvis"):
        make_problem(num_categories=2, fmt="lvis")
    with pytest.raises(ValueError, match="fmt must be"):
        make_problem(fmt="voc")


@pytest.mark.slow  # a fresh interpreter importing detectron2: ~15 s alone, ~1 min on the busy 2-core machine
def test_cli(tmp_path):
    out = tmp_path / "b.json"
    args = ["--fmt", "coco", "--coco-images", "12", "--coco-categories", "5", "--coco-dets", "10", "--json", str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    tool = os.path.join(ROOT, "tools", "benchmark.py")
    proc = subprocess.run(
        [sys.executable, tool, "eval", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "load average" in proc.stdout and "pycocotools" in proc.stdout
    (row,) = json.loads(out.read_text())
    assert row["fmt"] == "coco" and row["num_images"] == 12 and row["max_abs_diff"] < 1e-6
