"""LVIS evaluation on current NumPy: the lvis==0.5.3 `np.float` crash, our compat patch, and our LVIS evaluator
(faster-coco-eval or the lvis package) agreeing with a direct `lvis` API call on a generated LVIS v1 ground truth."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from hieradet.evaluation import LVISEvaluator, lvis_needs_patch, patch_lvis_numpy


def _gt_masks(anns, h, w):
    return [
        mask_util.decode(mask_util.merge(mask_util.frPyObjects(a["segmentation"], h, w))).astype(bool) for a in anns
    ]


def _make_predictions(gt_json, seed=0, perfect=False):
    """Per image: (image dict, list of (category_id 1-based, xywh box, bool mask, score)). Non-perfect
    predictions jitter boxes/masks, drop some objects, add false positives and detections of categories the
    image lists as negative or does not mention (LVIS ignores the latter)."""
    rng = np.random.default_rng(seed)
    with open(gt_json) as f:
        gt = json.load(f)
    k = len(gt["categories"])
    by_img = {}
    for a in gt["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    preds = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        anns = by_img.get(img["id"], [])
        dets = []
        for a, m in zip(anns, _gt_masks(anns, h, w)):
            if perfect:
                dets.append((a["category_id"], list(a["bbox"]), m, 1.0))
                continue
            if rng.random() < 0.2:
                continue  # missed
            shift = rng.integers(-3, 4, size=2)
            m2 = np.roll(m, tuple(shift), axis=(0, 1))
            x, y, bw, bh = a["bbox"]
            box = [x + shift[1], y + shift[0], bw * rng.uniform(0.85, 1.15), bh * rng.uniform(0.85, 1.15)]
            dets.append((a["category_id"], box, m2, float(rng.uniform(0.3, 1.0))))
        if not perfect:
            for _ in range(3):  # false positives, incl. negative and unverified categories
                x, y = rng.uniform(0, w - 20), rng.uniform(0, h - 20)
                m = np.zeros((h, w), bool)
                m[int(y) : int(y) + 16, int(x) : int(x) + 16] = True
                cat = (
                    int(rng.choice(img["neg_category_ids"]))
                    if img["neg_category_ids"] and rng.random() < 0.5
                    else int(rng.integers(1, k + 1))
                )
                dets.append((cat, [x, y, 16.0, 16.0], m, float(rng.uniform(0.0, 0.6))))
        preds.append((img, dets))
    return preds


def _to_lvis_results(preds):
    results = []
    for img, dets in preds:
        for cat, box, m, score in dets:
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {"image_id": img["id"], "category_id": cat, "bbox": box, "score": score, "segmentation": rle}
            )
    return results


def _direct_lvis(gt_json, results, iou_type):
    from lvis import LVIS, LVISEval, LVISResults

    gt = LVIS(gt_json)
    ev = LVISEval(gt, LVISResults(gt, results), iou_type)
    ev.run()
    return ev.get_results()


def test_unpatched_lvis_crashes_on_this_numpy(synthetic_lvis, tmp_path):
    """The bug we work around (in a fresh interpreter: this session's lvis.eval is patched)."""
    if not lvis_needs_patch():
        pytest.skip("this NumPy still has np.float")
    res = tmp_path / "res.json"
    res.write_text(json.dumps(_to_lvis_results(_make_predictions(synthetic_lvis.val_json, perfect=True))))
    code = (
        "from lvis import LVIS, LVISEval, LVISResults\n"
        f"gt = LVIS({synthetic_lvis.val_json!r})\n"
        f"LVISEval(gt, LVISResults(gt, {str(res)!r}), 'bbox').run()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "has no attribute 'float'" in out.stderr


def test_patch_is_scoped_and_idempotent():
    import lvis.eval

    assert patch_lvis_numpy() is lvis_needs_patch()
    assert patch_lvis_numpy() is lvis_needs_patch()
    if lvis_needs_patch():
        assert lvis.eval.np.float is float and lvis.eval.np.cumsum is np.cumsum
        assert not hasattr(np, "float")  # numpy itself is untouched


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_eval_end_to_end(synthetic_lvis, iou_type):
    patch_lvis_numpy()
    perfect = _direct_lvis(
        synthetic_lvis.val_json, _to_lvis_results(_make_predictions(synthetic_lvis.val_json, perfect=True)), iou_type
    )
    assert perfect["AP"] == pytest.approx(1.0)
    noisy = _direct_lvis(
        synthetic_lvis.val_json, _to_lvis_results(_make_predictions(synthetic_lvis.val_json)), iou_type
    )
    assert 0.05 < noisy["AP"] < 0.95
    assert noisy["AP50"] > noisy["AP75"]
    assert {"APr", "APc", "APf", "APs", "APm", "APl"} <= set(noisy)


@pytest.mark.parametrize("backend", ["faster", "lvis"])
def test_detectron2_lvis_evaluator_matches_direct_lvis_api(synthetic_lvis, tmp_path, backend):
    """Our LVISEvaluator, scored by faster-coco-eval (default) or by the lvis package, against lvis directly."""
    from detectron2.structures import Boxes, BoxMode, Instances

    preds = _make_predictions(synthetic_lvis.val_json, seed=1)
    evaluator = LVISEvaluator(synthetic_lvis.val_name, distributed=False, output_dir=str(tmp_path), backend=backend)
    evaluator.reset()
    for img, dets in preds:
        h, w = img["height"], img["width"]
        inst = Instances((h, w))
        boxes = torch.tensor([d[1] for d in dets], dtype=torch.float64).reshape(-1, 4)
        inst.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS).float())
        inst.scores = torch.tensor([d[3] for d in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([d[0] - 1 for d in dets], dtype=torch.int64)
        inst.pred_masks = (
            torch.from_numpy(np.stack([d[2] for d in dets])) if dets else torch.zeros(0, h, w, dtype=torch.bool)
        )
        evaluator.process([{"image_id": img["id"], "height": h, "width": w}], [{"instances": inst}])
    d2 = evaluator.evaluate()
    # the same detections, as detectron2 wrote them, through the lvis API directly
    with open(tmp_path / "lvis_instances_results.json") as f:
        written = json.load(f)
    assert len(written) == sum(len(d) for _, d in preds)
    for iou_type in ("bbox", "segm"):
        direct = _direct_lvis(synthetic_lvis.val_json, written, iou_type)
        assert 5 < d2[iou_type]["AP"] < 95
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
            # detectron2 reports percent (an undefined -1 becomes -100)
            assert d2[iou_type][key] == pytest.approx(direct[key] * 100, abs=1e-9), (iou_type, key)
    # and the same as our own conversion of the detections (boxes/masks survive detectron2's conversion)
    ours = _direct_lvis(synthetic_lvis.val_json, _to_lvis_results(preds), "segm")
    assert d2["segm"]["AP"] == pytest.approx(ours["AP"] * 100, abs=1e-6)
