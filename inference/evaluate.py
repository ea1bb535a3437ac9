"""Multiple-choice evaluation on a VLMEvalKit-style TSV (as `dataset.synth` writes it).

    python -m inference.evaluate --from_pretrained CKPT --data test.tsv --mode greedy --out results.jsonl

Each row's prompt is built as in training (`dataset.synth.tsv_row_to_prompt`: question + options, in
the model's template, the image first). The answer is read from `<CONCLUSION>` and matched to an
option letter (or an option's text). Prints accuracy overall and per category; writes one JSON record
per question: index, category, answer, prediction, correct, response (+ question, matched_by, mode).

`greedy` decodes `--batch-size` questions at once (left-padded, prompts grouped by length); the search
modes (`stage`, `best_of_n`, `sentence`) run `StagedSearch` per question with `--n` candidates.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from dataset.synth import tsv_row_to_prompt

from .generation import StopCriteria, generate_batch
from .image import ImageLoadError, Pixels, image_from_base64, image_size_of, model_device_dtype, open_image
from .judges import Judge
from .options import DEFAULT_STAGES, GREEDY, SearchOptions, derive_seed
from .prompt import build_prompt

MODES = ("greedy", "stage", "best_of_n", "sentence")


# ----------------------------------------------------------------------------- data

def read_tsv(path: Union[str, os.PathLike], limit: Optional[int] = None) -> List[Dict[str, str]]:
    """Rows of a VLMEvalKit TSV as dicts (header line first; `image` is base64, or `image_path` a file)."""
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and "question" not in rows[0]:
        raise ValueError(f"{path}: no 'question' column (columns: {', '.join(rows[0])})")
    return rows[:limit] if limit is not None else rows


def row_options(row: Dict[str, str]) -> Dict[str, str]:
    """{letter: option text} for the non-empty single-capital-letter columns."""
    return {k: v for k, v in row.items() if len(k) == 1 and k.isupper() and v is not None and str(v).strip()
            and str(v).lower() != "nan"}


def row_image(row: Dict[str, str], base_dir: str):
    if row.get("image"):
        return image_from_base64(row["image"])
    if row.get("image_path"):
        path = row["image_path"]
        return open_image(path if os.path.isabs(path) else os.path.join(base_dir, path))
    raise ImageLoadError(f"row {row.get('index')}: no image or image_path")


# ----------------------------------------------------------------------------- answers

_CONCLUSION = re.compile(r"<CONCLUSION>(.*?)(?:</CONCLUSION>|$)", re.S)


def extract_conclusion(response: str, stage_start: str = "<CONCLUSION>", stage_end: str = "</CONCLUSION>") -> str:
    """The text of the last conclusion stage (to the end when unclosed), or the whole response without one."""
    pattern = _CONCLUSION if (stage_start, stage_end) == ("<CONCLUSION>", "</CONCLUSION>") else re.compile(
        re.escape(stage_start) + r"(.*?)(?:" + re.escape(stage_end) + r"|$)", re.S)
    found = pattern.findall(response)
    return (found[-1] if found else response).strip()


def match_option(text: str, options: Dict[str, str]) -> Tuple[Optional[str], str]:
    """(letter, how) for the option `text` names: a bare letter, "option B"/"answer is B", "B." at the
    start, an option's text, or a lone standalone letter; (None, "none") when unclear."""
    letters = set(options)
    t = text.strip()
    m = re.fullmatch(r"[\(\[]?\s*([A-Z])\s*[\)\]]?[\.:]?", t)
    if m and m.group(1) in letters:
        return m.group(1), "letter"
    found = [x for x in re.findall(r"(?:option|answer(?:\s+is)?|choice)\s*[:\-]?\s*[\(\[]?([A-Z])\b", t, re.I)
             if x in letters]
    if found:
        return found[-1], "letter"
    m = re.match(r"[\(\[]?([A-Z])[\)\]\.:]\s", t)
    if m and m.group(1) in letters:
        return m.group(1), "letter"
    lower = t.lower()
    hits = {k for k, v in options.items() if re.search(r"(?<!\w)" + re.escape(str(v).strip().lower()) + r"(?!\w)",
                                                       lower)}
    # drop options whose text is inside another hit's text ("red" inside "dark red")
    hits = {k for k in hits if not any(k != o and str(options[k]).lower() in str(options[o]).lower() for o in hits)}
    if len(hits) == 1:
        return hits.pop(), "text"
    standalone = {x for x in re.findall(r"(?<![\w'])([A-Z])(?![\w'])", t) if x in letters}
    standalone -= {"A"} if re.search(r"(?<![\w'])A\s+[a-z]", t) else set()  # the article, not option A
    if len(standalone) == 1:
        return standalone.pop(), "letter"
    return None, "none"


def predict(response: str, options: Dict[str, str]) -> Tuple[Optional[str], str]:
    return match_option(extract_conclusion(response), options)


# ----------------------------------------------------------------------------- running

@contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate(model, tokenizer, data_path, *, template: str = "chat_old", mode: str = "greedy", n: int = 4,
             judge: Union[str, Judge] = "logprob", batch_size: int = 16, limit: Optional[int] = None,
             max_new_tokens: int = 512, image_size=None, out_path=None, progress: bool = True,
             seed: int = 0, search_options: Optional[SearchOptions] = None, judge_log=None) -> dict:
    """Evaluate `model` on the TSV at `data_path`; returns {"accuracy", "per_category", "n", "records"}.

    mode: greedy | stage | best_of_n | sentence; n, judge: candidates and judge of the search modes
    (search_options overrides the rest of `SearchOptions`); batch_size: questions decoded together in
    greedy mode; max_new_tokens: cap on each answer; image_size: ViT input size (default: the model's);
    out_path: JSONL of the records; progress: a progress bar and the printed accuracy table.
    The model is put in eval mode for the run and restored after.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    rows = read_tsv(data_path, limit)
    base_dir = os.path.dirname(os.path.abspath(data_path))
    from tqdm import tqdm
    bar = tqdm(total=len(rows), desc=f"eval {mode}", unit="q", disable=not progress, file=sys.stderr)
    responses: Dict[int, str] = {}
    with eval_mode(model), torch.no_grad():
        if mode == "greedy":
            _greedy(model, tokenizer, rows, base_dir, template, batch_size, max_new_tokens, image_size, responses, bar)
        else:
            from .search import StagedSearch
            opts = (search_options or SearchOptions()).replace(mode=mode, n=n, max_new_tokens=max_new_tokens)
            search = StagedSearch(model, tokenizer, judge=judge, options=opts, template=template,
                                  log=judge_log, image_size=image_size)
            try:
                for i, row in enumerate(rows):
                    result = search(row_image(row, base_dir), tsv_row_to_prompt(row).strip(),
                                    seed=derive_seed(seed, row.get("index", i)), question_id=row.get("index", i))
                    responses[i] = result.text
                    bar.update(1)
            finally:
                search.close()
    bar.close()
    records = []
    for i, row in enumerate(rows):
        options = row_options(row)
        prediction, how = predict(responses[i], options)
        answer = (row.get("answer") or "").strip()
        records.append({"index": _index(row.get("index", i)), "category": row.get("category") or "all",
                        "question": row.get("question"), "answer": answer, "prediction": prediction,
                        "correct": prediction is not None and prediction == answer, "matched_by": how,
                        "response": responses[i], "mode": mode})
    summary = summarize(records)
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    if progress:
        print(format_table(summary, mode))
    return {**summary, "records": records}


def _index(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _greedy(model, tokenizer, rows, base_dir, template, batch_size, max_new_tokens, image_size, responses, bar):
    args = model.args
    device, dtype = model_device_dtype(model)
    pixels = Pixels(image_size or image_size_of(args), device=device, dtype=dtype)
    prompts = [build_prompt(tokenizer, tsv_row_to_prompt(r).strip(), image_length=args.image_length,
                            template=template) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(prompts[i]))  # similar lengths together: little padding
    stop = StopCriteria(strings=(DEFAULT_STAGES[-1].end,))
    context = getattr(args, "max_sequence_length", None)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        room = max_new_tokens if context is None else min(max_new_tokens, context - len(prompts[idx[-1]]))
        if room < 1:
            raise ValueError(f"row {rows[idx[-1]].get('index')}: the prompt ({len(prompts[idx[-1]])} tokens) "
                             f"fills the model's context ({context})")
        embeds = model.encode_images(pixels([row_image(rows[i], base_dir) for i in idx]))
        out = generate_batch(model, [prompts[i] for i in idx], embeds, tokenizer=tokenizer, options=GREEDY,
                             stop=stop, max_new_tokens=room)
        for i, row in zip(idx, out):
            responses[i] = tokenizer.decode(row.tokens).strip()
        bar.update(len(idx))


def summarize(records: Sequence[dict]) -> dict:
    per = defaultdict(list)
    for r in records:
        per[r["category"]].append(bool(r["correct"]))
    n = len(records)
    return {"accuracy": (sum(bool(r["correct"]) for r in records) / n) if n else 0.0,
            "per_category": {c: sum(v) / len(v) for c, v in sorted(per.items())},
            "n": n, "counts": {c: len(v) for c, v in sorted(per.items())}}


def format_table(summary: dict, mode: str = "") -> str:
    overall = "overall" + (f" ({mode})" if mode else "")
    width = max([len(overall)] + [len(c) for c in summary["per_category"]])
    lines = [f"{'category':<{width}} {'n':>5} {'accuracy':>9}"]
    for c, acc in summary["per_category"].items():
        lines.append(f"{c:<{width}} {summary['counts'][c]:>5} {acc:>9.3f}")
    lines.append(f"{overall:<{width}} {summary['n']:>5} {summary['accuracy']:>9.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    from .cli_demo import add_model_args, add_search_args
    p = argparse.ArgumentParser(prog="python -m inference.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="VLMEvalKit-style TSV (e.g. test.tsv from dataset.synth)")
    p.add_argument("--mode", default="greedy", choices=MODES)
    p.add_argument("--out", default=None, help="JSONL file for the per-question records")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first K rows only")
    p.add_argument("--batch-size", type=int, default=16, help="questions decoded together (greedy)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    add_search_args(p, n_flag="--n", judge="logprob")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .cli_demo import judge_from_args, load_model, search_options_from_args
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.data):
        print(f"error: {args.data}: no such file", file=sys.stderr)
        return 1
    try:
        model, tokenizer, template = load_model(args)
        judge = judge_from_args(args)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: cannot load {args.from_pretrained}: {e}", file=sys.stderr)
        return 1
    result = evaluate(model, tokenizer, args.data, template=template, mode=args.mode, n=args.n, judge=judge,
                      batch_size=args.batch_size, limit=args.limit, max_new_tokens=args.max_new_tokens,
                      out_path=args.out, progress=not args.no_progress, seed=args.seed,
                      search_options=search_options_from_args(args), judge_log=args.judge_log)
    if args.no_progress:
        print(format_table(result, args.mode))
    if args.out:
        print(f"records: {args.out}")
    print(json.dumps({"accuracy": result["accuracy"], "n": result["n"], "per_category": result["per_category"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
