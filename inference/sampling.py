"""Choosing the next token and deciding when a row stops, apart from the model and the caches.

- `sample_next`: temperature / top-k / top-p per row, each row drawing from its own `torch.Generator`,
  so a row's random stream does not depend on which other rows share its batch.
- `StopCriteria`: text-based stops (stop strings, sentence ends) so they work with any tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .options import SamplingOptions


# ----------------------------------------------------------------------------- sampling

def make_generator(seed: Optional[int]) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


class GreedyRow:
    """Stands in a row's generator place: that row takes the argmax token whatever the sampling options,
    so a batch of sampled candidates can hold the greedy continuation too."""

    def __repr__(self) -> str:
        return "GREEDY_ROW"


GREEDY_ROW = GreedyRow()


def filter_logits(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """[b, V] logits -> temperature-scaled logits with tokens outside top-k / top-p set to -inf."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / options.temperature
    if options.top_k > 0 and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= options.top_p  # keep the smallest head reaching top_p
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample_next(logits: torch.Tensor, options: SamplingOptions,
                generators: Sequence[Optional[torch.Generator]]) -> torch.Tensor:
    """[b, V] logits -> [b] token ids. Greedy is argmax; otherwise row i inverts its CDF at one uniform
    number drawn from generators[i] (the global generator when None; argmax when `GREEDY_ROW`)."""
    greedy_rows = [i for i, g in enumerate(generators) if g is GREEDY_ROW]
    if options.greedy or len(greedy_rows) == logits.shape[0]:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, options), dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = torch.stack([torch.zeros(()) if g is GREEDY_ROW else torch.rand((), generator=g)
                     for g in generators]).to(cdf.device, cdf.dtype)  # [b]; greedy rows draw nothing
    u = (u * cdf[:, -1])[:, None]
    out = torch.searchsorted(cdf, u, right=True)[:, 0]  # each row's first CDF step above its u
    for i in (out >= logits.shape[-1]).nonzero()[:, 0].tolist():  # u rounded up to the total:
        out[i] = probs[i].nonzero()[-1, 0]  # the last token with probability
    if greedy_rows:
        index = torch.tensor(greedy_rows, device=logits.device)
        out[index] = logits[index].argmax(dim=-1)
    return out


# ----------------------------------------------------------------------------- stopping

@dataclass(frozen=True)
class StopCriteria:
    """When a row stops, judged on the text of its own new tokens: a stop string appears anywhere in
    it, or (sentence_ends) the text ends with one of them. EOS and the token cap stop too."""
    strings: Tuple[str, ...] = ()
    sentence_ends: Tuple[str, ...] = ()
    eos: bool = True

    def check(self, text: str) -> Optional[str]:
        if any(s in text for s in self.strings):
            return "stop"
        if self.sentence_ends and text.endswith(self.sentence_ends):
            return "sentence"
        return None

    @property
    def needs_text(self) -> bool:
        return bool(self.strings or self.sentence_ends)
