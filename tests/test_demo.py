"""The demo (tools/demo_train.py): its outputs, and (slow) that a shortened run really learns."""

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The slow test runs a SHORTENED demo: SHORT_ITERS of the demo's 500 iterations on 20 val images (same data options,
# config, seed; the warm-up and cosine schedule are compressed into the shorter run), on 2 threads. Its floors sit a
# little below what that shortened run reached when measured. The full demo reaches box AP 60.6-63.8 and mask AP
# 71.8-76.2 (3 seeds, 1-2 threads, docs/demo_tuning.md); 400 iterations (56.0 / 59.1) took 8.4 min in CI, which
# pushed CI past its 30-minute budget, so the test runs 300.
SHORT_ITERS = 300
SHORT_THREADS = 2
SHORT_NUM_VAL = 20
MIN_BOX_AP = 34.0  # measured 41.0 (2 threads; 40.5 with 1)
MIN_MASK_AP = 40.0  # measured 48.3 (2 threads; 48.2 with 1)


def test_demo_writes_metrics_loss_curve_and_predictions(load_tool, tmp_path):
    """A 2-iteration run on a tiny dataset: every output is written and well-formed."""
    from PIL import Image

    demo = load_tool("demo_train")
    out = tmp_path / "demo"
    fast = ["train.log_period=1", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0"]
    metrics = demo.run_demo(str(out), num_train=4, num_val=2, image_size=64, max_iter=2, num_vis=2, overrides=fast)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["iterations"] == 2 and on_disk["loss_points"] == 2
    assert {"AP", "AP50", "AP75"} <= set(on_disk["bbox"]) and {"AP", "AP50"} <= set(on_disk["segm"])
    assert on_disk["wall_time_s"]["total"] > 0
    with Image.open(out / "loss_curve.png") as im:
        assert im.size == (700, 400)
    with Image.open(out / "predictions.png") as im:
        assert im.width > 2 * 64 and im.height >= 64  # GT | prediction side by side
    assert (out / "train" / "model_final.pth").is_file()
    # the dataset is reused, not regenerated, for the same options
    stamp = out / "data" / "demo_dataset_options.json"
    mtime = stamp.stat().st_mtime_ns
    demo.prepare_data(str(out / "data"), 4, 2, 64, 0)
    assert stamp.stat().st_mtime_ns == mtime


def test_demo_cli_rejects_bad_arguments(load_tool, capsys):
    demo = load_tool("demo_train")
    with pytest.raises(SystemExit):
        demo.main(["--image-size", "100"])
    assert "multiple of 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(["--config", "/nonexistent/config.py"])
    assert "does not exist" in capsys.readouterr().err


def test_demo_dataset_options_make_an_easy_task(load_tool, tmp_path):
    """The generator's "easy" knobs the demo uses: solid single-colour objects whose hue follows the category,
    sizes within ``size_range``; bad knob values are rejected with a message naming them."""
    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO

    from hieradet.data import generate_synthetic_dataset

    demo = load_tool("demo_train")
    paths = generate_synthetic_dataset(str(tmp_path / "easy"), num_train=12, num_val=2, image_size=128,
                                       background_noise=0.0, **demo.DATA_OPTIONS)  # fmt: skip
    coco = COCO(paths["train"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
    hues = {1: [], 2: [], 3: []}
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = np.asarray(Image.open(tmp_path / "easy" / "train" / img["file_name"]).convert("HSV"), float)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            assert max(ann["bbox"][2], ann["bbox"][3]) <= 2 * 0.25 * 128 * 1.45 + 2  # radius <= 0.25 side
            mask = coco.annToMask(ann).astype(bool)
            angle = pixels[..., 0][mask] / 255.0 * 2 * np.pi  # circular mean: red sits at both ends of hue
            hues[ann["category_id"]].append(np.angle(np.exp(1j * angle).mean()) / (2 * np.pi) % 1.0)
    for cat, expected in ((1, 0.0), (2, 1 / 3), (3, 2 / 3)):  # hue = category / 3, jittered by < 1/12
        assert hues[cat], cat
        dist = [min(abs(h - expected), 1 - abs(h - expected)) for h in hues[cat]]
        assert max(dist) < 0.12, (cat, dist)
    with pytest.raises(ValueError, match="textures"):
        generate_synthetic_dataset(str(tmp_path / "x"), textures=("wood",))
    with pytest.raises(ValueError, match="size_range"):
        generate_synthetic_dataset(str(tmp_path / "x"), size_range=(0.3, 0.1))


@pytest.mark.slow
def test_demo_learns(load_tool, tmp_path):
    """A shortened demo (SHORT_ITERS of the demo's 500 iterations, SHORT_NUM_VAL val images) must learn a detector.

    Measured (the same run from the command line, `OMP_NUM_THREADS=2 .venv/bin/python tools/demo_train.py
    --num-val 20 --max-iter 300 ...`, quiet 2-core machine): box AP 41.0, mask AP 48.3 in 4 min 55 s; with one
    thread 40.5 / 48.2; an untrained model gets about 0. The thread count is pinned so the run is repeatable (another
    count changes the summation order and so the trajectory; with the demo's gradient clipping the trajectories no
    longer diverge, as the two measurements show). The floors are about 83% of the measured APs.
    """
    import torch

    demo = load_tool("demo_train")
    threads = torch.get_num_threads()
    torch.set_num_threads(SHORT_THREADS)
    try:
        metrics = demo.run_demo(str(tmp_path / "demo"), num_val=SHORT_NUM_VAL, max_iter=SHORT_ITERS, num_vis=1)
    finally:
        torch.set_num_threads(threads)
    print("shortened demo:", metrics["bbox"]["AP"], metrics["segm"]["AP"], metrics["wall_time_s"])
    assert metrics["bbox"]["AP"] >= MIN_BOX_AP, metrics["bbox"]
    assert metrics["segm"]["AP"] >= MIN_MASK_AP, metrics["segm"]
    _exported_demo_ap_equals_eager(tmp_path / "demo", metrics)


def _exported_demo_ap_equals_eager(demo_dir, metrics):
    """The trained demo model (no second training run), exported to ``.pt2`` as ``tools/export_model.py`` does and
    evaluated by its ``--eval`` path on the demo's val split: box and mask AP equal the eager model's within 0.1.

    The demo's test mapper has no resize (``augmentations=[]``), so the exported masks, pasted at the input size,
    are already at the original size: this checks the export itself, not a mask resampling."""
    import time

    from detectron2.config import LazyConfig

    from hieradet.export import ap_differences, evaluate_exported, export_model, load_exported

    cfg = LazyConfig.load(str(demo_dir / "config.yaml"))  # the config run_demo trained (its datasets registered)
    assert list(cfg.dataloader.test.mapper.augmentations) == []
    start = time.perf_counter()
    path, model = export_model(
        cfg, str(demo_dir / "train" / "model_final.pth"), "torch_export", str(demo_dir / "export")
    )
    exported_s = time.perf_counter() - start
    aps = ap_differences(evaluate_exported(cfg, model, load_exported(path)))
    print(f"demo export {exported_s:.1f} s, eval {time.perf_counter() - start - exported_s:.1f} s:", aps)
    assert set(aps) == {"bbox", "segm"}, aps
    for task, (eager, exported) in aps.items():
        # the eager AP is the trained model's own (the demo's evaluation, repeated), so it is a real one
        assert abs(eager - metrics[task]["AP"]) <= 0.1, (task, eager, metrics[task])
        assert abs(exported - eager) <= 0.1, (task, eager, exported)
