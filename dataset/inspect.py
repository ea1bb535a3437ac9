"""`python -m dataset.inspect DATA --image-root DIR`: check a data file before training.

Prints record and image counts (with the conversions decoding made: 16-bit scaled, EXIF orientation,
transparency), a token-length histogram (what max_length would cut or drop), one sample's training
text with its trained parts between ⟦ ⟧ (with `--stage-loss-weights`, each part's weight after it), and
every problem with file and line.
Exit status 0 when clean, 1 when any problem was found (an empty data file is one).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from typing import List, Optional, Sequence

from tqdm import tqdm

from .image_decode import EXIF_ORIENTATION, HIGH_BIT_DEPTH, TRANSPARENCY
from .image_processor import DEFAULT_MAX_PIXELS, load_image
from .item_dataset import ItemDataset
from .records import DatasetError, Problem, SampleDropped
from .text_processor import IGNORE_INDEX, TEMPLATES, TRUNCATION, Encoded, TextProcessor

OPEN, CLOSE = "⟦", "⟧"


def build_parser() -> argparse.ArgumentParser:
    from models.config import get_preset
    tiny = get_preset("cogvlm-tiny")
    p = argparse.ArgumentParser(prog="python -m dataset.inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+", help="JSON array or JSONL file(s) of conversation records")
    p.add_argument("--image-root", default=None, help="folder image paths are relative to (default: the data file's)")
    p.add_argument("--tokenizer", default="tiny", help="tokenizer.model, a folder holding one, or 'tiny' (default)")
    p.add_argument("--strict", action="store_true", help="stop at the first problem")
    p.add_argument("--max-length", type=int, default=2048, help="training max_length in tokens (default 2048)")
    p.add_argument("--template", default="chat_old", choices=sorted(TEMPLATES))
    p.add_argument("--image-length", type=int, default=tiny.image_length,
                   help=f"tokens per image (default {tiny.image_length}, cogvlm-tiny; 1225 for 490 px)")
    p.add_argument("--loss-on", default="all", choices=("all", "last"))
    p.add_argument("--truncation", default="cut", choices=TRUNCATION,
                   help="a sample longer than --max-length is cut at the end (no EOS at the cut) or dropped")
    p.add_argument("--stage-loss-weights", default=None, metavar="STAGE=W,...",
                   help="per-stage loss weights as finetune takes them (SUMMARY=0.5,...,CONCLUSION=2): the shown "
                        "sample marks each trained part with its weight")
    p.add_argument("--show", type=int, default=0, help="index of the sample whose training text is shown")
    p.add_argument("--no-decode", action="store_true", help="skip decoding images (only check they exist)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression bomb limit")
    return p


def histogram(lengths: Sequence[int], max_length: int, bins: int = 10, width: int = 40) -> List[str]:
    """Text histogram of token lengths, equal-width bins; bins past max_length are flagged."""
    lo, hi = min(lengths), max(lengths)
    step = max(1, -(-(hi - lo + 1) // bins))
    counts = [0] * (-(-(hi - lo + 1) // step))
    for n in lengths:
        counts[(n - lo) // step] += 1
    top = max(counts)
    lines = []
    for i, c in enumerate(counts):
        a, b = lo + i * step, lo + (i + 1) * step - 1
        flag = "  > max_length" if b > max_length else ""
        lines.append(f"  {a:>7}-{b:<7} {c:>7} {'#' * max(1 if c else 0, round(width * c / top))}{flag}")
    return lines


def render(enc: Encoded, tokenizer, weighted: bool = False) -> str:
    """Training text: image spans as <image: n tokens>, BOS/EOS by name, trained parts in ⟦ ⟧; with
    `weighted`, trained parts are split where the per-stage loss weight changes, each followed by ×w."""
    specials = {tokenizer.bos_token_id: "<s>", tokenizer.eos_token_id: "</s>"}
    span_end = dict(enc.image_spans)  # BOI index -> EOI index
    weights = enc.loss_weights() if weighted else [1.0] * len(enc)
    out, i = [], 0
    while i < len(enc):
        if i in span_end:
            out.append(f"<image: {span_end[i] - i + 1} tokens>")
            i = span_end[i] + 1
            continue
        trained, j = enc.labels[i] != IGNORE_INDEX, i
        while (j < len(enc) and j not in span_end and (enc.labels[j] != IGNORE_INDEX) == trained
               and (not trained or weights[j] == weights[i])):
            j += 1
        text = _decode(enc.input_ids[i:j], tokenizer, specials)
        if trained:
            out.append(f"{OPEN}{text}{CLOSE}" + (f"×{weights[i]:g}" if weighted else ""))
        else:
            out.append(text)
        i = j
    return " ".join(out)


def stage_weight_counts(enc: Encoded, weights) -> str:
    """'SUMMARY=0.5 (9 tokens), ..., other=1 (2 tokens)': each stage's weight and its trained tokens."""
    from .stage_weights import STAGE_NAMES
    counts = dict.fromkeys(STAGE_NAMES, 0)
    other = 0
    stages = enc.token_stages()
    for i, label in enumerate(enc.labels):
        if label == IGNORE_INDEX:
            continue
        name = stages[i]
        if name is None:
            other += 1
        else:
            counts[name] += 1
    return ", ".join([f"{n}={weights[n]:g} ({counts[n]} tokens)" for n in STAGE_NAMES] + [f"other=1 ({other} tokens)"])


def _decode(ids: Sequence[int], tokenizer, specials) -> str:
    """Decode text runs, naming special tokens instead of dropping them."""
    parts, run = [], []
    for t in list(ids) + [None]:
        if t is None or t in specials:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            if t is not None:
                parts.append(specials[t])
        else:
            run.append(t)
    return " ".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from models.tokenizer import load_tokenizer
    tokenizer = load_tokenizer(args.tokenizer)
    from .stage_weights import parse_stage_weights
    try:
        stage_weights = parse_stage_weights(args.stage_loss_weights)
    except ValueError as e:
        print(f"--stage-loss-weights: {e}")
        return 2
    full = TextProcessor(tokenizer, max_length=None, image_length=args.image_length, template=args.template,
                         loss_on=args.loss_on)
    fitted = TextProcessor(tokenizer, max_length=args.max_length, image_length=args.image_length,
                           template=args.template, loss_on=args.loss_on, truncation=args.truncation,
                           stage_weights=stage_weights)
    logging.getLogger("cogcot.dataset").setLevel(logging.ERROR)  # we print every problem ourselves
    try:
        ds = ItemDataset(None, full, None, args.data, image_root=args.image_root, strict=args.strict,
                         max_pixels=args.max_pixels, allow_empty=True)
        problems: List[Problem] = list(ds.problems)
        lengths, cut, dropped, samples = [], 0, 0, []
        big = len(ds) > 1000
        for rec in tqdm(ds.data, desc="tokenising", disable=not big, file=sys.stderr):
            where = rec.problem("")
            lengths.append(len(full.encode(rec.turns, where)))
            try:
                samples.append(fitted.encode(rec.turns, where))
                cut += samples[-1].truncated > 0
            except SampleDropped:  # chosen with --truncation drop: counted, not a problem
                samples.append(None)
                dropped += 1
            except DatasetError as e:
                samples.append(None)
                _note(problems, e.problem, args.strict)
        n_images, bad_images, conversions = sum(len(r.images) for r in ds.data), 0, Counter()
        if not args.no_decode:
            for rec in tqdm(ds.data, desc="decoding images", disable=not big, file=sys.stderr):
                for path in rec.images:
                    try:
                        load_image(path, args.max_pixels, rec.problem(""), conversions)
                    except DatasetError as e:
                        bad_images += 1
                        _note(problems, e.problem, args.strict)
    except DatasetError as e:  # strict mode, or a data file that does not exist
        print(f"problem: {e}")
        return 1

    print(f"records: {ds.num_read} read, {len(ds)} parsed, {len(ds.problems)} rejected at load")
    print(f"images: {n_images} referenced by parsed records" +
          ("" if args.no_decode else f", {n_images - bad_images} decoded, {bad_images} unreadable"))
    if not args.no_decode:
        print(f"image conversions: {conversions[HIGH_BIT_DEPTH]} 16-bit scaled to 8 bit, "
              f"{conversions[EXIF_ORIENTATION]} turned by their EXIF orientation, "
              f"{conversions[TRANSPARENCY]} with transparency composited on white")
    if lengths:
        over = sum(n > args.max_length for n in lengths)
        print(f"tokens per sample (image spans included, image_length {args.image_length}): "
              f"min {min(lengths)}, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")
        print("\n".join(histogram(lengths, args.max_length)))
        if args.truncation == "drop":
            print(f"max_length {args.max_length} cuts {over} sample(s): {dropped} dropped (--truncation drop)")
        else:
            print(f"max_length {args.max_length} cuts {over} sample(s): {cut} truncated, {over - cut} cannot fit"
                  + (" (truncated: cut at the end, no EOS trained at the cut)" if cut else ""))
        show = min(max(args.show, 0), len(samples) - 1)
        if samples[show] is not None:
            weighted = stage_weights is not None
            how = f"{OPEN}trained{CLOSE}" + ("×loss weight" if weighted else "")
            print(f"\nsample {show} ({ds.data[show].id}) as trained, {how}:\n{render(samples[show], tokenizer, weighted)}")
            if weighted:
                print("per-stage loss weights: " + stage_weight_counts(samples[show], stage_weights))
    print(f"\n{len(problems)} problem(s)" + (":" if problems else ""))
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


def _note(problems: List[Problem], problem: Problem, strict: bool) -> None:
    if strict:
        raise DatasetError(problem)
    problems.append(problem)


if __name__ == "__main__":
    sys.exit(main())
