"""`ItemDataset`: the official CogVLM demo's dataset shape (load_data / process_img / process_text /
__getitem__), reading conversation records, validating them at load and never dropping one silently."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .image_processor import DEFAULT_MAX_PIXELS, load_image, vision_inputs
from .records import DatasetError, Problem, Record, SampleDropped, iter_json_objects, parse_record

logger = logging.getLogger("cogcot.dataset")


class ItemDataset(Dataset):
    """Conversation records (JSON array / JSONL) -> CogVLM training samples.

    Args: image_processor (PIL image -> [3,H,W] tensor, or the official dict-returning one),
    text_processor (`TextProcessor`), args (SAT namespace; reads `image_root`, `strict`; may be
    None), data_path (a file or a list of files). Keyword args: image_root (images are resolved
    against it; default: each data file's folder), strict (first problem raises; default: bad
    records are skipped, listed in `self.problems` and summarised once), max_pixels (decompression
    bomb guard), check_length (tokenise at load: skip what cannot fit, count what is truncated and what
    `truncation="drop"` drops; `summary()` reports it), allow_empty (no NoSamples error).

    Subclasses reading another layout override `load_data` (returns a list) and `__getitem__`.
    """

    def __init__(self, image_processor, text_processor, args, data_path: Union[str, Sequence[str]],
                 image_root: Optional[str] = None, strict: Optional[bool] = None,
                 max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, check_length: bool = True,
                 allow_empty: bool = False, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"ItemDataset got unexpected keyword arguments: {', '.join(kwargs)}")
        self.image_processor, self.text_processor, self.args = image_processor, text_processor, args
        self.image_root = image_root if image_root is not None else getattr(args, "image_root", None)
        self.strict = bool(strict if strict is not None else getattr(args, "strict", False))
        self.max_pixels, self.check_length = max_pixels, check_length
        self.problems: List[Problem] = []
        self.num_read = 0  # records seen by load_data (kept + skipped)
        self.num_truncated = 0  # kept samples whose text is cut to max_length
        self.num_dropped = 0  # samples longer than max_length skipped by truncation="drop"
        self.data = self.load_data(data_path)
        self._summarise(data_path)
        if not self.data and not allow_empty:
            raise NoSamples(data_path, self.num_read, self.num_dropped, self.problems)

    # -- loading ---------------------------------------------------------------------------------
    def load_data(self, data_path: Union[str, Sequence[str]]) -> list:
        """Parse and validate every record (JSON, roles, markers vs images, paths, length)."""
        paths = [data_path] if isinstance(data_path, (str, os.PathLike)) else list(data_path)
        records: List[Record] = []
        for path in map(str, paths):
            if not os.path.isfile(path):  # a wrong path is never a record to skip
                raise DatasetError(Problem(path, None, None, "data file not found"))
            root = self.image_root if self.image_root is not None else os.path.dirname(os.path.abspath(path))
            read_before = self.num_read
            for line, obj in iter_json_objects(path):
                self.num_read += 1
                if isinstance(obj, Problem):
                    self.report(obj)
                    continue
                try:
                    record = self.parse_record(obj, path, line, root)
                    if self.check_length and not self._check_length(record):
                        continue
                except DatasetError as e:
                    self.report(e.problem)
                    continue
                records.append(record)
            if self.num_read == read_before:
                self.report(Problem(path, None, None, f"no samples: {_empty_reason(path)}"))
        return records

    def parse_record(self, obj, path: str, line: int, root: str):
        """One JSON object -> a validated record (a subclass reading another record form overrides this)."""
        return parse_record(obj, path, line, root)

    def _check_length(self, record: Record) -> bool:
        """Tokenise once at load so a sample that cannot fit is skipped now, not mid-training; False
        when truncation="drop" skips it (counted in num_dropped, not a problem)."""
        encode = getattr(self.text_processor, "encode", None)
        if encode is not None:
            try:
                self.num_truncated += encode(record.turns, record.problem("")).truncated > 0
            except SampleDropped:
                self.num_dropped += 1
                return False
        return True

    def report(self, problem: Problem) -> None:
        """Strict: raise now. Default: remember it for the summary and `self.problems`."""
        if self.strict:
            raise DatasetError(problem)
        self.problems.append(problem)

    def summary(self) -> str:
        """One line of counts: samples kept, truncated, dropped, skipped as problems."""
        limit = getattr(self.text_processor, "max_length", None)
        parts = [f"{len(self.data)} samples of {self.num_read} records read"]
        if self.check_length and limit is not None:
            parts.append(f"{self.num_truncated} truncated to max_length {limit} (cut at the end, no EOS trained "
                         f"at the cut)")
            if getattr(self.text_processor, "truncation", "cut") == "drop" or self.num_dropped:
                parts.append(f"{self.num_dropped} longer than max_length dropped (truncation drop)")
        parts.append(f"{len(self.problems)} skipped as problems")
        return ", ".join(parts)

    def _summarise(self, data_path) -> None:
        if self.num_truncated or self.num_dropped:
            logger.info("%s: %s", data_path, self.summary())
        if not self.problems:
            return
        shown = "\n  ".join(str(p) for p in self.problems[:10])
        more = f"\n  ... and {len(self.problems) - 10} more (see dataset.problems)" if len(self.problems) > 10 else ""
        logger.warning("%s: skipped %d problem record(s) of %d read, kept %d:\n  %s%s", data_path,
                       len(self.problems), self.num_read, len(self.data), shown, more)

    # -- one sample ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> Dict[str, object]:
        return self.process_conversation(self.data[index])

    def process_conversation(self, record: Record) -> Dict[str, object]:
        """Images (in marker order) and text of one record; an unreadable image raises, naming it."""
        vision = [self.process_img(self.load_image(path, record.problem(""))) for path in record.images]
        text = self.text_processor.encode_turns(record.turns, record.problem(""))
        sample = dict(text, question_id=record.id)
        if vision:
            sample["vision"] = {k: torch.cat([v["vision"][k] for v in vision]) for k in vision[0]["vision"]}
        return sample

    def load_image(self, path: str, where: Optional[Problem] = None):
        return load_image(path, self.max_pixels, where)

    def process_img(self, img) -> Dict[str, Dict[str, torch.Tensor]]:
        """{'vision': {'image': [1,3,H,W], 'input_ids': [1,1], 'attention_mask': [1,1]}} (official keys)."""
        out = self.image_processor(img)
        if isinstance(out, dict):  # the official get_image_processor(...) already builds the dict
            return {"vision": {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}}
        return {"vision": vision_inputs(out.unsqueeze(0))}  # [3,H,W] -> [1,3,H,W]

    def process_text(self, answer: str, prompt: str) -> Dict[str, object]:
        """Official signature, for subclasses: one image after BOS, `prompt` templated, `answer` trained."""
        return self.text_processor(answer, prompt)


def _empty_reason(path: str) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        empty = not f.read().strip()  # a file that yields no record is small or blank: reading it is cheap
    return "the file is empty" if empty else "it holds no records (an empty JSON array?)"


class NoSamples(DatasetError):
    """Nothing usable in the data: `no samples in FILE: why` (empty, or every record rejected)."""

    def __init__(self, data_path, num_read: int, num_dropped: int, problems: Sequence[Problem]):
        paths = [data_path] if isinstance(data_path, (str, os.PathLike)) else list(data_path)
        files = ", ".join(map(str, paths))
        if num_read == 0:
            why = problems[0].reason.split(": ", 1)[-1] if len(paths) == 1 and problems else "no records"
        else:
            why = f"no usable samples ({num_read} record(s) read, {len(problems)} rejected"
            why += f", {num_dropped} longer than max_length dropped by truncation drop)" if num_dropped else ")"
            if problems:
                why += f"; first problem: {problems[0]}"
        super().__init__(Problem(files, None, None, why))
        self.message = f"no samples in {files}: {why}"

    def __str__(self) -> str:
        return self.message
