"""Reliability of training on awkward data: images without annotations, zero-area boxes, box-only datasets
(no masks), NaN/inf inputs and non-finite losses. Each runs ``hieradet.engine.do_train`` for a few
iterations of a tiny Mask R-CNN on a generated dataset (CPU)."""

import copy
import json
import math
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data.datasets import register_coco_instances
from detectron2.utils.events import EventStorage
from torch import nn

from hieradet.data import generate_synthetic_dataset
from hieradet.engine import do_train
from hieradet.engine.box_only import auto_box_only, dataset_has_masks, set_box_only
from hieradet.engine.guards import with_input_guard
from hieradet.testing import tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 96


def _register(name, json_file, image_root):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)
    return name


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Three variants of one generated 4-image dataset: 'clean', 'edge' (no annotations on two images,
    zero-width / zero-height boxes on the others) and 'boxonly' (no segmentation anywhere)."""
    root = str(tmp_path_factory.mktemp("reliability_data"))
    paths = generate_synthetic_dataset(root, num_train=4, num_val=2, image_size=IMAGE_SIZE, seed=3)
    with open(paths["train"]) as f:
        clean = json.load(f)
    image_root = os.path.join(root, "train")
    assert len(clean["images"]) == 4 and clean["annotations"]

    edge = copy.deepcopy(clean)
    empty_ids = {img["id"] for img in edge["images"][:2]}
    edge["annotations"] = [a for a in edge["annotations"] if a["image_id"] not in empty_ids]
    next_id = max(a["id"] for a in clean["annotations"]) + 1
    for k, img in enumerate(edge["images"][2:]):
        for bbox in ([10.0, 12.0, 0.0, 20.0], [30.0, 40.0, 15.0, 0.0]):  # zero width, zero height
            x, y, w, h = bbox
            edge["annotations"].append(
                {
                    "id": next_id,
                    "image_id": img["id"],
                    "category_id": clean["categories"][k % len(clean["categories"])]["id"],
                    "bbox": bbox,
                    "area": 0.0,
                    "iscrowd": 0,
                    # a valid (non-degenerate) polygon, so detectron2's loader keeps the annotation
                    "segmentation": [[x, y, x + 1, y, x, y + 1]],
                }
            )
            next_id += 1

    boxonly = copy.deepcopy(clean)
    for a in boxonly["annotations"]:
        del a["segmentation"]

    names = {}
    for variant, data in (("clean", clean), ("edge", edge), ("boxonly", boxonly)):
        json_file = os.path.join(root, f"{variant}.json")
        with open(json_file, "w") as f:
            json.dump(data, f)
        names[variant] = _register(f"reliability_{variant}_train", json_file, image_root)
    names["num_classes"] = len(clean["categories"])
    names["val_json"] = paths["val"]
    names["root"] = root
    return names


def _config(datasets, variant, tmp_path, out="out", **kw):
    kw.setdefault("max_iter", 2)
    return tiny_train_config(
        [datasets[variant]],
        None,
        str(tmp_path / out),
        num_classes=datasets["num_classes"],
        image_size=IMAGE_SIZE,
        **kw,
    )


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_empty_images_and_zero_area_boxes_train(datasets, tmp_path):
    dicts = DatasetCatalog.get(datasets["edge"])
    assert sum(not d["annotations"] for d in dicts) == 2
    assert any(a["bbox"][2] == 0 for d in dicts for a in d["annotations"])
    # batch 2, 2 iterations: one epoch, every image (both empty ones included) is seen once
    cfg = _config(datasets, "edge", tmp_path)
    do_train(cfg)
    rows = _metrics(cfg.train.output_dir)
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:
        total = sum(v for k, v in r.items() if k.startswith("loss_"))
        assert math.isfinite(total) and total > 0, r
        assert "loss_mask" in r


def test_box_only_dataset_needs_no_masks(datasets, tmp_path):
    assert dataset_has_masks(datasets["clean"]) is True
    assert dataset_has_masks(datasets["boxonly"]) is False
    cfg = _config(datasets, "boxonly", tmp_path)
    # detectron2's Mask R-CNN config assumes masks: on box-only data the mask loss has nothing to read
    mapper = instantiate(cfg.dataloader.train.mapper)
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(datasets["boxonly"])[:2]]
    assert all(len(b["instances"]) for b in batch)
    model = instantiate(cfg.model).train()
    with EventStorage(0), pytest.raises(AttributeError, match="gt_masks"):
        model(batch)

    # the switch by hand
    cfg = _config(datasets, "boxonly", tmp_path, out="box_only")
    assert auto_box_only(cfg) is True
    assert cfg.model.roi_heads.mask_head is None and cfg.dataloader.train.mapper.use_instance_mask is False
    # a dataset with masks is left alone
    clean = _config(datasets, "clean", tmp_path)
    assert auto_box_only(clean) is False and clean.model.roi_heads.mask_head is not None

    # do_train applies it by itself
    cfg = _config(datasets, "boxonly", tmp_path, out="auto")
    assert cfg.model.roi_heads.mask_head is not None
    do_train(cfg)
    assert cfg.model.roi_heads.mask_head is None and cfg.dataloader.train.mapper.use_instance_mask is False
    rows = _metrics(cfg.train.output_dir)
    assert len(rows) == 2
    assert all("loss_mask" not in r and math.isfinite(r["loss_box_reg"]) for r in rows)


def test_mixed_mask_and_box_annotations_are_named(datasets, tmp_path):
    with pytest.raises(ValueError, match=r"mixes annotations with and without 'segmentation'"):
        dataset_has_masks([datasets["clean"], datasets["boxonly"]])


def test_box_only_switch_fixes_the_lsj_loader(datasets):
    """The shared LSJ loader recomputes boxes from masks, which asserts on box-only data (detectron2 #4416)."""
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "common", "coco_loader_lsj.py"))
    cfg.model = tiny_train_config([datasets["boxonly"]], None, "unused", num_classes=4).model
    flip, scale, crop = cfg.dataloader.train.mapper.augmentations
    flip.prob = 0.0
    scale.update(min_scale=1.0, max_scale=1.0, target_height=IMAGE_SIZE, target_width=IMAGE_SIZE)
    crop.crop_size = (IMAGE_SIZE, IMAGE_SIZE)
    with pytest.raises(AssertionError, match="recompute_boxes requires instance masks"):
        cfg.dataloader.train.mapper.use_instance_mask = False
        instantiate(cfg.dataloader.train.mapper)
    set_box_only(cfg)
    mapper = instantiate(cfg.dataloader.train.mapper)
    out = mapper(copy.deepcopy(DatasetCatalog.get(datasets["boxonly"])[0]))
    inst = out["instances"]
    assert not inst.has("gt_masks") and len(inst) > 0
    assert out["image"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)


class _NaNLossAt(nn.Module):
    """Wraps a detector; its ``loss_cls`` becomes NaN at one iteration (a diverging run)."""

    def __init__(self, model, iteration):
        super().__init__()
        self.model, self.iteration, self.calls = model, iteration, 0

    def forward(self, batched_inputs):
        losses = self.model(batched_inputs)
        if self.training and self.calls == self.iteration:
            losses["loss_cls"] = losses["loss_cls"] * float("nan")
        self.calls += 1
        return losses


def test_non_finite_loss_stops_with_the_iteration(datasets, tmp_path):
    cfg = _config(datasets, "clean", tmp_path, max_iter=4)
    cfg.model = L(_NaNLossAt)(model=cfg.model, iteration=2)
    with pytest.raises(FloatingPointError, match=r"Loss became infinite or NaN at iteration=2"):
        do_train(cfg)
    rows = _metrics(cfg.train.output_dir)
    assert [r["iteration"] for r in rows][:2] == [0, 1]
    # no NaN was logged as if it were a loss
    assert all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("loss_"))
    assert all("loss_cls" not in r for r in rows if r["iteration"] == 2)


class _NaNImageMapper:
    """A dataset mapper whose images are float and carry NaN (or inf) for one file."""

    def __init__(self, bad_index, value, **mapper_kwargs):
        self.inner = DatasetMapper(**mapper_kwargs)
        self.bad_index, self.value, self.count = bad_index, value, 0

    def __call__(self, record):
        out = self.inner(record)
        out["image"] = out["image"].float()
        if self.count == self.bad_index:
            out["image"][0, 5:9, 5:9] = self.value
        self.count += 1
        return out


def _nan_input_config(datasets, tmp_path, value):
    cfg = _config(datasets, "clean", tmp_path, max_iter=3, augment=False)
    mapper = dict(cfg.dataloader.train.mapper)
    mapper.pop("_target_")
    # image 3 of the stream = the second image of iteration 1 (batch 2)
    cfg.dataloader.train.mapper = L(_NaNImageMapper)(bad_index=3, value=value, **mapper)
    return cfg


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input_stops_with_the_iteration_and_image(datasets, tmp_path, value):
    cfg = _nan_input_config(datasets, tmp_path, value)
    cfg.model = L(with_input_guard)(model=cfg.model)
    kind = "16 NaN and 0 inf" if math.isnan(value) else "0 NaN and 16 inf"
    with pytest.raises(FloatingPointError, match=rf"non-finite input at iteration 1: image 1 .*\.jpg\) has {kind}"):
        do_train(cfg)


def test_do_train_guards_the_inputs_by_default(datasets, tmp_path):
    """do_train installs the guard itself. Without it detectron2 still stops (no silent garbage), but its message
    names neither the input nor the iteration."""
    cfg = _nan_input_config(datasets, tmp_path, float("nan"))
    with pytest.raises(FloatingPointError, match=r"non-finite input at iteration 1: image 1 .*\.jpg\) has 16 NaN"):
        do_train(cfg)

    cfg = _nan_input_config(datasets, tmp_path, float("nan"))
    model = instantiate(cfg.model).train()  # no guard
    stream = iter(instantiate(cfg.dataloader.train))
    next(stream)
    batch = next(stream)  # iteration 1: its second image has the NaNs
    assert torch.isnan(batch[1]["image"]).any()
    with EventStorage(1), pytest.raises(FloatingPointError, match="Predicted boxes or scores contain Inf/NaN"):
        model(batch)


def test_guard_does_not_change_a_clean_run(datasets, tmp_path):
    """The guard is a pre-hook only: on clean data the weights, the training losses and the predictions are
    bit-identical with and without it, and it is really installed (the same model rejects a NaN image)."""
    cfg = _config(datasets, "clean", tmp_path, augment=False)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    mapper = instantiate(cfg.dataloader.train.mapper)
    batch = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(datasets["clean"])[:2]]

    def run(m):
        m.train()
        torch.manual_seed(1)  # the RPN / ROI samplers draw random subsets
        with EventStorage(0):
            losses = {k: v.detach() for k, v in m(copy.deepcopy(batch)).items()}
        m.eval()
        with torch.no_grad():
            inst = m([{"image": b["image"], "height": IMAGE_SIZE, "width": IMAGE_SIZE} for b in batch])
        return losses, [(o["instances"].pred_boxes.tensor, o["instances"].scores) for o in inst]

    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain_losses, plain_preds = run(model)
    assert with_input_guard(model) is model
    guarded_losses, guarded_preds = run(model)

    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert plain_losses.keys() == guarded_losses.keys() and "loss_mask" in plain_losses
    for k, v in plain_losses.items():
        assert torch.isfinite(v) and torch.equal(v, guarded_losses[k]), k
    assert len(plain_preds) == len(guarded_preds) == 2
    for (boxes, scores), (g_boxes, g_scores) in zip(plain_preds, guarded_preds):
        assert torch.equal(boxes, g_boxes) and torch.equal(scores, g_scores)

    bad = copy.deepcopy(batch)
    bad[1]["image"] = bad[1]["image"].float()
    bad[1]["image"][0, 0, 0] = float("nan")
    with EventStorage(0), pytest.raises(FloatingPointError, match="image 1 of the batch"):
        model.train()(bad)


def test_clip_grad_norm_clips_and_logs_the_norm(datasets, tmp_path):
    cfg = _config(datasets, "clean", tmp_path, out="clip")
    cfg.train.clip_grad_norm = 1e-3  # far below any real norm: every step is clipped
    do_train(cfg)
    norms = [row["grad_norm"] for row in _metrics(cfg.train.output_dir) if "grad_norm" in row]
    assert norms and all(n > 1e-3 for n in norms)  # logged before clipping

    cfg = _config(datasets, "clean", tmp_path, out="clip_bad")
    cfg.train.clip_grad_norm = -1.0
    with pytest.raises(ValueError, match="max_norm"):
        do_train(cfg)
