"""The teacher's two output files, OUT (accepted training records) and REJ (rejected ids with every
attempt's reason): appended and flushed one sample at a time, read back to resume.

A kill -9 can leave a last line cut short: it is cut off before anything is appended (that sample
runs again). Any other line that is not a JSON object with an `id` is an error naming file and line.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List


class ResultFileError(ValueError):
    """An OUT or REJ file that cannot be resumed from (a broken line that is not the last)."""


class ResultFile:
    """One JSONL file of records keyed by `id`: `ids` read back on open, `append` writes and flushes."""

    def __init__(self, path: str):
        self.path = path
        self.records: Dict[str, dict] = {}
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        if os.path.isfile(path):
            self._load()
        self._f = open(path, "a", encoding="utf-8")

    @property
    def ids(self):
        return self.records.keys()

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            raw = f.read()
        keep = len(raw)
        if raw and not raw.endswith(b"\n"):
            tail_start = raw.rfind(b"\n") + 1
            try:
                json.loads(raw[tail_start:].decode("utf-8"))
                raw += b"\n"  # a whole record that only lacks its newline
                with open(self.path, "ab") as f:
                    f.write(b"\n")
            except (ValueError, UnicodeDecodeError):
                keep = tail_start  # cut short by a kill: dropped, the sample runs again
        for lineno, line in enumerate(raw[:keep].decode("utf-8", "replace").split("\n"), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ResultFileError(f"{self.path}:{lineno}: not a JSON record ({e}); "
                                      f"fix or remove the line") from None
            if not isinstance(record, dict) or "id" not in record:
                raise ResultFileError(f"{self.path}:{lineno}: a record without an 'id' (not a teacher output file?)")
            self.records[str(record["id"])] = record
        if keep < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def append(self, record: dict) -> None:
        self.records[str(record["id"])] = record
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def rewrite_without(self, ids: Iterable[str]) -> None:
        """Rewrite the file atomically with one record per id (the latest), leaving out `ids`."""
        drop = set(ids)
        self._f.close()
        kept: List[dict] = [r for k, r in self.records.items() if k not in drop]
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        os.replace(tmp, self.path)
        self.records = {str(r["id"]): r for r in kept}
        self._f = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
