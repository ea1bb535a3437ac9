"""Turn a conversation into CogVLM training tokens: ids, labels, positions and the three image masks.

A single-image, single-turn sample that fits comes out exactly as the official `llama2_text_processor`
makes it (unpadded); multi-turn, several images, loss on the last turn and safe truncation are ours.
A sample longer than max_length is cut at its end with no EOS appended at the cut (the official code
appends one, which teaches the model to stop mid-answer), or skipped with `truncation="drop"`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .records import ASSISTANT, IMAGE_MARKER, SYSTEM, USER, Problem, SampleDropped, SampleTooLong, Turn

IGNORE_INDEX = -100  # label of tokens that get no loss (prompt, image spans, padding)
IMAGE_TOKEN_ID = 0   # BOI, the image tokens and EOI are all id 0; their embeddings are replaced


@dataclass(frozen=True)
class Template:
    """How a user turn is written; `{query}` is the question. The answer follows, encoded apart."""
    first: str
    later: str


# The official `_history_to_prompt` formats, split per turn (the text after `<EOI>`).
TEMPLATES: Dict[str, Template] = {
    "base": Template("{query}", "{query}"),
    "chat": Template(" [INST] {query} [/INST] ", " [INST] {query} [/INST] "),
    "vqa": Template("Question: {query} Short answer:", " Question: {query} Short answer:"),
    "chat_old": Template("Question: {query} Answer:", "\nQuestion: {query} Answer:"),
}
_OFFICIAL_TAGS = re.compile("<pad>|<s>|</s>|<EOI>")  # stripped from queries, as the official code does
_LEADING_MARKERS = re.compile(r"\s*((?:<image>\s*)+)")
TRUNCATION = ("cut", "drop")  # what happens to a sample longer than max_length
_TOKEN_LISTS = ("input_ids", "labels", "position_ids", "image_embed_mask", "vision_expert_mask", "image_rope_mask")


@dataclass
class Encoded:
    """Unpadded token lists of one sample, plus where its image spans are (BOI index, EOI index)."""
    input_ids: List[int] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    position_ids: List[int] = field(default_factory=list)
    image_embed_mask: List[int] = field(default_factory=list)
    vision_expert_mask: List[int] = field(default_factory=list)
    image_rope_mask: List[int] = field(default_factory=list)
    image_spans: List[Tuple[int, int]] = field(default_factory=list)
    context_length: int = 0
    truncated: int = 0
    # Per-stage loss weights of trained answer texts: (index of the text's first token, each token's stage
    # or None, each token's weight).
    weight_runs: List[Tuple[int, List[Optional[str]], List[float]]] = field(default_factory=list)

    def loss_weights(self) -> List[float]:
        """One weight per token: the stage weight of answer tokens, 1 elsewhere (only labelled ones count)."""
        out = [1.0] * len(self.input_ids)
        for start, _, weights in self.weight_runs:
            for k, w in enumerate(weights[:max(0, len(out) - start)]):
                out[start + k] = w
        return out

    def token_stages(self) -> List[Optional[str]]:
        """The stage of each token (None outside the stages and outside weighted answers)."""
        out: List[Optional[str]] = [None] * len(self.input_ids)
        for start, stages, _ in self.weight_runs:
            for k, name in enumerate(stages[:max(0, len(out) - start)]):
                out[start + k] = name
        return out

    def add_tokens(self, ids: Sequence[int], trained: bool) -> None:
        n, start = len(ids), (self.position_ids[-1] + 1 if self.position_ids else 0)
        self.input_ids += ids
        self.labels += list(ids) if trained else [IGNORE_INDEX] * n
        self.position_ids += range(start, start + n)
        for mask in (self.image_embed_mask, self.vision_expert_mask, self.image_rope_mask):
            mask += [0] * n

    def add_image(self, image_length: int) -> None:
        """[BOI] [IMG]*L [EOI]: BOI and EOI get their own positions, the L image tokens share one."""
        boi, pid = len(self.input_ids), (self.position_ids[-1] + 1 if self.position_ids else 0)
        span = image_length + 2
        self.input_ids += [IMAGE_TOKEN_ID] * span
        self.labels += [IGNORE_INDEX] * span
        self.position_ids += [pid] + [pid + 1] * image_length + [pid + 2]
        self.image_embed_mask += [1] * span
        self.vision_expert_mask += [1] * (image_length + 1) + [0]
        self.image_rope_mask += [0] + [1] * image_length + [0]
        self.image_spans.append((boi, boi + span - 1))

    def __len__(self) -> int:
        return len(self.input_ids)


class TextProcessor:
    """`tp(answer, query)` like the official processor, `tp.encode_turns(turns)` for conversations.

    Args: tokenizer (HF-style `encode(text, add_special_tokens=False)`, `bos/eos_token_id`),
    max_length (tokens incl. image spans; None = no limit), image_length (tokens per image, = ViT
    patches), template (base/chat/vqa/chat_old), loss_on ("all" assistant turns or only the "last"),
    truncation: a longer sample is "cut" at max_length (no EOS at the cut; never inside an image span)
    or "drop"ped (`SampleDropped`, which ItemDataset counts and skips). stage_weights: {stage: weight}
    (`dataset.stage_weights.parse_stage_weights`) adds a float `loss_weights` per token: each trained
    answer token weighs its stage's weight, every other token 1.
    """

    def __init__(self, tokenizer, max_length: Optional[int] = 2048, image_length: int = None,
                 template: str = "chat_old", loss_on: str = "all", truncation: str = "cut",
                 stage_weights: Optional[Dict[str, float]] = None):
        if image_length is None or image_length < 1:
            raise ValueError("image_length (tokens per image = ViT patches, e.g. 1225 at 490 px) is required")
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
        if loss_on not in ("all", "last"):
            raise ValueError(f"loss_on must be 'all' or 'last', got {loss_on!r}")
        if truncation not in TRUNCATION:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATION)}, got {truncation!r}")
        self.tokenizer, self.max_length, self.image_length = tokenizer, max_length, image_length
        self.template_name, self.template, self.loss_on = template, TEMPLATES[template], loss_on
        self.truncation = truncation
        self.stage_weights = dict(stage_weights) if stage_weights else None

    # -- public API ------------------------------------------------------------------------------
    def __call__(self, answer: str, query: str = "") -> Dict[str, object]:
        """Official call order. A query without `<image>` gets one image right after BOS."""
        if "<EOI>" in query:  # a prompt already written out, as the official code accepts
            return self.to_tensors(self._finish(self._raw_prompt(query), [(answer, True)]))
        turns = [Turn(USER, query), Turn(ASSISTANT, answer)]
        return self.to_tensors(self.encode(turns, front_images=None if IMAGE_MARKER in query else 1))

    def encode_turns(self, turns: Sequence[Turn], source: Optional[Problem] = None) -> Dict[str, object]:
        """Tensors for a conversation (system*, then user/assistant pairs). See `encode`."""
        return self.to_tensors(self.encode(turns, source))

    def encode(self, turns: Sequence[Turn], source: Optional[Problem] = None,
               front_images: Optional[int] = None) -> Encoded:
        """Build and fit one sample; raises SampleTooLong (located by `source`) if it cannot fit.

        `front_images` forces that many image spans right after BOS (default: from the markers).
        """
        system = [t.text for t in turns if t.role == SYSTEM]
        queries = [_OFFICIAL_TAGS.sub("", t.text) for t in turns if t.role == USER]
        answers = [t.text for t in turns if t.role == ASSISTANT]
        if not answers or len(queries) != len(answers):
            raise ValueError(f"need user/assistant pairs, got {len(queries)} user and {len(answers)} assistant turns")
        if front_images is None:
            queries, front = self._front_images(queries)
        else:
            front = front_images
        enc = Encoded()
        enc.add_tokens([self.tokenizer.bos_token_id], trained=False)
        for _ in range(front):
            enc.add_image(self.image_length)
        for text in system:
            self._add_text(enc, text, trained=False)
        for k, query in enumerate(queries[:-1]):
            self._add_query(enc, query, first=k == 0)
            self._add_text(enc, answers[k], trained=self.loss_on == "all")
        self._add_query(enc, queries[-1], first=len(queries) == 1)
        return self._finish(enc, [(answers[-1], True)], source)

    def to_tensors(self, enc: Encoded) -> Dict[str, object]:
        """1-D long tensors (unpadded), the context length and bookkeeping ints."""
        out = {k: torch.tensor(getattr(enc, k), dtype=torch.long) for k in _TOKEN_LISTS}
        out["segment_ids"] = torch.ones(len(enc), dtype=torch.long)  # one sample = segment 1; padding = 0
        out["context_length"] = enc.context_length
        out["num_images"] = len(enc.image_spans)
        out["truncated"] = enc.truncated
        if self.stage_weights is not None:
            out["loss_weights"] = torch.tensor(enc.loss_weights(), dtype=torch.float)
        return out

    # -- layout ----------------------------------------------------------------------------------
    @staticmethod
    def _front_images(queries: List[str]) -> Tuple[List[str], int]:
        """How many images go right after BOS (the official layout) and the queries without them.

        Markers that open the first question go to the front; so does a lone image whose marker is
        anywhere in the first question (LLaVA data puts it before or after the text). Others stay inline.
        """
        first, total = queries[0], sum(q.count(IMAGE_MARKER) for q in queries)
        if total == 1 and IMAGE_MARKER in first:
            return [first.replace(IMAGE_MARKER, "").strip()] + queries[1:], 1
        m = _LEADING_MARKERS.match(first)
        if not m:
            return queries, 0
        return [first[m.end():]] + queries[1:], m.group(1).count(IMAGE_MARKER)

    def _add_query(self, enc: Encoded, query: str, first: bool) -> None:
        text = (self.template.first if first else self.template.later).format(query=query)
        pieces = text.split(IMAGE_MARKER)
        self._add_text(enc, pieces[0], trained=False)
        for piece in pieces[1:]:  # each inline marker: an image span, then the text after it
            enc.add_image(self.image_length)
            self._add_text(enc, piece, trained=False)

    def _add_text(self, enc: Encoded, text: str, trained: bool) -> None:
        if text:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if trained and self.stage_weights is not None:
                from .stage_weights import token_stages
                stages = token_stages(self.tokenizer, ids)
                weights = [1.0 if name is None else float(self.stage_weights[name]) for name in stages]
                enc.weight_runs.append((len(enc), stages, weights))
            enc.add_tokens(ids, trained)

    def _raw_prompt(self, prompt: str) -> Encoded:
        """`<EOI>`-separated prompt: an image span before every piece after the first."""
        enc = Encoded()
        enc.add_tokens([self.tokenizer.bos_token_id], trained=False)
        pieces = prompt.split("<EOI>")
        self._add_text(enc, pieces[0], trained=False)
        for piece in pieces[1:]:
            enc.add_image(self.image_length)
            self._add_text(enc, piece, trained=False)
        return enc

    def _finish(self, enc: Encoded, answers: List[Tuple[str, bool]], source: Optional[Problem] = None) -> Encoded:
        """Append the final answer and EOS, then fit max_length."""
        enc.context_length = len(enc)
        for text, trained in answers:
            self._add_text(enc, text, trained)
        enc.add_tokens([self.tokenizer.eos_token_id], trained=True)
        return self._fit(enc, source)

    def _fit(self, enc: Encoded, source: Optional[Problem]) -> Encoded:
        """Keep the first max_length tokens, labels unchanged: the cut trains no EOS. Never cut an image
        span or every trained token (SampleTooLong); with truncation="drop" any longer sample is SampleDropped."""
        if self.max_length is None or len(enc) <= self.max_length:
            return enc
        cut = self.max_length

        def too_long(reason: str, error=SampleTooLong) -> SampleTooLong:
            where = source or Problem("<memory>", None, None, "")
            return error(Problem(where.file, where.line, where.record_id,
                                 f"sample needs {len(enc)} tokens > max_length {self.max_length}: {reason}"))

        if self.truncation == "drop":
            raise too_long("dropped (truncation drop)", SampleDropped)
        if enc.image_spans and enc.image_spans[-1][1] >= cut:
            raise too_long("truncating would cut an image span")
        if all(label == IGNORE_INDEX for label in enc.labels[:cut]):
            raise too_long("no trained token would be left")
        enc.truncated = len(enc) - cut
        for k in _TOKEN_LISTS:
            del getattr(enc, k)[cut:]
        enc.context_length = min(enc.context_length, cut)
        return enc
