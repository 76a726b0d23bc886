"""projects/ReproduceBug, the toy reproduction of the interpolation bug (a project using hieradet as a library): its
scenes and classifier head, the documented numbers against the results file they come from, and a quick end-to-end
run of its command line (slow)."""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch

from hieradet.analysis import window_similarity
from hieradet.modeling import HieraDet
from hieradet.pretrain import pretrain_encoder_kwargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(ROOT, "projects", "ReproduceBug")
TINY = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1))


@pytest.fixture(scope="module")
def rb():
    """The project's ``reproduce_bug`` package, loaded from its folder (``sys.path`` untouched)."""
    folder = os.path.join(PROJECT, "reproduce_bug")
    spec = importlib.util.spec_from_file_location(
        "reproduce_bug", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_bug"] = module  # its relative imports resolve through this entry
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in [n for n in sys.modules if n == "reproduce_bug" or n.startswith("reproduce_bug.")]:
            del sys.modules[name]


def test_window_similarity_and_toy_scenes(rb):
    torch.manual_seed(0)
    tiled = torch.randn(1, 4, 8, 8).tile(1, 1, 4, 4)
    assert window_similarity(tiled, 8) == pytest.approx(1.0)
    rand = torch.randn(1, 4, 32, 32)
    assert abs(window_similarity(rand, 8)) < 0.2
    assert rb.runner.window_similarity is window_similarity  # one measure (Bolya et al. 2024, Fig. 4 / 8)
    with pytest.raises(ValueError, match="need at least 2"):
        window_similarity(torch.randn(1, 4, 8, 8), 8)
    scenes = rb.sample_scenes(6, seed=3, labelled=True)
    assert all(0 <= s["label"] < 8 for s in scenes)  # default task: square / cross x 4 quadrants
    many = rb.sample_scenes(200, seed=4, labelled=True)
    assert {s["label"] for s in many} == set(range(8))
    for s in many:  # the label is the target's shape and quadrant (the target is the last, coloured shape)
        target = s["shapes"][-1]
        quadrant = int(target["cy"] > 0.5) * 2 + int(target["cx"] > 0.5)
        assert ("square", "cross").index(target["kind"]) * 4 + quadrant == s["label"]
        assert 1 <= len(s["shapes"]) <= 2 and 1 <= len(s["clutter"]) <= 2
    four = rb.sample_scenes(50, seed=4, labelled=True, shapes=("circle", "square", "triangle", "cross"))
    assert max(s["label"] for s in four) < 16
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        rb.sample_scenes(2, seed=0, labelled=True, shapes=("star",))
    a, b = rb.render_scenes(scenes, 64), rb.render_scenes(rb.sample_scenes(6, seed=3, labelled=True), 64)
    assert a.dtype == torch.uint8 and a.shape == (6, 3, 64, 64) and torch.equal(a, b)
    assert rb.render_scenes(scenes, 128).shape == (6, 3, 128, 128)


def test_toy_classifier_region_head(rb):
    kw = pretrain_encoder_kwargs(None, 64, "abswin", q_pool=3, pos_embed="abswin_single", **TINY)
    torch.manual_seed(0)
    whole = rb.HieraClassifier(HieraDet(**kw), 8)
    regions = rb.HieraClassifier(HieraDet(**kw), 8, regions=2)
    regions.trunk.load_state_dict(whole.trunk.state_dict())
    x = torch.randn(2, 3, 128, 128)
    assert whole(x).shape == regions(x).shape == (2, 8)  # one head at any size
    assert regions.head.in_features == 4 * whole.head.in_features
    # regions=1 is Hiera's head: LayerNorm + linear over the mean of the last stage
    f = whole.trunk(x)["scale5"].mean((2, 3))
    torch.testing.assert_close(whole(x), whole.head(whole.norm(f)))
    # a 2x2 head sees where things are: the four cells of the last stage feed separate head weights
    cells = torch.nn.functional.adaptive_avg_pool2d(regions.trunk(x)["scale5"], 2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(regions(x), regions.head(regions.norm(cells).flatten(1)))
    with pytest.raises(ValueError, match="regions must be >= 1"):
        rb.HieraClassifier(HieraDet(**kw), 8, regions=0)


def _check_consistent(res, kinds):
    """The numbers of one results file agree with each other: each cell's mean / std are those of its per-seed
    values, every value is a whole number of correct test images, and the runs list holds exactly those values."""
    st = res["settings"]
    sizes = [str(st["img_size"] * s) for s in st["scales"]]
    assert res["chance"] == pytest.approx(100.0 / (len(st["shapes"]) * 4))
    step = 100.0 / st["test_images"]
    for kind in kinds:
        for size in sizes:
            cell = res["cells"][kind][size]
            assert len(cell["values"]) == len(st["seeds"])
            assert cell["mean"] == pytest.approx(statistics.fmean(cell["values"]), abs=1e-9)
            assert cell["std"] == pytest.approx(statistics.stdev(cell["values"]), abs=1e-9)
            for v in cell["values"]:
                assert 0 <= v <= 100 and v / step == pytest.approx(round(v / step), abs=1e-6), v
            runs = [r for r in res["runs"] if r["embed"] == kind and str(r["size"]) == size]
            assert [r["seed"] for r in runs] == list(st["seeds"])
            assert [r["top1"] for r in runs] == cell["values"]
    assert len(res["runs"]) == len(kinds) * len(sizes) * len(st["seeds"])
    for kind in kinds:
        loss = res["pretrain"][kind]
        assert math.isfinite(loss["loss_first"]) and math.isfinite(loss["loss_last"]) and loss["loss_first"] > 0
        assert set(res["window_similarity"][kind]) == set(sizes)
        assert all(-1 <= v <= 1 for v in res["window_similarity"][kind].values())


def test_documented_numbers_are_the_results_file(rb):
    """README.md's table is what ``format_table`` makes of results.json (written before the rename: its first
    embedding is called "original"), and the file's numbers agree with each other."""
    with open(os.path.join(PROJECT, "results.json")) as f:
        res = json.load(f)
    assert set(res["cells"]) == {"original", "abswin"}
    _check_consistent(res, ("original", "abswin"))
    table = rb.format_table(res)
    assert "| full grid, interpolated (the bug) | 57.7 ± 3.1 | 56.5 ± 4.3 | -1.2 |" in table
    with open(os.path.join(PROJECT, "README.md")) as f:
        assert table in f.read()


@pytest.mark.slow
def test_reproduce_bug_quick(tmp_path):
    out = tmp_path / "repro"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, os.path.join(PROJECT, "reproduce.py"), "--quick", "--output", str(out)],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["chance"] == pytest.approx(12.5)  # 2 shapes x 4 quadrants
    assert set(res["cells"]) == {"interpolate", "abswin"}
    _check_consistent(res, ("interpolate", "abswin"))
    assert res["settings"]["seeds"] == [0, 1] and res["settings"]["test_images"] == 64
    assert res["settings"]["extra"]["command"].startswith("projects/ReproduceBug/reproduce.py --quick")
    table = (out / "table.md").read_text()
    assert "interpolated (the bug)" in table and "128 px" in table
    for kind, row in (("interpolate", 2), ("abswin", 3)):  # the table shows the cells' means and stds
        cells = [res["cells"][kind][s] for s in ("64", "128")]
        assert table.splitlines()[row].split(" | ")[1:3] == [f"{c['mean']:.1f} ± {c['std']:.1f}" for c in cells]
    assert (out / "window_similarity.png").stat().st_size > 1000
