"""The one client of OpenAI-compatible chat endpoints (the `openai` SDK), used by `dataset.teacher` and
the staged-search `api` judge: content parts with images as base64 `data:` URLs, and a request that
costs little when the endpoint fails.

- `timeout` is a deadline for a whole request (a server that trickles one byte a second is cut off),
  enforced by a watchdog around the SDK call, whose own socket timeout only bounds each read.
- Every error of the HTTP stack (status errors, connection resets, bodies cut short, bodies that are
  not JSON or not a chat completion) becomes an `ApiError` with a one-line reason.
- HTTP 429 waits what `Retry-After` says; 5xx, timeouts, connection and body errors are retried with
  exponential backoff and jitter, up to `attempts` attempts in all; other 4xx are not retried.
- A circuit breaker: after `down_after` requests in a row failed (after their retries) the endpoint
  is treated as down; every later request raises `EndpointDown` at once, and one warning says so.

The API key is read from the environment variable named by `api_key_env` and never printed.
"""
from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import openai

log = logging.getLogger(__name__)

NO_KEY = "no-key"  # the SDK insists on a key; local servers without auth ignore this placeholder


class ApiError(RuntimeError):
    """A chat request that failed: after all its attempts, or at once when not worth retrying."""

    def __init__(self, message: str, attempts: int = 0):
        super().__init__(message)
        self.attempts = attempts


class EndpointDown(ApiError):
    """The circuit breaker is open: the endpoint failed too often in a row, so no request is sent."""


@dataclass(frozen=True)
class ChatReply:
    """One chat completion: the message text, the token counts of its `usage`, how many attempts it took."""
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    attempts: int = 1


class _Failed(Exception):
    """One attempt failed; `retry` says whether another attempt may help, `wait` what Retry-After asked."""

    def __init__(self, reason: str, retry: bool = True, wait: Optional[float] = None):
        super().__init__(reason)
        self.reason, self.retry, self.wait = reason, retry, wait


# ----------------------------------------------------------------------------- content parts

def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def image_data_url(image) -> str:
    """A PIL image as a `data:image/png;base64,...` URL (lossless: the teacher sees what the student sees)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def image_part(image) -> dict:
    """An `image_url` content part holding the PIL image as a base64 data: URL."""
    return {"type": "image_url", "image_url": {"url": image_data_url(image)}}


# ----------------------------------------------------------------------------- the client

class ApiClient:
    """Chat completions against `base_url` (e.g. "http://127.0.0.1:8000/v1") with model `model`.

    Thread-safe: the teacher's workers share one client (and its connection pool and breaker).
    `max_in_flight` bounds the HTTP requests open at once, those given up on at the deadline included.
    `requests` counts attempts sent, `failures` requests that failed after their attempts.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 attempts: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, max_retry_after: float = 120.0,
                 down_after: int = 3, max_in_flight: Optional[int] = None):
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.base_url, self.model, self.timeout = base_url.rstrip("/"), model, float(timeout)
        self.attempts, self.backoff, self.max_backoff = attempts, backoff, max_backoff
        self.max_retry_after, self.down_after = max_retry_after, down_after
        self._key = os.environ.get(api_key_env) or None
        # max_retries=0: retries are ours (Retry-After, jitter, breaker); the SDK timeout bounds each read
        self._sdk = openai.OpenAI(base_url=self.base_url, api_key=self._key or NO_KEY, max_retries=0,
                                  timeout=self.timeout)
        self._lock = threading.Lock()
        # held from the send until the request's thread really ends (not just until the deadline): a
        # request given up on still holds its connection until its socket notices, and counts
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self.requests = self.failures = 0
        self._failed_in_a_row = 0
        self.down_reason: Optional[str] = None

    @property
    def down(self) -> bool:
        return self.down_reason is not None

    def chat(self, content: Union[str, Sequence[dict]], *, max_tokens: int = 1024, temperature: float = 0.0,
             seed: Optional[int] = None, messages: Optional[List[dict]] = None) -> ChatReply:
        """One user message (`content`: a string or content parts), or the `messages` given, answered.

        Raises EndpointDown when the breaker is open, ApiError when every attempt failed.
        """
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                "messages": messages if messages is not None else [{"role": "user", "content": content}]}
        if seed is not None:
            body["seed"] = int(seed) % (2 ** 31)
        reason = ""
        for attempt in range(1, self.attempts + 1):
            if self.down:
                raise EndpointDown(f"endpoint {self.base_url} is down ({self.down_reason})", attempt - 1)
            with self._lock:
                self.requests += 1
            try:
                reply = self._attempt(body)
            except _Failed as e:
                reason = self._redact(e.reason)
                if not e.retry:
                    self._failed(reason)
                    raise ApiError(f"{reason} (not retried)", attempt) from None
                if attempt < self.attempts:
                    time.sleep(self._wait(attempt, e.wait))
                continue
            with self._lock:
                self._failed_in_a_row = 0
            return ChatReply(reply.text, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason, attempt)
        self._failed(reason)
        raise ApiError(f"{reason} (after {self.attempts} attempts)", self.attempts)

    def _wait(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds before the next attempt: what Retry-After asked (capped), else backoff 2^k with jitter."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _failed(self, reason: str) -> None:
        """Count a failed request; open the breaker (warning once) after `down_after` in a row."""
        with self._lock:
            self.failures += 1
            self._failed_in_a_row += 1
            opened = self.down_reason is None and self.down_after and self._failed_in_a_row >= self.down_after
            if opened:
                self.down_reason = f"{self._failed_in_a_row} requests in a row failed; last: {reason}"
        if opened:
            log.warning("endpoint %s treated as down for the rest of the run: %s", self.base_url, self.down_reason)

    def _attempt(self, body: dict) -> ChatReply:
        """One HTTP request under the whole-request deadline (the watchdog: a daemon thread waited on)."""
        box: dict = {}
        finished = threading.Event()
        deadline = time.monotonic() + self.timeout

        def run():
            try:
                box["reply"] = self._send(body, deadline)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, classified there
                box["error"] = e
            finally:
                finished.set()
                if self._slots is not None:
                    self._slots.release()

        if self._slots is not None:
            self._slots.acquire()
            deadline = time.monotonic() + self.timeout  # the wait for a slot is not the request's time
        threading.Thread(target=run, name="api-request", daemon=True).start()
        if not finished.wait(max(0.0, deadline - time.monotonic())):
            raise _Failed(f"no complete reply within {self.timeout:g} s (--api-timeout) from {self.base_url}")
        if "error" in box:
            raise _classify(box["error"], self.base_url)
        return box["reply"]

    def _send(self, body: dict, deadline: float) -> ChatReply:
        """POST the body, read the reply in chunks (stopping at the deadline), parse the completion."""
        chunks = []
        with self._sdk.chat.completions.with_streaming_response.create(**body) as response:
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise _Failed(f"no complete reply within {self.timeout:g} s (--api-timeout) from {self.base_url}")
        return parse_completion(b"".join(chunks))

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def parse_completion(raw: bytes) -> ChatReply:
    """The first choice's message text and the usage of a chat.completion body; _Failed when malformed."""
    try:
        payload = json.loads(raw.decode("utf-8"))
        choice = payload["choices"][0]
        content = choice["message"].get("content")
        usage = payload.get("usage") or {}
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ChatReply("" if content is None else str(content), int(usage.get("prompt_tokens") or 0),
                         int(usage.get("completion_tokens") or 0), str(choice.get("finish_reason") or ""))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        head = raw[:80].decode("utf-8", "replace")
        raise _Failed(f"malformed reply body ({type(e).__name__}: {e}; starts {head!r})") from None


def _classify(error: BaseException, url: str) -> _Failed:
    """An exception of one attempt as a _Failed with a reason and whether to retry."""
    if isinstance(error, _Failed):
        return error
    if isinstance(error, openai.APIStatusError):
        code = error.status_code
        retry = code == 429 or code >= 500 or code in (408, 409)
        wait = retry_after_seconds(error.response.headers) if code == 429 else None
        return _Failed(f"HTTP {code} from {url}", retry=retry, wait=wait)
    if isinstance(error, openai.APITimeoutError):  # the SDK's socket timeout (= the deadline) fired first
        return _Failed(f"no complete reply within the deadline (--api-timeout) from {url}")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return _Failed(f"connection error ({type(cause).__name__}: {cause})")
    if isinstance(error, Exception):  # the HTTP stack below the SDK: cut bodies, resets, protocol errors
        return _Failed(f"{type(error).__name__}: {error}")
    raise error  # KeyboardInterrupt, SystemExit: not ours to swallow


def retry_after_seconds(headers) -> Optional[float]:
    """Seconds a Retry-After header (or retry-after-ms) asks for: a number or an HTTP date; None if absent."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: the ordinary backoff applies
    return max(0.0, when.timestamp() - time.time())
