"""Reading and checking an OpenAI chat-completions request body for `inference.server`.

`parse_chat_request` turns the JSON body into a `ChatRequest` (the conversation as question + history,
at most one image, sampling options, stops, the `stage_search` extension) or raises `RequestError`
naming the field, which the app answers with HTTP 400 and an OpenAI-style error object. Images come
only from `data:` URLs or from paths under the server's `--image-root`; nothing else is read.
"""
from __future__ import annotations

import binascii
import math
import re
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from PIL import Image

from dataset.records import resolve_under_root

from .image import ImageLoadError, image_from_base64, open_image
from .options import SEARCH_MODES, SamplingOptions
from .prompt import Prompt, build_prompt

OPENAI_DEFAULT_TEMPERATURE = 1.0  # the protocol's defaults (what a client that sends nothing expects)
MAX_STOP_STRINGS = 4
SERVER_JUDGES = ("logprob", "self")  # the `api` judge would make the server a client of another endpoint
# Accepted and ignored, but only with the value that changes nothing (anything else is refused).
NEUTRAL_PARAMETERS = {"frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0), "logprobs": (False,),
                      "parallel_tool_calls": (True, False), "response_format": ({"type": "text"},)}
FREE_PARAMETERS = ("user", "metadata", "store")  # bookkeeping fields with no effect on the reply
KNOWN_PARAMETERS = ("model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
                    "seed", "stop", "stream", "stream_options", "stage_search")
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.S)


class RequestError(ValueError):
    """A request the server refuses (HTTP 400): the message, the offending field and an OpenAI code."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def to_body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class StageSearchRequest:
    """The `stage_search` extension: candidates per step, search mode, judge, cap on one candidate."""
    n: int = 4
    mode: str = "stage"
    judge: str = "logprob"
    max_step_tokens: int = 256


@dataclass
class ChatRequest:
    """A checked request: the conversation, its image and how to answer it."""
    query: str
    history: List[Tuple[str, str]]
    image: Optional[Image.Image]
    n: int
    temperature: float
    top_p: float
    max_tokens: Optional[int]
    seed: Optional[int]
    stop: Tuple[str, ...]
    stream: bool
    include_usage: bool
    stage_search: Optional[StageSearchRequest]
    sampling_given: bool  # temperature or top_p was sent (staged search keeps its own defaults otherwise)
    prompt: Optional[Prompt] = None
    max_new_tokens: int = 0  # max_tokens capped by the room the context leaves

    @property
    def sampling(self) -> SamplingOptions:
        return SamplingOptions(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens)


# ----------------------------------------------------------------------------- field checks

def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    """body[name] as a float in [low, high] (or (low, high]), `default` when absent."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number, got {value!r}", name, "invalid_value")
    if value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise RequestError(f"{name} must be in {bounds}, got {value}", name, "invalid_value")
    return float(value)


def _integer(value: Any, name: str, low: int, high: Optional[int] = None) -> int:
    """`value` as an int in [low, high] (booleans refused), else a RequestError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}", name, "invalid_value")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise RequestError(f"{name} must be {bounds}, got {value}", name, "invalid_value")
    return value


def _check_parameter_names(body: dict) -> None:
    """Refuse parameters the server does not implement, instead of silently ignoring them."""
    for name, value in body.items():
        if name in KNOWN_PARAMETERS or name in FREE_PARAMETERS or value is None:
            continue
        if name in NEUTRAL_PARAMETERS:
            if value not in NEUTRAL_PARAMETERS[name]:
                raise RequestError(f"{name}={value!r} is not supported by this server", name, "unsupported_value")
            continue
        raise RequestError(f"unknown or unsupported parameter {name!r}", name, "unknown_parameter")


def _stops(value: Any) -> Tuple[str, ...]:
    """`stop` (a string or up to 4) as a tuple."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("stop must be a non-empty string or a list of them", "stop", "invalid_value")
    if len(stops) > MAX_STOP_STRINGS:
        raise RequestError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", "stop",
                           "invalid_value")
    return tuple(stops)


def _stage_search(value: Any, max_n: int) -> Optional[StageSearchRequest]:
    """The checked `stage_search` extension, or None when the request has none."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestError("stage_search must be an object like {\"n\": 4, \"mode\": \"stage\", "
                           "\"judge\": \"logprob\"}", "stage_search", "invalid_value")
    unknown = sorted(set(value) - {"n", "mode", "judge", "max_step_tokens"})
    if unknown:
        raise RequestError(f"stage_search: unknown field {unknown[0]!r} (known: n, mode, judge, max_step_tokens)",
                           f"stage_search.{unknown[0]}", "unknown_parameter")
    spec = StageSearchRequest()
    n = _integer(value.get("n", spec.n), "stage_search.n", 1, max_n)
    mode = value.get("mode", spec.mode)
    if mode not in SEARCH_MODES:
        raise RequestError(f"stage_search.mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}",
                           "stage_search.mode", "invalid_value")
    judge = value.get("judge", spec.judge)
    if judge not in SERVER_JUDGES:
        raise RequestError(f"stage_search.judge must be one of {', '.join(SERVER_JUDGES)}, got {judge!r}",
                           "stage_search.judge", "invalid_value")
    step = _integer(value.get("max_step_tokens", spec.max_step_tokens), "stage_search.max_step_tokens", 1)
    return StageSearchRequest(n, mode, judge, step)


# ----------------------------------------------------------------------------- messages and images

def load_image_url(url: Any, field: str, image_root: Optional[str]) -> Image.Image:
    """The picture an `image_url` names: a base64 `data:` URL, or a path under `image_root`."""
    if not isinstance(url, str) or not url:
        raise RequestError(f"{field} must be a non-empty string", field, "invalid_value")
    try:
        if url.startswith("data:"):
            match = _DATA_URL.match(url)
            if match is None:
                raise RequestError(f"{field}: a data: URL must be base64 (data:image/png;base64,...)", field,
                                   "invalid_image")
            return image_from_base64(match.group("data"))
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
            raise RequestError(f"{field}: the server reads images only from data: URLs or paths under its "
                               f"--image-root, not {url.split(':', 1)[0]}: URLs", field, "invalid_image")
        if image_root is None:
            raise RequestError(f"{field}: image paths need the server to run with --image-root "
                               "(send the image as a data: URL instead)", field, "invalid_image")
        return open_image(resolve_under_root(url, image_root))
    except (ImageLoadError, ValueError, binascii.Error) as e:
        if isinstance(e, RequestError):
            raise
        raise RequestError(f"{field}: unreadable image: {e}", field, "invalid_image") from None


def _message_parts(message: dict, i: int, image_root: Optional[str]) -> Tuple[str, List[Image.Image]]:
    """A message's text (parts joined by newlines) and the images it holds."""
    content = message.get("content")
    field = f"messages[{i}].content"
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(f"{field} must be a string or a list of content parts", field, "invalid_value")
    texts, images = [], []
    for k, part in enumerate(content):
        pf = f"{field}[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            images.append(load_image_url(url, f"{pf}.image_url.url", image_root))
        else:
            raise RequestError(f"{pf}: content parts are {{'type': 'text', 'text': ...}} or "
                               f"{{'type': 'image_url', 'image_url': {{'url': ...}}}}, got type {kind!r}", pf,
                               "invalid_value")
    return "\n".join(texts), images


def parse_messages(messages: Any, image_root: Optional[str]) -> Tuple[str, List[Tuple[str, str]],
                                                                      Optional[Image.Image]]:
    """(last question, [(question, answer), ...] before it, the image or None) from OpenAI messages.

    System (and developer) messages go before the first question; consecutive user messages join.
    The model takes one image per conversation, placed first whichever user message carries it.
    """
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages", "invalid_value")
    system, turns, images = [], [], []  # turns: [role, text]
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"messages[{i}].role must be system, user or assistant, got {role!r}",
                               f"messages[{i}].role", "invalid_value")
        text, found = _message_parts(m, i, image_root)
        if found and role != "user":
            raise RequestError(f"messages[{i}]: only user messages may carry images", f"messages[{i}].content",
                               "invalid_value")
        images += found
        if role in ("system", "developer"):
            if turns:
                raise RequestError(f"messages[{i}]: system messages must come before the conversation",
                                   f"messages[{i}].role", "invalid_value")
            system.append(text)
        elif turns and turns[-1][0] == role == "user":
            turns[-1][1] += "\n" + text
        elif (not turns and role == "assistant") or (turns and turns[-1][0] == role):
            raise RequestError(f"messages[{i}]: an assistant message must answer a user message",
                               f"messages[{i}].role", "invalid_value")
        else:
            turns.append([role, text])
    if len(images) > 1:
        raise RequestError(f"the model takes one image per conversation, got {len(images)}", "messages",
                           "invalid_value")
    if not turns or turns[-1][0] != "user":
        raise RequestError("messages must end with a user message", "messages", "invalid_value")
    if system:
        turns[0][1] = "\n".join(system + [turns[0][1]])
    pairs = [(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)]
    return turns[-1][1], pairs, (images[0] if images else None)


# ----------------------------------------------------------------------------- the whole body

def parse_chat_request(body: Any, *, model_id: str, tokenizer, image_length: int, template: str,
                       max_length: int, max_n: int, default_max_tokens: int,
                       image_root: Optional[str] = None) -> ChatRequest:
    """A checked `ChatRequest` with its prompt built; `RequestError` for anything the server cannot serve."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None, "invalid_value")
    _check_parameter_names(body)
    model = body.get("model")
    if model is not None and model != model_id:
        raise RequestError(f"unknown model {model!r}; this server serves {model_id!r}", "model", "model_not_found")
    if "messages" not in body:
        raise RequestError("messages is required", "messages", "missing_required_parameter")
    query, history, image = parse_messages(body["messages"], image_root)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {stream!r}", "stream", "invalid_value")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or set(stream_options) - {"include_usage"}:
        raise RequestError("stream_options takes only include_usage", "stream_options", "invalid_value")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    req = ChatRequest(
        query=query, history=history, image=image,
        n=_integer(1 if body.get("n") is None else body["n"], "n", 1, max_n),
        temperature=_number(body, "temperature", OPENAI_DEFAULT_TEMPERATURE, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        max_tokens=None if max_tokens is None else _integer(max_tokens, name, 1),
        seed=None if body.get("seed") is None else _integer(body["seed"], "seed", -(2 ** 63)),
        stop=_stops(body.get("stop")), stream=stream, include_usage=bool(stream_options.get("include_usage")),
        stage_search=_stage_search(body.get("stage_search"), max_n),
        sampling_given=body.get("temperature") is not None or body.get("top_p") is not None)
    if req.stage_search is not None and (req.n != 1 or req.stop):
        raise RequestError("stage_search answers with one choice and its own stops: leave n and stop unset",
                           "n" if req.n != 1 else "stop", "invalid_value")
    req.prompt = build_prompt(tokenizer, query, history, image_length=image_length, template=template,
                              image=image is not None)
    room = max_length - len(req.prompt)
    if room < 1:
        raise RequestError(f"the prompt is {len(req.prompt)} tokens (image included); the model's context is "
                           f"{max_length} tokens", "messages", "context_length_exceeded")
    req.max_new_tokens = min(req.max_tokens or default_max_tokens, room)
    return req
