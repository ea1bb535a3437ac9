"""inference.chat: the KV cache kept across turns gives the responses a cache-free recomputation gives;
streaming yields the same text; the image is encoded once per conversation."""
import pytest
import torch
from PIL import Image

from dataset.image_processor import ImageProcessor
from inference.chat import Chat, ContextTooLong
from inference.generation import ForwardCounter
from inference.options import GREEDY, SamplingOptions
from inference.prompt import build_prompt

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_NEW = 6


def _greedy_without_cache(model, tok, image, query, history):
    """Reference: rebuild the prompt from the text history and run the whole sequence for every token."""
    prompt = build_prompt(tok, query, history, image_length=model.args.image_length)
    pixels = ImageProcessor(56)(image)[None].double()
    ids, pos = list(prompt.input_ids), list(prompt.position_ids)
    n = len(ids)
    out = []
    with torch.no_grad():
        for _ in range(MAX_NEW):
            m = len(ids)
            pad = [0] * (m - n)
            logits = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), attention_mask=None,
                           image_embed_mask=torch.tensor([list(prompt.image_embed_mask) + pad]),
                           vision_expert_mask=torch.tensor([list(prompt.vision_expert_mask) + pad]),
                           vision_image=pixels, vision_input_ids=torch.zeros(1, 1, dtype=torch.long),
                           vision_attention_mask=torch.ones(1, 1))[0]
            t = int(logits[0, -1].argmax())
            if t == tok.eos_token_id:
                break
            out.append(t)
            ids.append(t)
            pos.append(pos[-1] + 1)
    return tok.decode(out).strip()


def test_chat_with_kv_cache_equals_recomputation(tiny_vlm):
    model, tok = tiny_vlm
    image = Image.new("RGB", (56, 56), (30, 160, 60))
    chat = Chat(model, tok, options=GREEDY.replace(max_new_tokens=MAX_NEW))
    questions = ["What color is the shape?", "And what shape is it?", "How many?"]
    history, chat_tokens, vision = [], [], 0
    for k, q in enumerate(questions):
        with ForwardCounter(model) as count:
            response, history = chat(q, image=image if k == 0 else None)
        chat_tokens.append(count.lm_tokens)
        vision += count.vision_images
        assert response == _greedy_without_cache(model, tok, image, q, history[:-1])
        assert history[-1] == (q, response)
        if k > 0:  # only the new question (and any re-tokenized answer tail) runs, not the conversation
            prompt = build_prompt(tok, q, history[:-1], image_length=model.args.image_length)
            assert chat_tokens[k] < len(prompt) - model.args.image_length
    assert vision == 1  # one ViT run for the whole conversation


def test_given_history_is_the_source_of_truth(tiny_vlm):
    """An edited history is answered as if computed from scratch (the cache is cut where it differs)."""
    model, tok = tiny_vlm
    image = Image.new("RGB", (56, 56), (200, 60, 60))
    chat = Chat(model, tok, options=GREEDY.replace(max_new_tokens=MAX_NEW))
    chat("What color is it?", image=image)
    edited = [("What color is it?", "It is red.")]
    response, history = chat("Are you sure?", history=edited)
    assert response == _greedy_without_cache(model, tok, image, "Are you sure?", edited)
    assert history == edited + [("Are you sure?", response)]


def test_streaming_yields_the_response(tiny_vlm):
    model, tok = tiny_vlm
    image = Image.new("RGB", (56, 56), (60, 60, 200))
    opts = SamplingOptions(temperature=0.9, top_p=0.95, top_k=0, max_new_tokens=10, seed=7)
    streamed = Chat(model, tok, options=opts)
    pieces = list(streamed.stream("Describe the image.", image=image))
    called, _ = Chat(model, tok, options=opts)("Describe the image.", image=image)
    assert len(pieces) > 1 and "".join(pieces) == streamed.last_response == called
    assert streamed.history == [("Describe the image.", called)]


def test_new_image_or_clear_starts_over_and_long_context_is_refused(tiny_vlm):
    model, tok = tiny_vlm
    chat = Chat(model, tok, options=GREEDY.replace(max_new_tokens=2))
    chat("Hi?", image=Image.new("RGB", (56, 56), (1, 2, 3)))
    chat("Again?")
    assert len(chat.history) == 2
    chat("Hi?", image=Image.new("RGB", (56, 56), (9, 9, 9)))  # another image: a new conversation
    assert len(chat.history) == 1
    chat.clear()
    assert chat.history == [] and chat.image is None
    with pytest.raises(ContextTooLong, match="clear"):
        Chat(model, tok, max_length=40)("What is this?", image=Image.new("RGB", (56, 56)))
