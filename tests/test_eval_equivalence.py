"""faster-coco-eval gives the numbers of pycocotools (COCO) and of the `lvis` package (LVIS), metric by metric.

Two levels: the scoring functions on generated problems (objects of all sizes, crowd regions, empty images,
images without detections, a category without ground truth, tied scores, LVIS r/c/f with negative and
not-exhaustive categories), and our detectron2 evaluators on the generated datasets of tests/conftest.py (made by
hieradet.data.generate_synthetic_dataset, plus crowd regions, an empty image and a category without ground truth)
against detectron2's own evaluators. Every reported metric must agree to 1e-6 (AP points).
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from hieradet.benchmark.scoring import load_gt, make_problem, max_metric_difference, score
from hieradet.evaluation import COCOEvaluator, LVISEvaluator, lvis_metrics, run_coco_eval

TOL = 1e-6


def assert_same_metrics(ref: dict, fast: dict):
    assert set(ref) == set(fast)
    for k in ref:
        if math.isnan(ref[k]):
            assert math.isnan(fast[k]), k
        else:
            assert fast[k] == pytest.approx(ref[k], abs=TOL), k


# --- scoring functions on generated problems -----------------------------------------------------------------


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_coco_scores_match_pycocotools(iou_type, seed):
    gt, results = make_problem(
        num_images=40,
        num_categories=6,
        dets_per_image=20,
        masks=iou_type == "segm",
        seed=seed,
        crowd_fraction=0.1,
        empty_image_fraction=0.1,
        no_detection_fraction=0.1,
    )
    anns = gt["annotations"]
    assert any(a["iscrowd"] for a in anns)  # what the problem is meant to contain
    assert len({a["image_id"] for a in anns}) < len(gt["images"])  # empty images
    assert len({r["image_id"] for r in results}) < len(gt["images"])  # images without detections
    assert 6 not in {a["category_id"] for a in anns} and 6 in {r["category_id"] for r in results}
    ev = {}
    for backend in ("pycocotools", "faster"):
        ev[backend] = run_coco_eval(load_gt(gt, "coco", backend), results, iou_type, backend=backend)
    ref, fast = ev["pycocotools"], ev["faster"]
    assert 0.05 < ref.stats[0] < 0.95
    np.testing.assert_allclose(fast.stats[:12], ref.stats[:12], atol=1e-8, rtol=0)
    # the whole precision / recall tables, not only their summaries
    np.testing.assert_allclose(fast.eval["precision"], ref.eval["precision"], atol=1e-8, rtol=0)
    np.testing.assert_allclose(fast.eval["recall"], ref.eval["recall"], atol=1e-8, rtol=0)
    # and detectron2's metrics dict (including per-category AP; the category without ground truth is NaN)
    a, b = (
        score(load_gt(gt, "coco", "pycocotools"), results, iou_type, "coco", "pycocotools"),
        score(load_gt(gt, "coco", "faster"), results, iou_type, "coco", "faster"),
    )
    assert math.isnan(a["AP-category_6"])
    assert_same_metrics(a, b)


@pytest.mark.parametrize("max_dets", [1, 20])
def test_coco_custom_max_dets_match(max_dets):
    gt, results = make_problem(num_images=30, num_categories=5, dets_per_image=30, seed=3)
    ref = score(load_gt(gt, "coco", "pycocotools"), results, "bbox", "coco", "pycocotools", max_dets)
    fast = score(load_gt(gt, "coco", "faster"), results, "bbox", "coco", "faster", max_dets)
    assert_same_metrics(ref, fast)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("max_dets", [300, 15])
def test_lvis_scores_match_lvis_package(iou_type, max_dets):
    gt, results = make_problem(
        num_images=40,
        num_categories=25,
        dets_per_image=40,
        fmt="lvis",
        masks=iou_type == "segm",
        seed=2,
        empty_image_fraction=0.1,
        no_detection_fraction=0.1,
    )
    assert any(img["not_exhaustive_category_ids"] for img in gt["images"])
    assert {c["frequency"] for c in gt["categories"]} == {"r", "c", "f"}
    ref = lvis_metrics(load_gt(gt, "lvis", "lvis"), results, iou_type, backend="lvis", max_dets_per_image=max_dets)
    fast = lvis_metrics(load_gt(gt, "lvis", "faster"), results, iou_type, max_dets_per_image=max_dets)
    assert 5 < ref["AP"] < 95
    assert_same_metrics(ref, fast)


def test_lvis_many_detections_of_one_category_in_one_image():
    """LVIS caps detections per image (300), not per image and category as COCO does (100): 250 detections of
    one category in one image all count."""
    gt, results = make_problem(num_images=6, num_categories=6, dets_per_image=5, fmt="lvis", seed=7)
    a = gt["annotations"][0]
    rng = np.random.default_rng(0)
    x, y, w, h = a["bbox"]
    for i in range(250):
        dx, dy = rng.normal(0, 0.2 * w), rng.normal(0, 0.2 * h)
        score = float(rng.uniform(0.5, 0.9)) if i < 200 else 0.4 - i * 1e-4  # the best match scores lowest
        box = [x + dx, y + dy, w, h]
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box, "score": score})
    results[-1]["bbox"] = list(a["bbox"])
    ref = lvis_metrics(load_gt(gt, "lvis", "lvis"), results, "bbox", backend="lvis")
    fast = lvis_metrics(load_gt(gt, "lvis", "faster"), results, "bbox")
    assert_same_metrics(ref, fast)


def test_lvis_undefined_group_is_minus_100_in_both():
    """No rare category has ground truth: APr is undefined, which detectron2 reports as -100 (lvis's -1)."""
    gt, results = make_problem(num_images=20, num_categories=8, dets_per_image=10, fmt="lvis", seed=4)
    rare = {c["id"] for c in gt["categories"] if c["frequency"] == "r"}
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] not in rare]
    ref = lvis_metrics(load_gt(gt, "lvis", "lvis"), results, "bbox", backend="lvis")
    fast = lvis_metrics(load_gt(gt, "lvis", "faster"), results, "bbox")
    assert ref["APr"] == -100
    assert_same_metrics(ref, fast)


def test_max_metric_difference():
    assert max_metric_difference({"a": 1.0, "b": float("nan")}, {"a": 1.5, "b": float("nan")}) == 0.5
    assert max_metric_difference({"a": 1.0}, {"a": float("nan")}) == float("inf")
    with pytest.raises(ValueError, match="different metrics"):
        max_metric_difference({"a": 1.0}, {"b": 1.0})


# --- bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_coco_bad_input_is_refused(backend):
    gt, results = make_problem(num_images=10, num_categories=4, dets_per_image=5, seed=5)
    api = load_gt(gt, "coco", backend)
    unknown_img = copy.deepcopy(results) + [dict(results[0], image_id=12345)]
    with pytest.raises(ValueError, match=r"1 image id\(s\) that the ground truth does not have, e.g. \[12345\]"):
        run_coco_eval(api, unknown_img, "bbox", backend=backend)
    unknown_cat = copy.deepcopy(results) + [dict(results[0], category_id=77)]
    with pytest.raises(ValueError, match=r"category id\(s\) missing from the ground truth's categories, e.g. \[77\]"):
        run_coco_eval(api, unknown_cat, "bbox", backend=backend)
    empty = dict(gt, annotations=[])
    with pytest.raises(ValueError, match=r"the ground truth is empty \(10 images, 0 annotations\)"):
        run_coco_eval(load_gt(empty, "coco", backend), results, "bbox", backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        run_coco_eval(api, results, "bbox", backend="lvis")


@pytest.mark.parametrize("backend", ["faster", "lvis"])
def test_lvis_bad_input_is_refused(backend):
    gt, results = make_problem(num_images=10, num_categories=6, dets_per_image=5, fmt="lvis", seed=6)
    api = load_gt(gt, "lvis", backend)
    with pytest.raises(ValueError, match=r"image id\(s\) that the ground truth does not have"):
        lvis_metrics(api, results + [dict(results[0], image_id=999)], "bbox", backend=backend)
    with pytest.raises(ValueError, match=r"category id\(s\) missing from the ground truth's categories"):
        lvis_metrics(api, results + [dict(results[0], category_id=7)], "segm", backend=backend)
    with pytest.raises(ValueError, match="the ground truth is empty"):
        lvis_metrics(load_gt(dict(gt, images=[], annotations=[]), "lvis", backend), results, "bbox", backend=backend)


# --- the detectron2 evaluators on generated datasets ---------------------------------------------------------


def _register(name, gt: dict, path, lvis: bool):
    from detectron2.data import MetadataCatalog

    path.write_text(json.dumps(gt))
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    meta = dict(json_file=str(path), thing_classes=[c["name"] for c in cats], evaluator_type="lvis" if lvis else "coco")
    if not lvis:
        meta["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(cats)}
    MetadataCatalog.get(name).set(**meta)
    return name


def _extend_gt(gt_json, lvis: bool) -> dict:
    """The generated val json plus an image without objects, a category without ground truth and (COCO) crowd
    regions over two images."""
    with open(gt_json) as f:
        gt = json.load(f)
    img0 = gt["images"][0]
    empty = dict(img0, id=max(i["id"] for i in gt["images"]) + 1, file_name="empty.jpg")
    if lvis:
        empty.update(neg_category_ids=[1, 2], not_exhaustive_category_ids=[])
    gt["images"].append(empty)
    new_cat = dict(gt["categories"][-1], id=max(c["id"] for c in gt["categories"]) + 1, name="never_annotated")
    if lvis:
        new_cat.update(frequency="r", image_count=0, instance_count=0)
    gt["categories"].append(new_cat)
    if not lvis:
        next_id = max(a["id"] for a in gt["annotations"]) + 1
        for img in gt["images"][:2]:
            m = np.zeros((img["height"], img["width"]), np.uint8, order="F")
            m[8:60, 10:90] = 1
            rle = mask_util.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            gt["annotations"].append(
                {
                    "id": next_id,
                    "image_id": img["id"],
                    "category_id": 1,
                    "iscrowd": 1,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": [10.0, 8.0, 80.0, 52.0],
                }
            )
            next_id += 1
    return gt


def _predictions(gt: dict, seed: int):
    """Per image (detectron2 input dict, Instances): jittered objects, misses, false positives (also of the
    category without ground truth and of LVIS negative categories); every fourth image has no detections."""
    from detectron2.structures import Boxes, BoxMode, Instances

    rng = np.random.default_rng(seed)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    by_img = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            by_img.setdefault(a["image_id"], []).append(a)
    out = []
    for n, img in enumerate(gt["images"]):
        h, w = img["height"], img["width"]
        dets = []
        if n % 4 != 3:
            for a in by_img.get(img["id"], []):
                if rng.random() < 0.2:
                    continue
                rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))
                m = np.roll(mask_util.decode(rle).astype(bool), tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
                x, y, bw, bh = a["bbox"]
                dx, dy, sx, sy = rng.uniform(-3, 3, 2).tolist() + rng.uniform(0.85, 1.15, 2).tolist()
                box = [x + dx, y + dy, bw * sx, bh * sy]
                dets.append((cat_ids.index(a["category_id"]), box, m, round(float(rng.uniform(0.3, 1.0)), 2)))
            for j in range(4):
                x, y, s = rng.uniform(0, w - 40), rng.uniform(0, h - 40), rng.uniform(8, 40)
                m = np.zeros((h, w), bool)
                m[int(y) : int(y + s), int(x) : int(x + s)] = True
                cat = len(cat_ids) - 1 if j == 0 else int(rng.integers(0, len(cat_ids)))
                if j == 1 and img.get("neg_category_ids"):
                    cat = cat_ids.index(int(rng.choice(img["neg_category_ids"])))
                dets.append((cat, [x, y, s, s], m, round(float(rng.uniform(0.0, 0.6)), 2)))
        inst = Instances((h, w))
        boxes = torch.tensor([d[1] for d in dets], dtype=torch.float64).reshape(-1, 4)
        inst.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS).float())
        inst.scores = torch.tensor([d[3] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.int64)
        inst.pred_masks = (
            torch.from_numpy(np.stack([d[2] for d in dets])) if dets else torch.zeros(0, h, w, dtype=torch.bool)
        )
        out.append(({"image_id": img["id"], "height": h, "width": w}, {"instances": inst}))
    return out


def _run(evaluator, preds):
    evaluator.reset()
    for inp, outp in preds:
        evaluator.process([inp], [outp])
    return evaluator.evaluate()


def test_coco_evaluator_matches_detectron2(synthetic_coco, tmp_path):
    from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator

    gt = _extend_gt(synthetic_coco.val_json, lvis=False)
    name = _register(f"{synthetic_coco.val_name}_eval_ext", gt, tmp_path / "gt.json", lvis=False)
    preds = _predictions(gt, seed=0)
    out = {}
    for key, ev in [
        ("d2", D2COCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "d2"))),
        ("faster", COCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "faster"))),
        ("ours_ref", COCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "ref"), backend="pycocotools")),
    ]:
        out[key] = _run(ev, preds)
    assert set(out["d2"]) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert 5 < out["d2"][task]["AP"] < 95
        assert math.isnan(out["d2"][task]["AP-never_annotated"])
        assert_same_metrics(out["d2"][task], out["faster"][task])
        assert_same_metrics(out["d2"][task], out["ours_ref"][task])
    # the results file is written as detectron2 writes it
    written = [(tmp_path / d / "coco_instances_results.json").read_text() for d in ("d2", "faster", "ref")]
    assert written[0] == written[1] == written[2]
    assert (tmp_path / "faster" / "instances_predictions.pth").exists()


def test_coco_evaluator_is_reusable_and_handles_no_detections(synthetic_coco, tmp_path):
    gt = _extend_gt(synthetic_coco.val_json, lvis=False)
    name = _register(f"{synthetic_coco.val_name}_eval_reuse", gt, tmp_path / "gt.json", lvis=False)
    preds = _predictions(gt, seed=1)
    ev = COCOEvaluator(name, distributed=False, tasks=("bbox",))
    first, second = _run(ev, preds), _run(ev, preds)
    assert_same_metrics(first["bbox"], second["bbox"])
    from detectron2.structures import Boxes, Instances

    empty = []
    for inp, _ in preds:
        inst = Instances((inp["height"], inp["width"]))
        inst.pred_boxes, inst.scores = Boxes(torch.zeros(0, 4)), torch.zeros(0)
        inst.pred_classes = torch.zeros(0, dtype=torch.int64)
        empty.append((inp, {"instances": inst}))
    res = _run(ev, empty)["bbox"]
    assert all(math.isnan(v) for v in res.values())


def test_coco_evaluator_refuses_out_of_range_class(synthetic_coco, tmp_path):
    preds = _predictions(json.loads(open(synthetic_coco.val_json).read()), seed=2)
    inp, outp = preds[0]
    outp["instances"].pred_classes[:] = synthetic_coco.num_classes + 3
    ev = COCOEvaluator(synthetic_coco.val_name, distributed=False, tasks=("bbox",))
    ev.reset()
    ev.process([inp], [outp])
    with pytest.raises(ValueError, match=f"has class {synthetic_coco.num_classes + 3}, but the dataset has only"):
        ev.evaluate()
    with pytest.raises(ValueError, match="backend must be one of"):
        COCOEvaluator(synthetic_coco.val_name, backend="fast")


def test_lvis_evaluator_matches_detectron2(synthetic_lvis, tmp_path):
    from detectron2.evaluation import LVISEvaluator as D2LVISEvaluator

    from hieradet.evaluation import patch_lvis_numpy

    patch_lvis_numpy()
    gt = _extend_gt(synthetic_lvis.val_json, lvis=True)
    name = _register(f"{synthetic_lvis.val_name}_eval_ext", gt, tmp_path / "gt.json", lvis=True)
    preds = _predictions(gt, seed=0)
    out = {}
    for key, ev in [
        ("d2", D2LVISEvaluator(name, distributed=False, output_dir=str(tmp_path / "d2"))),
        ("faster", LVISEvaluator(name, distributed=False, output_dir=str(tmp_path / "faster"))),
        ("ours_ref", LVISEvaluator(name, distributed=False, output_dir=str(tmp_path / "ref"), backend="lvis")),
        ("faster_20", LVISEvaluator(name, distributed=False, max_dets_per_image=20)),
        ("d2_20", D2LVISEvaluator(name, distributed=False, max_dets_per_image=20)),
    ]:
        out[key] = _run(ev, preds)
    for task in ("bbox", "segm"):
        assert 5 < out["d2"][task]["AP"] < 95
        assert_same_metrics(out["d2"][task], out["faster"][task])
        assert_same_metrics(out["d2"][task], out["ours_ref"][task])
        assert_same_metrics(out["d2_20"][task], out["faster_20"][task])
    written = [(tmp_path / d / "lvis_instances_results.json").read_text() for d in ("d2", "faster", "ref")]
    assert written[0] == written[1] == written[2]
    with pytest.raises(ValueError, match="backend must be one of"):
        LVISEvaluator(name, backend="pycocotools")


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_image_with_only_unverified_detections(iou_type):
    """An image without objects whose detections are all of categories it does not list as negative: LVIS ignores
    them (faster-coco-eval 1.8.0 alone crashes on masks here; the evaluator drops them first)."""
    gt, results = make_problem(num_images=8, num_categories=10, dets_per_image=6, fmt="lvis", masks=True, seed=8)
    img = gt["images"][0]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != img["id"]]
    img["neg_category_ids"], img["not_exhaustive_category_ids"] = [1], []
    results = [r for r in results if r["image_id"] != img["id"]]
    template = next(r for r in results if "segmentation" in r)
    results += [dict(template, image_id=img["id"], category_id=c, score=0.5 + c / 100) for c in (2, 3, 4)]
    ref = lvis_metrics(load_gt(gt, "lvis", "lvis"), results, iou_type, backend="lvis")
    fast = lvis_metrics(load_gt(gt, "lvis", "faster"), results, iou_type)
    assert_same_metrics(ref, fast)
