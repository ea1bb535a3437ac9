"""The model thread of `inference.server`: it alone touches the model, taking queued requests in
batches.

HTTP handlers `submit` a `Job` (a checked `ChatRequest` and a thread-safe `emit` for its events) and
wait; the thread takes the oldest job plus every queued job that fits with it (at most `max_batch`
rows, prompt lengths close enough that left padding wastes little; rows with and without an image mix)
and decodes them as one batch (`batch_generate.generate_rows`). Staged search runs one request at a
time. A failing batch is retried job by job, so one bad request fails alone and the thread goes on.

Events a job receives, in order: {"type": "delta", "index", "text"} (streamed text), {"type": "choice",
"index", "text", "finish_reason", "tokens"} per choice, {"type": "search", ...} (staged search only),
then {"type": "done", "prompt_tokens", "completion_tokens"} or {"type": "error", "message"}.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import torch

from .batch_generate import RowRequest, generate_rows
from .image import Pixels, image_size_of, model_device_dtype
from .options import REFERENCE_SAMPLING, SamplingOptions, SearchOptions, derive_seed
from .sampling import make_generator
from .search import StagedSearch
from .server_request import ChatRequest

log = logging.getLogger("inference.server")
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "done": "stop"}


@dataclass
class Job:
    """One request waiting for (or being served by) the model thread."""
    request: ChatRequest
    emit: Callable[[dict], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    emitted: bool = False  # some event went out already (a failed job is then not retried)

    @property
    def rows(self) -> int:
        return self.request.n

    def send(self, event: dict) -> None:
        self.emitted = True
        try:
            self.emit(event)
        except RuntimeError:  # the handler's event loop is gone (server shutting down): nobody is waiting
            self.cancel.set()


class _Streamer:
    """Turns a row's growing text into deltas whose concatenation is the final text."""

    def __init__(self, job: Job, index: int, hold: int):
        self.job, self.index, self.hold, self.sent = job, index, hold, ""

    def update(self, text: str, final: bool) -> None:
        if not final:
            text = text[:len(text) - self.hold] if self.hold else text  # may still become a stop string
            if text.endswith("\ufffd"):  # half a character
                return
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.job.send({"type": "delta", "index": self.index, "text": text[len(self.sent):]})
            self.sent = text


class ModelWorker:
    """Owns the model; serves submitted jobs on one thread, batched (`start()` starts the thread).

    batch_wait: while requests come concurrently (the last batch had several rows; a lone client never
    waits), wait up to batch_wait plus a quarter of the last batch's time (at most MAX_GATHER seconds)
    for as many rows as the last batch had: the clients it answered are likely sending their next ones.
    length_slack: prompts of one batch differ by at most max(length_slack, half the longest) tokens.
    """

    MAX_GATHER = 0.1

    def __init__(self, model, tokenizer, *, template: str = "chat_old", max_batch: int = 8,
                 batch_wait: float = 0.005, length_slack: int = 128, image_size=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_batch, self.batch_wait, self.length_slack = max_batch, batch_wait, length_slack
        device, dtype = model_device_dtype(model)
        self.pixels = Pixels(image_size or image_size_of(model.args), device=device, dtype=dtype)
        self._waiting: Deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._paused = 0
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._last_rows, self._last_seconds = 0, 0.0
        self.batch_rows: Dict[int, int] = collections.Counter()  # rows in a batch -> how many batches
        self.counts: Dict[str, int] = collections.Counter()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "ModelWorker":
        self._thread = threading.Thread(target=self._loop, name="cogcot-model", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._waiting.append(job)
            self.counts["requests"] += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self):
        """Hold the model thread between batches (jobs queue up meanwhile): for tests and maintenance."""
        with self._cond:
            self._paused += 1
        try:
            yield self
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)

    def stats(self) -> dict:
        with self._cond:
            return {"max_batch": self.max_batch, "queued": len(self._waiting),
                    "batches": sum(self.batch_rows.values()),
                    "batch_rows": {str(k): v for k, v in sorted(self.batch_rows.items())},
                    **{k: self.counts[k] for k in ("requests", "served", "errors", "stage_searches")}}

    # -- choosing a batch ------------------------------------------------------------------------
    def _fits(self, first: ChatRequest, other: ChatRequest) -> bool:
        a, b = len(first.prompt), len(other.prompt)
        return abs(a - b) <= max(self.length_slack, max(a, b) // 2)

    def _next_batch(self) -> Optional[List[Job]]:
        with self._cond:
            while not self._stopping and (self._paused or not self._waiting):
                self._cond.wait()
            if self._stopping:
                return None
            if self.batch_wait > 0 and self._last_rows > 1:  # requests come concurrently: gather a few more
                deadline = time.monotonic() + min(self.MAX_GATHER, self.batch_wait + self._last_seconds / 4)
                want = min(self.max_batch, self._last_rows)
                while sum(j.rows for j in self._waiting) < want and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            first = self._waiting[0]
            if first.request.stage_search is not None:
                return [self._waiting.popleft()]
            batch, rows = [], 0
            for job in list(self._waiting):
                if job.request.stage_search is None and rows + job.rows <= self.max_batch and \
                        self._fits(first.request, job.request):
                    batch.append(job)
                    rows += job.rows
            for job in batch:
                self._waiting.remove(job)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [j for j in batch if not j.cancel.is_set()]
            if not batch:
                continue
            try:
                self._serve(batch)
            except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                log.exception("batch of %d request(s) failed; serving them one by one", len(batch))
                for job in batch:
                    if job.emitted:
                        self._fail(job, "the server failed while answering this request")
                        continue
                    try:
                        self._serve([job])
                    except Exception as e:  # noqa: BLE001
                        log.exception("request failed")
                        self._fail(job, f"the server failed on this request: {type(e).__name__}: {e}")

    def _fail(self, job: Job, message: str) -> None:
        self.counts["errors"] += 1
        job.send({"type": "error", "message": message})

    def _serve(self, batch: List[Job]) -> None:
        if batch[0].request.stage_search is not None:
            self._serve_search(batch[0])
        else:
            self._serve_plain(batch)
        self.counts["served"] += len(batch)

    # -- plain requests: one batch ---------------------------------------------------------------
    def _serve_plain(self, jobs: List[Job]) -> None:
        start = time.perf_counter()
        requests, owners, embeds = [], [], []
        with_image = [j for j in jobs if j.request.image is not None]
        if with_image:
            with torch.no_grad():
                images = self.model.encode_images(self.pixels([j.request.image for j in with_image]))  # [k, L, H]
        for job in jobs:
            r = job.request
            for c in range(r.n):
                generator = make_generator(None if r.seed is None else derive_seed(r.seed, c))
                requests.append(RowRequest(r.prompt, r.sampling, r.max_new_tokens, r.stop, generator, job.cancel))
                hold = max((len(s) for s in r.stop), default=1) - 1
                owners.append((job, c, _Streamer(job, c, hold) if r.stream else None))
                if r.image is not None:
                    embeds.append(images[with_image.index(job)])
        self._last_rows = len(requests)
        with self._cond:
            self.batch_rows[len(requests)] += 1

        def on_step(changed):
            for a, row in changed:
                job, c, streamer = owners[a]
                if streamer is not None and row.finish != "cancelled":
                    streamer.update(row.text, final=row.finish is not None)
                if row.finish is not None and row.finish != "cancelled":
                    job.send({"type": "choice", "index": c, "text": row.text,
                              "finish_reason": FINISH_REASONS[row.finish], "tokens": len(row.tokens)})

        rows = generate_rows(self.model, self.tokenizer, requests, torch.stack(embeds) if embeds else None,
                             on_step=on_step)
        self._last_seconds = time.perf_counter() - start
        spent: Dict[int, int] = collections.Counter()
        for (job, _, _), row in zip(owners, rows):
            spent[id(job)] += len(row.tokens)
        for job in jobs:
            job.send({"type": "done", "prompt_tokens": len(job.request.prompt), "completion_tokens": spent[id(job)]})
        log.info("batch: %d row(s) from %d request(s), %d token(s) at most, %.3f s", len(requests), len(jobs),
                 max(len(r.tokens) for r in rows), time.perf_counter() - start)

    # -- staged search: one request --------------------------------------------------------------
    def _serve_search(self, job: Job) -> None:
        r, spec = job.request, job.request.stage_search
        self._last_rows = 1
        with self._cond:
            self.batch_rows[1] += 1
            self.counts["stage_searches"] += 1
        sampling = REFERENCE_SAMPLING
        if r.sampling_given:
            sampling = SamplingOptions(temperature=r.temperature, top_p=r.top_p)
        options = SearchOptions(mode=spec.mode, n=spec.n, sampling=sampling, max_step_tokens=spec.max_step_tokens,
                                max_new_tokens=r.max_new_tokens, seed=0 if r.seed is None else r.seed)
        search = StagedSearch(self.model, self.tokenizer, judge=spec.judge, options=options, template=self.template)
        streamer = _Streamer(job, 0, 0) if r.stream else None
        chosen: List[str] = []

        def on_step(step):
            chosen.append(step.text)
            if streamer is not None:
                streamer.update("".join(chosen).strip(), final=False)

        result = search(r.image, r.query, r.history, on_step=on_step)
        if streamer is not None:
            streamer.update(result.text, final=True)
        tokens = sum(len(s.candidates[s.winner].tokens) for s in result.steps)
        job.send({"type": "choice", "index": 0, "text": result.text, "tokens": tokens,
                  "finish_reason": FINISH_REASONS.get(result.finish, "length")})
        job.send({"type": "search", "stage_search": describe_search(spec, result)})
        job.send({"type": "done", "prompt_tokens": len(r.prompt), "completion_tokens": tokens})


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None  # JSON has no infinities


def describe_search(spec, result) -> dict:
    """The reply's `stage_search` field: every step's candidates, the judgments and the one kept."""
    return {"mode": spec.mode, "n": spec.n, "judge": spec.judge, "finish": result.finish,
            "steps": [{"index": s.index, "name": s.name, "winner": s.winner, "text": s.text,
                       "candidates": [{"index": c.index, "text": c.text, "finish": c.finish,
                                       "mean_logprob": _finite(c.mean_logprob)} for c in s.candidates],
                       "judgments": [{"pair": j["pair"], "winner": j["winner"], "reason": j["reason"],
                                      "fallback": j["fallback"]} for j in s.judgments]}
                      for s in result.steps]}
