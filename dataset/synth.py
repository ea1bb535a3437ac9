"""Seeded synthetic VQA: small images of shapes and bar charts, multiple-choice questions and
LLaVA-CoT four-stage answers. It is cogcot's embedded default training data and its test data.

Command line (also the `cogcot-synth` console script)::

    python -m dataset.synth --out DIR --n N --seed S [--n-test M] [--image-size 56] [--categories ...]

writes into DIR

- ``images/``: one PNG per item, ``synth-000001.png`` ... (train) and ``synth-test-000001.png`` ... (test);
- ``train.jsonl``: N records; ``test.jsonl``: M held-out records (default M = max(100, N // 10)),
  same format, drawn from seeds disjoint from the training ones;
- ``test.tsv``: the same M held-out items, VLMEvalKit style: a header line, then tab-separated
  columns ``index, image, question, A, B, C, D, answer, category``; ``image`` is the base64 of the
  PNG file's bytes, ``answer`` the correct letter, ``index`` the number in the test id
  (row ``index = 7`` is record ``synth-test-000007``).

Record format (one JSON object per line; image paths relative to the JSONL's folder)::

    {"id": "synth-000001", "image": "images/synth-000001.png",
     "conversations": [
        {"from": "human", "value": "<image>\\nWhat color is the shape?\\nOptions: A. red B. green C. blue D. yellow"},
        {"from": "gpt", "value": "<SUMMARY> ... </SUMMARY> <CAPTION> ... </CAPTION> "
                                 "<REASONING> ... </REASONING> <CONCLUSION> A </CONCLUSION>"}],
     "category": "color", "answer": "A"}

How a TSV row becomes a prompt (the one rule shared by training and evaluation):
``tsv_row_to_prompt(row)`` returns ``row["question"] + "\\nOptions: A. {A} B. {B} C. {C} D. {D}"``
(options that are missing or empty in the row are left out). The generator builds every human
turn as ``"<image>\\n" + tsv_row_to_prompt(row)`` from the very row it writes to the TSV, so a
model trained on ``train.jsonl`` sees at evaluation exactly the wording it was trained on.
The gpt turn's ``<CONCLUSION>`` holds only the option letter, which is also the record's ``answer``.

Categories, easiest first (each item draws one; items cycle through the chosen categories in order):

- ``color``: one shape; which color is it.
- ``shape``: one shape; circle, square or triangle (``star`` is a never-true distractor).
- ``position``: where one shape is in the image (left/right/top/bottom), or where one shape is
  relative to another (left/right/above/below).
- ``chart``: a bar chart of 3-4 colored bars; which color's bar is the tallest or the shortest.
- ``count``: 1-5 shapes; how many shapes, or how many of one shape or one color (answers 0-3, uniform).
- ``arithmetic``: 2-5 shapes; remove all of one shape or color, how many shapes are left (answers 0-3,
  uniform).

Options (``option_order``): "fixed" (the default) lists the same four options in the same order for
every question of a category (colors red, green, blue, yellow; circle, square, triangle, star; left,
right, top, bottom or left, right, above, below; 0, 1, 2, 3; a chart's bar colors left to right), so
the image alone decides the letter. "shuffled" draws the distractors and the letter at random, which
adds an in-prompt lookup of the letter on top of seeing.

Images are ``image_size`` px square (default 56: the tiny model's 8x8 patches of 7 px), a plain light
background, at most 5 non-overlapping shapes (14-16 px for the color and shape questions, 10-14 px
otherwise; all sizes scale with the image size) at least 3 px apart, drawn without anti-aliasing in four clearly distinct colors, so every shape pixel has its palette color
exactly. Each item is drawn from its own ``random.Random`` seeded by (seed, split, index), so the
same arguments give byte-identical files and item i does not depend on N.

Python API: ``generate(out_dir, n, seed, ...) -> dict of paths`` writes the files;
``make_item(rng, category, image_size) -> Item`` draws one item; an ``Item`` unpacks as
``image, question, options, answer_letter, answer_text, category`` and carries ``.scene``,
the JSON-able description the image was drawn from (objects with shape, color and pixel box,
or bars with color and height).
"""
from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw

from .cot_format import LETTERS, format_options, four_stage, tsv_row_to_prompt  # noqa: F401  (the format's home)

FORMAT_VERSION = 2  # bumped when the same arguments would draw different items (2: fixed options)
CATEGORIES: Tuple[str, ...] = ("color", "shape", "position", "chart", "count", "arithmetic")
DEFAULT_IMAGE_SIZE = 56
MIN_IMAGE_SIZE = 28
MAX_OBJECTS = 5

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
MAX_ANSWER = 3  # count and arithmetic answers are 0..3, so that the four options 0-3 cover them all

# How the four options are listed. "fixed": every question of a category lists the same options in
# the same order (a bar chart's options follow its bars left to right), so the letter stands for one
# value. "shuffled": three distractors drawn at random and the right answer at a random letter; the
# letter then has to be looked up in the prompt, which a tiny model trained from scratch for a few
# minutes does not learn (see the README's fine-tuning section).
OPTION_ORDERS: Tuple[str, ...] = ("fixed", "shuffled")
DEFAULT_OPTION_ORDER = "fixed"
NUMBER_OPTIONS: Tuple[str, ...] = tuple(str(v) for v in range(MAX_ANSWER + 1))
BACKGROUND = (245, 245, 245)
AXIS_COLOR = (90, 90, 90)

_PNG_SAVE = dict(format="PNG", optimize=False, compress_level=6)  # fixed: byte-identical reruns


# ----------------------------------------------------------------------------- the prompt rule

# format_options, tsv_row_to_prompt and four_stage come from dataset.cot_format (imported above).


# ----------------------------------------------------------------------------- one item

@dataclass
class Item:
    """One generated item. Unpacks (iterates) as the six public fields; ``scene`` rides along."""
    image: Image.Image
    question: str
    options: List[str]
    answer: str  # the correct letter
    text: str  # the four-stage answer
    category: str
    scene: Dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.image, self.question, self.options, self.answer, self.text, self.category))

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i):
        return tuple(self)[i]

    @property
    def row(self) -> Dict[str, str]:
        """The VLMEvalKit columns of this item, less ``index``/``image``."""
        d = {"question": self.question}
        d.update(zip(LETTERS, self.options))
        d["answer"] = self.answer
        d["category"] = self.category
        return d

    @property
    def prompt(self) -> str:
        return tsv_row_to_prompt(self.row)


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
    raise RuntimeError(f"could not place {len(sizes)} shapes on {W} px")  # not reached for <= 5 shapes


def _options(rng: random.Random, correct: str, distractors: Sequence[str], order: str) -> Tuple[List[str], str]:
    """(four distinct options, the correct letter). "fixed": `distractors` is the category's own list of
    four options in display order and `correct` one of them; "shuffled": the correct one at a random
    letter and three of `distractors` elsewhere."""
    if order == "fixed":
        opts = list(dict.fromkeys(distractors))
        if len(opts) != 4 or correct not in opts:
            raise ValueError(f"fixed options must be 4 distinct values including {correct!r}, got {opts}")
        return opts, LETTERS[opts.index(correct)]
    pool = [d for d in dict.fromkeys(distractors) if d != correct]
    if len(pool) < 3:
        raise ValueError(f"need 3 distractors for {correct!r}, got {pool}")
    chosen = rng.sample(pool, 3)
    k = rng.randrange(4)
    opts = chosen[:k] + [correct] + chosen[k:]
    return opts, LETTERS[k]


def _number_options(rng: random.Random, correct: int, order: str) -> Tuple[List[str], str]:
    """0-3 in order ("fixed"), or numbers near the correct count, never negative ("shuffled")."""
    if order == "fixed":
        return _options(rng, str(correct), NUMBER_OPTIONS, order)
    near = [v for v in range(correct - 3, correct + 4) if v >= 0 and v != correct]
    return _options(rng, str(correct), [str(v) for v in near], order)


def _join(words: Sequence[str]) -> str:
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _describe(objs: Sequence[Mapping[str, Any]]) -> str:
    """'a red circle, a blue square and a green circle' in left-to-right order."""
    return _join([f"a {o['color']} {o['shape']}" for o in sorted(objs, key=lambda o: _center(o))])


def _conclude(value: str, letter: str) -> str:
    return f"So the answer is {value}, option {letter}."


def _single_object_scene(rng: random.Random, canvas: _Canvas) -> Dict[str, Any]:
    shape, color = rng.choice(SHAPES), rng.choice(COLORS)
    s = rng.randint(canvas.px(14), canvas.px(16))
    (x, y), = _place(rng, [s], canvas)
    canvas.shape(shape, color, x, y, s)
    return _obj(shape, color, x, y, s)


def _item_color(rng: random.Random, canvas: _Canvas, order: str) -> Tuple[str, str, List[str], str, Dict[str, Any]]:
    o = _single_object_scene(rng, canvas)
    options, letter = _options(rng, o["color"], COLORS, order)
    text = four_stage(
        "I will find the color of the shape.",
        f"The image shows one {o['color']} {o['shape']}.",
        f"The {o['shape']} is {o['color']}. {_conclude(o['color'], letter)}",
        letter)
    return "What color is the shape?", text, options, letter, {"objects": [o]}


def _item_shape(rng: random.Random, canvas: _Canvas, order: str):
    o = _single_object_scene(rng, canvas)
    options, letter = _options(rng, o["shape"], SHAPES + (SHAPE_DISTRACTOR,), order)
    text = four_stage(
        "I will find the kind of shape.",
        f"The image shows one {o['color']} {o['shape']}.",
        f"The {o['color']} shape is a {o['shape']}. {_conclude(o['shape'], letter)}",
        letter)
    return "What shape is in the image?", text, options, letter, {"objects": [o]}


def _item_position(rng: random.Random, canvas: _Canvas, order: str):
    W = canvas.size
    third = W // 3
    if rng.random() < 0.5:
        # One shape, clearly in one of four regions: the middle band of the other axis.
        where = rng.choice(("left", "right", "top", "bottom"))
        shape, color = rng.choice(SHAPES), rng.choice(COLORS)
        s = rng.randint(canvas.px(12), canvas.px(14))
        mid = (W - s) // 2
        band = (mid - canvas.px(4), mid + canvas.px(4))
        near, far = (0, third - s), (W - third, W)
        region = {"left": (near[0], band[0], near[1], band[1]), "right": (far[0], band[0], far[1], band[1]),
                  "top": (band[0], near[0], band[1], near[1]), "bottom": (band[0], far[0], band[1], far[1])}[where]
        (x, y), = _place(rng, [s], canvas, [region])
        canvas.shape(shape, color, x, y, s)
        o = _obj(shape, color, x, y, s)
        options, letter = _options(rng, where, ("left", "right", "top", "bottom"), order)
        side = f"on the {where}" if where in ("left", "right") else f"at the {where}"
        text = four_stage(
            "I will find where the shape is.",
            f"The image shows one {color} {shape} {side}.",
            f"The {color} {shape} is {side} of the image. {_conclude(where, letter)}",
            letter)
        return f"Where is the {shape} in the image?", text, options, letter, {"objects": [o], "relation": where}

    # Two shapes of different shape and color, separated along one axis, aligned on the other.
    rel = rng.choice(("left", "right", "above", "below"))
    shape_a, shape_b = rng.sample(SHAPES, 2)
    color_a, color_b = rng.sample(COLORS, 2)
    sa, sb = rng.randint(canvas.px(11), canvas.px(14)), rng.randint(canvas.px(11), canvas.px(14))
    s = max(sa, sb)
    half, jitter = W // 2, canvas.px(3)
    horizontal = rel in ("left", "right")
    c = rng.randint(W // 2 - canvas.px(12), W // 2 + canvas.px(12)) - s // 2  # shared coordinate on the other axis
    first = (0, half - s - canvas.px(2))  # corner range of the shape nearer the origin
    second = (half + canvas.px(2), W)
    a_first = rel in ("left", "above")
    ra, rb = (first, second) if a_first else (second, first)

    def region(r):
        lo, hi = r
        return (lo, c - jitter, hi, c + jitter) if horizontal else (c - jitter, lo, c + jitter, hi)

    (xa, ya), (xb, yb) = _place(rng, [sa, sb], canvas, [region(ra), region(rb)])
    canvas.shape(shape_a, color_a, xa, ya, sa)
    canvas.shape(shape_b, color_b, xb, yb, sb)
    a, b = _obj(shape_a, color_a, xa, ya, sa), _obj(shape_b, color_b, xb, yb, sb)
    name_a, name_b = f"{color_a} {shape_a}", f"{color_b} {shape_b}"
    options, letter = _options(rng, rel, ("left", "right", "above", "below"), order)
    phrase = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[rel]
    text = four_stage(
        "I will compare where the two shapes are.",
        f"The image shows {_describe([a, b])}.",
        f"The {name_a} is {phrase} the {name_b}. {_conclude(rel, letter)}",
        letter)
    question = f"Where is the {name_a} relative to the {name_b}?"
    return question, text, options, letter, {"objects": [a, b], "relation": rel}


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
    sizes = [rng.randint(canvas.px(10), canvas.px(13)) for _ in range(n)]
    corners = _place(rng, sizes, canvas)
    objs = []
    for (shape, color), (x, y), s in zip(shapes_colors, corners, sizes):
        canvas.shape(shape, color, x, y, s)
        objs.append(_obj(shape, color, x, y, s))
    return objs


def _target(rng: random.Random) -> Tuple[str, str, str, str]:
    """(attr, value, singular, plural): ('shape', 'circle', 'circle', 'circles') or
    ('color', 'red', 'red shape', 'red shapes')."""
    if rng.random() < 0.5:
        value = rng.choice(SHAPES)
        return "shape", value, value, value + "s"
    value = rng.choice(COLORS)
    return "color", value, f"{value} shape", f"{value} shapes"


def _item_count(rng: random.Random, canvas: _Canvas, order: str):
    k = rng.randint(0, MAX_ANSWER)  # the answer, uniform so that no count is a safe guess
    if k > 0 and rng.random() < 1 / 3:
        n = k
        objs = _mixed_objects(rng, canvas, n, None, None, n)
        question, summary_what, hits = "How many shapes are there?", "shapes", None
    else:
        attr, value, _, noun = _target(rng)
        n = rng.randint(max(k, 1), MAX_OBJECTS)
        objs = _mixed_objects(rng, canvas, n, attr, value, k)
        question, summary_what, hits = f"How many {noun} are there?", noun, [o for o in objs if o[attr] == value]
    options, letter = _number_options(rng, k, order)
    if hits is None:
        steps = f"Counting all shapes gives {k}."
    elif k == 0:
        steps = f"No shape is {'a ' + value if attr == 'shape' else value}, so the count is 0."
    else:
        steps = f"The {summary_what} are {_describe(hits)}. That makes {k}."
    text = four_stage(
        f"I will count the {summary_what}.",
        f"The image shows {_describe(objs)}.",
        f"{steps} {_conclude(str(k), letter)}",
        letter)
    return question, text, options, letter, {"objects": objs}


def _item_arithmetic(rng: random.Random, canvas: _Canvas, order: str):
    attr, value, one, noun = _target(rng)
    left = rng.randint(0, MAX_ANSWER)  # the answer, uniform
    n = rng.randint(max(2, left + 1), MAX_OBJECTS)
    k = n - left  # at least one shape is removed
    objs = _mixed_objects(rng, canvas, n, attr, value, k)
    options, letter = _number_options(rng, left, order)
    text = four_stage(
        f"I will count all shapes and subtract the {noun}.",
        f"The image shows {_describe(objs)}.",
        f"There are {n} shapes. {f'1 of them is a {one}' if k == 1 else f'{k} of them are {noun}'}. "
        f"{n} - {k} = {left}. {_conclude(str(left), letter)}",
        letter)
    question = f"Remove all the {noun}. How many shapes are left?"
    return question, text, options, letter, {"objects": objs, "removed": {attr: value}}


def _item_chart(rng: random.Random, canvas: _Canvas, order: str):
    W = canvas.size
    nbars = rng.choice((3, 4))
    colors = rng.sample(COLORS, nbars)
    base = W - canvas.px(5)  # first row below the bars (the axis)
    top_room = canvas.px(6)
    lo, hi, step = canvas.px(8), base - top_room, canvas.px(5)
    # Distinct heights at least `step` apart.
    levels = list(range(lo, hi + 1, step))
    heights = rng.sample(levels, nbars)
    left_edge = canvas.px(6)
    slot = (W - left_edge - canvas.px(3)) // nbars
    bw = max(2, slot * 2 // 3)
    canvas.draw.line([(left_edge - canvas.px(2), base), (W - canvas.px(2), base)], fill=AXIS_COLOR, width=1)
    canvas.draw.line([(left_edge - canvas.px(2), canvas.px(3)), (left_edge - canvas.px(2), base)],
                     fill=AXIS_COLOR, width=1)
    bars = []
    for i, (color, h) in enumerate(zip(colors, heights)):
        x0 = left_edge + i * slot + (slot - bw) // 2
        canvas.draw.rectangle([x0, base - h, x0 + bw - 1, base - 1], fill=PALETTE[color])
        bars.append({"color": color, "height": h, "box": [x0, base - h, x0 + bw, base]})
    which = rng.choice(("tallest", "shortest"))
    ranked = sorted(bars, key=lambda b: -b["height"])
    pick = ranked[0] if which == "tallest" else ranked[-1]
    absent = [c for c in COLORS if c not in colors]  # palette order
    if order == "fixed":  # the bars left to right, then the colors not drawn
        options, letter = _options(rng, pick["color"], colors + absent, order)
    else:
        rng.shuffle(absent)
        distractors = [c for c in colors + absent if c != pick["color"]][:3]  # the other bars first
        options, letter = _options(rng, pick["color"], distractors, order)
    text = four_stage(
        f"I will compare the bars to find the {which} one.",
        f"The image shows a bar chart with bars for {_join([b['color'] for b in bars])}.",
        f"From tallest to shortest: {_join([b['color'] for b in ranked])}. {_conclude(pick['color'], letter)}",
        letter)
    return f"Which color has the {which} bar?", text, options, letter, {"bars": bars, "which": which}


_MAKERS = {
    "color": _item_color,
    "shape": _item_shape,
    "position": _item_position,
    "chart": _item_chart,
    "count": _item_count,
    "arithmetic": _item_arithmetic,
}
assert tuple(_MAKERS) == CATEGORIES


def make_item(rng: Union[random.Random, int], category: str, image_size: int = DEFAULT_IMAGE_SIZE,
              option_order: str = DEFAULT_OPTION_ORDER) -> Item:
    """Draw one item of `category` from `rng` (a ``random.Random``, or an int seed).

    Returns an `Item` that unpacks as ``(image, question, options, answer_letter, four_stage_answer,
    category)``: a PIL RGB image of ``image_size`` px, the question without options, four distinct
    option strings for A-D, the correct letter, the LLaVA-CoT answer whose ``<CONCLUSION>`` is that
    letter, and the category. ``item.scene`` describes what was drawn. `option_order` is "fixed" or
    "shuffled" (see `OPTION_ORDERS`).
    """
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    _check_option_order(option_order)
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    canvas = _Canvas(int(image_size))
    question, text, options, letter, scene = _MAKERS[category](rng, canvas, option_order)
    scene = dict(scene, image_size=canvas.size)
    return Item(canvas.image, question, list(options), letter, text, category, scene)


# ----------------------------------------------------------------------------- files

def item_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator of item `index` of `split` ("train"/"test"): disjoint streams per split."""
    return random.Random(f"cogcot-synth:{seed}:{split}:{index}")  # str seeds hash with sha512: stable


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **_PNG_SAVE)
    return buf.getvalue()


def default_n_test(n: int) -> int:
    return max(100, n // 10)


def _record(item_id: str, image_rel: str, item: Item) -> Dict[str, Any]:
    return {
        "id": item_id,
        "image": image_rel,
        "conversations": [
            {"from": "human", "value": "<image>\n" + tsv_row_to_prompt(item.row)},
            {"from": "gpt", "value": item.text},
        ],
        "category": item.category,
        "answer": item.answer,
    }


TSV_COLUMNS = ("index", "image", "question", "A", "B", "C", "D", "answer", "category")


def _check_option_order(order: str) -> None:
    if order not in OPTION_ORDERS:
        raise ValueError(f"unknown option order {order!r}; choose from {', '.join(OPTION_ORDERS)}")


def _check_categories(categories: Optional[Sequence[str]]) -> List[str]:
    if categories is None:
        return list(CATEGORIES)
    cats: List[str] = []
    for c in categories:
        cats += [p.strip() for p in str(c).split(",") if p.strip()]
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown or not cats:
        raise ValueError(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    return list(dict.fromkeys(cats))


def generate(out_dir: Union[str, os.PathLike], n: int, seed: int, n_test: Optional[int] = None,
             image_size: int = DEFAULT_IMAGE_SIZE, categories: Optional[Sequence[str]] = None,
             option_order: str = DEFAULT_OPTION_ORDER, *, progress: bool = True) -> Dict[str, Path]:
    """Write `n` training and `n_test` held-out items into `out_dir` (see the module docstring).

    Item i of a split has category ``categories[i % len(categories)]`` and is drawn from
    ``item_rng(seed, split, i)``. Returns the paths: ``out_dir``, ``images``, ``train``, ``test``, ``tsv``.
    Existing files of the same names are overwritten; nothing else in `out_dir` is touched.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_test = default_n_test(n) if n_test is None else int(n_test)
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    cats = _check_categories(categories)
    _check_option_order(option_order)  # before any file is written
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = {"out_dir": out, "images": images, "train": out / "train.jsonl",
             "test": out / "test.jsonl", "tsv": out / "test.tsv"}

    from tqdm import tqdm
    bar = tqdm(total=n + n_test, desc="synth", unit="item", disable=not progress, file=sys.stderr)
    try:
        with open(paths["train"], "w", encoding="utf-8", newline="\n") as f:
            for i in range(n):
                item = make_item(item_rng(seed, "train", i), cats[i % len(cats)], image_size, option_order)
                item_id = f"synth-{i + 1:06d}"
                (images / f"{item_id}.png").write_bytes(png_bytes(item.image))
                f.write(json.dumps(_record(item_id, f"images/{item_id}.png", item), ensure_ascii=False) + "\n")
                bar.update(1)
        with open(paths["test"], "w", encoding="utf-8", newline="\n") as fj, \
                open(paths["tsv"], "w", encoding="utf-8", newline="") as ft:
            tsv = csv.writer(ft, delimiter="\t", lineterminator="\n")
            tsv.writerow(TSV_COLUMNS)
            for j in range(n_test):
                item = make_item(item_rng(seed, "test", j), cats[j % len(cats)], image_size, option_order)
                item_id = f"synth-test-{j + 1:06d}"
                data = png_bytes(item.image)
                (images / f"{item_id}.png").write_bytes(data)
                fj.write(json.dumps(_record(item_id, f"images/{item_id}.png", item), ensure_ascii=False) + "\n")
                row = item.row
                tsv.writerow([j + 1, base64.b64encode(data).decode("ascii"), row["question"],
                              row["A"], row["B"], row["C"], row["D"], row["answer"], row["category"]])
                bar.update(1)
    finally:
        bar.close()
    return paths


# ----------------------------------------------------------------------------- command line

_EPILOG = """\
files written into OUT:
  images/                PNG files: synth-000001.png ... (train), synth-test-000001.png ... (test)
  train.jsonl            N records, one JSON object a line:
                           {"id": "synth-000001", "image": "images/synth-000001.png",
                            "conversations": [{"from": "human", "value": "<image>\\nQUESTION\\nOptions: A. .. B. .. C. .. D. .."},
                                              {"from": "gpt", "value": "<SUMMARY> .. </SUMMARY> <CAPTION> .. </CAPTION>
                                                                         <REASONING> .. </REASONING> <CONCLUSION> B </CONCLUSION>"}],
                            "category": "color", "answer": "B"}
  test.jsonl             M held-out records (ids synth-test-NNNNNN), same format, seeds disjoint from train
  test.tsv               the same M items, VLMEvalKit style, tab-separated with a header line:
                           index, image (base64 PNG), question, A, B, C, D, answer (letter), category
                           (row index 7 is record synth-test-000007)

prompt rule (dataset.synth.tsv_row_to_prompt): a TSV row becomes
  question + "\\nOptions: A. {A} B. {B} C. {C} D. {D}"
and every training prompt is "<image>\\n" + that same text, so train and evaluation wording match.

categories (easiest first): %s
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataset.synth",
        description="Write a seeded synthetic multiple-choice VQA set (shapes, colors, positions, bar charts, "
                    "counting, subtraction) with LLaVA-CoT four-stage answers. The same arguments give "
                    "byte-identical files.",
        epilog=_EPILOG % ", ".join(CATEGORIES),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--n", type=int, required=True, metavar="N", help="number of training items (train.jsonl)")
    p.add_argument("--seed", type=int, required=True, metavar="S",
                   help="random seed; held-out items use seeds disjoint from the training ones")
    p.add_argument("--n-test", type=int, default=None, metavar="M",
                   help="number of held-out items in test.jsonl and test.tsv (default: max(100, N // 10))")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, metavar="PX",
                   help=f"image side in px, at least {MIN_IMAGE_SIZE}; shapes scale with it "
                        f"(default: {DEFAULT_IMAGE_SIZE}, the tiny model's ViT input)")
    p.add_argument("--categories", nargs="+", default=None, metavar="CAT",
                   help="categories to draw, space- or comma-separated (default: all); "
                        "item i gets the (i mod count)-th of them")
    p.add_argument("--option-order", choices=OPTION_ORDERS, default=DEFAULT_OPTION_ORDER,
                   help="fixed: each category lists the same four options in the same order (a chart's "
                        "follow its bars), so a letter stands for one value; shuffled: random distractors "
                        "at random letters, so the letter must be looked up in the prompt "
                        f"(default: {DEFAULT_OPTION_ORDER})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = generate(args.out, args.n, args.seed, n_test=args.n_test, image_size=args.image_size,
                         categories=args.categories, option_order=args.option_order,
                         progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("train", "test", "tsv", "images"):
        print(f"{key}: {paths[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
