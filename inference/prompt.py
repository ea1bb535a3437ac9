"""Prompt tokens for inference, built by training's own processor (`dataset.TextProcessor`).

`[BOS] [BOI] [IMG]xL [EOI]` then the conversation in the model's template (the official
`_history_to_prompt` formats; `chat_old` = "Question: {q} Answer:", later turns "\\nQuestion: {q} Answer:"),
each question and each earlier answer tokenized on its own, exactly as a training sample's context.
For one turn this is token-for-token the official `llama2_text_processor_inference` output.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Sequence, Tuple

import torch

from dataset.records import ASSISTANT, IMAGE_MARKER, USER, Turn
from dataset.text_processor import TEMPLATES, TextProcessor

__all__ = ["Prompt", "build_prompt", "common_prefix_length", "TEMPLATES"]


@dataclass(frozen=True)
class Prompt:
    """Token ids, rotary positions and image masks of one prompt (unpadded, batch 1)."""
    input_ids: Tuple[int, ...]
    position_ids: Tuple[int, ...]
    image_embed_mask: Tuple[int, ...]
    vision_expert_mask: Tuple[int, ...]
    image_end: int  # tokens up to and including EOI (0 without an image): the shareable image prefix

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def has_image(self) -> bool:
        return self.image_end > 0

    @property
    def next_position(self) -> int:
        return self.position_ids[-1] + 1

    def extended(self, ids: Sequence[int]) -> "Prompt":
        """This prompt followed by text tokens `ids` (e.g. the answer so far)."""
        ids = tuple(ids)
        start = self.next_position
        return Prompt(self.input_ids + ids, self.position_ids + tuple(range(start, start + len(ids))),
                      self.image_embed_mask + (0,) * len(ids), self.vision_expert_mask + (0,) * len(ids),
                      self.image_end)

    def tensors(self, start: int = 0, device=None) -> Dict[str, torch.Tensor]:
        """Batch-1 long tensors of tokens [start:]."""
        return {k: torch.tensor([getattr(self, k)[start:]], dtype=torch.long, device=device)
                for k in ("input_ids", "position_ids", "image_embed_mask", "vision_expert_mask")}


@lru_cache(maxsize=16)
def _processor(tokenizer, image_length: int, template: str) -> TextProcessor:
    return TextProcessor(tokenizer, max_length=None, image_length=image_length, template=template)


def build_prompt(tokenizer, query: str, history: Sequence[Tuple[str, str]] = (), *, image_length: int,
                 template: str = "chat_old", image: bool = True) -> Prompt:
    """The prompt for `query` after `history` [(question, answer), ...], with one image after BOS (or none).

    Exactly a training sample's context: `<image>` markers are dropped (the image goes first) and the
    first question stripped, as training does with a "<image>\\nquestion" turn; answers are tokenized
    apart from the questions, no EOS between turns.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    questions = [q.replace(IMAGE_MARKER, "") for q, _ in history] + [query.replace(IMAGE_MARKER, "")]
    if image:
        questions[0] = questions[0].strip()
    turns = []
    for k, q in enumerate(questions):
        turns += [Turn(USER, q), Turn(ASSISTANT, history[k][1] if k < len(history) else "")]
    enc = _processor(tokenizer, image_length, template).encode(turns, front_images=1 if image else 0)
    n = enc.context_length  # the context: everything before the (empty) last answer and its EOS
    image_end = (enc.image_spans[0][1] + 1) if image else 0
    return Prompt(tuple(enc.input_ids[:n]), tuple(enc.position_ids[:n]), tuple(enc.image_embed_mask[:n]),
                  tuple(enc.vision_expert_mask[:n]), image_end)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
