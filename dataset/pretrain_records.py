"""`--stage pretrain` data: captions, interleaved documents, plain text and conversations, encoded so
that every text token is trained and every image is a [BOI] [IMG]*L [EOI] span with no label.

Record forms (JSON array or JSONL; image paths relative to the data file, or to --image-root):
  caption      {"image": "a.jpg", "text": "a red square"}          image first, then the text
  interleaved  {"images": ["a.jpg", "b.jpg"], "text": "... <image> ... <image> ..."}
  plain text   {"text": "..."}
  conversation {"conversations": [...]} / {"messages": [...]}      the usual form, all text trained
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .item_dataset import ItemDataset
from .records import (IMAGE_MARKER, DatasetError, Problem, Record, SampleDropped, parse_record,
                      resolve_under_root)
from .text_processor import IGNORE_INDEX, Encoded

KINDS = ("caption", "interleaved", "text", "conversation")


@dataclass
class PretrainRecord:
    """One pretraining document: `text` with one `<image>` marker per entry of `images` (resolved paths).

    `turns` is set for a conversation record (then `text` is unused and the chat template writes it)."""
    id: str
    kind: str
    text: str
    images: List[str] = field(default_factory=list)
    file: str = "<memory>"
    line: Optional[int] = None
    turns: Optional[list] = None

    def problem(self, reason: str) -> Problem:
        return Problem(self.file, self.line, self.id, reason)


def parse_pretrain_record(obj: object, file: str, line: Optional[int], image_root: str) -> PretrainRecord:
    """Normalise one JSON object of any pretraining form; DatasetError names file, line, id and field."""
    rid = str(obj.get("id")) if isinstance(obj, dict) and obj.get("id") is not None else None

    def fail(reason: str) -> DatasetError:
        return DatasetError(Problem(file, line, rid, reason))

    if not isinstance(obj, dict):
        raise fail(f"a record must be a JSON object, got {type(obj).__name__}")
    default_id = rid if rid is not None else f"{os.path.basename(file)}:{line}"
    if "conversations" in obj or "messages" in obj:
        conv: Record = parse_record(obj, file, line, image_root)
        return PretrainRecord(default_id, "conversation", "", conv.images, file, line, turns=conv.turns)
    if "text" not in obj:
        raise fail("record has none of 'text' (caption, interleaved or plain text), 'conversations' or 'messages'")
    text = obj["text"]
    if not isinstance(text, str) or not text.strip():
        raise fail("'text' must be a non-empty string")
    if "image" in obj and "images" in obj:
        raise fail("give 'image' (a caption) or 'images' (an interleaved document), not both")
    markers = text.count(IMAGE_MARKER)
    if "image" in obj:
        image = obj["image"]
        if not isinstance(image, str) or not image:
            raise fail("'image' must be one path (use 'images' with <image> markers for several)")
        if markers > 1:
            raise fail(f"a caption has one image but its 'text' holds {markers} <image> markers")
        kind, images = "caption", [image]
        if markers == 0:
            text = IMAGE_MARKER + text  # a caption follows its image
    elif "images" in obj:
        images = obj["images"]
        if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
            raise fail("'images' must be a list of paths")
        if markers != len(images):
            raise fail(f"'text' holds {markers} <image> marker(s) but 'images' lists {len(images)} image(s)")
        kind = "interleaved" if images else "text"
    else:
        if markers:
            raise fail(f"'text' holds {markers} <image> marker(s) but the record has no 'images'")
        kind, images = "text", []
    paths = []
    for p in images:
        try:
            paths.append(resolve_under_root(p, image_root))
        except ValueError as e:
            raise fail(str(e)) from None
    return PretrainRecord(default_id, kind, text, paths, file, line)


def encode_pretrain(text_processor, record: PretrainRecord) -> Encoded:
    """[BOS] text and image spans in document order [EOS]: every text token and EOS trained, BOS and the
    image spans not; fitted to max_length by the text processor's rules (never cutting an image span)."""
    source = record.problem("")
    if record.turns is not None:
        enc = text_processor.encode(record.turns, source)
        for i in range(1, len(enc)):  # all text of the conversation (prompts too); not BOS, not image spans
            if not enc.image_embed_mask[i]:
                enc.labels[i] = enc.input_ids[i]
        enc.context_length = 1
        return enc
    tokenizer = text_processor.tokenizer
    enc = Encoded()
    enc.add_tokens([tokenizer.bos_token_id], trained=False)
    for k, piece in enumerate(record.text.split(IMAGE_MARKER)):
        if k:
            enc.add_image(text_processor.image_length)
        piece = piece.strip()  # the space around a marker belongs to neither side
        if piece:
            enc.add_tokens(tokenizer.encode(piece, add_special_tokens=False), trained=True)
    enc.context_length = 1
    enc.add_tokens([tokenizer.eos_token_id], trained=True)
    return text_processor._fit(enc, source)


def token_counts(enc_or_sample) -> Dict[str, int]:
    """{'image_tokens', 'text_tokens', 'trained_tokens'} of one sample (image tokens = BOI..EOI spans)."""
    get = (lambda k: list(getattr(enc_or_sample, k))) if isinstance(enc_or_sample, Encoded) else \
        (lambda k: [int(v) for v in enc_or_sample[k]])
    image = sum(get("image_embed_mask"))
    total = len(get("input_ids"))
    trained = sum(1 for label in get("labels") if label != IGNORE_INDEX)
    return {"image_tokens": image, "text_tokens": total - image, "trained_tokens": trained}


class PretrainDataset(ItemDataset):
    """Pretraining records (any form above) -> samples, validated at load like `ItemDataset`; a bad record
    is skipped and reported by file and line (or raises with strict)."""

    def parse_record(self, obj, path: str, line: int, root: str) -> PretrainRecord:
        """Any pretraining form (caption, interleaved, plain text, conversation) -> a record; `load_data`
        (inherited) reads the files, reports bad records by file and line and checks lengths."""
        return parse_pretrain_record(obj, path, line, root)

    def _check_length(self, record: PretrainRecord) -> bool:
        try:
            self.num_truncated += encode_pretrain(self.text_processor, record).truncated > 0
        except SampleDropped:
            self.num_dropped += 1
            return False
        return True

    def process_conversation(self, record: PretrainRecord) -> Dict[str, object]:
        return encode_sample(self, record)

    def token_length(self, index: int) -> int:
        """Tokens of sample `index` (image spans included) from its text alone, no image read (for packing)."""
        return len(encode_pretrain(self.text_processor, self.data[index]))


def encode_sample(dataset, record: PretrainRecord, images: Optional[list] = None) -> Dict[str, object]:
    """The training sample of one pretraining record: tokens (see `encode_pretrain`) and its images in
    marker order; `images` (decoded PIL images, e.g. from a shard) replaces loading `record.images`.
    `dataset` supplies text_processor, process_img and load_image (an ItemDataset or `SampleEncoder`)."""
    import torch
    enc = encode_pretrain(dataset.text_processor, record)
    sample = dict(dataset.text_processor.to_tensors(enc), question_id=record.id)
    if images is None:
        images = [dataset.load_image(path, record.problem("")) for path in record.images]
    vision = [dataset.process_img(img) for img in images]
    if vision:
        sample["vision"] = {k: torch.cat([v["vision"][k] for v in vision]) for k in vision[0]["vision"]}
    return sample


class SampleEncoder:
    """`encoder(record, images)` -> training sample, for streamed records (the shard reader's `process`)."""

    def __init__(self, image_processor, text_processor):
        self.image_processor, self.text_processor = image_processor, text_processor

    def process_img(self, img):
        return ItemDataset.process_img(self, img)

    def __call__(self, record: PretrainRecord, images: list) -> Dict[str, object]:
        return encode_sample(self, record, images)
