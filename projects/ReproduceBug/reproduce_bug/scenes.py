"""Generated scenes for the reproduction: described in unit coordinates (:func:`sample_scenes`), rendered at
any pixel size (:func:`render_scenes`), so that the same scenes can be shown at 64 and at 128 px."""

import math
from typing import List, Sequence

import numpy as np
import torch

__all__ = ["SHAPES", "normalise", "render_scenes", "sample_scenes"]

SHAPES = ("circle", "square", "triangle", "cross")
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def _unit_polygon(kind: str) -> np.ndarray:
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "square":
        return np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float) * 0.8
    if kind == "triangle":
        t = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if kind == "cross":
        a, b = 1.0, 0.34
        return np.array(
            [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        )
    raise ValueError(kind)


def sample_scenes(
    n: int,
    seed: int,
    labelled: bool,
    shapes: Sequence[str] = ("square", "cross"),
    target_radius: Sequence[float] = (0.15, 0.2),
    distractors: Sequence[int] = (0, 1),
    clutter_lines: Sequence[int] = (1, 2),
) -> List[dict]:
    """Scene descriptions in unit coordinates (independent of the pixel size they are rendered at).

    A labelled scene has ``clutter_lines`` background strokes, ``distractors`` small grey shapes (any of
    :data:`SHAPES`) and one coloured *target* (one of ``shapes``, radius in ``target_radius``, well inside
    one quadrant); its label is ``shapes.index(target) * 4 + quadrant`` (quadrant 0-3: top-left, top-right,
    bottom-left, bottom-right). An unlabelled scene (pretraining) has 2-5 strokes and 1-3 coloured shapes
    anywhere.
    """
    for kind in shapes:
        if kind not in SHAPES:
            raise ValueError(f"unknown shape {kind!r}; choose from {SHAPES}")
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        bg = rng.uniform(40, 215, (2, 3))
        lines = (int(clutter_lines[0]), int(clutter_lines[1]) + 1) if labelled else (2, 6)
        clutter = [(rng.uniform(0, 1, 4), rng.uniform(0, 255, 3)) for _ in range(int(rng.integers(*lines)))]
        items = []
        label = -1
        if labelled:
            for _ in range(int(rng.integers(distractors[0], distractors[1] + 1))):
                items.append(
                    dict(kind=SHAPES[int(rng.integers(4))], cx=rng.uniform(0.1, 0.9), cy=rng.uniform(0.1, 0.9),
                         r=rng.uniform(0.05, 0.08), angle=rng.uniform(0, 2 * math.pi),
                         colour=np.full(3, rng.uniform(90, 160)))
                )  # fmt: skip
            kind = int(rng.integers(len(shapes)))
            quad = int(rng.integers(4))
            cx = (quad % 2) * 0.5 + rng.uniform(0.17, 0.33)
            cy = (quad // 2) * 0.5 + rng.uniform(0.17, 0.33)
            colour = rng.uniform(0, 255, 3)
            colour[int(rng.integers(3))] = 255.0 if rng.random() < 0.5 else 0.0
            items.append(
                dict(kind=shapes[kind], cx=cx, cy=cy, r=rng.uniform(*target_radius), angle=rng.uniform(-0.4, 0.4),
                     colour=colour)
            )  # fmt: skip
            label = kind * 4 + quad
        else:
            for _ in range(int(rng.integers(1, 4))):
                items.append(
                    dict(kind=SHAPES[int(rng.integers(4))], cx=rng.uniform(0.1, 0.9), cy=rng.uniform(0.1, 0.9),
                         r=rng.uniform(0.06, 0.2), angle=rng.uniform(0, 2 * math.pi), colour=rng.uniform(0, 255, 3))
                )  # fmt: skip
        scenes.append(dict(bg=bg, clutter=clutter, shapes=items, label=label, noise_seed=int(rng.integers(1 << 31))))
    return scenes


def render_scenes(scenes: List[dict], size: int) -> torch.Tensor:
    """Renders scenes at ``size`` x ``size`` px: a (N, 3, size, size) uint8 tensor."""
    import cv2

    out = np.empty((len(scenes), size, size, 3), np.uint8)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    for i, s in enumerate(scenes):
        img = (s["bg"][0] * (1 - yy) + s["bg"][1] * yy) * np.ones((1, size, 1), np.float32)
        img = img + np.random.default_rng(s["noise_seed"]).normal(0, 8, (size, size, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        for seg, colour in s["clutter"]:
            p1 = (int(seg[0] * size), int(seg[1] * size))
            p2 = (int(seg[2] * size), int(seg[3] * size))
            cv2.line(img, p1, p2, tuple(float(c) for c in colour), max(1, size // 64), lineType=cv2.LINE_AA)
        for sh in s["shapes"]:
            c, sn = math.cos(sh["angle"]), math.sin(sh["angle"])
            pts = _unit_polygon(sh["kind"]) @ np.array([[c, sn], [-sn, c]]) * sh["r"] + (sh["cx"], sh["cy"])
            poly = np.round(pts * size * 16).astype(np.int32)
            cv2.fillPoly(img, [poly], tuple(float(v) for v in sh["colour"]), lineType=cv2.LINE_AA, shift=4)
        out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, ImageNet mean / std."""
    mean = torch.from_numpy(MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(STD).view(1, 3, 1, 1)
    return (images.float() - mean) / std
