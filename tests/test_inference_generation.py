"""inference.prompt / inference.generation: prompt layout, per-row sampling streams, rows over a shared
prefix that stop at their own end tag, commit of a winner, batched (left-padded) greedy decoding."""
import pytest
import torch
from PIL import Image

from inference.generation import (ForwardCounter, Prefix, RowCache, StopCriteria, commit, generate_batch,
                                  GREEDY_ROW, generate_one, generate_ragged, make_generator, ready, run_prompt, sample_next,
                                  sample_rows)
from inference.image import Pixels
from inference.options import GREEDY, SamplingOptions
from inference.prompt import build_prompt, common_prefix_length
from models.kv_cache import KVCache, SharedPrefixKVCache

pytestmark = pytest.mark.usefixtures("one_thread")
L = 64  # cogvlm-tiny image tokens
SAMPLING = SamplingOptions(temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=8)


def _image(color=(200, 40, 40)):
    return Image.new("RGB", (56, 56), color)


def _embeds(model, *images):
    with torch.no_grad():
        return model.encode_images(Pixels(56, dtype=torch.float64)(list(images)))


def test_single_turn_prompt_is_the_official_inference_layout(tiny_vlm):
    """Token for token what the official llama2_text_processor_inference builds for "<EOI>Question: q Answer:"."""
    _, tok = tiny_vlm
    q = "How many red circles are there?"
    p = build_prompt(tok, "<image>\n" + q, image_length=L, template="chat_old")
    ids = [tok.bos_token_id] + [0] * (L + 1) + [0] + tok.encode(f"Question: {q} Answer:", add_special_tokens=False)
    rope = [0, 0] + [1] * L + [0] * (len(ids) - L - 2)  # image_rope_mask: the L image tokens
    pos, pid = [], -1
    for i in range(len(ids)):  # the official position rule
        if rope[i] == 0 or (i > 0 and rope[i] != rope[i - 1]):
            pid += 1
        pos.append(pid)
    assert list(p.input_ids) == ids and list(p.position_ids) == pos
    assert list(p.image_embed_mask) == [0] + [1] * (L + 2) + [0] * (len(ids) - L - 3)
    assert list(p.vision_expert_mask) == [0] + [1] * (L + 1) + [0] * (len(ids) - L - 2)
    assert p.image_end == L + 3 and p.next_position == pos[-1] + 1


def test_later_turn_prompt_continues_the_earlier_one(tiny_vlm):
    _, tok = tiny_vlm
    first = build_prompt(tok, "What color?", image_length=L)
    second = build_prompt(tok, "And the shape?", [("What color?", "It is red.")], image_length=L)
    tail = tok.encode("It is red.", add_special_tokens=False) + tok.encode("\nQuestion: And the shape? Answer:",
                                                                          add_special_tokens=False)
    assert second.input_ids == first.input_ids + tuple(tail)
    text_only = build_prompt(tok, "Hi", image_length=L, image=False)
    assert text_only.input_ids[0] == tok.bos_token_id and text_only.image_end == 0 and not any(text_only.image_embed_mask)


def test_each_row_samples_from_its_own_generator():
    logits = torch.randn(3, 50, dtype=torch.float64)
    opts = SamplingOptions(temperature=0.7, top_p=0.9, top_k=20)
    batch = sample_next(logits, opts, [make_generator(s) for s in (1, 2, 3)])
    alone = [int(sample_next(logits[i:i + 1], opts, [make_generator(s)])[0]) for i, s in enumerate((1, 2, 3))]
    assert batch.tolist() == alone
    top = logits.topk(20, dim=-1).indices
    assert all(int(t) in top[i].tolist() for i, t in enumerate(batch))  # top-k respected
    assert sample_next(logits, GREEDY, [None] * 3).tolist() == logits.argmax(-1).tolist()


def test_a_greedy_row_takes_the_argmax_and_leaves_the_other_rows_streams_alone():
    logits = torch.randn(3, 50, dtype=torch.float64)
    opts = SamplingOptions(temperature=1.5, top_p=0.95)
    mixed = sample_next(logits, opts, [make_generator(1), GREEDY_ROW, make_generator(3)])
    sampled = sample_next(logits, opts, [make_generator(1), make_generator(2), make_generator(3)])
    assert int(mixed[1]) == int(logits[1].argmax())
    assert (int(mixed[0]), int(mixed[2])) == (int(sampled[0]), int(sampled[2]))
    assert sample_next(logits, opts, [GREEDY_ROW] * 3).tolist() == logits.argmax(-1).tolist()


def _stop_length(tok, tokens, strings):
    for k in range(1, len(tokens) + 1):
        if any(s in tok.decode(tokens[:k]) for s in strings):
            return k
    return None


def test_rows_over_a_shared_prefix_stop_at_their_own_end_tag_and_commit(tiny_vlm):
    model, tok = tiny_vlm
    prompt = build_prompt(tok, "What color is the shape?", image_length=L)
    prefix = run_prompt(model, prompt, image_embeds=_embeds(model, _image()))
    seeds = (11, 12, 13)
    free = sample_rows(model, prefix, [make_generator(s) for s in seeds], options=SAMPLING,
                       stop=StopCriteria(), tokenizer=tok, max_new_tokens=6)
    # a stop string per row, completed after 2, 4 and 6 of its tokens: the rows must stop at different steps
    strings = tuple(tok.decode(r.tokens[:k]) for r, k in zip(free, (2, 4, 6)))
    expected = [_stop_length(tok, r.tokens, strings) for r in free]
    assert len(set(expected)) > 1
    stop = StopCriteria(strings=strings)
    with ForwardCounter(model) as count:
        rows = sample_rows(model, prefix, [make_generator(s) for s in seeds], options=SAMPLING, stop=stop,
                           tokenizer=tok, max_new_tokens=6)
    for r, f, k in zip(rows, free, expected):
        assert r.tokens == f.tokens[:k] and r.finish == "stop" and r.fed == k - 1
        assert any(s in r.text for s in strings)
    # finished rows left the batch: one position per still-running row per step, never the stopping token
    assert count.lm_tokens == sum(k - 1 for k in expected)
    # batching changes nothing: each row equals its own one-row run with a dense cache
    for r, s in zip(rows, seeds):
        one = generate_one(model, prefix, make_generator(s), options=SAMPLING, stop=stop, tokenizer=tok,
                           max_new_tokens=6)
        assert one.tokens == r.tokens and torch.allclose(torch.tensor(one.logprobs), torch.tensor(r.logprobs))
    # the committed winner continues exactly like the prompt + its tokens recomputed from scratch
    winner = max(rows, key=lambda r: len(r.tokens))
    kept = ready(model, commit(prefix, winner))
    again = run_prompt(model, prompt.extended(winner.tokens), image_embeds=_embeds(model, _image()))
    assert kept.ids == list(again.ids) and kept.next_position == again.next_position
    assert torch.allclose(kept.logits, again.logits, atol=1e-10)
    assert prefix.cache.seq_len == len(prompt)  # the shared prefix was never written to


def test_shared_prefix_cache_keeps_float64(tiny_vlm, image_batch):
    """Shared-prefix decoding equals dense decoding to float64 precision (models/kv_cache.py fix: the split
    softmax ran in float32 even for a float64 model), for the parent class and RowCache's decode step."""
    model, _ = tiny_vlm
    inputs = {k: (v.double() if k == "vision_image" else v) for k, v in image_batch([[5, 6, 7]]).items()}
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        prefix = KVCache()
        model(**dict(inputs, attention_mask=None), kv_cache=prefix)
        tokens = torch.tensor([[9], [10]])
        pos = torch.full((2, 1), n)
        dense = model(input_ids=tokens, position_ids=pos, kv_cache=prefix.expand(2))[0]
        for cache in (SharedPrefixKVCache(prefix, 2), RowCache(prefix, 2)):  # RowCache: its own decode step
            shared = model(input_ids=tokens, position_ids=pos, kv_cache=cache)[0]
            shared = torch.cat([shared, model(input_ids=tokens + 1, position_ids=pos + 1, kv_cache=cache)[0]], 1)
            again = prefix.expand(2)
            dense = torch.cat([model(input_ids=tokens, position_ids=pos, kv_cache=again)[0],
                               model(input_ids=tokens + 1, position_ids=pos + 1, kv_cache=again)[0]], 1)
            assert (shared - dense).abs().max() < 1e-12


def test_batched_greedy_equals_unbatched(tiny_vlm):
    model, tok = tiny_vlm
    questions = ["What color is the shape?", "How many shapes are there in the image?\nOptions: A. 1 B. 2", "Which?"]
    images = [_image((200, 40, 40)), _image((40, 200, 40)), _image((40, 40, 200))]
    prompts = [build_prompt(tok, q, image_length=L) for q in questions]
    assert len({len(p) for p in prompts}) == 3  # left padding is exercised
    stop = StopCriteria(strings=("</CONCLUSION>",))
    with ForwardCounter(model) as count:
        batch = generate_batch(model, prompts, _embeds(model, *images), tokenizer=tok, options=GREEDY, stop=stop,
                               max_new_tokens=5)
    assert count.lm_calls <= 5  # one prefill and one step per new token for all rows together
    for p, img, row in zip(prompts, images, batch):
        alone = generate_batch(model, [p], _embeds(model, img), tokenizer=tok, options=GREEDY, stop=stop,
                               max_new_tokens=5)[0]
        assert alone.tokens == row.tokens and len(row.tokens) > 0


def test_prompts_with_a_common_head_decode_as_one_ragged_batch(tiny_vlm):
    """Judge prompts of one round: a shared (image + head) prefix, rests of different lengths."""
    model, tok = tiny_vlm
    heads = "Now you act as a judge. Question: what is it?"
    prompts = [build_prompt(tok, heads + tail, image_length=L) for tail in
               ("\nResponse 1: a red one\nResponse 2: blue", "\nResponse 1: x\nResponse 2: y", "\nno")]
    assert len({len(p) for p in prompts}) == 3
    full = run_prompt(model, prompts[0], image_embeds=_embeds(model, _image()))
    common = min(common_prefix_length(prompts[0].input_ids, p.input_ids) for p in prompts[1:])
    assert common > L + 3
    head = Prefix(full.cache.truncate(common), list(prompts[0].input_ids[:common]),
                  prompts[0].position_ids[common - 1] + 1, None)
    seeds = (5, 6, 7)
    with ForwardCounter(model) as count:
        rows = generate_ragged(model, head, prompts, [make_generator(s) for s in seeds], options=SAMPLING,
                               stop=StopCriteria(), tokenizer=tok, max_new_tokens=4)
    assert count.lm_calls <= 4 and count.vision_images == 0  # the rests in one call, then one per token
    for p, s, row in zip(prompts, seeds, rows):
        alone = generate_one(model, run_prompt(model, p, image_embeds=_embeds(model, _image())), make_generator(s),
                             options=SAMPLING, stop=StopCriteria(), tokenizer=tok, max_new_tokens=4)
        assert alone.tokens == row.tokens and torch.allclose(torch.tensor(alone.logprobs), torch.tensor(row.logprobs))


def test_packed_row_cache_equals_independent_rows_as_rows_leave(tiny_model, tiny_config, image_batch):
    """N rows decoded over one prefix with PackedRowCache (one row leaving after 2 steps) equal
    N independent dense-cache runs; a finished row's kept keys/values equal its dense cache's."""
    from models.kv_cache import KVCache
    from inference.generation import PackedRowCache
    torch.manual_seed(0)  # fixed inputs: the batched rows differ from single rows only by float rounding
    inputs = image_batch(torch.randint(3, tiny_config.vocab_size, (1, 4)))
    n = inputs["input_ids"].shape[1]
    cont = torch.randint(3, tiny_config.vocab_size, (3, 4))
    with torch.no_grad():
        prefix = KVCache()
        tiny_model(**dict(inputs, attention_mask=None), kv_cache=prefix)
        cache, active, fast = PackedRowCache(prefix, 3, capacity=4), [0, 1, 2], {r: [] for r in range(3)}
        for t in range(4):
            if t == 2:
                kept = cache.row_kv(1, 2)  # row 1 leaves after two tokens
                cache, active = cache.select([0, 2]), [0, 2]
            ids = cont[active, t:t + 1]
            out = tiny_model(input_ids=ids, position_ids=torch.full((len(active), 1), n + t), kv_cache=cache)[0]
            for j, r in enumerate(active):
                fast[r].append(out[j, -1])
        for r in range(3):
            dense = prefix.clone()
            steps = 2 if r == 1 else 4
            ref = [tiny_model(input_ids=cont[r:r + 1, t:t + 1], position_ids=torch.full((1, 1), n + t),
                              kv_cache=dense)[0][0, -1] for t in range(steps)]
            assert torch.allclose(torch.stack(fast[r]), torch.stack(ref), atol=1e-5)
            if r == 1:
                for layer, (k, v) in kept.items():
                    # 1e-5 like the logits: keys computed in a 3-row batch round differently from one row
                    assert torch.allclose(k, dense.keys[layer][:, :, n:n + 2], atol=1e-5)
                    assert torch.allclose(v, dense.values[layer][:, :, n:n + 2], atol=1e-5)
    assert cache.nbytes() < 3 * prefix.nbytes()  # the prefix is held once, not per row
