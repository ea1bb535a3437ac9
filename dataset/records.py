"""Reading conversation records (JSON array or JSONL; LLaVA `conversations` or chat `messages` form)
into one normalised `Record`, with every problem reported as file, line, record id and reason."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple, Union

IMAGE_MARKER = "<image>"
USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
_ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}


@dataclass(frozen=True)
class Problem:
    """One bad input, located as precisely as we can: file, 1-based line, record id."""
    file: str
    line: Optional[int]
    record_id: Optional[str]
    reason: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        rid = f" [id {self.record_id}]" if self.record_id is not None else ""
        return f"{where}{rid}: {self.reason}"


class DatasetError(ValueError):
    """Bad training data; `problem` says where and why."""

    def __init__(self, problem: Union[Problem, str]):
        self.problem = problem if isinstance(problem, Problem) else Problem("<unknown>", None, None, problem)
        super().__init__(str(self.problem))


class SampleTooLong(DatasetError):
    """The sample cannot fit `max_length` without cutting an image span or every trained token."""


class SampleDropped(SampleTooLong):
    """The sample is longer than `max_length` and `truncation="drop"` skips such samples (counted, not a problem)."""


@dataclass(frozen=True)
class Turn:
    role: str  # user | assistant | system
    text: str


@dataclass
class Record:
    """A conversation with its images resolved to paths; `file`/`line` say where it came from."""
    id: str
    turns: List[Turn]
    images: List[str] = field(default_factory=list)
    file: str = "<memory>"
    line: Optional[int] = None

    def problem(self, reason: str) -> Problem:
        return Problem(self.file, self.line, self.id, reason)


def iter_json_objects(path: str) -> Iterator[Tuple[int, Union[object, Problem]]]:
    """Yield (line, parsed object) from a JSON array or JSONL file; a parse failure yields a Problem.

    A broken JSONL line costs only that line; a broken JSON array stops the file (no way to resync).
    """
    with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark
        text = f.read()
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        yield from _iter_array(path, text, start + 1)
        return
    first = True
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            if first and line.strip().startswith("{"):
                whole = _one_spread_object(path, text, lineno, line)
                if whole is not None:
                    yield lineno, whole
                    return
            yield lineno, Problem(path, lineno, None, f"bad JSON line: {e.msg} (column {e.colno})")
        first = False


def _one_spread_object(path: str, text: str, lineno: int, line: str) -> Optional[Problem]:
    """A Problem naming a pretty-printed single JSON object (the first line is not a whole object but the
    file is one, or starts like one), else None (then it is JSONL with a bad first line)."""
    expected = "expected a JSON array or one object per line (JSONL)"
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        if line.strip() == "{":
            return Problem(path, lineno, None, f"the file looks like one pretty-printed JSON object, and it does "
                                               f"not parse ({e.msg} at line {e.lineno}); {expected}")
        return None
    if isinstance(whole, dict):
        return Problem(path, lineno, None, f"the file is a single JSON object spread over several lines; {expected}")
    return None


def _iter_array(path: str, text: str, pos: int) -> Iterator[Tuple[int, Union[object, Problem]]]:
    """Decode a JSON array element by element so each record knows its line."""
    decoder = json.JSONDecoder()
    space = re.compile(r"\s*")
    first = True
    counted = [0, 1]  # (position, line there): lines are counted incrementally, not from 0 each time

    def _line(text: str, at: int) -> int:
        counted[1] += text.count("\n", counted[0], at)
        counted[0] = at
        return counted[1]

    while True:
        pos = space.match(text, pos).end()
        if text[pos:pos + 1] == "]":
            rest = space.match(text, pos + 1).end()
            if rest < len(text):
                yield _line(text, rest), Problem(path, _line(text, rest), None, "bad JSON: data after the closing ]")
            return
        if not first:
            if text[pos:pos + 1] != ",":
                yield _line(text, pos), Problem(path, _line(text, pos), None,
                                                "bad JSON: expected ',' or ']' in the array; rest of the file not read")
                return
            pos = space.match(text, pos + 1).end()
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield e.lineno, Problem(path, e.lineno, None, f"bad JSON: {e.msg} (column {e.colno}); rest of the file not read")
            return
        yield _line(text, pos), obj
        pos, first = end, False


def parse_record(obj: object, file: str, line: Optional[int], image_root: str) -> Record:
    """Normalise one JSON object to a Record; raises DatasetError naming file, line and id."""
    rid = str(obj.get("id")) if isinstance(obj, dict) and obj.get("id") is not None else None

    def fail(reason: str) -> DatasetError:
        return DatasetError(Problem(file, line, rid, reason))

    if not isinstance(obj, dict):
        raise fail(f"a record must be a JSON object, got {type(obj).__name__}")
    if "conversations" in obj:
        turns = _turns_from(obj["conversations"], "conversations", "from", "value", fail)
    elif "messages" in obj:
        turns = _turns_from(obj["messages"], "messages", "role", "content", fail)
    else:
        raise fail("record has no 'conversations' (or 'messages') list")
    images = obj.get("image", obj.get("images", []))
    if images is None:
        images = []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise fail("'image'/'images' must be a path or a list of paths")
    _check_turns(turns, len(images), fail)
    paths = [_resolve_image(p, image_root, fail) for p in images]
    return Record(id=rid if rid is not None else f"{os.path.basename(file)}:{line}",
                  turns=turns, images=paths, file=file, line=line)


def _turns_from(items, key: str, role_key: str, text_key: str, fail) -> List[Turn]:
    if not isinstance(items, list) or not items:
        raise fail(f"'{key}' must be a non-empty list of turns")
    turns = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or role_key not in item or text_key not in item:
            raise fail(f"{key}[{i}] needs '{role_key}' and '{text_key}'")
        role = _ROLES.get(str(item[role_key]).lower())
        if role is None:
            raise fail(f"{key}[{i}]: unknown role {item[role_key]!r} (use human/gpt, user/assistant or system)")
        turns.append(Turn(role, _content_text(item[text_key], f"{key}[{i}]", fail)))
    return turns


def _content_text(content, where: str, fail) -> str:
    """Plain string, or a chat-template part list where {"type": "image"} parts become <image> markers."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind == "image":
                parts.append(IMAGE_MARKER + "\n")
            else:
                raise fail(f"{where}: content parts must be {{'type': 'text', 'text': ...}} or {{'type': 'image'}}")
        return "".join(parts)
    raise fail(f"{where}: content must be a string or a list of parts")


def _check_turns(turns: List[Turn], n_images: int, fail) -> None:
    """System turns first, then user/assistant alternating, ending on an assistant; markers = images."""
    body = turns
    while body and body[0].role == SYSTEM:
        if IMAGE_MARKER in body[0].text:
            raise fail("<image> marker in a system turn")
        body = body[1:]
    if not body:
        raise fail("conversation has no user/assistant turns")
    for i, turn in enumerate(body):
        want = USER if i % 2 == 0 else ASSISTANT
        if turn.role != want:
            raise fail(f"turn {i + len(turns) - len(body)} is '{turn.role}', expected '{want}' "
                       f"(turns must alternate user, assistant, ...)")
        if turn.role == ASSISTANT and IMAGE_MARKER in turn.text:
            raise fail("<image> marker in an assistant turn (the model cannot produce images)")
    if body[-1].role != ASSISTANT:
        raise fail("conversation ends with a user turn (nothing to train on)")
    markers = sum(t.text.count(IMAGE_MARKER) for t in body)
    if markers != n_images:
        raise fail(f"{markers} <image> marker(s) but {n_images} image(s)")


def resolve_under_root(path: str, image_root: str) -> str:
    """`path` joined to `image_root`; ValueError when it leaves the root by `../`, an absolute path or a
    symlink (real paths are compared), is a directory, or does not exist. Returns the joined path."""
    root = os.path.normpath(os.path.abspath(image_root))
    full = os.path.normpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
        raise ValueError(f"image path {path!r} leaves the image root {root}")
    real_root, real = os.path.realpath(root), os.path.realpath(full)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ValueError(f"image path {path!r} leaves the image root {root} through a symlink "
                         f"(it resolves to {real})")
    if os.path.isdir(full):
        raise ValueError(f"image path {path!r} is a directory, not an image file ({full})")
    if not os.path.isfile(full):
        raise ValueError(f"missing image {full}")
    return full


def _resolve_image(path: str, image_root: str, fail) -> str:
    """Join to the image root and refuse paths that leave it; checks existence (no decoding)."""
    try:
        return resolve_under_root(path, image_root)
    except ValueError as e:
        raise fail(str(e)) from None
