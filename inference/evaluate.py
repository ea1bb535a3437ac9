"""Multiple-choice evaluation on a VLMEvalKit-style TSV (as `dataset.synth` writes it).

    python -m inference.evaluate --from_pretrained CKPT --data test.tsv --mode greedy --out results.jsonl

Each row's prompt is built as in training (`dataset.cot_format.tsv_row_to_prompt`: question + options, in
the model's template, the image first). The answer is read from `<CONCLUSION>` and matched to an
option letter (or an option's text). Prints accuracy overall and per category; writes one JSON record
per question: index, category, answer, prediction, correct, response (+ question, matched_by, mode).

Nothing is lost: each record goes to `--out` as soon as its question is finished, and a rerun with the
same `--out` resumes (skips the indices already there; `--restart` starts over). A row whose image or
options cannot be read becomes an error record (`matched_by: "error"`, `error`: why; counted as wrong)
and the run goes on; a prediction that names a letter outside the row's options is marked
`matched_by: "not_an_option"`; search records count their judge fallbacks. A TSV without rows or
without an `answer` column is an error (exit status 2). `image_path` cells resolve under the TSV's
folder or `--image-root`, never outside it.

`greedy` decodes `--batch-size` questions at once (left-padded, prompts grouped by length); the search
modes (`stage`, `best_of_n`, `sentence`) run `StagedSearch` per question with `--n` candidates.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Optional, Sequence, Union

import torch

# extract_conclusion, match_option and predict are imported by callers from here too (kept importable)
from dataset.cot_format import CONCLUSION, extract_conclusion, match_option, predict, tsv_row_to_prompt  # noqa: F401

from .eval_data import (EvalDataError, RecordFile, check_tsv, index_of, read_tsv, row_image, row_options,  # noqa: F401
                        row_problem)
from .generation import StopCriteria, generate_batch
from .image import ImageLoadError, Pixels, image_size_of, model_device_dtype
from .judges import Judge
from .options import GREEDY, SearchOptions, derive_seed
from .prompt import build_prompt

MODES = ("greedy", "stage", "best_of_n", "sentence")


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
             seed: int = 0, search_options: Optional[SearchOptions] = None, judge_log=None,
             image_root: Optional[str] = None, resume: bool = False, model_name: Optional[str] = None) -> dict:
    """Evaluate `model` on the TSV at `data_path`; returns {"accuracy", "per_category", "n", "errors", "records"}.

    mode: greedy | stage | best_of_n | sentence; n, judge: candidates and judge of the search modes
    (search_options overrides the rest of `SearchOptions`); batch_size: questions decoded together in
    greedy mode; max_new_tokens: cap on each answer; image_size: ViT input size (default: the model's);
    out_path: JSONL of the records, written as each question finishes; resume: skip the questions
    already in out_path (else it is overwritten); model_name: stored in the records and checked on
    resume; image_root: where `image_path` cells resolve (default: the TSV's folder); progress: a
    progress bar and the printed accuracy table. The model is put in eval mode for the run and restored after.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    rows = read_tsv(data_path, limit)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(data_path))
    keys = [index_of(row.get("index", i)) for i, row in enumerate(rows)]
    setup = {"mode": mode, **({"model": model_name} if model_name is not None else {})}
    out = RecordFile(out_path, resume=resume, setup=setup) if out_path else None
    records: Dict[int, dict] = {i: out.done[k] for i, k in enumerate(keys) if out and k in out.done}
    todo = [i for i in range(len(rows)) if i not in records]
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc=f"eval {mode}", unit="q", disable=not progress, file=sys.stderr)
    if records and progress:
        bar.write(f"[resume] {len(records)} of {len(rows)} questions already in {out_path}; "
                  f"evaluating the other {len(todo)}", file=sys.stderr)

    def finish(i: int, response: Optional[str] = None, error: Optional[str] = None, **extra) -> None:
        record = _record(rows[i], keys[i], mode, response, error, model_name, extra)
        records[i] = record
        if out is not None:
            out.write(record)
        if error is not None:
            bar.write(f"[error] row index {keys[i]}: {error}", file=sys.stderr)
        bar.update(1)

    try:
        ready = []
        for i in todo:
            problem = row_problem(rows[i])
            if problem is not None:
                finish(i, error=problem)
            else:
                ready.append(i)
        with eval_mode(model), torch.no_grad():
            if mode == "greedy":
                _greedy(model, tokenizer, rows, ready, root, template, batch_size, max_new_tokens, image_size, finish)
            else:
                _search(model, tokenizer, rows, ready, root, template, mode, n, judge, max_new_tokens, image_size,
                        seed, search_options, judge_log, finish)
    finally:
        bar.close()
        if out is not None:
            out.close()
    ordered = [records[i] for i in range(len(rows))]
    if out is not None:
        out.finish(ordered)
    summary = summarize(ordered)
    if progress:
        print(format_table(summary, mode))
    return {**summary, "records": ordered}


def _record(row, index, mode: str, response: Optional[str], error: Optional[str], model_name, extra) -> dict:
    """The JSON record of one question: scored from the response, or an error record (counted as wrong)."""
    answer = (row.get("answer") or "").strip()
    if error is None:
        prediction, how = predict(response, row_options(row))
    else:
        prediction, how = None, "error"
    record = {"index": index, "category": row.get("category") or "all", "question": row.get("question"),
              "answer": answer, "prediction": prediction,
              "correct": how not in ("error", "not_an_option") and prediction is not None and prediction == answer,
              "matched_by": how, "response": response, "mode": mode}
    if error is not None:
        record["error"] = error
    if model_name is not None:
        record["model"] = model_name
    return {**record, **extra}


def _model_name(path_or_preset: str) -> str:
    """A checkpoint directory by its absolute path (however it was typed), a preset by name."""
    return os.path.abspath(path_or_preset) if os.path.isdir(path_or_preset) else path_or_preset


def _search(model, tokenizer, rows, todo, root, template, mode, n, judge, max_new_tokens, image_size, seed,
            search_options, judge_log, finish):
    from .search import StagedSearch
    opts = (search_options or SearchOptions()).replace(mode=mode, n=n, max_new_tokens=max_new_tokens)
    search = StagedSearch(model, tokenizer, judge=judge, options=opts, template=template, log=judge_log,
                          image_size=image_size)
    try:
        for i in todo:
            row = rows[i]
            try:
                image = row_image(row, root)
            except ImageLoadError as e:
                finish(i, error=f"image: {e}")
                continue
            result = search(image, tsv_row_to_prompt(row).strip(), seed=derive_seed(seed, row.get("index", i)),
                            question_id=row.get("index", i))
            judgments = [j for step in result.steps for j in step.judgments]
            finish(i, response=result.text, judgments=len(judgments),
                   judge_fallbacks=sum(bool(j.get("fallback")) for j in judgments))
    finally:
        search.close()


def _greedy(model, tokenizer, rows, todo, root, template, batch_size, max_new_tokens, image_size, finish):
    args = model.args
    device, dtype = model_device_dtype(model)
    pixels = Pixels(image_size or image_size_of(args), device=device, dtype=dtype)
    prompts = {i: build_prompt(tokenizer, tsv_row_to_prompt(rows[i]).strip(), image_length=args.image_length,
                               template=template) for i in todo}
    stop = StopCriteria(strings=(CONCLUSION.end,))
    context = getattr(args, "max_sequence_length", None)
    fitting = []
    for i in todo:
        if context is not None and len(prompts[i]) >= context:
            finish(i, error=f"the prompt ({len(prompts[i])} tokens) fills the model's context ({context})")
        else:
            fitting.append(i)
    order = sorted(fitting, key=lambda i: len(prompts[i]))  # similar lengths together: little padding
    for s in range(0, len(order), batch_size):
        idx, images = [], []
        for i in order[s:s + batch_size]:
            try:
                images.append(row_image(rows[i], root))
                idx.append(i)
            except ImageLoadError as e:
                finish(i, error=f"image: {e}")
        if not idx:
            continue
        room = max_new_tokens if context is None else min(max_new_tokens, context - len(prompts[idx[-1]]))
        embeds = model.encode_images(pixels(images))
        out = generate_batch(model, [prompts[i] for i in idx], embeds, tokenizer=tokenizer, options=GREEDY,
                             stop=stop, max_new_tokens=room)
        for i, row in zip(idx, out):
            finish(i, response=tokenizer.decode(row.tokens).strip())


def summarize(records: Sequence[dict]) -> dict:
    """Accuracy over all records (error rows count as wrong), per category, and how many rows were errors
    or named a letter outside their options."""
    per = defaultdict(list)
    for r in records:
        per[r["category"]].append(bool(r["correct"]))
    n = len(records)
    return {"accuracy": (sum(bool(r["correct"]) for r in records) / n) if n else 0.0,
            "per_category": {c: sum(v) / len(v) for c, v in sorted(per.items())},
            "n": n, "counts": {c: len(v) for c, v in sorted(per.items())},
            "errors": sum(r.get("matched_by") == "error" for r in records),
            "not_an_option": sum(r.get("matched_by") == "not_an_option" for r in records)}


def format_table(summary: dict, mode: str = "") -> str:
    overall = "overall" + (f" ({mode})" if mode else "")
    width = max([len(overall)] + [len(c) for c in summary["per_category"]])
    lines = [f"{'category':<{width}} {'n':>5} {'accuracy':>9}"]
    for c, acc in summary["per_category"].items():
        lines.append(f"{c:<{width}} {summary['counts'][c]:>5} {acc:>9.3f}")
    lines.append(f"{overall:<{width}} {summary['n']:>5} {summary['accuracy']:>9.3f}")
    if summary.get("errors"):
        lines.append(f"{summary['errors']} row(s) could not be evaluated (counted as wrong; 'error' in their records)")
    if summary.get("not_an_option"):
        lines.append(f"{summary['not_an_option']} prediction(s) named a letter that is not among the row's options")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    from .model_args import add_model_args, add_search_args
    p = argparse.ArgumentParser(prog="python -m inference.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True, help="VLMEvalKit-style TSV (e.g. test.tsv from dataset.synth)")
    p.add_argument("--mode", default="greedy", choices=MODES)
    p.add_argument("--out", default=None,
                   help="JSONL file for the per-question records, written as each finishes; a rerun resumes from it")
    p.add_argument("--restart", action="store_true", help="overwrite --out instead of resuming from it")
    p.add_argument("--image-root", default=None,
                   help="folder the TSV's image_path cells are relative to (default: the TSV's folder)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first K rows only")
    p.add_argument("--batch-size", type=int, default=16, help="questions decoded together (greedy)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    add_search_args(p, n_flag="--n", judge="logprob")  # the best-measured judge (README: what search buys)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .model_args import judge_from_args, load_model, search_options_from_args
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.data):
        print(f"error: {args.data}: no such file", file=sys.stderr)
        return 1
    if args.image_root is not None and not os.path.isdir(args.image_root):
        print(f"error: --image-root {args.image_root}: no such directory", file=sys.stderr)
        return 2
    try:
        check_tsv(args.data)  # before loading a model: a TSV that cannot be scored costs nothing
    except EvalDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as e:
        print(f"error: {args.data}: not UTF-8 text ({e})", file=sys.stderr)
        return 2
    try:
        model, tokenizer, template = load_model(args)
        judge = judge_from_args(args)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: cannot load {args.from_pretrained}: {e}", file=sys.stderr)
        return 1
    try:
        result = evaluate(model, tokenizer, args.data, template=template, mode=args.mode, n=args.n, judge=judge,
                          batch_size=args.batch_size, limit=args.limit, max_new_tokens=args.max_new_tokens,
                          out_path=args.out, progress=not args.no_progress, seed=args.seed,
                          search_options=search_options_from_args(args), judge_log=args.judge_log,
                          image_root=args.image_root, resume=not args.restart,
                          model_name=_model_name(args.from_pretrained))
    except EvalDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.no_progress:
        print(format_table(result, args.mode))
    if args.out:
        print(f"records: {args.out}")
    print(json.dumps({"accuracy": result["accuracy"], "n": result["n"], "errors": result["errors"],
                      "per_category": result["per_category"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
