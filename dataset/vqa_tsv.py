"""Reading VLMEvalKit-style TSV files (a header line, then one question per row: `question`, the option
columns `A`, `B`, ..., `answer`, and the image as base64 in `image` or a file in `image_path`).

Shared by `inference.evaluate` (which scores a model on them) and `dataset.teacher` (which turns them
into four-stage training records), so both read a row the same way.
"""
from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from typing import Dict, List, Optional, Union

from .image_decode import DEFAULT_MAX_PIXELS, decode_image
from .records import resolve_under_root


class TsvError(ValueError):
    """A TSV that cannot be used as a whole (no rows, a missing column, an index twice), naming the file."""


class RowImageError(ValueError):
    """A row whose image cannot be found or read (no image, a path outside the root, bad base64)."""


def read_tsv(path: Union[str, os.PathLike], limit: Optional[int] = None) -> List[Dict[str, str]]:
    """Rows of a VLMEvalKit TSV as dicts (header line first; `image` is base64, or `image_path` a file).

    TsvError when there are no rows, no `question` or `answer` column, or an index twice.
    """
    rows = _read_rows(path, whole=True)
    seen = set()
    for i, row in enumerate(rows):
        key = index_of(row.get("index", i))
        if key in seen:
            raise TsvError(f"{path}: index {key} appears twice (records and resuming go by index)")
        seen.add(key)
    return rows[:limit] if limit is not None else rows


def check_tsv(path: Union[str, os.PathLike]) -> None:
    """The header and first row only (cheap, before a model is loaded): TsvError if unusable."""
    _read_rows(path, whole=False)


def _read_rows(path, whole: bool) -> List[Dict[str, str]]:
    csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))  # base64 images are long cells
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader) if whole else [row for _, row in zip(range(1), reader)]
        columns = list(reader.fieldnames or [])
    if not columns:
        raise TsvError(f"{path}: empty file (expected a header line, then one row per question)")
    for needed in ("question", "answer"):
        if needed not in columns:
            raise TsvError(f"{path}: no '{needed}' column (columns: {', '.join(columns)})")
    if not rows:
        raise TsvError(f"{path}: no rows after the header line")
    return rows


def row_options(row: Dict[str, str]) -> Dict[str, str]:
    """{letter: option text} for the non-empty single-capital-letter columns."""
    return {k: v for k, v in row.items() if k is not None and len(k) == 1 and k.isupper() and v is not None
            and str(v).strip() and str(v).lower() != "nan"}


def row_problem(row: Dict[str, str]) -> Optional[str]:
    """Why a row cannot be scored (no options, an answer that is not one of them), or None."""
    options = row_options(row)
    if not options:
        return "no options (the single-letter columns A, B, ... are empty or missing)"
    answer = (row.get("answer") or "").strip()
    if answer not in options:
        return f"answer {answer!r} is not one of the row's options ({', '.join(sorted(options))})"
    return None


def row_image_source(row: Dict[str, str], image_root: str) -> Union[bytes, str]:
    """Where the row's image is: the decoded bytes of its base64 `image` cell, or the path of its
    `image_path` under `image_root` (never outside it). RowImageError when neither is usable."""
    if row.get("image"):
        try:
            return base64.b64decode(row["image"], validate=False)
        except (ValueError, TypeError, binascii.Error) as e:
            raise RowImageError(f"not a base64-encoded image ({e})") from None
    if row.get("image_path"):
        try:
            return resolve_under_root(row["image_path"], image_root)
        except ValueError as e:
            raise RowImageError(str(e)) from None
    raise RowImageError("no image or image_path")


def load_row_image(row: Dict[str, str], image_root: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS):
    """The row's image as an RGB PIL image, decoded as training decodes files; RowImageError if unusable."""
    source = row_image_source(row, image_root)
    try:
        return decode_image(source, max_pixels).image
    except ValueError as e:
        where = "base64 image" if isinstance(source, bytes) else f"image {source}"
        raise RowImageError(f"{where}: {getattr(e, 'reason', e)}") from None


def index_of(value):
    """A row's `index` as an int when it is one (as records store it), else as written."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return value
