"""WebDataset tar shards for `--stage pretrain`: write them from the record formats, stream them back.

    python -m dataset.shards caps.jsonl shards/cap-%06d.tar --shard-size 1000

Each sample of a shard is `KEY.json` (text, kind, id, the names of its images) plus its image files
as they were (`KEY.0.png`, `KEY.1.jpg`, ...); shards from elsewhere with `KEY.json` holding "text"
(or `KEY.txt`) and one image file read as captions. `ShardStream` reads a brace pattern
(`shards/cap-{000000..000127}.tar`) with the webdataset package's tar reader (the one SAT's
`sat.data_utils.webds` builds on) as a `DataPipeline`, which SAT's training loop takes as an iterable
data set: shards split across data-parallel ranks and loader workers, samples
shuffled in a bounded buffer, so host memory does not grow with the corpus.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import re
import sys
import tarfile
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

from .image_decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from .pretrain_records import PretrainRecord, parse_pretrain_record
from .records import DatasetError, Problem, Turn, iter_json_objects

logger = logging.getLogger("cogcot.dataset")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")


# ----------------------------------------------------------------------------- patterns

def expand_pattern(pattern: str) -> List[str]:
    """`a/{000..003}.tar` -> the four paths (bash-style braces, several groups allowed)."""
    from braceexpand import braceexpand
    return list(braceexpand(pattern))


def is_shard_source(spec: str) -> bool:
    """True when a --train-data entry names tar shards (a brace pattern or a .tar path)."""
    return spec.endswith(".tar") or (".tar" in spec and "{" in spec)


def missing_shards(pattern: str) -> List[str]:
    return [p for p in expand_pattern(pattern) if not os.path.isfile(p)]


# ----------------------------------------------------------------------------- writing

def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same input, the same bytes
    tar.addfile(info, io.BytesIO(data))


def record_members(key: str, record: PretrainRecord) -> List[Tuple[str, bytes]]:
    """The tar members of one record: its images (original bytes) and KEY.json."""
    members, names = [], []
    for i, path in enumerate(record.images):
        ext = os.path.splitext(path)[1].lstrip(".").lower() or "img"
        names.append(f"{i}.{ext}")
        with open(path, "rb") as f:
            members.append((f"{key}.{names[-1]}", f.read()))
    meta = {"id": record.id, "kind": record.kind, "text": record.text, "image_files": names}
    if record.turns is not None:
        meta["turns"] = [[t.role, t.text] for t in record.turns]
    members.append((f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8")))
    return members


def write_shards(inputs: Sequence[str], out_pattern: str, shard_size: int, image_root: Optional[str] = None,
                 strict: bool = False, progress: bool = False) -> dict:
    """Write every valid record of `inputs` into shards of `shard_size` samples named by `out_pattern`
    (printf style, `%06d`). Returns {"shards": [paths], "samples": n, "problems": [Problem], "pattern": braces}."""
    if re.search(r"%0?\d*d", out_pattern) is None:
        raise ValueError(f"OUT_PATTERN {out_pattern!r} needs a shard number field such as %06d")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    shards, problems, n = [], [], 0
    tar: Optional[tarfile.TarFile] = None
    bar = _bar(progress)
    try:
        for path in inputs:
            if not os.path.isfile(path):
                raise DatasetError(Problem(path, None, None, "data file not found"))
            root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
            for line, obj in iter_json_objects(path):
                try:
                    if isinstance(obj, Problem):
                        raise DatasetError(obj)
                    record = parse_pretrain_record(obj, path, line, root)
                except DatasetError as e:
                    if strict:
                        raise
                    problems.append(e.problem)
                    continue
                if n % shard_size == 0:
                    if tar is not None:
                        tar.close()
                    shards.append(out_pattern % len(shards))
                    os.makedirs(os.path.dirname(os.path.abspath(shards[-1])), exist_ok=True)
                    tar = tarfile.open(shards[-1], "w")
                for name, data in record_members(f"{n:09d}", record):
                    _member(tar, name, data)
                n += 1
                bar.update(1)
    finally:
        if tar is not None:
            tar.close()
        bar.close()
    return {"shards": shards, "samples": n, "problems": problems, "pattern": brace_pattern(out_pattern, len(shards))}


def brace_pattern(out_pattern: str, count: int) -> str:
    """The --train-data pattern of shards 0..count-1 written with `out_pattern` (%06d -> {000000..000003})."""
    m = re.search(r"%0?\d*d", out_pattern)
    if m is None or count <= 0:
        return out_pattern
    field = m.group(0)
    numbers = field % 0 if count == 1 else "{" + field % 0 + ".." + field % (count - 1) + "}"
    return out_pattern[:m.start()] + numbers + out_pattern[m.end():]


def _bar(enabled: bool):
    if enabled:
        from tqdm import tqdm
        return tqdm(unit=" samples", desc="shards")

    class _Quiet:
        def update(self, _):
            pass

        def close(self):
            pass
    return _Quiet()


# ----------------------------------------------------------------------------- reading

def consumer_info(rank: Optional[int] = None, world_size: Optional[int] = None) -> Tuple[int, int]:
    """(this consumer's index, number of consumers) over data-parallel ranks x loader workers.

    The rank is taken in SAT's data-parallel group when SAT is running (so model-parallel peers read
    the same data), else in the default group, else 0 of 1; `rank`/`world_size` override it."""
    import torch
    worker = torch.utils.data.get_worker_info()
    w_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    if rank is None:
        rank, world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            group = None
            mpu = sys.modules.get("sat.mpu")  # imported by the training loop; never imported here (slow)
            if mpu is not None:
                try:
                    group = mpu.get_data_parallel_group()
                except AssertionError:  # SAT's model-parallel state not set up
                    group = None
            rank, world_size = torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
    return rank * workers + w_id, world_size * workers


def sample_record(sample: dict, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> Tuple[PretrainRecord, list]:
    """(PretrainRecord, decoded PIL images in marker order) of one webdataset sample; DatasetError names
    the shard and key."""
    url, key = sample.get("__url__", "<shard>"), sample.get("__key__", "?")

    def fail(reason: str) -> DatasetError:
        return DatasetError(Problem(str(url), None, key, reason))

    images = {k: v for k, v in sample.items() if k.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise fail(f"{key}.json is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("text", meta.get("turns")), (str, list)):
            raise fail(f"{key}.json needs 'text'")
    elif "txt" in sample:
        meta = {"text": sample["txt"].decode("utf-8", errors="replace")}
    else:
        raise fail("sample has neither KEY.json nor KEY.txt")
    names = meta.get("image_files")
    if names is None:  # foreign shards: one image file makes a caption
        if len(images) > 1:
            raise fail(f"{len(images)} image files but no 'image_files' in {key}.json to order them")
        names = list(images)
        text = meta.get("text", "")
        kind = "caption" if names else "text"
        if names and "<image>" not in text:
            text = "<image>" + text
    else:
        text, kind = meta.get("text", ""), meta.get("kind", "interleaved")
    missing = [n for n in names if n not in sample]
    if missing:
        raise fail(f"image file(s) {', '.join(key + '.' + m for m in missing)} not in the shard")
    turns = [Turn(role, t) for role, t in meta["turns"]] if meta.get("turns") else None
    if turns is None and text.count("<image>") != len(names):
        raise fail(f"{text.count('<image>')} <image> marker(s) but {len(names)} image file(s)")
    decoded = []
    for name in names:
        try:
            decoded.append(decode_image(sample[name], max_pixels).image)
        except ImageDecodeError as e:
            raise fail(f"image {key}.{name}: {e.reason}") from None
    rid = str(meta.get("id", f"{os.path.basename(str(url))}:{key}"))
    return PretrainRecord(rid, kind, text, [f"{key}.{n}" for n in names], str(url), None, turns=turns), decoded


def _stream_base():
    from webdataset import DataPipeline  # SAT's training loop accepts a DataPipeline as an iterable dataset
    return DataPipeline


class ShardStream(_stream_base()):
    """Samples of tar shards, for this data-parallel rank and loader worker only, shuffled in a buffer.

    `process(record, images) -> sample` turns each sample into a training sample (None: raw tuples).
    Every epoch reorders the shards with (seed, epoch), the same order on every consumer; consumer c
    of C reads shards c, c+C, ... (with fewer shards than consumers each reads every shard and keeps
    every C-th sample). epochs=None streams forever. Bad samples are skipped and counted
    (`problems`), or raise with strict.
    """

    def __init__(self, pattern, process: Optional[Callable] = None, seed: int = 0, shuffle_buffer: int = 1000,
                 epochs: Optional[int] = None, strict: bool = False, rank: Optional[int] = None,
                 world_size: Optional[int] = None, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS, start: int = 0):
        super().__init__()
        self.urls = expand_pattern(pattern) if isinstance(pattern, str) else list(pattern)
        if not self.urls:
            raise DatasetError(Problem(str(pattern), None, None, "the shard pattern names no files"))
        self.pattern, self.process, self.seed = pattern, process, seed
        self.shuffle_buffer, self.epochs, self.strict = max(1, shuffle_buffer), epochs, strict
        self.rank, self.world_size, self.max_pixels = rank, world_size, max_pixels
        self.problems: List[Problem] = []
        self.start = start  # samples of this consumer to pass over undecoded (a resumed mix)
        self.consumer: Optional[Tuple[int, int]] = None  # (index, count) set by a DataMix, else from the process

    def __iter__(self) -> Iterator:
        consumer, consumers = self.consumer or consumer_info(self.rank, self.world_size)
        epoch, skip = 0, self.start
        while self.epochs is None or epoch < self.epochs:
            for sample in self._epoch(epoch, consumer, consumers):
                if skip:
                    skip -= 1
                    continue
                try:
                    record, images = sample_record(sample, self.max_pixels)
                    yield (record, images) if self.process is None else self.process(record, images)
                except DatasetError as e:
                    if self.strict:
                        raise
                    self.problems.append(e.problem)
                    logger.warning("skipped a bad shard sample: %s", e.problem)
            epoch += 1

    def _epoch(self, epoch: int, consumer: int, consumers: int) -> Iterator[dict]:
        """This consumer's raw webdataset samples of one epoch, shuffled in the buffer."""
        from webdataset import tarfile_to_samples
        from webdataset.filters import _shuffle
        order = list(self.urls)
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        by_shard = len(order) >= consumers
        mine = order[consumer::consumers] if by_shard else order
        samples = tarfile_to_samples()(iter([{"url": u} for u in mine]))
        if not by_shard:
            samples = (s for i, s in enumerate(samples) if i % consumers == consumer)
        rng = random.Random(f"{self.seed}:{epoch}:{consumer}")
        return _shuffle(samples, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset.shards",
                                description="Write WebDataset tar shards from pretraining records (captions, "
                                            "interleaved documents, plain text, conversations).")
    p.add_argument("inputs", nargs="+", metavar="IN", help="JSON/JSONL record files")
    p.add_argument("out_pattern", metavar="OUT_PATTERN", help="shard names with a number field, e.g. shards/cap-%%06d.tar")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    p.add_argument("--image-root", metavar="DIR", help="folder image paths are relative to (default: each file's folder)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record (default: skip and list)")
    a = p.parse_args(argv)
    try:
        out = write_shards(a.inputs, a.out_pattern, a.shard_size, a.image_root, a.strict, progress=True)
    except (ValueError, DatasetError) as e:
        print(f"dataset.shards: {e}", file=sys.stderr)
        return 2
    for problem in out["problems"][:20]:
        print(f"skipped: {problem}", file=sys.stderr)
    if len(out["problems"]) > 20:
        print(f"... and {len(out['problems']) - 20} more skipped", file=sys.stderr)
    print(f"wrote {out['samples']} samples in {len(out['shards'])} shard(s), {len(out['problems'])} record(s) "
          f"skipped as problems\ntrain with: --stage pretrain --train-data '{out['pattern']}'")
    return 0 if out["samples"] else 1


if __name__ == "__main__":
    sys.exit(main())
