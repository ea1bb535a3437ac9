"""train_log.jsonl: one JSON record per line, appended as training goes. A run killed mid-write can
leave a partial last line; reading tolerates exactly that (and says so), and a rewrite (a resume from an
earlier step) replaces the file atomically, so a second crash cannot leave it half written."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Tuple

from models.atomic_files import atomic_write_text


def read_records(path) -> Tuple[List[dict], bool]:
    """(records, whether a partial last line was dropped). A bad line elsewhere is an error naming it."""
    text = Path(path).read_text()
    lines = text.split("\n")  # a complete file ends with "\n": its last element is ""
    records, dropped = [], False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):  # no newline after it: a write the crash cut short
                dropped = True
                continue
            raise ValueError(f"{path}:{number}: not a JSON record ({e.msg})") from None
    return records, dropped


def write_records(path, records: Iterable[dict]) -> None:
    """Replace the log with `records` in one step."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
