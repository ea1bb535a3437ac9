"""What `inference.evaluate` reads and writes: the VLMEvalKit-style TSV (read by `dataset.vqa_tsv`) and the
`--out` file.

The `--out` file holds one JSON record per question, appended as soon as the question is finished,
read back to resume an interrupted run, and rewritten in row order when the run completes.

Resuming skips the questions whose record is there; a record that holds an `error` is tried again. A
last line cut short by a crash is dropped; any other line that is not a JSON record is an error (nothing
in the file is thrown away silently). Records of rows outside this run (e.g. an earlier run without
`--limit`) are kept, after this run's rows.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional

from dataset.vqa_tsv import (RowImageError, TsvError, check_tsv, index_of, load_row_image, read_tsv,  # noqa: F401
                             row_options, row_problem)

from .image import ImageLoadError


# The TSV is read by `dataset.vqa_tsv` (the teacher reads it too); evaluation raises its error type
# for the --out file as well.
EvalDataError = TsvError


def row_image(row: Dict[str, str], image_root: str):
    """The row's image: base64 in `image`, or `image_path` under `image_root` (never outside it)."""
    try:
        return load_row_image(row, image_root)
    except RowImageError as e:
        raise ImageLoadError(str(e)) from None


# ----------------------------------------------------------------------------- the --out records

class RecordFile:
    """Appends records to `path` (flushed one by one); `done` maps index -> record read back on resume.

    `setup` (e.g. {"mode": "greedy", "model": "ckpt"}) must match what the file's records say, so
    that a resumed run never mixes the answers of two different runs.
    """

    def __init__(self, path, *, resume: bool, setup: Optional[dict] = None):
        self.path = os.fspath(path)
        self.setup = dict(setup or {})
        self.done: Dict[object, dict] = {}
        self._all: Dict[object, dict] = {}  # latest record per index, errors included (for the final rewrite)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        if resume and os.path.isfile(self.path):
            self._load()
        else:
            open(self.path, "w", encoding="utf-8").close()
        self._f = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        lines = text.split("\n")
        complete, tail = lines[:-1], lines[-1]  # tail: what follows the last newline ("" when none)
        if tail.strip():
            try:
                json.loads(tail)
                complete.append(tail)  # a whole record that only lacks its newline
            except json.JSONDecodeError:
                pass  # a record cut short by a crash: dropped, the question runs again
        for lineno, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{self.path}:{lineno}: not a JSON record ({e.msg}); fix or remove the line, "
                                    f"or start over with --restart") from None
            if not isinstance(record, dict) or "index" not in record:
                raise EvalDataError(f"{self.path}:{lineno}: not an evaluation record (no 'index')")
            for key, want in self.setup.items():
                if key in record and record[key] != want:
                    raise EvalDataError(f"{self.path} holds the records of another run ({key} {record[key]!r}, this "
                                        f"run {want!r}): use another --out, or --restart to overwrite it")
            self._all[record["index"]] = record
            if record.get("error") is None:
                self.done[record["index"]] = record
            elif record["index"] in self.done:  # an old error after a success: the success stands
                self._all[record["index"]] = self.done[record["index"]]
        self._rewrite(list(self._all.values()))  # the file as read: complete lines, one record per index

    def write(self, record: dict) -> None:
        self._all[record["index"]] = record
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()

    def finish(self, records: Iterable[dict]) -> None:
        """Rewrite the file atomically: `records` (this run's rows, in order), then any other rows it held."""
        self._f.close()
        ordered: List[dict] = list(records)
        seen = {r["index"] for r in ordered}
        ordered += [r for k, r in self._all.items() if k not in seen]
        self._rewrite(ordered)

    def _rewrite(self, records: List[dict]) -> None:
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        os.replace(tmp, self.path)  # atomic: a crash leaves the old file or the new one

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
