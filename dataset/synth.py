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
- ``count``: 1-4 shapes; how many shapes, or how many of one shape or one color (answers 0-3, uniform).
- ``arithmetic``: 2-4 shapes; remove all of one shape or color, how many shapes are left (answers 0-3,
  uniform).

Captions of several shapes group identical ones with their number ("two red circles and a blue
square"), colors in palette order, then circle, square, triangle; a relative-position caption puts each
shape on its side ("a red square on the left and a blue circle on the right"); a chart's caption names
its tallest and its shortest bar whatever the question; an arithmetic answer lists the shapes it removes
before counting them, as a count answer does.

Options (``option_order``): "fixed" (the default) lists the same four options in the same order for
every question of a category (colors red, green, blue, yellow, for charts too; circle, square, triangle,
star; left, right, top, bottom or left, right, above, below; 0, 1, 2, 3), so the image alone decides the
letter. "shuffled" draws the distractors and the letter at random, which
adds an in-prompt lookup of the letter on top of seeing.

Images are ``image_size`` px square (default 56: the tiny model's 8x8 patches of 7 px), a plain light
background, at most 4 non-overlapping shapes (14-16 px for the color and shape questions, 11-14 px
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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from PIL import Image

# The format's home is dataset.cot_format; scenes and item makers have their own modules. Their public
# names are re-exported here, where users have always found them.
from .cot_format import LETTERS, format_options, four_stage, tsv_row_to_prompt  # noqa: F401
from .synth_items import (CATEGORIES, DEFAULT_OPTION_ORDER, MAX_ANSWER, NUMBER_OPTIONS, OPTION_ORDERS,  # noqa: F401
                          ANSWER_STYLES, DEFAULT_ANSWER_STYLE, DEFAULT_PAIR_SHARE, Item, _check_option_order,
                          check_answer_style, check_pair_share, make_item)
from .synth_judge import judge_count, judge_sample
from .synth_scene import (AXIS_COLOR, BACKGROUND, COLORS, DEFAULT_IMAGE_SIZE, MAX_OBJECTS, MIN_IMAGE_SIZE,  # noqa: F401
                          PALETTE, SHAPE_DISTRACTOR, SHAPES)
from .weight_spec import parse_weight_spec

FORMAT_VERSION = 4  # bumped when the same arguments would draw different items (2: fixed options; 3: chart
# options in palette order, at most 4 shapes, captions that group identical shapes, chart argmax reasoning;
# 4: arithmetic lists the removed shapes, chart captions name the tallest and shortest bar)
_PNG_SAVE = dict(format="PNG", optimize=False, compress_level=6)  # fixed: byte-identical reruns


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


def parse_category_weights(spec: Optional[str]) -> Optional[Dict[str, float]]:
    """"color=0.4,count=1.3" -> {"color": 0.4, "count": 1.3} (categories not named weigh 1); None or ""
    -> None. Raises ValueError naming the bad part."""
    return parse_weight_spec(spec, "category weight", "CATEGORY", CATEGORIES)


def category_sequence(cats: Sequence[str], weights: Optional[Dict[str, float]], n: int) -> List[str]:
    """The categories of items 0..n-1: `cats` in turn, or with `weights` a smooth weighted round robin
    (each category's share is its weight over the sum, spread evenly). Item i's category does not depend
    on n, so a longer set extends a shorter one."""
    if not weights:
        return [cats[i % len(cats)] for i in range(n)]
    w = {c: float(weights.get(c, 1.0)) for c in cats}
    total = sum(w.values())
    if total <= 0:
        raise ValueError("category weights: at least one chosen category needs a weight > 0")
    credit = {c: 0.0 for c in cats}
    out = []
    for _ in range(n):
        for c in cats:
            credit[c] += w[c]
        best = max(cats, key=lambda c: credit[c])  # ties go to the earlier category
        credit[best] -= total
        out.append(best)
    return out


def generate(out_dir: Union[str, os.PathLike], n: int, seed: int, n_test: Optional[int] = None,
             image_size: int = DEFAULT_IMAGE_SIZE, categories: Optional[Sequence[str]] = None,
             option_order: str = DEFAULT_OPTION_ORDER, answer_style: str = DEFAULT_ANSWER_STYLE,
             judge_data: float = 0.0, category_weights: Optional[Dict[str, float]] = None,
             position_pairs: float = DEFAULT_PAIR_SHARE, *, progress: bool = True) -> Dict[str, Path]:
    """Write `n` training and `n_test` held-out items into `out_dir` (see the module docstring).

    Item i of a split has category ``categories[i % len(categories)]`` and is drawn from
    ``item_rng(seed, split, i)``; `category_weights` ({category: weight}) mixes the training items instead
    (`category_sequence`), the held-out ones stay evenly split, so accuracy is measured as before.
    `position_pairs` is the share of two-shape items among the training position items (the held-out
    ones keep the default half), the same way a mix spends items where the errors are.
    Returns the paths: ``out_dir``, ``images``, ``train``, ``test``, ``tsv``.
    Existing files of the same names are overwritten; nothing else in `out_dir` is touched.
    `judge_data` > 0 appends round(n * judge_data) judge-prompt samples to train.jsonl (ids
    synth-judge-NNNNNN, category "judge"; see dataset/synth_judge.py), made from training items only.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    n_test = default_n_test(n) if n_test is None else int(n_test)
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    cats = _check_categories(categories)
    if category_weights:
        unknown = [c for c in category_weights if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"category weights name unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    train_cats = category_sequence(cats, category_weights, n)
    position_pairs = check_pair_share(position_pairs)
    _check_option_order(option_order)  # before any file is written
    check_answer_style(answer_style)
    n_judge = judge_count(n, judge_data) if n else 0
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = {"out_dir": out, "images": images, "train": out / "train.jsonl",
             "test": out / "test.jsonl", "tsv": out / "test.tsv"}

    from tqdm import tqdm
    bar = tqdm(total=n + n_judge + n_test, desc="synth", unit="item", disable=not progress, file=sys.stderr)
    try:
        with open(paths["train"], "w", encoding="utf-8", newline="\n") as f:
            for i in range(n):
                item = make_item(item_rng(seed, "train", i), train_cats[i], image_size, option_order,
                                 answer_style, pair_share=position_pairs)
                item_id = f"synth-{i + 1:06d}"
                (images / f"{item_id}.png").write_bytes(png_bytes(item.image))
                f.write(json.dumps(_record(item_id, f"images/{item_id}.png", item), ensure_ascii=False) + "\n")
                bar.update(1)
            for j, rec in enumerate(_judge_records(seed, n, n_judge, train_cats, image_size, option_order,
                                                   position_pairs)):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                bar.update(1)
        with open(paths["test"], "w", encoding="utf-8", newline="\n") as fj, \
                open(paths["tsv"], "w", encoding="utf-8", newline="") as ft:
            tsv = csv.writer(ft, delimiter="\t", lineterminator="\n")
            tsv.writerow(TSV_COLUMNS)
            for j in range(n_test):
                item = make_item(item_rng(seed, "test", j), cats[j % len(cats)], image_size, option_order,
                                 answer_style)
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


def _judge_records(seed: int, n: int, count: int, train_cats, image_size: int, option_order: str,
                   position_pairs: float = DEFAULT_PAIR_SHARE):
    """`count` judge-prompt records, each made from a training item (its image file is reused);
    `train_cats[i]` is training item i's category."""
    made = 0
    j = 0
    while made < count:
        rng = item_rng(seed, "judge", j)
        j += 1
        i = rng.randrange(n)
        item = make_item(item_rng(seed, "train", i), train_cats[i], image_size, option_order, "tagged",
                         pair_share=position_pairs)
        sample = judge_sample(item.prompt, item.text, rng)
        if sample is None:  # the stage drawn names no value (e.g. "Counting all shapes gives 0."): draw again
            continue
        made += 1
        yield {"id": f"synth-judge-{made:06d}", "image": f"images/synth-{i + 1:06d}.png",
               "conversations": [{"from": "human", "value": "<image>\n" + sample["prompt"]},
                                 {"from": "gpt", "value": sample["verdict"]}],
               "category": "judge", "stage": sample["stage"]}


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
                        "are the four colors), so a letter stands for one value; shuffled: random distractors "
                        "at random letters, so the letter must be looked up in the prompt "
                        f"(default: {DEFAULT_OPTION_ORDER})")
    p.add_argument("--answer-style", choices=ANSWER_STYLES, default=DEFAULT_ANSWER_STYLE,
                   help="tagged: the four LLaVA-CoT stages; plain: the same summary, caption and reasoning as plain "
                        "text without tags (ending 'So the answer is X, option L.'); direct: the conclusion stage "
                        f"alone, '<CONCLUSION> L </CONCLUSION>' (default: {DEFAULT_ANSWER_STYLE}). Images, options "
                        "and letters are the same in every style")
    p.add_argument("--judge-data", type=float, default=0.0, metavar="FRACTION",
                   help="also write FRACTION * N judge-prompt samples into train.jsonl: the LLaVA-CoT judge "
                        "prompt over two candidate stages of a training item (one right, one with a value, "
                        "count or letter changed) answered 'Since ..., I choose response K.' (default: 0)")
    p.add_argument("--category-weights", default=None, metavar="CAT=W,...",
                   help="mix the training items by weight instead of evenly, e.g. color=0.4,count=1.3 (categories "
                        "not named weigh 1; the held-out items stay evenly split)")
    p.add_argument("--position-pairs", type=float, default=DEFAULT_PAIR_SHARE, metavar="SHARE",
                   help="share of the training position items that place two shapes relative to each other "
                        f"(the rest place one shape on a side; default {DEFAULT_PAIR_SHARE:g}; the held-out items "
                        f"keep {DEFAULT_PAIR_SHARE:g})")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = generate(args.out, args.n, args.seed, n_test=args.n_test, image_size=args.image_size,
                         categories=args.categories, option_order=args.option_order,
                         answer_style=args.answer_style, judge_data=args.judge_data,
                         category_weights=parse_category_weights(args.category_weights),
                         position_pairs=args.position_pairs, progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in ("train", "test", "tsv", "images"):
        print(f"{key}: {paths[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
