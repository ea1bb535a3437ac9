"""The teacher's input: conversation records (every format `dataset.records` reads) or a VLMEvalKit TSV,
as `Sample`s, each holding its `Task` for the teacher and the training record its reply will complete.

Everything is read and checked before any request is sent: a bad record, an unreadable image, an
answer that is none of the options or an id twice is a `Problem` naming file, line and id.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from PIL import Image

from .cot_format import CONCLUSION, LETTERS, extract_conclusion, match_option, tsv_row_to_prompt
from .records import ASSISTANT, IMAGE_MARKER, USER, DatasetError, Problem, iter_json_objects, parse_record
from .teacher_checks import Task
from .vqa_tsv import RowImageError, TsvError, read_tsv, row_image_source, row_options, row_problem


@dataclass
class Sample:
    """One question for the teacher. `record` is the training record to write (the assistant turn
    to replace is its last one); `images` are paths or encoded bytes, in marker order."""
    id: str
    task: Task
    record: dict
    images: List[Union[str, bytes]] = field(default_factory=list)
    where: str = ""


_OPTIONS_LINE = re.compile(r"^\s*Options:\s*(.*)$", re.M)
_OPTION = re.compile(r"(?:^|\s)([A-Z])\.\s+(.*?)(?=\s+[A-Z]\.\s|$)")


def split_options(question: str) -> Tuple[str, Dict[str, str]]:
    """(the question without its "Options: A. x B. y" line, {letter: text}); ({} when it has none)."""
    m = _OPTIONS_LINE.search(question)
    if not m:
        return question.strip(), {}
    options = {k: v.strip() for k, v in _OPTION.findall(m.group(1)) if k in LETTERS}
    return (question[:m.start()] + question[m.end():]).strip(), options


def read_samples(path: str, image_root: Optional[str], out_path: str) -> Tuple[List[Sample], List[Problem]]:
    """The samples of a records file or a .tsv, and every problem found (nothing is sent if any)."""
    if not os.path.isfile(path):
        return [], [Problem(path, None, None, "no such file" if not os.path.isdir(path) else "is a directory")]
    if path.lower().endswith(".tsv"):
        samples, problems = _read_tsv(path, image_root, out_path)
    else:
        samples, problems = _read_records(path, image_root)
    seen: Dict[str, str] = {}
    for s in samples:
        if s.id in seen:
            problems.append(Problem(path, None, s.id, f"id {s.id} appears twice ({seen[s.id]} and {s.where}); "
                                                      f"resuming goes by id"))
        seen.setdefault(s.id, s.where)
    for s in samples:
        for image in s.images:
            reason = _image_problem(image)
            if reason:
                problems.append(Problem(path, None, s.id, reason))
    return samples, problems


def _image_problem(image: Union[str, bytes]) -> Optional[str]:
    """Why an image cannot be sent (read from its header only: cheap), or None."""
    import io
    try:
        with Image.open(image if isinstance(image, str) else io.BytesIO(image)) as img:
            img.size  # noqa: B018 - the header parsed
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        name = image if isinstance(image, str) else "base64 image"
        return f"{name}: not a readable image ({type(e).__name__})"
    return None


def _read_records(path: str, image_root: Optional[str]) -> Tuple[List[Sample], List[Problem]]:
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    samples, problems = [], []
    try:
        objects = list(iter_json_objects(path))
    except (OSError, UnicodeDecodeError) as e:
        return [], [Problem(path, None, None, f"cannot read the file ({e})")]
    for line, obj in objects:
        if isinstance(obj, Problem):
            problems.append(obj)
            continue
        try:
            rec = parse_record(obj, path, line, root)
        except DatasetError as e:
            problems.append(e.problem)
            continue
        body = [t for t in rec.turns if t.role in (USER, ASSISTANT)]
        question, options = split_options(body[-2].text.replace(IMAGE_MARKER, " ").strip())
        given = extract_conclusion(body[-1].text, CONCLUSION)
        answer = obj.get("answer") if isinstance(obj.get("answer"), str) and obj.get("answer").strip() else given
        answer = answer.strip()
        if options:
            letter, _ = match_option(answer, options)
            if letter is None:
                problems.append(rec.problem(f"answer {answer!r} is none of the options ({', '.join(options)})"))
                continue
            answer = letter
        elif not answer:
            problems.append(rec.problem("the last assistant turn (the standard answer) is empty"))
            continue
        hint = obj.get("hint") if isinstance(obj.get("hint"), str) and obj.get("hint").strip() else None
        out = copy.deepcopy(obj)
        out["id"] = rec.id
        out.pop("hint", None)
        out.pop("answer", None)  # the standard answer stays out of the training record
        samples.append(Sample(rec.id, Task(question, options, answer, hint), out, list(rec.images),
                              f"{path}:{line}"))
    return samples, problems


def _read_tsv(path: str, image_root: Optional[str], out_path: str) -> Tuple[List[Sample], List[Problem]]:
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    try:
        rows = read_tsv(path)
    except (TsvError, OSError, UnicodeDecodeError) as e:
        return [], [Problem(path, None, None, str(e))]
    samples, problems = [], []
    images_dir = os.path.basename(out_path) + ".images"  # written next to OUT: paths relative to its folder
    for i, row in enumerate(rows):
        line = i + 2  # the header is line 1
        rid = str(row.get("index") if row.get("index") not in (None, "") else i)
        reason = row_problem(row)
        try:
            source = row_image_source(row, root)
        except RowImageError as e:
            reason = reason or str(e)
        if reason:
            problems.append(Problem(path, line, rid, reason))
            continue
        hint = (row.get("hint") or "").strip()
        hint = hint if hint and hint.lower() != "nan" else None
        options = {k: str(v).strip() for k, v in row_options(row).items() if k in LETTERS}
        image = (os.path.relpath(source, root) if isinstance(source, str)
                 else f"{images_dir}/{_safe(rid)}.{_extension(source)}")
        record = {"id": rid, "image": image,
                  "conversations": [{"from": "human", "value": f"{IMAGE_MARKER}\n{tsv_row_to_prompt(row)}"},
                                    {"from": "gpt", "value": ""}]}
        if row.get("category"):
            record["category"] = row["category"]
        samples.append(Sample(rid, Task(row["question"].strip(), options, row["answer"].strip(), hint), record,
                              [source], f"{path}:{line}"))
    return samples, problems


def _safe(rid: str) -> str:
    return re.sub(r"[^\w.-]", "_", rid)


def _extension(data: bytes) -> str:
    import io
    try:
        with Image.open(io.BytesIO(data)) as img:
            return (img.format or "png").lower().replace("jpeg", "jpg")
    except (OSError, ValueError):
        return "png"


def with_reasoning(sample: Sample, text: str) -> dict:
    """The sample's training record with its last assistant turn replaced by the teacher's text."""
    record = copy.deepcopy(sample.record)
    key, role_key, text_key = (("conversations", "from", "value") if "conversations" in record
                               else ("messages", "role", "content"))
    turns = record[key]
    for turn in reversed(turns):
        if str(turn[role_key]).lower() in ("gpt", "assistant"):
            turn[text_key] = text
            break
    return record
