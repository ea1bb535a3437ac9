"""Token generation apart from the model: the decode loops and the model calls they make.

- `Prefix`: a batch-1 KV cache with the ids it holds, its next position and the logits after it.
- `decode_steps`: the one decode loop, used by chat (1 row), staged search (N rows over a shared
  prefix, `PackedRowCache`), judge prompts with a common head (`RowCache`; both are
  `models.kv_cache.SharedPrefixKVCache`) and batched evaluation
  (left-padded rows, a plain `KVCache` and a key mask). Finished rows leave the batch at once; in
  search they keep their own keys/values for `commit`.
- `ForwardCounter`: hooks that count positions run through the language model and ViT images.

Sampling and stop rules live in `inference.sampling`, the shared-prefix caches in `inference.caches`;
their names are importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from models.kv_cache import KVCache

from .caches import PackedRowCache, RowCache, extend_cache, fork  # noqa: F401  (re-exported)
from .options import SamplingOptions
from .prompt import Prompt
from .sampling import GREEDY_ROW, StopCriteria, filter_logits, make_generator, sample_next  # noqa: F401  (re-exported)


# ----------------------------------------------------------------------------- rows

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

