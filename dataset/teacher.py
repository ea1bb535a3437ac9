"""`python -m dataset.teacher` (`cogcot-teacher`): turn plain VQA data into four-stage training records
by asking an OpenAI-compatible vision endpoint (the teacher) for the reasoning, and keeping only
replies that pass the checks of `dataset.teacher_checks`.

Each finished sample is appended and flushed to OUT (accepted) or REJ (rejected, with every attempt's
reason) at once; running the same command again skips the ids already there. A sample whose requests
all fail stays pending for the next run. Exit 0 when every sample is accepted or rejected, 3 when some
are pending, 2 on bad options or unreadable input (named before any request is sent).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from tqdm import tqdm

from .api_client import ApiClient, ApiError, image_part, text_part
from .image_decode import ImageDecodeError, decode_image
from .teacher_checks import (DEFAULT_TEMPLATE, PLACEHOLDERS, TemplateError, check_names, check_reply, fill_template,
                             load_template, read_verdict, verify_prompt)
from .teacher_files import ResultFile, ResultFileError
from .teacher_inputs import Sample, read_samples, with_reasoning

EXIT_DONE, EXIT_BAD_INPUT, EXIT_PENDING = 0, 2, 3
ACCEPTED, REJECTED, PENDING = "accepted", "rejected", "pending"


@dataclass
class Outcome:
    """What became of one sample: its status, the accepted text, the reasons noted, the tokens used."""
    sample: Sample
    status: str
    text: str = ""
    reasons: List[str] = field(default_factory=list)
    checks: List[str] = field(default_factory=list)  # the checks the last attempt failed
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Teacher:
    """Asks the endpoint for one sample's four-stage reply, checks it, retries with the reason noted."""

    def __init__(self, client: ApiClient, template: str, *, verify: str = "match", attempts: int = 4,
                 temperature: float = 0.2, max_tokens: int = 1024):
        self.client, self.template, self.verify = client, template, verify
        self.attempts, self.temperature, self.max_tokens = attempts, temperature, max_tokens

    def __call__(self, sample: Sample) -> Outcome:
        out = Outcome(sample, PENDING)
        try:
            parts = [image_part(decode_image(img).image) for img in sample.images]
        except ImageDecodeError as e:
            out.status, out.reasons, out.checks = REJECTED, [f"image: {e.reason}"], ["image"]
            return out
        content = parts + [text_part(fill_template(self.template, sample.task))]
        for attempt in range(1, self.attempts + 1):
            try:
                reply = self.client.chat(content, max_tokens=self.max_tokens, temperature=self.temperature)
                out.prompt_tokens += reply.prompt_tokens
                out.completion_tokens += reply.completion_tokens
                problems = check_reply(reply.text, sample.task, self.verify)
                if not problems and self.verify == "llm":
                    verdict = self.client.chat(verify_prompt(reply.text, sample.task), max_tokens=16, temperature=0.0)
                    out.prompt_tokens += verdict.prompt_tokens
                    out.completion_tokens += verdict.completion_tokens
                    problems = read_verdict(verdict.text)
            except ApiError as e:  # the endpoint failed (after its retries): the sample waits for the next run
                out.status, out.reasons = PENDING, out.reasons + [f"attempt {attempt}: request failed: {e}"]
                return out
            if not problems:
                out.status, out.text = ACCEPTED, reply.text.strip()
                return out
            out.reasons.append(f"attempt {attempt}: " + "; ".join(problems))
            out.checks = check_names(problems)
        out.status = REJECTED
        return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dataset.teacher", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="prompt template placeholders:\n" + "\n".join(
                                    f"  {{{k}}}: {v}" for k, v in PLACEHOLDERS.items()))
    p.add_argument("--data", required=True, help="records (JSON/JSONL, conversations or messages) or a VLMEvalKit .tsv")
    p.add_argument("--out", required=True, help="JSONL of accepted training records (appended; resumed)")
    p.add_argument("--api-base", required=True, help="the endpoint, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-model", required=True, help="the model name sent with each request")
    p.add_argument("--image-root", default=None, help="folder image paths are relative to (default: the data file's)")
    p.add_argument("--rejected", default=None, help="JSONL of rejected ids with reasons (default: OUT.rejected.jsonl)")
    p.add_argument("--workers", type=int, default=8, help="requests in flight at most (default 8)")
    p.add_argument("--api-timeout", type=float, default=60.0, help="deadline of one whole request, seconds (60)")
    p.add_argument("--api-retries", type=int, default=4,
                   help="attempts in all, per request (HTTP faults) and per sample (failed checks) (default 4)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--prompt-template", default=None, help=f"instruction template file (default {DEFAULT_TEMPLATE})")
    p.add_argument("--verify", default="match", choices=("match", "llm"),
                   help="answer check: the option matcher / normalised text (match), or the endpoint's judgment (llm)")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples of the input")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--retry-rejected", action="store_true", help="try the ids in REJ again too")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_options(p: argparse.ArgumentParser, args) -> None:
    for name, value, low in (("--workers", args.workers, 1), ("--api-retries", args.api_retries, 1),
                             ("--max-tokens", args.max_tokens, 1), ("--limit", args.limit, 0)):
        if value is not None and value < low:
            p.error(f"{name} must be >= {low}, got {value}")
    if args.api_timeout <= 0:
        p.error(f"--api-timeout must be > 0 seconds, got {args.api_timeout}")
    if os.path.abspath(args.out) == os.path.abspath(args.data):
        p.error("--out must not be the input file")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _check_options(p, args)
    rejected_path = args.rejected or f"{os.path.splitext(args.out)[0]}.rejected.jsonl"
    try:
        template = load_template(args.prompt_template)
    except TemplateError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    samples, problems = read_samples(args.data, args.image_root, args.out)
    if problems:
        for problem in problems[:50]:
            print(f"problem: {problem}", file=sys.stderr)
        more = f" ({len(problems) - 50} more not shown)" if len(problems) > 50 else ""
        print(f"error: {len(problems)} problem(s) in the input{more}; nothing was sent", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not samples:
        print(f"error: {args.data}: no samples", file=sys.stderr)
        return EXIT_BAD_INPUT
    samples = samples[:args.limit] if args.limit is not None else samples
    try:
        out, rej = ResultFile(args.out), ResultFile(rejected_path)
    except ResultFileError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    skip = set(out.ids) | (set() if args.retry_rejected else set(rej.ids))
    todo = [s for s in samples if s.id not in skip]
    print(f"teacher: {len(samples)} samples, {len(samples) - len(todo)} already done "
          f"({len(set(out.ids))} in {args.out}, {len(set(rej.ids))} in {rejected_path}), {len(todo)} to do",
          file=sys.stderr)
    if not os.environ.get(args.api_key_env):
        print(f"teacher: ${args.api_key_env} is not set: requests carry no API key", file=sys.stderr)
    client = ApiClient(args.api_base, args.api_model, api_key_env=args.api_key_env, timeout=args.api_timeout,
                       attempts=args.api_retries, max_in_flight=args.workers)
    teacher = Teacher(client, template, verify=args.verify, attempts=args.api_retries,
                      temperature=args.temperature, max_tokens=args.max_tokens)
    try:
        counts, by_check, tokens = run(teacher, todo, out, rej, args.workers, progress=not args.no_progress)
    finally:
        if args.retry_rejected:
            rej.rewrite_without(out.ids)  # a retried id that was accepted leaves REJ
        out.close()
        rej.close()
    _summary(counts, by_check, tokens, client, args.out, rejected_path)
    return EXIT_PENDING if counts[PENDING] else EXIT_DONE


def run(teacher: Teacher, todo: List[Sample], out: ResultFile, rej: ResultFile, workers: int,
        progress: bool = True):
    """Runs the samples on `workers` threads, writing each outcome as it completes; returns
    (counts by status, rejections by check name, [prompt tokens, completion tokens])."""
    counts, by_check, tokens = Counter({ACCEPTED: 0, REJECTED: 0, PENDING: 0}), Counter(), [0, 0]
    last_failure = [""]
    bar = tqdm(total=len(todo), desc="teacher", unit="sample", disable=not progress, file=sys.stderr)
    start, queue, running = time.monotonic(), list(reversed(todo)), {}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher")
    try:
        while queue or running:
            while queue and len(running) < 2 * workers and not teacher.client.down:
                sample = queue.pop()
                running[pool.submit(teacher, sample)] = sample
            if not running:  # the endpoint is down: what is left waits for the next run
                counts[PENDING] += len(queue)
                bar.update(len(queue))
                queue.clear()
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = _outcome(future, running.pop(future))
                _record(outcome, out, rej)
                counts[outcome.status] += 1
                tokens[0] += outcome.prompt_tokens
                tokens[1] += outcome.completion_tokens
                by_check.update(outcome.checks if outcome.status == REJECTED else ())
                if outcome.status == PENDING:
                    last_failure[0] = outcome.reasons[-1] if outcome.reasons else ""
                bar.update(1)
            rate = teacher.client.requests / max(time.monotonic() - start, 1e-9)
            bar.set_postfix(accepted=counts[ACCEPTED], rejected=counts[REJECTED], pending=counts[PENDING],
                            req_s=f"{rate:.1f}", refresh=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if last_failure[0]:
        print(f"teacher: a pending sample's last failure: {last_failure[0]}", file=sys.stderr)
    return counts, by_check, tokens


def _outcome(future, sample: Sample) -> Outcome:
    """The future's outcome; an unexpected error of one sample leaves it pending, the run goes on."""
    try:
        return future.result()
    except Exception as e:  # noqa: BLE001 - one bad sample must not stop the others
        return Outcome(sample, PENDING, reasons=[f"unexpected error: {type(e).__name__}: {e}"])


def _record(outcome: Outcome, out: ResultFile, rej: ResultFile) -> None:
    """Append an accepted record (writing a TSV row's image first) or a rejection; pending: nothing."""
    sample = outcome.sample
    if outcome.status == ACCEPTED:
        record = with_reasoning(sample, outcome.text)
        for image in sample.images:
            if isinstance(image, bytes):  # a TSV row's base64 image: written next to OUT
                path = os.path.join(os.path.dirname(os.path.abspath(out.path)), record["image"])
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(image)
        out.append(record)
    elif outcome.status == REJECTED:
        rej.append({"id": sample.id, "where": sample.where, "reasons": outcome.reasons})


def _summary(counts: Counter, by_check: Counter, tokens: List[int], client: ApiClient, out_path: str,
             rej_path: str) -> None:
    finished = counts[ACCEPTED] + counts[REJECTED]
    rate = f"{100.0 * counts[ACCEPTED] / finished:.1f}%" if finished else "n/a"
    print(f"accepted {counts[ACCEPTED]}, rejected {counts[REJECTED]}, pending {counts[PENDING]} "
          f"(acceptance {rate} of the finished)")
    if by_check:
        print("rejections by check: " + ", ".join(f"{k} {v}" for k, v in by_check.most_common()))
    print(f"tokens: prompt {tokens[0]}, completion {tokens[1]}; requests {client.requests} "
          f"({client.failures} failed after their retries)")
    print(f"accepted records: {out_path}; rejected: {rej_path}")
    if client.down:
        print(f"the endpoint was treated as down ({client.down_reason})")
    if counts[PENDING]:
        print(f"{counts[PENDING]} sample(s) pending: run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
