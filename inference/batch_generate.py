"""Independent prompts decoded as one batch, each row with its own sampling options, stop strings,
token cap and random stream, and new rows joining between steps (what a server needs to batch
unrelated requests that arrive at different times).

`generation.generate_batch` decodes a fixed batch under one `SamplingOptions`. `BatchDecoder` keeps a
left-padded `KVCache` of the rows in flight: `add` runs new prompts (left-padded among themselves)
and merges their cache into the running one (the shorter side padded on the left, masked out);
`step` draws one token per row, retires the rows that stopped and runs the others one position on.
A row's draws come from its own generator, so its tokens do not depend on which rows share its batch.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

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


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """[b, h, k, d] -> [b, h, width, d] with zeros in front (masked-out positions)."""
    return F.pad(t, (0, 0, width - t.shape[2], 0))


def _merge(a: KVCache, b: KVCache, width: int) -> KVCache:
    """Rows of `a` then rows of `b`, both left-padded to `width` positions."""
    out = KVCache()
    for i in a.keys:
        out.keys[i] = torch.cat((_pad_left(a.keys[i], width), _pad_left(b.keys[i], width)), dim=0)
        out.values[i] = torch.cat((_pad_left(a.values[i], width), _pad_left(b.values[i], width)), dim=0)
    return out


def _pad_mask_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    """[b, k] key mask -> [b, width], False in front."""
    return torch.cat((mask.new_zeros(mask.shape[0], width - mask.shape[1]), mask), dim=1)


class BatchDecoder:
    """Rows in flight, decoded together one token per step; `add` rows between steps.

    Each row carries a `tag` (anything: the server's (job, choice)) handed back with it by `step`.
    """

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self._clear()

    def _clear(self) -> None:
        self.entries: List[Tuple[RowRequest, Row, object]] = []  # aligned with the batch dimension
        self.cache: Optional[KVCache] = None
        self.key_mask: Optional[torch.Tensor] = None  # [r, k] True on real positions
        self.positions: Optional[torch.Tensor] = None  # [r] each row's next rotary position
        self.logits: Optional[torch.Tensor] = None  # [r, V] each row's next-token logits

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def width(self) -> int:
        """Cached positions per row (the longest row's, others left-padded)."""
        return 0 if self.key_mask is None else self.key_mask.shape[1]

    def add(self, requests: Sequence[RowRequest], image_embeds: Optional[torch.Tensor] = None,
            tags: Optional[Sequence[object]] = None) -> List[Row]:
        """Run the prompts of `requests` (one forward) and let them join the batch; returns their `Row`s.

        image_embeds [k, L, H]: one image per prompt that has one, in row order (rows with and without
        an image share a batch: the image masks say where each embedding goes).
        """
        if not requests:
            return []
        t = left_pad([r.prompt for r in requests], self.tokenizer.pad_token_id, self.device)
        n = t["input_ids"].shape[1]
        own = t.pop("key_mask")  # [m, n] True on real tokens
        causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=self.device)
        mask = (causal[None] & own[:, None, :]) | eye[None]  # [m, n, n]; a pad sees itself only
        image_inputs = {}
        if image_embeds is not None:
            image_inputs = dict(image_embeds=image_embeds, image_embed_mask=t["image_embed_mask"],
                                vision_expert_mask=t["vision_expert_mask"])
        cache = KVCache()
        logits = lm_logits(self.model, t["input_ids"], t["position_ids"], cache, attention_mask=mask[:, None],
                           last_only=True, **image_inputs)[:, -1]  # [m, V]
        positions = torch.tensor([r.prompt.next_position for r in requests], device=self.device)
        rows = [Row(generator=r.generator) for r in requests]
        tags = list(tags) if tags is not None else [None] * len(requests)
        if not self.entries:
            self.cache, self.key_mask, self.positions, self.logits = cache, own, positions, logits
        else:
            width = max(self.width, n)
            self.cache = _merge(self.cache, cache, width)
            self.key_mask = torch.cat((_pad_mask_left(self.key_mask, width), _pad_mask_left(own, width)), dim=0)
            self.positions = torch.cat((self.positions, positions))
            self.logits = torch.cat((self.logits, logits))
        self.entries += list(zip(requests, rows, tags))
        return rows

    def step(self) -> List[Tuple[object, Row]]:
        """One token for every row; returns (tag, row) of each row that changed (a token or its finish).

        Row.finish becomes "eos", "stop", "length" or "cancelled" when the row ends (it then leaves the
        batch); Row.text is its decoded text, cut before a stop string. A stopping token is not run.
        """
        if not self.entries:
            return []
        tokens = _sample(self.logits, [req for req, _, _ in self.entries])
        logps = torch.log_softmax(self.logits, dim=-1).gather(-1, tokens[:, None])[:, 0].tolist()
        eos = self.tokenizer.eos_token_id
        changed, keep = [], []
        for j, ((req, row, tag), token) in enumerate(zip(self.entries, tokens.tolist())):
            if req.cancel is not None and req.cancel.is_set():
                row.finish = "cancelled"
            elif token == eos:
                row.finish = "eos"
            else:
                row.tokens.append(token)
                row.logprobs.append(logps[j])
                row.text = self.tokenizer.decode(row.tokens)
                cut = _cut_at_stop(row.text, req.stop) if req.stop else None
                if cut is not None:
                    row.text, row.finish = cut, "stop"
                elif len(row.tokens) >= req.max_new_tokens:
                    row.finish = "length"
            changed.append((tag, row))
            if row.finish is None:
                keep.append(j)
        if not keep:
            self._clear()
            return changed
        if len(keep) < len(self.entries):
            self._retire(keep)
            tokens = tokens[torch.tensor(keep, device=self.device)]
        self.key_mask = torch.cat([self.key_mask, self.key_mask.new_ones(len(keep), 1)], dim=1)  # [r, k + 1]
        self.logits = lm_logits(self.model, tokens[:, None], self.positions[:, None], self.cache,
                                attention_mask=self.key_mask[:, None, None, :])[:, -1]  # sees the valid keys
        self.positions = self.positions + 1
        for _, row, _ in self.entries:
            row.fed += 1
        return changed

    def _retire(self, keep: List[int]) -> None:
        """Keep rows `keep`; drop leading positions no remaining row uses (padding left by the retired)."""
        index = torch.tensor(keep, device=self.device)
        self.entries = [self.entries[j] for j in keep]
        self.key_mask, self.positions = self.key_mask[index], self.positions[index]
        used = self.key_mask.any(dim=0)  # [k]
        lead = int(used.to(torch.int8).argmax())  # first position some row still attends
        self.key_mask = self.key_mask[:, lead:]
        self.cache = self.cache.select(keep).map(lambda t: t[:, :, lead:])


def generate_rows(model, tokenizer, requests: Sequence[RowRequest], image_embeds: Optional[torch.Tensor] = None,
                  on_step: Optional[Callable[[List[Tuple[int, Row]]], None]] = None) -> List[Row]:
    """Generate every row of `requests` as one batch (no joining); returns their `Row`s.

    on_step([(index, row), ...]): called after every step with the rows that changed.
    """
    decoder = BatchDecoder(model, tokenizer)
    rows = decoder.add(requests, image_embeds, tags=range(len(requests)))
    while len(decoder):
        changed = decoder.step()
        if on_step is not None:
            on_step(changed)
    return rows
