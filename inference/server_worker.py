"""The model thread of `inference.server`: it alone touches the model, decoding the queued requests
as one batch that new requests join between steps (continuous batching).

HTTP handlers `submit` a `Job` (a checked `ChatRequest` and a thread-safe `emit` for its events) and
wait. Between decode steps the thread admits queued jobs, oldest first, while the rows in flight stay
within `max_batch` (a job's `n` choices are rows) and the prompt lengths are close enough that left
padding wastes little; rows with and without an image mix. Each admission runs the new prompts in
one forward and merges them into the running batch (`batch_generate.BatchDecoder`). A staged search
runs alone, once the rows ahead of it have finished. When a step fails, the jobs in flight that have
not sent anything yet are retried one by one, so one bad request fails alone and the thread goes on.

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
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Tuple

import torch

from .batch_generate import BatchDecoder, RowRequest
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
    solo: bool = False  # retried alone after a failed step
    rows_left: int = 0
    tokens: int = 0

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


class _Stopping(Exception):
    pass


class ModelWorker:
    """Owns the model; serves submitted jobs on one thread (`start()` starts it), batched as they come.

    length_slack: a prompt joins the batch when its length and the batch's cached width differ by at
    most max(length_slack, half the longer) tokens.
    """

    def __init__(self, model, tokenizer, *, template: str = "chat_old", max_batch: int = 8,
                 length_slack: int = 128, image_size=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_batch, self.length_slack = max_batch, length_slack
        device, dtype = model_device_dtype(model)
        self.pixels = Pixels(image_size or image_size_of(model.args), device=device, dtype=dtype)
        self._waiting: Deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._paused = 0
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.step_rows: Dict[int, int] = collections.Counter()  # rows decoded together -> how many steps
        self.admit_rows: Dict[int, int] = collections.Counter()  # rows one admission added -> how many times
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

    def submit(self, job: Job, front: bool = False) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            if front:
                self._waiting.appendleft(job)
            else:
                self._waiting.append(job)
                self.counts["requests"] += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def paused(self):
        """Admit nothing new while held (jobs queue up; rows in flight go on): for tests and maintenance."""
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
        """Counts, and `batch_rows` {rows: decode steps that ran that many rows together}."""
        with self._cond:
            steps = sum(self.step_rows.values())
            return {"max_batch": self.max_batch, "queued": len(self._waiting), "steps": steps,
                    "mean_rows_per_step": sum(k * v for k, v in self.step_rows.items()) / max(steps, 1),
                    "batch_rows": {str(k): v for k, v in sorted(self.step_rows.items())},
                    "admitted_rows": {str(k): v for k, v in sorted(self.admit_rows.items())},
                    **{k: self.counts[k] for k in ("requests", "served", "errors", "stage_searches",
                                                        "cancelled_rows")}}

    # -- admitting jobs --------------------------------------------------------------------------
    def _fits(self, a: int, b: int) -> bool:
        return abs(a - b) <= max(self.length_slack, max(a, b) // 2)

    def _take(self, busy: int, width: int) -> Tuple[Optional[Job], List[Job]]:
        """(a staged search to run now, plain jobs to admit); blocks only while nothing is in flight."""
        with self._cond:
            while not self._stopping and busy == 0 and (self._paused or not self._waiting):
                self._cond.wait()
            if self._stopping:
                raise _Stopping()
            if self._paused or not self._waiting:
                return None, []
            head = self._waiting[0]
            if head.request.stage_search is not None or head.solo:  # alone, after the rows in flight
                if busy:
                    return None, []
                job = self._waiting.popleft()
                return (job, []) if job.request.stage_search is not None else (None, [job])
            jobs, rows = [], busy
            reference = width if busy else len(head.request.prompt)
            for job in list(self._waiting):
                if job.request.stage_search is not None or job.solo or rows + job.rows > self.max_batch or \
                        not self._fits(reference, len(job.request.prompt)):
                    break  # first come, first served: nothing overtakes the oldest waiting job, none starves
                jobs.append(job)
                rows += job.rows
            for job in jobs:
                self._waiting.remove(job)
            return None, jobs

    def _loop(self) -> None:
        decoder = BatchDecoder(self.model, self.tokenizer)
        in_flight: List[Job] = []
        while True:
            try:
                search, jobs = self._take(len(decoder), decoder.width)
            except _Stopping:
                return
            if search is not None:
                if not search.cancel.is_set():
                    self._guarded(search, lambda: self._serve_search(search))
                continue
            jobs = [j for j in jobs if not j.cancel.is_set()]
            if jobs:
                try:
                    self._admit(decoder, jobs)
                    in_flight += jobs
                except Exception:  # noqa: BLE001 - the thread must outlive any one request
                    log.exception("admitting %d request(s) failed", len(jobs))
                    for job in reversed(jobs):  # each goes back to the front: keep their order
                        self._retry_or_fail(job)
            if not len(decoder):
                continue
            try:
                with self._cond:
                    self.step_rows[len(decoder)] += 1
                changed = decoder.step()
            except Exception:  # noqa: BLE001
                log.exception("a decode step of %d row(s) failed", len(decoder))
                for job in reversed(in_flight):
                    if job.rows_left > 0:
                        self._retry_or_fail(job)
                decoder, in_flight = BatchDecoder(self.model, self.tokenizer), []
                continue
            self._deliver(changed)
            in_flight = [j for j in in_flight if j.rows_left > 0]

    def _guarded(self, job: Job, serve: Callable[[], None]) -> None:
        try:
            serve()
            self.counts["served"] += 1
        except Exception as e:  # noqa: BLE001
            log.exception("request failed")
            self._fail(job, f"the server failed on this request: {type(e).__name__}: {e}")

    def _retry_or_fail(self, job: Job) -> None:
        """After a failure: a job that sent nothing yet runs again alone; the others get an error."""
        if job.emitted or job.solo or job.cancel.is_set():
            self._fail(job, "the server failed while answering this request")
        else:
            job.solo, job.rows_left, job.tokens = True, 0, 0
            try:
                self.submit(job, front=True)
            except RuntimeError:  # shutting down
                self._fail(job, "the server is shutting down")

    def _fail(self, job: Job, message: str) -> None:
        self.counts["errors"] += 1
        job.rows_left = 0
        job.send({"type": "error", "message": message})

    # -- plain requests: rows of the running batch -----------------------------------------------
    def _admit(self, decoder: BatchDecoder, jobs: List[Job]) -> None:
        """The jobs' choices join the batch (their images through the ViT in one call)."""
        requests, tags, embeds = [], [], []
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
                tags.append((job, c, _Streamer(job, c, hold) if r.stream else None))
                if r.image is not None:
                    embeds.append(images[with_image.index(job)])
        decoder.add(requests, torch.stack(embeds) if embeds else None, tags)
        for job in jobs:
            job.rows_left, job.tokens = job.rows, 0
        with self._cond:
            self.admit_rows[len(requests)] += 1
        log.info("admitted %d row(s) from %d request(s); %d row(s) in flight", len(requests), len(jobs),
                 len(decoder))

    def _deliver(self, changed) -> None:
        """Stream deltas, finished choices and, when a job's last choice is done, its usage."""
        for (job, c, streamer), row in changed:
            if row.finish == "cancelled":  # the client went away: the row left the batch
                job.rows_left -= 1
                self.counts["cancelled_rows"] += 1
                continue
            if streamer is not None:
                streamer.update(row.text, final=row.finish is not None)
            if row.finish is None:
                continue
            job.send({"type": "choice", "index": c, "text": row.text, "finish_reason": FINISH_REASONS[row.finish],
                      "tokens": len(row.tokens)})
            job.rows_left -= 1
            job.tokens += len(row.tokens)
            if job.rows_left == 0:
                job.send({"type": "done", "prompt_tokens": len(job.request.prompt), "completion_tokens": job.tokens})
                self.counts["served"] += 1

    # -- staged search: one request --------------------------------------------------------------
    def _serve_search(self, job: Job) -> None:
        r, spec = job.request, job.request.stage_search
        with self._cond:
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
    """`x`, or None for an infinity (JSON has none)."""
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
