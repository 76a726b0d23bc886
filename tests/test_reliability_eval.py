"""Evaluation gives the numbers of the reference APIs: hieradet's COCOEvaluator, built from the evaluator node of
``configs/common/coco_loader_lsj.py`` as every COCO config uses it (and detectron2's own evaluator beside it), vs.
pycocotools' COCOeval, and hieradet's LVISEvaluator vs. lvis' LVISEval, on the same files and detections."""

import copy
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator as D2COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hieradet import evaluation
from hieradet.data import generate_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _fake_detections(gt, seed=0):
    """Detections made from the ground truth: shifted boxes, dropped and duplicated objects, false positives,
    random scores, so that AP is neither 0 nor 100."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        for _ in range(1 + (rng.random() < 0.2)):
            dx, dy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
            cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice(cats))
            dets.append(
                dict(image_id=a["image_id"], category_id=cat, bbox=[x + dx, y + dy, w, h], score=float(rng.random()))
            )
    for img in gt["images"]:
        H, W = sizes[img["id"]]
        x, y = rng.uniform(0, W / 2), rng.uniform(0, H / 2)
        dets.append(
            dict(
                image_id=img["id"],
                category_id=int(rng.choice(cats)),
                bbox=[x, y, W / 4, H / 4],
                score=float(rng.random()),
            )
        )
    for d in dets:  # a box mask as the segmentation, clipped to the image
        H, W = sizes[d["image_id"]]
        m = np.zeros((H, W), dtype=np.uint8, order="F")
        x, y, w, h = d["bbox"]
        m[max(int(y), 0) : max(int(y + h), 0), max(int(x), 0) : max(int(x + w), 0)] = 1
        d["mask"] = m
    return dets


def _to_outputs(dets, gt, contiguous):
    """The same detections as detectron2 model outputs (XYXY boxes, contiguous classes, bool masks)."""
    per_image = {img["id"]: [] for img in gt["images"]}
    for d in dets:
        per_image[d["image_id"]].append(d)
    inputs, outputs = [], []
    for img in gt["images"]:
        ds = per_image[img["id"]]
        inst = Instances((img["height"], img["width"]))
        inst.pred_boxes = Boxes(
            torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in ds)]).reshape(-1, 4)
        )
        inst.scores = torch.tensor([d["score"] for d in ds])
        inst.pred_classes = torch.tensor([contiguous[d["category_id"]] for d in ds], dtype=torch.long)
        inst.pred_masks = torch.from_numpy(np.stack([d["mask"] for d in ds])).bool()
        inputs.append({"image_id": img["id"], "height": img["height"], "width": img["width"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def _reference_results(dets, task):
    res = []
    for d in dets:
        r = {k: d[k] for k in ("image_id", "category_id", "score")}
        # the model outputs hold float32 XYXY boxes, converted to XYWH in float32 by the evaluators; give the
        # reference the same float32 numbers (an area of exactly 32**2 must not become 1023.9999 on one side)
        x, y, w, h = d["bbox"]
        xyxy = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
        r["bbox"] = BoxMode.convert(xyxy, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)[0].tolist()
        if task == "segm":
            rle = mask_util.encode(np.asfortranarray(d["mask"]))
            rle["counts"] = rle["counts"].decode("utf-8")
            r["segmentation"] = rle
            del r["bbox"]
        res.append(r)
    return res


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_coco")
    paths = generate_synthetic_dataset(str(root), num_train=1, num_val=8, image_size=128, seed=5)
    name = "reliability_eval_coco_val"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, paths["val"], str(root / "val"))
    with open(paths["val"]) as f:
        gt = json.load(f)
    return name, paths["val"], gt, str(root)


def _configs_evaluator(name, task, output_dir):
    """The evaluator exactly as the COCO configs declare it (only the dataset, task and output folder set)."""
    node = LazyConfig.load(os.path.join(ROOT, "configs", "common", "coco_loader_lsj.py")).dataloader.evaluator
    node.update(dataset_name=name, tasks=(task,), distributed=False, output_dir=output_dir)
    evaluator = instantiate(node)
    assert type(evaluator) is evaluation.COCOEvaluator and evaluator._backend == "faster"
    return evaluator


@pytest.mark.parametrize("which", ["configs", "detectron2"])
@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_coco_evaluator_matches_pycocotools(coco, task, which, tmp_path):
    name, json_file, gt, _ = coco
    DatasetCatalog.get(name)  # sets the contiguous id map
    contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    dets = _fake_detections(gt)
    if which == "configs":
        evaluator = _configs_evaluator(name, task, str(tmp_path))
    else:
        evaluator = D2COCOEvaluator(name, tasks=(task,), distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    evaluator.process(*_to_outputs(dets, gt, contiguous))
    ours = evaluator.evaluate()[task]

    ref_gt = COCO(json_file)
    ref = COCOeval(ref_gt, ref_gt.loadRes(_reference_results(dets, task)), task)
    ref.evaluate()
    ref.accumulate()
    ref.summarize()
    expected = dict(zip(STATS, (100 * ref.stats[:6]).tolist()))
    assert 5 < expected["AP"] < 95, expected  # a non-trivial score, so a mismatch would show
    for k in STATS:
        if np.isnan(expected[k]) or expected[k] < 0:  # no objects of that size: detectron2 reports nan
            assert np.isnan(ours[k]) or ours[k] < 0, k
        else:
            assert ours[k] == pytest.approx(expected[k], abs=1e-6), k


def test_lvis_evaluator_matches_lvis_api(tmp_path, monkeypatch):
    from lvis import LVIS, LVISEval, LVISResults

    from hieradet.data import register_synthetic_dataset

    root = tmp_path / "lvis"
    paths = generate_synthetic_dataset(str(root), num_train=1, num_val=8, image_size=128, seed=6, fmt="lvis")
    _, val_name = register_synthetic_dataset(str(root), prefix="reliability_eval_lvis", fmt="lvis")
    with open(paths["val"]) as f:
        gt = json.load(f)
    DatasetCatalog.get(val_name)
    contiguous = {c["id"]: i for i, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))}
    dets = _fake_detections(gt, seed=1)
    evaluator = evaluation.LVISEvaluator(val_name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    evaluator.process(*_to_outputs(dets, gt, contiguous))
    ours = evaluator.evaluate()["bbox"]

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float, gone in NumPy >= 1.24
    lvis_gt = LVIS(paths["val"])
    ref = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(_reference_results(dets, "bbox"))), "bbox")
    ref.run()
    expected = {k: 100 * v for k, v in ref.get_results().items()}
    assert 5 < expected["AP"] < 95, expected
    for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
        if expected[k] < 0:
            continue
        assert ours[k] == pytest.approx(expected[k], abs=1e-6), k
