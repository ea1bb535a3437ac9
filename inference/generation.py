"""Token generation apart from the model.

- `sample_next`: temperature / top-k / top-p per row, each row drawing from its own `torch.Generator`,
  so a row's random stream does not depend on which other rows share its batch.
- `StopCriteria`: text-based stops (stop strings, sentence ends) so they work with any tokenizer.
- `Prefix`: a batch-1 KV cache with the ids it holds, its next position and the logits after it.
- `decode_steps`: the one decode loop, used by chat (1 row), staged search (N rows over a shared
  prefix, `RowCache`) and batched evaluation (left-padded rows, a plain `KVCache` and a key mask).
  Finished rows leave the batch at once; in search they keep their own keys/values for `commit`.
- `ForwardCounter`: hooks that count positions run through the language model and ViT images.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from models.kv_cache import KVCache, SharedPrefixKVCache

from .options import SamplingOptions
from .prompt import Prompt


# ----------------------------------------------------------------------------- sampling

def make_generator(seed: Optional[int]) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


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
    number drawn from generators[i] (the global generator when None)."""
    if options.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, options), dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device, cdf.dtype)  # [b]
    u = (u * cdf[:, -1])[:, None]
    out = torch.searchsorted(cdf, u, right=True)[:, 0]  # each row's first CDF step above its u
    for i in (out >= logits.shape[-1]).nonzero()[:, 0].tolist():  # u rounded up to the total:
        out[i] = probs[i].nonzero()[-1, 0]  # the last token with probability
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


@dataclass
class Row:
    """One sequence being generated. `tokens` exclude EOS; `fed` of them went through the model."""
    tokens: List[int] = field(default_factory=list)
    logprobs: List[float] = field(default_factory=list)  # model log-probability (temperature 1) of each token
    generator: Optional[torch.Generator] = None
    finish: Optional[str] = None  # "eos", "stop", "sentence", "length"
    text: str = ""
    fed: int = 0
    kv: Optional[Dict[int, Tuple[torch.Tensor, torch.Tensor]]] = None  # own keys/values of fed tokens

    @property
    def mean_logprob(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else float("-inf")


# ----------------------------------------------------------------------------- caches

class RowCache(SharedPrefixKVCache):
    """`SharedPrefixKVCache` whose rows can leave the batch (finished candidates stop costing compute)."""

    def select(self, rows: Sequence[int]) -> "RowCache":
        out = RowCache(self.prefix, len(rows))
        out.suffix = self.suffix.select(list(rows))
        return out

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        """Rows attend over the shared prefix and their own tokens (one softmax over both, as the parent).

        mask (optional, [n|1, 1, q, P + T], >0 = may attend): which prefix and own positions each new token
        sees, for rows whose own tokens are left-padded (`generate_ragged`); None = causal.
        """
        if q.shape[2] > 1 and mask is None:
            return super().attend(layer_id, q, k, v, mask)
        n, h, sq, d = q.shape
        ks, vs = self.suffix.append(layer_id, k, v)  # [n, h, T, d]
        kp, vp = self.prefix.keys[layer_id], self.prefix.values[layer_id]  # [1, h, P, d]
        acc = torch.promote_types(q.dtype, torch.float32)
        rows = q.permute(1, 0, 2, 3).reshape(1, h, n * sq, d)  # the rows' queries against the one prefix
        s_prefix = (rows @ kp.transpose(-1, -2)).to(acc).reshape(h, n, sq, -1).permute(1, 0, 2, 3)  # [n, h, sq, P]
        s_own = (q @ ks.transpose(-1, -2)).to(acc)  # [n, h, sq, T]
        scores = torch.cat((s_prefix, s_own), dim=-1) * d ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~(mask > 0), float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        p_prefix, p_own = probs.split([kp.shape[2], ks.shape[2]], dim=-1)
        p_prefix = p_prefix.permute(1, 0, 2, 3).reshape(1, h, n * sq, -1)
        out = (p_prefix @ vp).reshape(h, n, sq, d).permute(1, 0, 2, 3)  # [n, h, sq, d]
        return out + p_own @ vs

    def row_kv(self, row: int, length: int) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """Row `row`'s own keys/values of its first `length` tokens (copies, so the batch can be freed)."""
        return {i: (self.suffix.keys[i][row:row + 1, :, :length].clone(),
                    self.suffix.values[i][row:row + 1, :, :length].clone()) for i in self.suffix.keys}


class PackedRowCache:
    """N rows over a shared prefix, decoded one token per step, with one SDPA call per layer and step.

    Per layer one buffer holds the prefix once and then the rows' own tokens interleaved step-major
    (row r's s-th token at position P + s*N + r), so the keys of a step are a view of the buffer and a
    row mask keeps each row to the prefix and its own tokens. Memory: P + N x capacity positions, the
    prefix is never copied per row. Finished rows leave the batch (`select`) and their slots go unseen.
    """

    def __init__(self, prefix: KVCache, num_rows: int, capacity: int):
        if prefix.batch_size != 1:
            raise ValueError(f"the shared prefix must have batch size 1, got {prefix.batch_size}")
        self.prefix, self.num_rows, self.capacity = prefix, num_rows, capacity
        self.prefix_len = prefix.seq_len
        self.buffers: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
        self.filled: Dict[int, int] = {}  # layer -> steps written (shared with `select` copies)
        self.row_ids = torch.arange(num_rows)  # original row of each row still in the batch
        self._masks: Dict[Tuple[int, int], torch.Tensor] = {}

    @property
    def batch_size(self) -> int:
        return len(self.row_ids)

    @property
    def seq_len(self) -> int:
        return self.prefix_len + max(self.filled.values(), default=0) * self.num_rows

    def nbytes(self) -> int:
        """Bytes of the positions in use (prefix once + every row's own tokens so far)."""
        if not self.buffers:
            return self.prefix.nbytes()
        k = next(iter(self.buffers.values()))[0]
        per_position = k.shape[1] * k.shape[3] * k.element_size() * 2 * len(self.buffers)
        return self.seq_len * per_position

    def _buffer(self, layer_id: int):
        if layer_id not in self.buffers:
            kp, vp = self.prefix.keys[layer_id], self.prefix.values[layer_id]  # [1, h, P, d]
            shape = (1, kp.shape[1], self.prefix_len + self.num_rows * self.capacity, kp.shape[3])
            bk, bv = kp.new_zeros(shape), vp.new_zeros(shape)  # unwritten slots must not be NaN (0 x NaN)
            bk[:, :, :self.prefix_len], bv[:, :, :self.prefix_len] = kp, vp
            self.buffers[layer_id] = (bk, bv)
        return self.buffers[layer_id]

    def _row_mask(self, step: int, device) -> torch.Tensor:
        """[1, 1, n_active, P + (step+1)*N] bool: the prefix, then each row's own slots only."""
        key = (step, len(self.row_ids))
        if key not in self._masks:
            own = torch.arange((step + 1) * self.num_rows, device=device) % self.num_rows
            rows = self.row_ids.to(device)
            mask = torch.ones(len(rows), self.prefix_len + len(own), dtype=torch.bool, device=device)
            mask[:, self.prefix_len:] = own[None, :] == rows[:, None]
            self._masks = {key: mask[None, None]}  # only the current step's mask is reused (by every layer)
        return self._masks[key]

    def attend(self, layer_id: int, q, k, v, mask: Optional[torch.Tensor] = None):
        """q/k/v [n_active, h, 1, d]: write this step's keys/values, attend over prefix + own tokens."""
        if mask is not None or q.shape[2] != 1:
            raise ValueError("PackedRowCache decodes one token per row and step, without an extra mask")
        step = self.filled.get(layer_id, 0)
        if step >= self.capacity:
            raise ValueError(f"PackedRowCache is full ({self.capacity} steps)")
        bk, bv = self._buffer(layer_id)
        slots = self.prefix_len + step * self.num_rows + self.row_ids.to(k.device)
        bk[0, :, slots] = k[:, :, 0].transpose(0, 1)  # [h, n_active, d]
        bv[0, :, slots] = v[:, :, 0].transpose(0, 1)
        self.filled[layer_id] = step + 1
        end = self.prefix_len + (step + 1) * self.num_rows
        rows_as_queries = q[:, :, 0].transpose(0, 1)[None]  # [1, h, n_active, d]
        out = F.scaled_dot_product_attention(rows_as_queries, bk[:, :, :end], bv[:, :, :end],
                                             attn_mask=self._row_mask(step, q.device))
        return out[0].transpose(0, 1)[:, :, None]  # [n_active, h, 1, d]

    def select(self, rows: Sequence[int]) -> "PackedRowCache":
        out = copy.copy(self)
        out.row_ids = self.row_ids[torch.as_tensor(list(rows), dtype=torch.long)]
        out._masks = {}
        return out

    def row_kv(self, row: int, length: int) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
        """Row `row` (of the active rows)'s own keys/values of its first `length` tokens, [1, h, length, d]."""
        original = int(self.row_ids[row])
        out = {}
        for i, (bk, bv) in self.buffers.items():
            slots = self.prefix_len + torch.arange(length, device=bk.device) * self.num_rows + original
            out[i] = (bk[:, :, slots], bv[:, :, slots])  # advanced indexing copies
        return out


def fork(cache: KVCache) -> KVCache:
    """A cache sharing `cache`'s tensors; appending to it leaves `cache` unchanged (appends concatenate)."""
    return cache.map(lambda t: t)


def extend_cache(cache: KVCache, own: Optional[Dict[int, Tuple[torch.Tensor, torch.Tensor]]]) -> KVCache:
    """Batch-1 `cache` followed by a row's own keys/values (the committed winner of a search step)."""
    if not own or next(iter(own.values()))[0].shape[2] == 0:
        return fork(cache)
    out = KVCache()
    for i in cache.keys:
        k, v = own[i]
        out.keys[i] = torch.cat((cache.keys[i], k), dim=2)
        out.values[i] = torch.cat((cache.values[i], v), dim=2)
    return out


# ----------------------------------------------------------------------------- model calls

def lm_logits(model, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, attention_mask=None,
              last_only: bool = False, **image_inputs) -> torch.Tensor:
    """One language-model call over [b, n] tokens with a KV cache; logits [b, n, V] (or [b, 1, V] with
    last_only) in float32, or float64 for a float64 model."""
    with torch.inference_mode():
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                    kv_cache=cache, **image_inputs)[0]
    out = out[:, -1:] if last_only else out
    return out.to(torch.promote_types(out.dtype, torch.float32))


@dataclass
class Prefix:
    """A batch-1 decoding state: the cache of `ids`, the next rotary position, the logits after the last
    id ([V] float32). `pending` ids are decided but not yet run (`ready()` runs them)."""
    cache: KVCache
    ids: List[int]
    next_position: int
    logits: Optional[torch.Tensor]
    pending: List[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids) + len(self.pending)


def run_prompt(model, prompt: Prompt, start: int = 0, base: Optional[Prefix] = None,
               image_embeds: Optional[torch.Tensor] = None, stop: Optional[int] = None) -> Prefix:
    """Run prompt tokens [start:stop] on top of `base` (a cached prompt[:start], left unchanged).

    A span holding the image needs `image_embeds` [1, L, H]; a span after the image is text only.
    """
    stop = len(prompt) if stop is None else stop
    if base is not None and len(base.ids) != start:
        raise ValueError(f"base holds {len(base.ids)} tokens, prompt resumes at {start}")
    if not 0 <= start < stop <= len(prompt):
        raise ValueError(f"empty or bad span [{start}:{stop}] of a {len(prompt)}-token prompt")
    device = image_embeds.device if image_embeds is not None else next(model.parameters()).device
    t = {k: v[:, :stop - start] for k, v in prompt.tensors(start, device=device).items()}
    with_image = bool(t["image_embed_mask"].any())
    if with_image and (start > 0 or image_embeds is None):
        raise ValueError("a span holding the image must start at 0 and come with image_embeds")
    image_inputs = dict(image_embeds=image_embeds, image_embed_mask=t["image_embed_mask"],
                        vision_expert_mask=t["vision_expert_mask"]) if with_image else {}
    cache = fork(base.cache) if base is not None else KVCache()
    logits = lm_logits(model, t["input_ids"], t["position_ids"], cache, last_only=True, **image_inputs)
    ids = (list(base.ids) if base is not None else []) + list(prompt.input_ids[start:stop])
    return Prefix(cache, ids, prompt.position_ids[stop - 1] + 1, logits[0, -1])


def feed(model, prefix: Prefix, ids: Sequence[int]) -> Prefix:
    """`prefix` followed by text tokens `ids` (pending ones first); `prefix` itself is left unchanged."""
    ids = list(prefix.pending) + list(ids)
    if not ids:
        return prefix
    device = next(model.parameters()).device
    cache = fork(prefix.cache)
    pos = torch.arange(prefix.next_position, prefix.next_position + len(ids), device=device)[None]
    logits = lm_logits(model, torch.tensor([ids], device=device), pos, cache, last_only=True)
    return Prefix(cache, list(prefix.ids) + ids, prefix.next_position + len(ids), logits[0, -1])


def ready(model, prefix: Prefix) -> Prefix:
    return feed(model, prefix, []) if prefix.pending else prefix


def score_tokens(model, prefix: Prefix, ids: Sequence[int]) -> List[float]:
    """Log-probabilities of `ids` continuing `prefix` (one forward over all of them)."""
    prefix = ready(model, prefix)
    logps = [float(torch.log_softmax(prefix.logits, -1)[ids[0]])]
    if len(ids) > 1:
        device = next(model.parameters()).device
        pos = torch.arange(prefix.next_position, prefix.next_position + len(ids) - 1, device=device)[None]
        logits = lm_logits(model, torch.tensor([list(ids[:-1])], device=device), pos, fork(prefix.cache))[0]
        lp = torch.log_softmax(logits, -1)
        logps += [float(lp[i, t]) for i, t in enumerate(ids[1:])]
    return logps


# ----------------------------------------------------------------------------- the decode loop

@dataclass
class DecodeState:
    """What `decode_steps` leaves behind: the cache of the rows still in the batch at the end."""
    cache: object = None


def decode_steps(model, cache, logits: torch.Tensor, positions: torch.Tensor, rows: List[Row], *,
                 options: SamplingOptions, stop: StopCriteria, tokenizer, max_new_tokens: int,
                 key_mask: Optional[torch.Tensor] = None, keep_kv: bool = False,
                 state: Optional[DecodeState] = None) -> Iterator[List[Tuple[int, int]]]:
    """Generate for `rows` until each one stops; yields [(row index, token), ...] after every step.

    cache: holds all rows' context (`RowCache` over a shared prefix, or a `KVCache` with one row each);
    logits [r, V]: the next-token logits of each row; positions [r]: each row's next rotary position;
    key_mask [r, k]: which cached positions each row may attend (left padding), None = all.
    A token that stops its row (or EOS) is not run through the model; finished rows leave the batch,
    with their own keys/values kept when keep_kv (the cache must then have `row_kv`: a `RowCache` or
    `PackedRowCache`).
    """
    eos = tokenizer.eos_token_id
    active = list(range(len(rows)))
    state = state if state is not None else DecodeState()
    fed = 0
    while True:
        tokens = sample_next(logits, options, [rows[a].generator for a in active])
        logps = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0].tolist()
        tokens_list = tokens.tolist()
        emitted, finished = [], []
        for j, a in enumerate(active):
            row, t = rows[a], tokens_list[j]
            row.fed = fed
            if stop.eos and t == eos:
                row.finish = "eos"
                finished.append(j)
                continue
            row.tokens.append(t)
            row.logprobs.append(logps[j])
            emitted.append((a, t))
            if stop.needs_text:
                row.text = tokenizer.decode(row.tokens)
                row.finish = stop.check(row.text)
            if row.finish is None and len(row.tokens) >= max_new_tokens:
                row.finish = "length"
            if row.finish is not None:
                finished.append(j)
        if keep_kv:
            for j in finished:
                rows[active[j]].kv = cache.row_kv(j, fed)
        yield emitted
        keep = [j for j in range(len(active)) if j not in set(finished)]
        if not keep:
            state.cache = cache
            break
        if finished:
            cache = cache.select(keep)
            index = torch.tensor(keep, device=tokens.device)
            tokens, positions = tokens[index], positions[index]
            key_mask = key_mask[index] if key_mask is not None else None
            active = [active[j] for j in keep]
        mask = None
        if key_mask is not None:
            key_mask = torch.cat([key_mask, key_mask.new_ones(len(active), 1)], dim=1)
            mask = key_mask[:, None, None, :]  # [r, 1, 1, k]: this step's query sees the valid keys
        logits = lm_logits(model, tokens[:, None], positions[:, None], cache, attention_mask=mask)[:, -1]
        positions = positions + 1
        fed += 1
    if not stop.needs_text:
        for row in rows:
            row.text = tokenizer.decode(row.tokens)


def decode(model, cache, logits, positions, rows, **kw) -> DecodeState:
    state = DecodeState()
    for _ in decode_steps(model, cache, logits, positions, rows, state=state, **kw):
        pass
    return state


def sample_rows(model, prefix: Prefix, generators: Sequence[Optional[torch.Generator]], *, options: SamplingOptions,
                stop: StopCriteria, tokenizer, max_new_tokens: int, keep_kv: bool = True) -> List[Row]:
    """N continuations of `prefix` decoded as one batch over it (the prefix is never copied per row)."""
    prefix = ready(model, prefix)
    n = len(generators)
    rows = [Row(generator=g) for g in generators]
    device = prefix.logits.device
    decode(model, PackedRowCache(prefix.cache, n, capacity=max_new_tokens), prefix.logits[None].expand(n, -1),
           torch.full((n,), prefix.next_position, dtype=torch.long, device=device), rows,
           options=options, stop=stop, tokenizer=tokenizer, max_new_tokens=max_new_tokens, keep_kv=keep_kv)
    return rows


def generate_one(model, prefix: Prefix, generator: Optional[torch.Generator], *, options: SamplingOptions,
                 stop: StopCriteria, tokenizer, max_new_tokens: int) -> Row:
    """One continuation of `prefix` with a plain (dense) KV cache; `prefix` is left unchanged."""
    prefix = ready(model, prefix)
    row = Row(generator=generator)
    decode(model, fork(prefix.cache), prefix.logits[None],
           torch.tensor([prefix.next_position], device=prefix.logits.device), [row],
           options=options, stop=stop, tokenizer=tokenizer, max_new_tokens=max_new_tokens)
    return row


def commit(prefix: Prefix, row: Row) -> Prefix:
    """`prefix` continued by `row` (from `sample_rows` with keep_kv): its cache is reused, not recomputed.
    The row's last token, never run through the model, stays pending."""
    if prefix.pending:
        raise ValueError("commit onto the prefix the row was sampled from (after ready()), not a pending one")
    cache = extend_cache(prefix.cache, row.kv)
    return Prefix(cache, list(prefix.ids) + row.tokens[:row.fed], prefix.next_position + row.fed, None,
                  pending=row.tokens[row.fed:])


# ----------------------------------------------------------------------------- batched prompts

def left_pad(prompts: Sequence[Prompt], pad_id: int, device=None) -> Dict[str, torch.Tensor]:
    """Stack prompts right-aligned: ids, positions, image masks [b, n] and key_mask [b, n] (True = real)."""
    n = max(len(p) for p in prompts)
    out = {k: torch.zeros(len(prompts), n, dtype=torch.long) for k in
           ("input_ids", "position_ids", "image_embed_mask", "vision_expert_mask")}
    out["input_ids"].fill_(pad_id)
    key_mask = torch.zeros(len(prompts), n, dtype=torch.bool)
    for i, p in enumerate(prompts):
        s = n - len(p)
        for k in ("input_ids", "position_ids", "image_embed_mask", "vision_expert_mask"):
            out[k][i, s:] = torch.tensor(getattr(p, k))
        key_mask[i, s:] = True
    out["key_mask"] = key_mask
    return {k: v.to(device) for k, v in out.items()}


def generate_ragged(model, prefix: Prefix, prompts: Sequence[Prompt], generators, *, options: SamplingOptions,
                    stop: StopCriteria, tokenizer, max_new_tokens: int) -> List[Row]:
    """Generate for several prompts that all start with `prefix` (its ids) but go on differently, as one
    batch over the shared prefix: the different rests are left-padded and masked; `prefix` is not copied."""
    start = len(prefix.ids)
    if prefix.pending or any(tuple(p.input_ids[:start]) != tuple(prefix.ids) or len(p) <= start for p in prompts):
        raise ValueError("every prompt must extend the prefix's ids by at least one token")
    if any(any(p.image_embed_mask[start:]) for p in prompts):
        raise ValueError("the prompts' image spans must lie inside the shared prefix")
    device = next(model.parameters()).device
    rests = [Prompt(p.input_ids[start:], p.position_ids[start:], p.image_embed_mask[start:],
                    p.vision_expert_mask[start:], 0) for p in prompts]
    t = left_pad(rests, tokenizer.pad_token_id, device)
    n, s = t["input_ids"].shape
    own = t["key_mask"]  # [n, s] real tokens of each rest
    causal = torch.ones(s, s, dtype=torch.bool, device=device).tril()
    eye = torch.eye(s, dtype=torch.bool, device=device)
    own_mask = (causal[None] & own[:, None, :]) | eye[None]  # [n, s, s]; a pad sees itself only
    key_mask = torch.cat([own.new_ones(n, start), own], dim=1)  # [n, P + s]
    mask = torch.cat([own.new_ones(n, s, start), own_mask], dim=2)[:, None]  # [n, 1, s, P + s]
    cache = RowCache(prefix.cache, n)
    logits = lm_logits(model, t["input_ids"], t["position_ids"], cache, attention_mask=mask, last_only=True)[:, -1]
    rows = [Row(generator=g) for g in generators]
    positions = torch.tensor([p.next_position for p in prompts], device=device)
    decode(model, cache, logits, positions, rows, options=options, stop=stop, tokenizer=tokenizer,
           max_new_tokens=max_new_tokens, key_mask=key_mask)
    return rows


def generate_batch(model, prompts: Sequence[Prompt], image_embeds: Optional[torch.Tensor], *, tokenizer,
                   options: SamplingOptions, stop: StopCriteria, max_new_tokens: int,
                   generators: Optional[Sequence[Optional[torch.Generator]]] = None) -> List[Row]:
    """Generate for several prompts at once (left-padded; one image per prompt that has one, in order)."""
    device = next(model.parameters()).device
    t = left_pad(prompts, tokenizer.pad_token_id, device)
    b, n = t["input_ids"].shape
    key_mask = t.pop("key_mask")
    causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=device)
    mask = (causal[None] & key_mask[:, None, :]) | eye[None]  # pads see themselves only: no empty softmax rows
    image_inputs = {}
    if image_embeds is not None:
        image_inputs = dict(image_embeds=image_embeds, image_embed_mask=t["image_embed_mask"],
                            vision_expert_mask=t["vision_expert_mask"])
    cache = KVCache()
    logits = lm_logits(model, t["input_ids"], t["position_ids"], cache, attention_mask=mask[:, None],
                       last_only=True, **image_inputs)[:, -1]
    rows = [Row(generator=g) for g in (generators or [None] * b)]
    positions = torch.tensor([p.next_position for p in prompts], device=device)
    decode(model, cache, logits, positions, rows, options=options, stop=stop, tokenizer=tokenizer,
           max_new_tokens=max_new_tokens, key_mask=key_mask)
    return rows


# ----------------------------------------------------------------------------- counting

class ForwardCounter:
    """Counts language-model positions (input_ids elements per forward), images through the ViT, and the
    peak size of the KV cache a forward attended over.

    Installed as forward pre-hooks on the model and on its ViT; `close()` removes them.
    """

    def __init__(self, model):
        self.lm_tokens = self.lm_calls = self.vision_images = self.vision_calls = 0
        self.kv_peak_bytes = 0  # the largest KV cache a forward attended over (after its own append)
        self._handles = [model.register_forward_pre_hook(self._on_lm, with_kwargs=True),
                         model.register_forward_hook(self._after_lm, with_kwargs=True)]
        mixins = getattr(model, "mixins", {})
        vit = getattr(mixins["eva"], "vit_model", None) if "eva" in mixins else None
        if vit is not None:
            self._handles.append(vit.register_forward_pre_hook(self._on_vit, with_kwargs=True))

    def _on_lm(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.lm_tokens += int(ids.numel())
        self.lm_calls += 1

    def _after_lm(self, module, args, kwargs, output):
        cache = kwargs.get("kv_cache")
        if cache is not None:
            self.kv_peak_bytes = max(self.kv_peak_bytes, int(cache.nbytes()))

    def _on_vit(self, module, args, kwargs):
        image = kwargs.get("image")
        self.vision_images += int(image.shape[0]) if image is not None else 1
        self.vision_calls += 1

    def snapshot(self) -> Dict[str, int]:
        return {"lm_tokens": self.lm_tokens, "lm_calls": self.lm_calls, "vision_images": self.vision_images,
                "vision_calls": self.vision_calls, "kv_peak_bytes": self.kv_peak_bytes}

    def close(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

