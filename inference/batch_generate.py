"""Several independent prompts generated as one left-padded batch, each row with its own sampling
options, stop strings, token cap and random stream (what a server needs to batch unrelated requests).

`generation.generate_batch` decodes a batch under one `SamplingOptions`; here every row brings its own,
so requests with different temperatures, stops and `max_tokens` still share forward passes. A row's
draws come from its own generator, so its tokens do not depend on which other rows share its batch.
Finished rows leave the batch at once (their cache rows are dropped).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from models.kv_cache import KVCache

from .generation import Row, left_pad, lm_logits
from .options import SamplingOptions
from .prompt import Prompt
from .sampling import sample_next


@dataclass(frozen=True)
class RowRequest:
    """One row to generate: its prompt, how to sample, where to stop.

    stop: strings that end the row (the text is cut before the first one, as OpenAI's `stop` does);
    generator: the row's random stream (None: torch's global one); cancel: set it to drop the row early.
    """
    prompt: Prompt
    options: SamplingOptions
    max_new_tokens: int
    stop: Tuple[str, ...] = ()
    generator: Optional[torch.Generator] = None
    cancel: Optional[threading.Event] = None


def _cut_at_stop(text: str, stops: Sequence[str]) -> Optional[str]:
    """`text` up to the earliest stop string in it, or None when it holds none."""
    hits = [text.find(s) for s in stops if s in text]
    return text[:min(hits)] if hits else None


def _sample(logits: torch.Tensor, requests: Sequence[RowRequest]) -> torch.Tensor:
    """[b, V] logits -> [b] tokens, rows grouped by identical sampling settings (one `sample_next` each)."""
    groups: Dict[tuple, List[int]] = {}
    for i, r in enumerate(requests):
        o = r.options
        groups.setdefault((o.temperature, o.top_p, o.top_k), []).append(i)
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    for members in groups.values():
        index = torch.tensor(members, device=logits.device)
        options = requests[members[0]].options
        out[index] = sample_next(logits[index], options, [requests[i].generator for i in members])
    return out


def generate_rows(model, tokenizer, requests: Sequence[RowRequest], image_embeds: Optional[torch.Tensor] = None,
                  on_step: Optional[Callable[[List[Tuple[int, Row]]], None]] = None) -> List[Row]:
    """Generate every row of `requests` in one batch; returns their `Row`s (tokens, text, finish).

    image_embeds [k, L, H]: one image per prompt that has one, in row order (rows with and without an
    image can share a batch: the image masks say where each embedding goes).
    on_step([(index, row), ...]): called after every step with the rows that changed (a new token or
    finished), e.g. to stream their text. Row.finish is "eos", "stop", "length" or "cancelled"; Row.text
    is the decoded text, cut before a stop string.
    """
    if not requests:
        return []
    device = next(model.parameters()).device
    t = left_pad([r.prompt for r in requests], tokenizer.pad_token_id, device)
    b, n = t["input_ids"].shape
    key_mask = t.pop("key_mask")  # [b, n] True on real tokens
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=device)
    mask = (causal[None] & key_mask[:, None, :]) | eye[None]  # [b, n, n]; a pad sees itself only
    image_inputs = {}
    if image_embeds is not None:
        image_inputs = dict(image_embeds=image_embeds, image_embed_mask=t["image_embed_mask"],
                            vision_expert_mask=t["vision_expert_mask"])
    cache = KVCache()
    logits = lm_logits(model, t["input_ids"], t["position_ids"], cache, attention_mask=mask[:, None],
                       last_only=True, **image_inputs)[:, -1]  # [b, V]
    positions = torch.tensor([r.prompt.next_position for r in requests], device=device)
    rows = [Row(generator=r.generator) for r in requests]
    active = list(range(b))
    eos = tokenizer.eos_token_id
    while True:
        tokens = _sample(logits, [requests[a] for a in active])
        logps = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0].tolist()
        changed, keep = [], []
        for j, (a, token) in enumerate(zip(active, tokens.tolist())):
            row, req = rows[a], requests[a]
            if req.cancel is not None and req.cancel.is_set():
                row.finish = "cancelled"
            elif token == eos:
                row.finish = "eos"
            else:
                row.tokens.append(token)
                row.logprobs.append(logps[j])
                row.text = tokenizer.decode(row.tokens)
                cut = _cut_at_stop(row.text, req.stop) if req.stop else None
                if cut is not None:
                    row.text, row.finish = cut, "stop"
                elif len(row.tokens) >= req.max_new_tokens:
                    row.finish = "length"
            changed.append((a, row))
            if row.finish is None:
                keep.append(j)
        if on_step is not None:
            on_step(changed)
        if not keep:
            return rows
        if len(keep) < len(active):
            cache = cache.select(keep)
            index = torch.tensor(keep, device=device)
            tokens, positions, key_mask = tokens[index], positions[index], key_mask[index]
            active = [active[j] for j in keep]
        key_mask = torch.cat([key_mask, key_mask.new_ones(len(active), 1)], dim=1)  # [r, k + 1]
        logits = lm_logits(model, tokens[:, None], positions[:, None], cache,
                           attention_mask=key_mask[:, None, None, :])[:, -1]  # this step sees the valid keys
        positions = positions + 1
        for a in active:
            rows[a].fed += 1
