"""Multi-turn chat about one image with a KV cache kept across turns, and streaming.

    chat = Chat(model, tokenizer, template="chat_old", options=SamplingOptions(max_new_tokens=256))
    response, history = chat("What is in the image?", image="cat.png")
    for piece in chat.stream("And its colour?"):      # text as it comes
        print(piece, end="", flush=True)

The image is encoded once per conversation (ViT once, its `[BOS][BOI][IMG]xL[EOI]` span run once); the
cache of everything said so far is reused by the next turn. The history (text) stays the source of
truth: each turn's prompt is built from it exactly as training builds it, and only the tokens after
the longest common prefix with what is cached are run. So a response equals the one a cache-free
recomputation of the same prompt would give.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from .generation import DecodeState, Prefix, Row, StopCriteria, decode_steps, make_generator, run_prompt
from .image import ImageLike, Pixels, image_size_of, model_device_dtype, open_image
from .options import SamplingOptions, derive_seed
from .prompt import Prompt, build_prompt, common_prefix_length

History = List[Tuple[str, str]]


class ContextTooLong(ValueError):
    """The conversation no longer fits the model's context; start a new one."""


class Chat:
    """A conversation with a model about one image (or none).

    model, tokenizer: a `CogVLMModel` in eval mode and its tokenizer; template: the prompt format the
    model was trained with (official `chat_old` for cogvlm-chat-v1.1); options: `SamplingOptions`;
    max_length: context limit in tokens (default: the model's max_sequence_length).
    """

    def __init__(self, model, tokenizer, *, template: str = "chat_old", options: SamplingOptions = SamplingOptions(),
                 max_length: Optional[int] = None, image_size=None):
        self.model, self.tokenizer, self.template, self.options = model, tokenizer, template, options
        args = model.args
        self.image_length = args.image_length
        self.max_length = max_length or getattr(args, "max_sequence_length", 2048)
        device, dtype = model_device_dtype(model)
        self.pixels = Pixels(image_size or image_size_of(args), device=device, dtype=dtype)
        self.history: History = []
        self.last_response: Optional[str] = None
        self._clear_image()

    # -- conversation state ----------------------------------------------------------------------
    def _clear_image(self):
        self.image, self._source = None, None
        self._embeds: Optional[torch.Tensor] = None
        self._image_prefix: Optional[Prefix] = None
        self._cache, self._ids = None, []

    def clear(self, image: Optional[ImageLike] = None) -> None:
        """Start a new conversation (optionally about a new image)."""
        self.history = []
        self._clear_image()
        if image is not None:
            self.set_image(image)

    def set_image(self, image: ImageLike) -> None:
        """Talk about `image` (a path or PIL image) from now on; a new image starts a new cache."""
        self._clear_image()
        self.image = open_image(image)
        self._source = image

    def _same_image(self, image: ImageLike) -> bool:
        if self._source is None:
            return False
        if isinstance(image, (str, os.PathLike)) and isinstance(self._source, (str, os.PathLike)):
            return os.fspath(image) == os.fspath(self._source)
        return image is self._source

    # -- turns -----------------------------------------------------------------------------------
    def __call__(self, query: str, image: Optional[ImageLike] = None, history: Optional[Sequence] = None, *,
                 options: Optional[SamplingOptions] = None) -> Tuple[str, History]:
        """Answer `query`; returns (response, history with this turn appended)."""
        for _ in self.stream(query, image, history, options=options):
            pass
        return self.last_response, list(self.history)

    def stream(self, query: str, image: Optional[ImageLike] = None, history: Optional[Sequence] = None, *,
               options: Optional[SamplingOptions] = None) -> Iterator[str]:
        """Yield the response text piece by piece; the pieces join to the response `__call__` returns.

        image: given on the first turn (or to switch images: that starts a new conversation);
        history: [(question, answer), ...] to answer after (default: this chat's own history).
        """
        if image is not None and not self._same_image(image):
            self.clear(image)
        if history is not None:
            self.history = [tuple(t) for t in history]
        options = options or self.options
        prompt = build_prompt(self.tokenizer, query, self.history, image_length=self.image_length,
                              template=self.template, image=self.image is not None)
        room = self.max_length - len(prompt)
        if room < 1:
            raise ContextTooLong(f"the conversation needs {len(prompt)} tokens, the model takes {self.max_length}; "
                                 "type 'clear' to start over")
        prefix = self._resume(prompt)
        seed = None if options.seed is None else derive_seed(options.seed, len(self.history))
        row = Row(generator=make_generator(seed))
        state = DecodeState()
        sent = ""
        steps = decode_steps(self.model, prefix.cache, prefix.logits[None],
                             torch.tensor([prefix.next_position], device=prefix.logits.device), [row],
                             options=options, stop=StopCriteria(), tokenizer=self.tokenizer,
                             max_new_tokens=min(options.max_new_tokens, room), state=state)
        for emitted in steps:
            if not emitted:
                continue
            text = self.tokenizer.decode(row.tokens).strip()
            if text.endswith("\ufffd") or not text.startswith(sent):  # half a character, or a rewrite
                continue
            if len(text) > len(sent):
                yield text[len(sent):]
                sent = text
        response = self.tokenizer.decode(row.tokens).strip()
        if response.startswith(sent) and len(response) > len(sent):
            yield response[len(sent):]
        # The cache now holds the prompt and every generated token but the last (never run).
        self._cache, self._ids = state.cache, list(prompt.input_ids) + row.tokens[:row.fed]
        self.history.append((query, response))
        self.last_response = response

    def _resume(self, prompt: Prompt) -> Prefix:
        """Run only what the cache does not hold yet: the image span once, then new text tokens."""
        keep = min(common_prefix_length(self._ids, prompt.input_ids), len(prompt) - 1)
        if keep < prompt.image_end:
            keep = 0
        if keep > 0:
            base = Prefix(self._cache.truncate(keep), list(prompt.input_ids[:keep]),
                          prompt.position_ids[keep - 1] + 1, None)
            return run_prompt(self.model, prompt, start=keep, base=base)
        if not prompt.has_image:
            return run_prompt(self.model, prompt)
        if self._image_prefix is None:  # the first turn: the ViT once, the whole prompt in one call
            with torch.no_grad():
                self._embeds = self.model.encode_images(self.pixels([self.image]))
            prefix = run_prompt(self.model, prompt, image_embeds=self._embeds)
            end = prompt.image_end
            self._image_prefix = Prefix(prefix.cache.truncate(end), list(prompt.input_ids[:end]),
                                        prompt.position_ids[end - 1] + 1, None)
            return prefix
        return run_prompt(self.model, prompt, start=prompt.image_end, base=self._image_prefix)
