"""A deterministic generator of small instance-segmentation datasets in COCO and LVIS v1 json formats.

Every image is a cluttered, textured background (gradients, noise, random strokes and small blobs that are
*not* objects) with a few geometric objects (the categories: circle, square, triangle, star, ...) of random
size, aspect, rotation, colour and texture. Objects are painted back to front and may occlude each other;
each annotation is the *visible* part of its object, as polygons (default) or compressed RLE.

Layout written under ``root``::

    root/train/000000000001.jpg ...           images of the train split
    root/val/000000000017.jpg ...             images of the val split
    root/annotations/instances_{train,val}.json   (fmt="coco")
    root/annotations/lvis_v1_{train,val}.json     (fmt="lvis")

The LVIS variant has what LVIS code reads: per-category ``frequency`` (``"r"``/``"c"``/``"f"`` from the number
of train images that contain the category), ``image_count``, ``instance_count``, ``synset``, ``synonyms``,
``def``; per-image ``neg_category_ids`` (categories verified absent) and ``not_exhaustive_category_ids``
(categories whose instances were not all annotated: some painted instances are left out of the json), and
``coco_url`` (detectron2 derives the image path from it). Category sampling is long-tailed (Zipf-like), and the
rarest categories are capped to a few train images, so all three frequency groups occur.

The output depends only on the arguments: the same call writes byte-identical files.
"""

import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["CATEGORY_NAMES", "generate_synthetic_dataset", "annotation_files"]

# Shapes the generator can draw; a dataset uses the first ``num_categories`` of them.
CATEGORY_NAMES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "crescent",
    "hexagon",
    "heart",
    "arrow",
    "ellipse",
    "ring_sector",
    "lshape",
)

_DEFS = {
    "circle": "a round disk",
    "square": "a four-sided shape with equal sides (possibly stretched and rotated)",
    "triangle": "a three-sided polygon",
    "star": "a five-pointed star",
    "cross": "a plus-shaped cross",
    "crescent": "a disk with an offset disk cut out of it",
    "hexagon": "a six-sided polygon",
    "heart": "a heart shape",
    "arrow": "an arrow with a head and a shaft",
    "ellipse": "an elongated oval",
    "ring_sector": "a thick arc, part of an annulus",
    "lshape": "an L-shaped polygon",
}

_TEXTURES = ("solid", "stripes", "checker", "gradient", "noise")
_DEFAULT_STYLE = dict(textures=_TEXTURES, size_range=(0.06, 0.28), background_noise=12.0, category_colours=False)


def annotation_files(root: str, fmt: str) -> Dict[str, str]:
    """Paths of the ``train`` and ``val`` json files a dataset of format ``fmt`` has under ``root``."""
    if fmt not in ("coco", "lvis"):
        raise ValueError(f"fmt must be 'coco' or 'lvis', got {fmt!r}")
    stem = "instances" if fmt == "coco" else "lvis_v1"
    return {split: os.path.join(root, "annotations", f"{stem}_{split}.json") for split in ("train", "val")}


# ----------------------------------------------------------------------------------------------- drawing


def _poly_mask(h: int, w: int, pts: np.ndarray) -> np.ndarray:
    import cv2

    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _transform(pts: np.ndarray, cx: float, cy: float, r: float, aspect: float, angle: float) -> np.ndarray:
    """Unit-radius points -> image coordinates: stretch x by ``aspect``, rotate, scale by ``r``, move."""
    pts = pts * np.array([aspect, 1.0 / aspect])
    c, s = math.cos(angle), math.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return rot * r + np.array([cx, cy])


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(t), np.sin(t)], 1)


def _shape_mask(kind: str, h: int, w: int, cx, cy, r, aspect, angle) -> np.ndarray:
    def poly(unit):
        return _poly_mask(h, w, _transform(unit, cx, cy, r, aspect, angle))

    if kind == "circle":
        return poly(_regular(48))
    if kind == "ellipse":
        return _poly_mask(h, w, _transform(_regular(48), cx, cy, r, max(aspect, 1 / aspect, 1.0) * 1.5, angle))
    if kind == "square":
        return poly(_regular(4, math.pi / 4))
    if kind == "triangle":
        return poly(_regular(3, -math.pi / 2))
    if kind == "hexagon":
        return poly(_regular(6))
    if kind == "star":
        outer, inner = _regular(5, -math.pi / 2), 0.42 * _regular(5, -math.pi / 2 + math.pi / 5)
        return poly(np.stack([outer, inner], 1).reshape(-1, 2))
    if kind == "cross":
        a, b = 1.0, 0.33
        quarter = [(-b, -a), (b, -a), (b, -b)]  # one arm; the others are its rotations by 90 degrees
        pts = [(x * c - y * s, x * s + y * c) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1)) for x, y in quarter]
        return poly(np.array(pts, float))
    if kind == "lshape":
        pts = [(-0.8, -1.0), (-0.2, -1.0), (-0.2, 0.4), (0.8, 0.4), (0.8, 1.0), (-0.8, 1.0)]
        return poly(np.array(pts, float))
    if kind == "arrow":
        pts = [(-1.0, -0.22), (0.2, -0.22), (0.2, -0.6), (1.0, 0.0), (0.2, 0.6), (0.2, 0.22), (-1.0, 0.22)]
        return poly(np.array(pts, float))
    if kind == "heart":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return poly(np.stack([x, y], 1) / 16.0)
    if kind == "crescent":
        disk = poly(_regular(48))
        c, s = math.cos(angle), math.sin(angle)
        cut = _poly_mask(h, w, _regular(48) * r * 0.85 + np.array([cx + 0.45 * r * c, cy + 0.45 * r * s]))
        return disk & ~cut
    if kind == "ring_sector":
        t = np.linspace(-0.75 * math.pi, 0.75 * math.pi, 40)
        outer = np.stack([np.cos(t), np.sin(t)], 1)
        return poly(np.concatenate([outer, 0.5 * outer[::-1]]))
    raise ValueError(f"unknown shape {kind!r}")


def _hsv_colour(rng: np.random.Generator, sat=(0.4, 1.0), val=(0.35, 1.0)) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))) * 255.0


def _category_colour(rng: np.random.Generator, cat: int, k: int) -> np.ndarray:
    """A saturated colour whose hue is fixed by the category (``cat`` of ``k``), jittered slightly."""
    import colorsys

    hue = (cat / k + rng.uniform(-0.25, 0.25) / k) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0))) * 255.0


def _texture(rng: np.random.Generator, h: int, w: int, kind: str, c1: Optional[np.ndarray] = None) -> np.ndarray:
    """An (h, w, 3) float image with a texture in random colours (the first one is ``c1`` when given)."""
    c1 = _hsv_colour(rng) if c1 is None else c1
    if kind == "solid":
        return np.broadcast_to(c1, (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c2 = _hsv_colour(rng)
    theta = rng.uniform(0, math.pi)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == "stripes":
        period = rng.uniform(4, 12)
        t = ((proj / period) % 1.0 < 0.5).astype(np.float32)
    elif kind == "checker":
        cell = rng.uniform(3, 10)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    elif kind == "gradient":
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == "noise":
        return np.clip(c1 + rng.normal(0, 40, (h, w, 3)), 0, 255)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _background(rng: np.random.Generator, h: int, w: int, clutter: int, noise: float = 12.0) -> np.ndarray:
    import cv2

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = _hsv_colour(rng, (0.0, 0.6), (0.2, 0.9)), _hsv_colour(rng, (0.0, 0.6), (0.2, 0.9))
    theta = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    t = ((proj - proj.min()) / max(float(np.ptp(proj)), 1.0))[..., None]
    img = c1 * (1 - t) + c2 * t
    img = img + rng.normal(0, noise, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    # clutter: thin strokes and small blobs that are not objects
    for _ in range(clutter):
        colour = tuple(float(v) for v in _hsv_colour(rng, (0.0, 1.0), (0.1, 1.0)))
        if rng.random() < 0.6:
            p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
        else:
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(1, max(2, w // 40) + 1)), int(rng.integers(1, max(2, h // 40) + 1)))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, lineType=cv2.LINE_AA)
    return img.astype(np.float32)


# ------------------------------------------------------------------------------------------- annotations


def _mask_to_polygons(mask: np.ndarray, min_area: float) -> List[List[float]]:
    """Outer contours of ``mask`` as COCO polygons (x, y pixel-corner coordinates), dropping specks."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if cv2.contourArea(c) < min_area or len(c) < 3:
            continue
        # contour points are pixel indexes; +0.5 puts the vertex on the pixel centre
        polys.append([round(float(v) + 0.5, 2) for v in c.reshape(-1)])
    return polys


def _encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _segm_stats(segm, h: int, w: int) -> Tuple[float, List[float]]:
    """Area and XYWH box of a polygon list or an RLE, as pycocotools (and so COCOeval) computes them."""
    from pycocotools import mask as mask_util

    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    else:
        rle = {"size": segm["size"], "counts": segm["counts"].encode("ascii")}
    return float(mask_util.area(rle)), [round(float(v), 2) for v in mask_util.toBbox(rle)]


def _render_image(
    rng, h, w, cat_probs, cat_caps, counts, max_objects, min_visible, clutter, mask_format, force=None, style=None
):
    """One image: (uint8 HxWx3 array, list of objects {category (0-based), segmentation, area, bbox}).
    ``force``: a category the topmost object gets (so it is never occluded). ``style``: dict with ``textures``,
    ``size_range``, ``background_noise``, ``category_colours`` (see :func:`generate_synthetic_dataset`)."""
    style = style or _DEFAULT_STYLE
    textures, (r_min, r_max) = style["textures"], style["size_range"]
    img = _background(rng, h, w, clutter, style["background_noise"])
    n = int(rng.integers(1, max_objects + 1))
    side = min(h, w)
    candidates = []
    for j in range(n):
        # capped categories are full at their cap, and on an image that forces a category
        full = [cap is not None and (count >= cap or force is not None) for cap, count in zip(cat_caps, counts)]
        probs = np.array([0.0 if f else p for f, p in zip(full, cat_probs)])
        if probs.sum() == 0:
            break
        cat = int(rng.choice(len(probs), p=probs / probs.sum()))
        if force is not None and j == n - 1:
            cat = force
        r = side * math.exp(rng.uniform(math.log(r_min), math.log(r_max)))
        aspect = math.exp(rng.uniform(-0.35, 0.35))
        angle = rng.uniform(0, 2 * math.pi)
        cx, cy = rng.uniform(0.05 * w, 0.95 * w), rng.uniform(0.05 * h, 0.95 * h)
        mask = _shape_mask(CATEGORY_NAMES[cat], h, w, cx, cy, r, aspect, angle)
        if mask.sum() < 16:
            continue
        candidates.append((cat, mask, textures[int(rng.integers(len(textures)))]))
    # visibility from the top (last painted) down: an object hidden too much is not painted at all
    kept, above = [], np.zeros((h, w), bool)
    for cat, mask, tex in reversed(candidates):
        visible = mask & ~above
        if visible.sum() < min_visible * mask.sum():
            continue
        kept.append((cat, mask, visible, tex))
        above |= mask
    kept.reverse()
    objects = []
    for cat, mask, visible, tex in kept:
        c1 = _category_colour(rng, cat, len(cat_probs)) if style["category_colours"] else None
        img[mask] = _texture(rng, h, w, tex, c1)[mask]
        if mask_format == "polygon":
            segm = _mask_to_polygons(visible, min_area=2.0)
            if not segm:
                continue
        else:
            segm = _encode(visible)
        area, bbox = _segm_stats(segm, h, w)
        if area < 4 or bbox[2] < 1 or bbox[3] < 1:
            continue
        objects.append({"category": cat, "segmentation": segm, "area": area, "bbox": bbox})
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _zipf_probs(k: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1) ** exponent
    return p / p.sum()


def generate_synthetic_dataset(
    root: str,
    num_train: int = 16,
    num_val: int = 8,
    image_size: int | Sequence[int] = 128,
    seed: int = 0,
    fmt: str = "coco",
    num_categories: Optional[int] = None,
    max_objects: int = 6,
    min_visible: float = 0.4,
    clutter: int = 12,
    mask_format: str = "polygon",
    long_tail: Optional[float] = None,
    jpeg_quality: int = 92,
    textures: Sequence[str] = _TEXTURES,
    size_range: Tuple[float, float] = (0.06, 0.28),
    background_noise: float = 12.0,
    category_colours: bool = False,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> Dict[str, str]:
    """Writes a synthetic instance-segmentation dataset (images + train/val json) under ``root``.

    Args:
        root (str): output folder (created; existing files of the same names are overwritten).
        num_train, num_val (int): images per split (>= 1 each).
        image_size (int or (h, w)): image size in pixels (>= 32).
        seed (int): everything is drawn from this seed; same arguments -> identical files.
        fmt (str): ``"coco"`` (COCO instances json) or ``"lvis"`` (LVIS v1 json).
        num_categories (int): how many of :data:`CATEGORY_NAMES` to use (default: 4 for COCO, 10 for LVIS).
        max_objects (int): at most this many objects per image (at least 1 is attempted).
        min_visible (float): an object less visible than this fraction (occluded) is not painted.
        clutter (int): number of background strokes/blobs per image.
        mask_format (str): ``"polygon"`` or ``"rle"`` (COCO only; LVIS json is polygon-only).
        long_tail (float): Zipf exponent of the category sampling (default 0 for COCO = balanced, 1.2 for
            LVIS); with LVIS the rarest quarter of the categories is also capped to a few train images.
        jpeg_quality (int): JPEG quality of the written images.
        textures (sequence of str): object textures to draw from (any of ``"solid"``, ``"stripes"``,
            ``"checker"``, ``"gradient"``, ``"noise"``; default all). ``("solid",)`` gives plain objects.
        size_range ((float, float)): object radius range as fractions of the shorter image side (log-uniform).
        background_noise (float): standard deviation of the background's pixel noise (0-255 scale).
        category_colours (bool): if True, an object's (first) colour has a hue fixed by its category (slightly
            jittered), so colour tells the categories apart; if False (default), colours are random.

    The defaults make a hard, cluttered task (textures, clutter, occlusion, small objects). An easy, quickly
    learnable one (what ``tools/demo_train.py`` trains on): ``num_categories=3, textures=("solid",),
    size_range=(0.1, 0.25), clutter=2, max_objects=4, min_visible=0.8, category_colours=True``.
        progress (callable): called as ``progress(split, done, total)`` after each image.

    Returns:
        dict: ``{"train": json path, "val": json path, "image_root": root}``.
    """
    if fmt not in ("coco", "lvis"):
        raise ValueError(f"fmt must be 'coco' or 'lvis', got {fmt!r}")
    if mask_format not in ("polygon", "rle"):
        raise ValueError(f"mask_format must be 'polygon' or 'rle', got {mask_format!r}")
    if fmt == "lvis" and mask_format != "polygon":
        raise ValueError(
            "LVIS json stores polygons only (detectron2's LVIS loader rejects RLE); use mask_format='polygon'"
        )
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need at least one image per split, got num_train={num_train}, num_val={num_val}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if min(h, w) < 32:
        raise ValueError(f"image_size must be at least 32 pixels, got {(h, w)}")
    if num_categories is None:
        num_categories = 4 if fmt == "coco" else 10
    if not 1 <= num_categories <= len(CATEGORY_NAMES):
        raise ValueError(f"num_categories must be in [1, {len(CATEGORY_NAMES)}], got {num_categories}")
    if fmt == "lvis" and num_categories < 3:
        raise ValueError("an LVIS-format dataset needs at least 3 categories (one per frequency group r/c/f)")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
    if long_tail is None:
        long_tail = 0.0 if fmt == "coco" else 1.2
    textures = tuple(textures)
    bad = [t for t in textures if t not in _TEXTURES]
    if not textures or bad:
        raise ValueError(f"textures must be a non-empty subset of {_TEXTURES}, got {textures!r}")
    if len(size_range) != 2 or not 0.0 < size_range[0] <= size_range[1] <= 1.0:
        raise ValueError(f"size_range must be (min, max) with 0 < min <= max <= 1, got {size_range!r}")
    if background_noise < 0:
        raise ValueError(f"background_noise must be >= 0, got {background_noise}")
    if clutter < 0:
        raise ValueError(f"clutter must be >= 0, got {clutter}")
    style = dict(
        textures=textures,
        size_range=(float(size_range[0]), float(size_range[1])),
        background_noise=float(background_noise),
        category_colours=bool(category_colours),
    )

    from PIL import Image

    k = num_categories
    probs = _zipf_probs(k, long_tail)
    # LVIS: cap the rarest quarter of the categories to a few train images (their "r" group)
    rare_max = max(1, num_train // 16)
    common_max = max(rare_max + 1, num_train // 3)
    caps: List[Optional[int]] = [None] * k
    if fmt == "lvis":
        for c in range(k - max(1, k // 4), k):
            caps[c] = rare_max

    paths = annotation_files(root, fmt)
    os.makedirs(os.path.dirname(paths["train"]), exist_ok=True)
    splits = {}
    next_img, next_ann = 1, 1
    for split_idx, (split, count) in enumerate([("train", num_train), ("val", num_val)]):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        img_counts = [0] * k  # images per category in this split (the caps count images)
        images, anns = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_idx, i])
            split_caps = caps if split == "train" else [None] * k
            # the first train images each show one category (rarest first), so no category is left empty
            force = k - 1 - i if split == "train" and i < k else None
            img, objects = _render_image(
                rng, h, w, probs, split_caps, img_counts, max_objects, min_visible, clutter, mask_format, force, style
            )
            file_name = f"{next_img:012d}.jpg"
            Image.fromarray(img).save(os.path.join(root, split, file_name), quality=jpeg_quality)
            record = {"id": next_img, "width": w, "height": h, "file_name": file_name}
            present = sorted({o["category"] for o in objects})
            for c in present:
                img_counts[c] += 1
            if fmt == "lvis":
                record.update(_lvis_image_fields(rng, split, file_name, present, objects, k))
                dropped = set(record.pop("_dropped"))
                objects = [o for j, o in enumerate(objects) if j not in dropped]
            for o in objects:
                ann = {
                    "id": next_ann,
                    "image_id": next_img,
                    "category_id": o["category"] + 1,
                    "segmentation": o["segmentation"],
                    "area": o["area"],
                    "bbox": o["bbox"],
                }
                if fmt == "coco":
                    ann["iscrowd"] = 0
                anns.append(ann)
                next_ann += 1
            images.append(record)
            next_img += 1
            if progress is not None:
                progress(split, i + 1, count)
        splits[split] = (images, anns)

    # category statistics come from the train split (as LVIS v1 does; val carries the same)
    train_images, train_anns = splits["train"]
    image_count = [len({a["image_id"] for a in train_anns if a["category_id"] == c + 1}) for c in range(k)]
    instance_count = [sum(a["category_id"] == c + 1 for a in train_anns) for c in range(k)]
    categories = []
    for c in range(k):
        name = CATEGORY_NAMES[c]
        cat = {"id": c + 1, "name": name, "supercategory": "shape"}
        if fmt == "lvis":
            n = image_count[c]
            cat = {
                "id": c + 1,
                "name": name,
                "synset": f"{name}.n.01",
                "synonyms": [name],
                "def": _DEFS[name],
                "frequency": "r" if n <= rare_max else ("c" if n <= common_max else "f"),
                "image_count": n,
                "instance_count": instance_count[c],
            }
        categories.append(cat)

    info = {
        "description": "hieradet synthetic shapes",
        "generator": "hieradet.data.generate_synthetic_dataset",
        "seed": seed,
        "format": fmt,
        "image_size": [h, w],
        "mask_format": mask_format,
    }
    if fmt == "lvis":
        info["frequency_thresholds"] = {"r": f"image_count <= {rare_max}", "c": f"image_count <= {common_max}"}
    for split, (images, anns) in splits.items():
        data = {"info": dict(info, split=split), "images": images, "annotations": anns, "categories": categories}
        data["licenses"] = [{"id": 1, "name": "generated by hieradet, public domain", "url": ""}]
        with open(paths[split], "w") as f:
            json.dump(data, f, separators=(",", ":"))
    return {"train": paths["train"], "val": paths["val"], "image_root": root}


def _lvis_image_fields(rng, split, file_name, present, objects, k) -> dict:
    """LVIS per-image fields: coco_url, negative categories, and the not-exhaustive categories (some of whose
    painted instances are dropped from the annotations; their indexes are returned under ``_dropped``)."""
    absent = [c for c in range(k) if c not in present]
    n_neg = min(len(absent), int(rng.integers(0, 4)))
    neg = sorted(int(c) for c in rng.choice(absent, size=n_neg, replace=False)) if n_neg else []
    not_exhaustive, dropped = [], []
    if present and rng.random() < 0.3:
        c = int(rng.choice(present))
        not_exhaustive.append(c)
        idx = [j for j, o in enumerate(objects) if o["category"] == c]
        if len(idx) > 1:  # leave at least one instance of the category annotated
            dropped.append(int(rng.choice(idx)))
    return {
        "coco_url": f"http://images.synthetic.invalid/{split}/{file_name}",
        "flickr_url": "",
        "license": 1,
        "date_captured": "2024-01-01 00:00:00",
        "neg_category_ids": [c + 1 for c in neg],
        "not_exhaustive_category_ids": [c + 1 for c in not_exhaustive],
        "_dropped": dropped,
    }
