"""The synthetic dataset generator (COCO and LVIS v1 json) and its detectron2 registration."""

import filecmp
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from hieradet.data import CATEGORY_NAMES, annotation_files, generate_synthetic_dataset, register_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
    with open(path) as f:
        return json.load(f)


def _masks(ann_list, h, w):
    out = []
    for a in ann_list:
        segm = a["segmentation"]
        if isinstance(segm, list):
            rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
        else:
            rle = {"size": segm["size"], "counts": segm["counts"].encode()}
        out.append(mask_util.decode(rle).astype(bool))
    return out


def test_same_arguments_give_identical_files(tmp_path):
    a = generate_synthetic_dataset(str(tmp_path / "a"), num_train=4, num_val=2, image_size=96, seed=3, fmt="lvis")
    b = generate_synthetic_dataset(str(tmp_path / "b"), num_train=4, num_val=2, image_size=96, seed=3, fmt="lvis")
    c = generate_synthetic_dataset(str(tmp_path / "c"), num_train=4, num_val=2, image_size=96, seed=4, fmt="lvis")
    for split in ("train", "val"):
        assert filecmp.cmp(a[split], b[split], shallow=False)
        assert not filecmp.cmp(a[split], c[split], shallow=False)
        names = sorted(os.listdir(tmp_path / "a" / split))
        assert len(names) == (4 if split == "train" else 2)
        for n in names:
            assert filecmp.cmp(tmp_path / "a" / split / n, tmp_path / "b" / split / n, shallow=False)


def test_coco_json_is_valid_and_matches_the_images(synthetic_coco):
    for split, json_file in [("train", synthetic_coco.train_json), ("val", synthetic_coco.val_json)]:
        coco = COCO(json_file)  # pycocotools indexes it: ids unique, anns point to images
        data = _load(json_file)
        assert [c["name"] for c in data["categories"]] == list(CATEGORY_NAMES[:4])
        assert len(coco.getImgIds()) == (16 if split == "train" else 8)
        for img in data["images"]:
            path = os.path.join(synthetic_coco.root, split, img["file_name"])
            from PIL import Image

            with Image.open(path) as im:
                assert im.size == (img["width"], img["height"]) == (128, 128)
        for a in data["annotations"]:
            assert a["iscrowd"] == 0 and a["area"] >= 4
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 128 + 1e-6 and y + h <= 128 + 1e-6 and w > 0 and h > 0
            for poly in a["segmentation"]:
                assert len(poly) >= 6 and len(poly) % 2 == 0
            # area and box are what pycocotools computes from the polygons
            rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], 128, 128))
            assert a["area"] == pytest.approx(float(mask_util.area(rle)))
            assert a["bbox"] == pytest.approx(mask_util.toBbox(rle).tolist(), abs=0.01)
    train = _load(synthetic_coco.train_json)
    per_cat = Counter(a["category_id"] for a in train["annotations"])
    assert set(per_cat) == {1, 2, 3, 4}  # every category in train
    per_img = Counter(a["image_id"] for a in train["annotations"])
    assert max(per_img.values()) >= 3  # several objects per image
    areas = [a["area"] for a in train["annotations"]]
    assert min(areas) < 400 < 1500 < max(areas)  # varied sizes (small to large on a 128x128 image)


def test_rle_masks_are_disjoint_visible_parts_and_polygons_follow_them(tmp_path):
    """Same seed: the RLE and polygon datasets have identical images; the RLE masks are the exact visible
    parts (never overlapping: occluded pixels belong to the occluder), and the polygons cover them closely."""
    kw = dict(num_train=6, num_val=1, image_size=128, seed=1, max_objects=8)
    rle = generate_synthetic_dataset(str(tmp_path / "rle"), mask_format="rle", **kw)
    poly = generate_synthetic_dataset(str(tmp_path / "poly"), mask_format="polygon", **kw)
    for n in os.listdir(tmp_path / "rle" / "train"):
        assert filecmp.cmp(tmp_path / "rle" / "train" / n, tmp_path / "poly" / "train" / n, shallow=False)
    d_rle, d_poly = _load(rle["train"]), _load(poly["train"])
    occluded = 0
    ious = []
    for img in d_rle["images"]:
        anns_r = [a for a in d_rle["annotations"] if a["image_id"] == img["id"]]
        anns_p = [a for a in d_poly["annotations"] if a["image_id"] == img["id"]]
        assert [a["category_id"] for a in anns_r] == [a["category_id"] for a in anns_p]
        m_r, m_p = _masks(anns_r, 128, 128), _masks(anns_p, 128, 128)
        total = np.sum(m_r, axis=0)
        assert total.max() <= 1, "visible masks overlap"
        for a, b in zip(m_r, m_p):
            ious.append((a & b).sum() / (a | b).sum())
        # an object partly covered by a later one: its box holds pixels of the later object's mask
        for i, a in enumerate(m_r):
            ys, xs = np.nonzero(a)
            box = np.zeros_like(a)
            box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
            occluded += any((box & a2 & _dilate(a)).any() for a2 in m_r[i + 1 :])
    assert np.median(ious) > 0.8
    assert occluded >= 1


def _dilate(m):
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def test_lvis_json_has_long_tail_and_per_image_fields(synthetic_lvis):
    from lvis import LVIS

    train, val = _load(synthetic_lvis.train_json), _load(synthetic_lvis.val_json)
    LVIS(synthetic_lvis.train_json)  # the official API indexes it
    cats = train["categories"]
    assert cats == val["categories"]  # as in LVIS v1: train statistics in both files
    assert len(cats) == synthetic_lvis.num_classes == 10
    assert {c["frequency"] for c in cats} == {"r", "c", "f"}
    imgs_with = {c["id"]: {a["image_id"] for a in train["annotations"] if a["category_id"] == c["id"]} for c in cats}
    for c in cats:
        assert {"synset", "synonyms", "def", "image_count", "instance_count"} <= set(c)
        assert c["image_count"] == len(imgs_with[c["id"]]) >= 1
        assert c["instance_count"] == sum(a["category_id"] == c["id"] for a in train["annotations"])
    # frequency follows image_count monotonically: r < c < f
    order = {"r": 0, "c": 1, "f": 2}
    by_count = sorted(cats, key=lambda c: c["image_count"])
    assert [order[c["frequency"]] for c in by_count] == sorted(order[c["frequency"]] for c in cats)
    # long tail: the most frequent category has many more instances than the rarest
    counts = sorted(c["instance_count"] for c in cats)
    assert counts[-1] >= 8 * counts[0]

    n_neg = n_nonex = 0
    for data in (train, val):
        present = {}
        for a in data["annotations"]:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
            for poly in a["segmentation"]:
                assert len(poly) >= 6 and len(poly) % 2 == 0
        for img in data["images"]:
            pos = present.get(img["id"], set())
            assert not set(img["neg_category_ids"]) & pos
            assert set(img["not_exhaustive_category_ids"]) <= pos
            assert img["coco_url"].endswith(f"/{'train' if data is train else 'val'}/{img['file_name']}")
            n_neg += len(img["neg_category_ids"])
            n_nonex += len(img["not_exhaustive_category_ids"])
    assert n_neg > 0 and n_nonex > 0


def test_registered_datasets_load_in_detectron2(synthetic_coco, synthetic_lvis):
    from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
    from detectron2.data import transforms as T

    for ns, fmt in [(synthetic_coco, "coco"), (synthetic_lvis, "lvis")]:
        for name, json_file, n in [(ns.train_name, ns.train_json, 16), (ns.val_name, ns.val_json, 8)]:
            dicts = DatasetCatalog.get(name)
            meta = MetadataCatalog.get(name)
            assert len(dicts) == n
            assert meta.evaluator_type == fmt and meta.json_file == json_file
            assert len(meta.thing_classes) == ns.num_classes
            n_anns = len(_load(json_file)["annotations"])
            assert sum(len(d["annotations"]) for d in dicts) == n_anns
            assert all(os.path.isfile(d["file_name"]) for d in dicts)
            cats = {a["category_id"] for d in dicts for a in d["annotations"]}
            assert cats <= set(range(ns.num_classes))  # contiguous 0-based
        if fmt == "lvis":
            assert "neg_category_ids" in dicts[0] and "not_exhaustive_category_ids" in dicts[0]
            assert len(meta.class_image_count) == ns.num_classes
    d = DatasetCatalog.get(synthetic_coco.train_name)[0]
    mapper = DatasetMapper(
        is_train=True, augmentations=[T.ResizeShortestEdge(96, 96)], image_format="RGB", use_instance_mask=True
    )
    out = mapper(d)
    assert out["image"].shape == (3, 96, 96)
    inst = out["instances"]
    assert len(inst) == len(d["annotations"]) and inst.gt_masks.polygons


def test_registration_is_idempotent_and_rejects_clashes(tmp_path, synthetic_coco):
    # same files, same prefix: a no-op returning the same names
    prefix = synthetic_coco.train_name[: -len("_train")]
    assert register_synthetic_dataset(synthetic_coco.root, prefix=prefix) == (
        synthetic_coco.train_name,
        synthetic_coco.val_name,
    )
    other = tmp_path / "other"
    generate_synthetic_dataset(str(other), num_train=1, num_val=1, image_size=64)
    with pytest.raises(ValueError, match="already registered"):
        register_synthetic_dataset(str(other), prefix=prefix)


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no synthetic dataset under"):
        register_synthetic_dataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="fmt must be"):
        generate_synthetic_dataset(str(tmp_path / "x"), fmt="voc")
    with pytest.raises(ValueError, match="at least 32 pixels"):
        generate_synthetic_dataset(str(tmp_path / "x"), image_size=16)
    with pytest.raises(ValueError, match="polygons only"):
        generate_synthetic_dataset(str(tmp_path / "x"), fmt="lvis", mask_format="rle")
    with pytest.raises(ValueError, match="num_categories"):
        generate_synthetic_dataset(str(tmp_path / "x"), num_categories=99)
    with pytest.raises(ValueError, match="at least one image"):
        generate_synthetic_dataset(str(tmp_path / "x"), num_val=0)
    # corrupt and empty annotation files
    root = tmp_path / "corrupt"
    paths = annotation_files(str(root), "coco")
    os.makedirs(os.path.dirname(paths["train"]))
    for p in paths.values():
        with open(p, "w") as f:
            f.write('{"images": [], "annot')
    with pytest.raises(ValueError, match="not valid json"):
        register_synthetic_dataset(str(root), prefix="corrupt_case")
    for p in paths.values():
        with open(p, "w") as f:
            json.dump({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}, f)
    with pytest.raises(ValueError, match="has no images"):
        register_synthetic_dataset(str(root), prefix="empty_case")


def test_cli_writes_a_dataset(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "generate_dataset.py"),
            "--output",
            str(tmp_path),
            "--format",
            "lvis",
            "--num-train",
            "8",
            "--num-val",
            "2",
            "--image-size",
            "64",
            "96",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "train: 8 images" in out.stdout and "val: 2 images" in out.stdout
    img = _load(annotation_files(str(tmp_path), "lvis")["val"])["images"][0]
    assert (img["height"], img["width"]) == (64, 96)
    bad = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "generate_dataset.py"),
            "--output",
            str(tmp_path),
            "--format",
            "lvis",
            "--mask-format",
            "rle",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "polygons only" in bad.stderr
