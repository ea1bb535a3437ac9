"""Scenes of the synthetic VQA data: the palette and shapes, a canvas that draws without anti-aliasing at
sizes scaled from the 56 px design, non-overlapping placement, and the words that describe a scene."""
from __future__ import annotations

import random
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

DEFAULT_IMAGE_SIZE = 56
MIN_IMAGE_SIZE = 28
MAX_OBJECTS = 4

# Four colors far apart from each other and from the background and the chart's gray axes.
PALETTE: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 190, 20),
}
COLORS: Tuple[str, ...] = tuple(PALETTE)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_DISTRACTOR = "star"  # a fourth shape option; never drawn, never the answer
BACKGROUND = (245, 245, 245)
AXIS_COLOR = (90, 90, 90)


class _Canvas:
    """Pixel sizes scaled from the 56 px design, and drawing without anti-aliasing."""

    def __init__(self, size: int):
        if size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE} px, got {size}")
        self.size = size
        self.image = Image.new("RGB", (size, size), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def px(self, v: float) -> int:
        return max(1, int(round(v * self.size / DEFAULT_IMAGE_SIZE)))

    def shape(self, shape: str, color: str, x0: int, y0: int, s: int) -> None:
        fill = PALETTE[color]
        box = [x0, y0, x0 + s - 1, y0 + s - 1]
        if shape == "circle":
            self.draw.ellipse(box, fill=fill)
        elif shape == "square":
            self.draw.rectangle(box, fill=fill)
        elif shape == "triangle":
            self.draw.polygon([(x0 + (s - 1) / 2, y0), (x0, y0 + s - 1), (x0 + s - 1, y0 + s - 1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {shape!r}")


def _obj(shape: str, color: str, x0: int, y0: int, s: int) -> Dict[str, Any]:
    return {"shape": shape, "color": color, "box": [x0, y0, x0 + s, y0 + s]}  # box: x0, y0, x1, y1 (exclusive)


def _center(o: Mapping[str, Any]) -> Tuple[float, float]:
    x0, y0, x1, y1 = o["box"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def _place(rng: random.Random, sizes: Sequence[int], canvas: _Canvas,
           regions: Optional[Sequence[Tuple[int, int, int, int]]] = None) -> List[Tuple[int, int]]:
    """Top-left corners for squares of `sizes`, inside the margins, pairwise at least `gap` apart.

    `regions[i]` = (xmin, ymin, xmax, ymax) bounds the i-th corner range (inclusive). Rejection sampling,
    restarted from scratch when stuck; all draws come from `rng`, so the layout is deterministic.
    """
    W, margin, gap = canvas.size, canvas.px(2), canvas.px(3)
    for _attempt in range(200):
        corners: List[Tuple[int, int]] = []
        for i, s in enumerate(sizes):
            lo_x, lo_y, hi_x, hi_y = margin, margin, W - margin - s, W - margin - s
            if regions is not None:
                rx0, ry0, rx1, ry1 = regions[i]
                lo_x, lo_y, hi_x, hi_y = max(lo_x, rx0), max(lo_y, ry0), min(hi_x, rx1), min(hi_y, ry1)
            if lo_x > hi_x or lo_y > hi_y:
                raise ValueError("placement region too small for the shape")
            for _try in range(100):
                x, y = rng.randint(lo_x, hi_x), rng.randint(lo_y, hi_y)
                if all(x + s + gap <= cx or cx + cs + gap <= x or y + s + gap <= cy or cy + cs + gap <= y
                       for (cx, cy), cs in zip(corners, sizes)):
                    corners.append((x, y))
                    break
            else:
                break
        if len(corners) == len(sizes):
            return corners
    raise RuntimeError(f"could not place {len(sizes)} shapes on {W} px")  # not reached for <= MAX_OBJECTS shapes

def _join(words: Sequence[str]) -> str:
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


NUMBER_WORDS: Tuple[str, ...] = ("no", "one", "two", "three", "four")


def _describe(objs: Sequence[Mapping[str, Any]]) -> str:
    """'two red circles, a red square and a green triangle': identical shapes grouped with their number,
    colors in palette order, then shapes in `SHAPES` order.

    A canonical order that the picture decides by what is drawn, not by where: listing shapes left to right
    asks a tiny model to find "the next shape to the right" at every word, which it does not learn in
    minutes; "how many red circles" is a question it can answer by looking at all red patches at once."""
    counts: Dict[Tuple[str, str], int] = {}
    for o in objs:
        counts[(o["color"], o["shape"])] = counts.get((o["color"], o["shape"]), 0) + 1
    parts = []
    for color in COLORS:
        for shape in SHAPES:
            k = counts.get((color, shape), 0)
            if k:
                parts.append(f"a {color} {shape}" if k == 1 else f"{NUMBER_WORDS[k]} {color} {shape}s")
    return _join(parts)

def _single_object_scene(rng: random.Random, canvas: _Canvas) -> Dict[str, Any]:
    shape, color = rng.choice(SHAPES), rng.choice(COLORS)
    s = rng.randint(canvas.px(14), canvas.px(16))
    (x, y), = _place(rng, [s], canvas)
    canvas.shape(shape, color, x, y, s)
    return _obj(shape, color, x, y, s)

def _mixed_objects(rng: random.Random, canvas: _Canvas, n: int, attr: Optional[str], value: Optional[str],
                   k: int) -> List[Dict[str, Any]]:
    """`n` shapes of which exactly `k` have `attr` == `value` (all of them count when attr is None)."""
    shapes_colors = []
    for i in range(n):
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        if attr == "shape":
            shape = value if i < k else rng.choice([v for v in SHAPES if v != value])
        elif attr == "color":
            color = value if i < k else rng.choice([v for v in COLORS if v != value])
        shapes_colors.append((shape, color))
    rng.shuffle(shapes_colors)
    sizes = [rng.randint(canvas.px(11), canvas.px(13)) for _ in range(n)]
    corners = _place(rng, sizes, canvas)
    objs = []
    for (shape, color), (x, y), s in zip(shapes_colors, corners, sizes):
        canvas.shape(shape, color, x, y, s)
        objs.append(_obj(shape, color, x, y, s))
    return objs
