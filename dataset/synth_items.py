"""Item makers of the synthetic VQA data: one function per category draws a scene, asks its question,
lists four options and writes the four-stage answer; `make_item` picks the maker of a category."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image

from .cot_format import CONCLUSION, LETTERS, four_stage, tsv_row_to_prompt
from .synth_scene import (COLORS, DEFAULT_IMAGE_SIZE, MAX_OBJECTS, NUMBER_WORDS, PALETTE, AXIS_COLOR, SHAPE_DISTRACTOR, SHAPES,
                          _Canvas, _center, _describe, _join, _mixed_objects, _obj, _place, _single_object_scene)

CATEGORIES: Tuple[str, ...] = ("color", "shape", "position", "chart", "count", "arithmetic")
MAX_ANSWER = 3  # count and arithmetic answers are 0..3, so that the four options 0-3 cover them all

# How the four options are listed. "fixed": every question of a category lists the same options in
# the same order (a bar chart's are the four colors in palette order, like a color question's), so the
# letter stands for one value. "shuffled": three distractors drawn at random and the right answer at a random letter; the
# letter then has to be looked up in the prompt, which a tiny model trained from scratch for a few
# minutes does not learn (see the README's fine-tuning section).
OPTION_ORDERS: Tuple[str, ...] = ("fixed", "shuffled")
DEFAULT_OPTION_ORDER = "fixed"
NUMBER_OPTIONS: Tuple[str, ...] = tuple(str(v) for v in range(MAX_ANSWER + 1))

# How the answer is written (the same reasoning three ways, for the ablation of what the stages buy):
# "tagged": the four LLaVA-CoT stages; "plain": summary, caption and reasoning as one plain text without
# tags (its last sentence names the option: "So the answer is red, option A."); "direct": the conclusion
# stage alone ("<CONCLUSION> A </CONCLUSION>").
ANSWER_STYLES: Tuple[str, ...] = ("tagged", "plain", "direct")
DEFAULT_ANSWER_STYLE = "tagged"


@dataclass(frozen=True)
class _Stages:
    """The four stage texts of one answer, before they are written in an answer style."""
    summary: str
    caption: str
    reasoning: str
    conclusion: str

    def write(self, style: str) -> str:
        if style == "tagged":
            return four_stage(self.summary, self.caption, self.reasoning, self.conclusion)
        if style == "plain":
            return f"{self.summary} {self.caption} {self.reasoning}"
        if style == "direct":
            return f"{CONCLUSION.start} {self.conclusion} {CONCLUSION.end}"
        raise ValueError(f"unknown answer style {style!r}; choose from {', '.join(ANSWER_STYLES)}")


@dataclass
class Item:
    """One generated item. Unpacks (iterates) as the six public fields; ``scene`` rides along."""
    image: Image.Image
    question: str
    options: List[str]
    answer: str  # the correct letter
    text: str  # the answer, in the item's answer style (the four stages by default)
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

def _conclude(value: str, letter: str) -> str:
    return f"So the answer is {value}, option {letter}."

def _item_color(rng: random.Random, canvas: _Canvas, order: str) -> Tuple[str, str, List[str], str, Dict[str, Any]]:
    o = _single_object_scene(rng, canvas)
    options, letter = _options(rng, o["color"], COLORS, order)
    text = _Stages(
        "I will find the color of the shape.",
        f"The image shows one {o['color']} {o['shape']}.",
        f"The {o['shape']} is {o['color']}. {_conclude(o['color'], letter)}",
        letter)
    return "What color is the shape?", text, options, letter, {"objects": [o]}


def _item_shape(rng: random.Random, canvas: _Canvas, order: str):
    o = _single_object_scene(rng, canvas)
    options, letter = _options(rng, o["shape"], SHAPES + (SHAPE_DISTRACTOR,), order)
    text = _Stages(
        "I will find the kind of shape.",
        f"The image shows one {o['color']} {o['shape']}.",
        f"The {o['color']} shape is a {o['shape']}. {_conclude(o['shape'], letter)}",
        letter)
    return "What shape is in the image?", text, options, letter, {"objects": [o]}


SIDES: Tuple[str, ...] = ("left", "right", "top", "bottom")  # where one shape is (the options, fixed order)
RELATIONS: Tuple[str, ...] = ("left", "right", "above", "below")  # where one shape is to another
_PAIR_SIDES = {"left": ("on the left", "on the right"), "right": ("on the right", "on the left"),
               "above": ("at the top", "at the bottom"), "below": ("at the bottom", "at the top")}
_RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def side_stages(name: str, where: str, letter: str) -> _Stages:
    """The answer to "Where is the circle in the image?" for the `name`d shape ("red circle") on side `where`."""
    side = f"on the {where}" if where in ("left", "right") else f"at the {where}"
    return _Stages("I will find where the shape is.", f"The image shows one {name} {side}.",
                   f"The {name} is {side} of the image. {_conclude(where, letter)}", letter)


def relation_stages(name_a: str, name_b: str, rel: str, letter: str) -> _Stages:
    """The answer to "Where is A relative to B?": the caption places each shape on its side of the image
    (the question's order), the reasoning compares."""
    side_a, side_b = _PAIR_SIDES[rel]
    return _Stages("I will compare where the two shapes are.",
                   f"The image shows a {name_a} {side_a} and a {name_b} {side_b}.",
                   f"The {name_a} is {_RELATION_PHRASES[rel]} the {name_b}. {_conclude(rel, letter)}", letter)


DEFAULT_PAIR_SHARE = 0.5  # share of position items that ask where one shape is relative to another


def _item_position(rng: random.Random, canvas: _Canvas, order: str, pair_share: float = DEFAULT_PAIR_SHARE):
    """A position item: with probability 1 - pair_share one shape on one side ("Where is the circle in the
    image?"), else two shapes ("Where is the red circle relative to the blue square?")."""
    W = canvas.size
    third = W // 3
    if rng.random() < 1.0 - pair_share:
        # One shape, clearly in one of four regions: the middle band of the other axis.
        where = rng.choice(SIDES)
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
        options, letter = _options(rng, where, SIDES, order)
        text = side_stages(f"{color} {shape}", where, letter)
        return f"Where is the {shape} in the image?", text, options, letter, {"objects": [o], "relation": where}

    # Two shapes of different shape and color, separated along one axis, aligned on the other.
    rel = rng.choice(RELATIONS)
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
    options, letter = _options(rng, rel, RELATIONS, order)
    text = relation_stages(name_a, name_b, rel, letter)
    question = f"Where is the {name_a} relative to the {name_b}?"
    return question, text, options, letter, {"objects": [a, b], "relation": rel}

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
    text = _Stages(
        f"I will count the {summary_what}.",
        f"The image shows {_describe(objs)}.",
        f"{steps} {_conclude(str(k), letter)}",
        letter)
    return question, text, options, letter, {"objects": objs}


def _item_arithmetic(rng: random.Random, canvas: _Canvas, order: str):
    attr, value, _, noun = _target(rng)
    left = rng.randint(0, MAX_ANSWER)  # the answer, uniform
    n = rng.randint(max(2, left + 1), MAX_OBJECTS)
    k = n - left  # at least one shape is removed
    objs = _mixed_objects(rng, canvas, n, attr, value, k)
    hits = [o for o in objs if o[attr] == value]
    options, letter = _number_options(rng, left, order)
    text = _Stages(
        f"I will count all shapes and subtract the {noun}.",
        f"The image shows {_describe(objs)}.",
        # the removed shapes are listed before they are counted, as count items do: told only "k of them
        # are yellow shapes", the model said 1 whatever the caption listed (README)
        f"There are {n} shapes. The {noun} are {_describe(hits)}. That makes {k}. "
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
    if order == "fixed":  # the palette order, as in color questions: the letter names the color alone
        options, letter = _options(rng, pick["color"], COLORS, order)
    else:
        rng.shuffle(absent)
        distractors = [c for c in colors + absent if c != pick["color"]][:3]  # the other bars first
        options, letter = _options(rng, pick["color"], distractors, order)
    text = _Stages(
        f"I will compare the bars to find the {which} one.",
        # both extremes in every caption, whichever the question asks: each chart teaches both comparisons
        f"The image shows a bar chart of {NUMBER_WORDS[nbars]} bars. The {ranked[0]['color']} bar is the "
        f"tallest and the {ranked[-1]['color']} bar is the shortest.",
        f"The {which} bar is the {pick['color']} one. {_conclude(pick['color'], letter)}",
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


def check_pair_share(pair_share: float) -> float:
    """The share of two-shape position items, a number in [0, 1]; raises ValueError naming it."""
    try:
        value = float(pair_share)
    except (TypeError, ValueError):
        raise ValueError(f"position pair share must be a number in [0, 1], got {pair_share!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"position pair share must be in [0, 1], got {value:g}")
    return value


def make_item(rng: Union[random.Random, int], category: str, image_size: int = DEFAULT_IMAGE_SIZE,
              option_order: str = DEFAULT_OPTION_ORDER, answer_style: str = DEFAULT_ANSWER_STYLE,
              pair_share: float = DEFAULT_PAIR_SHARE) -> Item:
    """Draw one item of `category` from `rng` (a ``random.Random``, or an int seed).

    Returns an `Item` that unpacks as ``(image, question, options, answer_letter, four_stage_answer,
    category)``: a PIL RGB image of ``image_size`` px, the question without options, four distinct
    option strings for A-D, the correct letter, the LLaVA-CoT answer whose ``<CONCLUSION>`` is that
    letter, and the category. ``item.scene`` describes what was drawn. `option_order` is "fixed" or
    "shuffled" (see `OPTION_ORDERS`); `answer_style` "tagged", "plain" or "direct" (see `ANSWER_STYLES`;
    the style changes only the text, never the image, options or letter). `pair_share` is the chance
    that a position item has two shapes (the default 0.5 draws the same items as before it existed).
    """
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    _check_option_order(option_order)
    check_answer_style(answer_style)
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    canvas = _Canvas(int(image_size))
    extra = {"pair_share": check_pair_share(pair_share)} if category == "position" else {}
    question, stages, options, letter, scene = _MAKERS[category](rng, canvas, option_order, **extra)
    scene = dict(scene, image_size=canvas.size)
    return Item(canvas.image, question, list(options), letter, stages.write(answer_style), category, scene)


def check_answer_style(style: str) -> None:
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; choose from {', '.join(ANSWER_STYLES)}")


def _check_option_order(order: str) -> None:
    if order not in OPTION_ORDERS:
        raise ValueError(f"unknown option order {order!r}; choose from {', '.join(OPTION_ORDERS)}")
