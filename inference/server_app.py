"""The HTTP side of `inference.server` (FastAPI): the OpenAI routes, replies and server-sent events.

    app = create_app(worker, ServingConfig(model_id="cogvlm-tiny", max_length=1024, ...))

`GET /v1/models`, `POST /v1/chat/completions` (plain JSON or `stream: true` SSE chunks ending with
`data: [DONE]`), and `GET /v1/stats` (batches served and their sizes). A bad request gets HTTP 400 with
an OpenAI error object; a failure while answering gets 500 with one; neither stops the server.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, List, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.concurrency import run_in_threadpool

from .server_request import ChatRequest, RequestError, parse_chat_request
from .server_worker import Job, ModelWorker

log = logging.getLogger("inference.server")


@dataclass(frozen=True)
class ServingConfig:
    """What the routes need to know about the served model and the server's limits."""
    model_id: str
    tokenizer: object
    image_length: int
    template: str
    max_length: int
    max_batch: int
    default_max_tokens: int = 512
    image_root: Optional[str] = None


def error_response(status: int, message: str, kind: str, param: Optional[str] = None,
                   code: Optional[str] = None) -> JSONResponse:
    """An OpenAI-style error body ({"error": {message, type, param, code}}) with HTTP `status`."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _sse(payload) -> bytes:
    """One server-sent event: `data: <json or [DONE]>` and a blank line."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n".encode()


class _Reply:
    """One request in flight: submits its job and reads the model thread's events."""

    def __init__(self, worker: ModelWorker, request: ChatRequest):
        loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.job = Job(request, lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event))
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        worker.submit(self.job)

    async def events_until_done(self) -> AsyncIterator[dict]:
        try:
            while True:
                event = await self.events.get()
                yield event
                if event["type"] in ("done", "error"):
                    return
        finally:  # the client went away (or we are done): the model thread drops unfinished rows
            self.job.cancel.set()


def create_app(worker: ModelWorker, config: ServingConfig) -> FastAPI:
    """The FastAPI app serving `worker`'s model under `config.model_id`."""
    app = FastAPI(title="cogcot OpenAI-compatible server", docs_url=None, redoc_url=None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug answering one request, not a crash
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_id, "object": "model", "created": 0,
                                            "owned_by": "cogcot"}]}

    @app.get("/v1/stats")
    async def stats():
        return worker.stats()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(400, f"the request body is not JSON: {e}", "invalid_request_error")
        try:  # image decoding and tokenizing off the event loop
            chat = await run_in_threadpool(
                parse_chat_request, body, model_id=config.model_id, tokenizer=config.tokenizer,
                image_length=config.image_length, template=config.template, max_length=config.max_length,
                max_n=config.max_batch, default_max_tokens=config.default_max_tokens, image_root=config.image_root)
        except RequestError as e:
            return JSONResponse(e.to_body(), 400)
        try:
            reply = _Reply(worker, chat)
        except RuntimeError as e:
            return error_response(503, str(e), "server_error")
        if chat.stream:
            return StreamingResponse(_stream(reply, chat, config.model_id), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _complete(reply, chat, config.model_id)

    return app


async def _complete(reply: _Reply, chat: ChatRequest, model_id: str) -> JSONResponse:
    """The whole reply as one `chat.completion` object."""
    choices: List[Optional[dict]] = [None] * chat.n
    body = {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": model_id}
    async for event in reply.events_until_done():
        if event["type"] == "choice":
            choices[event["index"]] = {"index": event["index"], "finish_reason": event["finish_reason"],
                                       "message": {"role": "assistant", "content": event["text"]}, "logprobs": None}
        elif event["type"] == "search":
            body["stage_search"] = event["stage_search"]
        elif event["type"] == "error":
            return error_response(500, event["message"], "server_error")
        elif event["type"] == "done":
            body["choices"] = choices
            body["usage"] = _usage(event)
    return JSONResponse(body)


def _usage(event: dict) -> dict:
    """The OpenAI `usage` object from a job's "done" event."""
    return {"prompt_tokens": event["prompt_tokens"], "completion_tokens": event["completion_tokens"],
            "total_tokens": event["prompt_tokens"] + event["completion_tokens"]}


async def _stream(reply: _Reply, chat: ChatRequest, model_id: str) -> AsyncIterator[bytes]:
    """`chat.completion.chunk` events: the role, content deltas, each choice's finish, [usage], [DONE]."""
    def chunk(choices, **extra):
        return {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created, "model": model_id,
                "choices": choices, **extra}

    for i in range(chat.n):
        yield _sse(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]))
    search = None
    async for event in reply.events_until_done():
        kind = event["type"]
        if kind == "delta":
            yield _sse(chunk([{"index": event["index"], "delta": {"content": event["text"]}, "finish_reason": None}]))
        elif kind == "choice":
            yield _sse(chunk([{"index": event["index"], "delta": {}, "finish_reason": event["finish_reason"]}]))
        elif kind == "search":
            search = event["stage_search"]
        elif kind == "error":
            yield _sse({"error": {"message": event["message"], "type": "server_error", "param": None, "code": None}})
        elif kind == "done":
            if search is not None:  # the stages ride on a last chunk without choices
                yield _sse(chunk([], stage_search=search))
            if chat.include_usage:
                yield _sse(chunk([], usage=_usage(event)))
    yield _sse("[DONE]")
