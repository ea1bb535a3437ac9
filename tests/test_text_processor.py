"""TextProcessor: the official single-image layout, multi-turn labels, multi-image spans, truncation."""
import random
import re

import pytest

from dataset import IGNORE_INDEX, SampleTooLong, TextProcessor, Turn

L = 3  # image tokens per image in these tests


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def as_lists(out):
    return {k: v.tolist() for k, v in out.items() if hasattr(v, "tolist") and getattr(v, "dim", lambda: 0)() == 1}


def test_single_turn_layout_built_by_hand(tiny_tokenizer):
    tp = TextProcessor(tiny_tokenizer, max_length=200, image_length=L, template="chat_old")
    out = tp("two circles", "How many shapes?")
    q, a = enc(tiny_tokenizer, "Question: How many shapes? Answer:"), enc(tiny_tokenizer, "two circles")
    ctx = 1 + (L + 2) + len(q)
    n = ctx + len(a) + 1
    assert out["input_ids"].tolist() == [1] + [0] * (L + 2) + q + a + [2]
    assert out["labels"].tolist() == [-100] * ctx + a + [2]
    # BOS 0, BOI 1, all image tokens 2, EOI 3, then one position per token.
    assert out["position_ids"].tolist() == [0, 1] + [2] * L + list(range(3, n - L + 1))
    assert out["image_embed_mask"].tolist() == [0] + [1] * (L + 2) + [0] * (n - L - 3)
    assert out["vision_expert_mask"].tolist() == [0] + [1] * (L + 1) + [0] * (n - L - 2)
    assert out["image_rope_mask"].tolist() == [0, 0] + [1] * L + [0] * (n - L - 2)
    assert out["segment_ids"].tolist() == [1] * n
    assert out["context_length"] == ctx and out["num_images"] == 1 and out["truncated"] == 0


def official_oracle(tok, template, image_length, answer, query):
    """The official llama2_text_processor restated for the test (unpadded, no truncation needed):
    build the templated prompt string with an <EOI> where the image goes, encode the pieces around it,
    put a one-token placeholder for the image, expand it to BOI + L image tokens + EOI, derive masks
    from the EOI index, and count a new position at every token except inside a run of image tokens."""
    query = re.sub("<pad>|<s>|</s>|<EOI>", "", query)
    prompt = {"base": "<EOI>" + query, "chat": "<EOI> [INST] " + query + " [/INST] ",
              "vqa": "<EOI>Question: " + query + " Short answer:",
              "chat_old": "<EOI>Question: " + query + " Answer:"}[template]
    before, after = prompt.split("<EOI>")
    ids = [tok.bos_token_id] + enc(tok, before)
    eoi = len(ids) + image_length + 1
    ids += [0] * (image_length + 2) + enc(tok, after)
    context = len(ids)
    ids += enc(tok, answer) + [tok.eos_token_id]
    n = len(ids)
    embed = [1 if eoi - image_length - 1 <= i <= eoi else 0 for i in range(n)]
    expert = [1 if eoi - image_length - 1 <= i < eoi else 0 for i in range(n)]
    rope = [1 if eoi - image_length <= i < eoi else 0 for i in range(n)]
    labels = [-100] * context + ids[context:]
    pos, pid = [], -1
    for i in range(n):
        if rope[i] == 0 or rope[i - 1] == 0:
            pid += 1
        pos.append(pid)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "image_embed_mask": embed,
            "vision_expert_mask": expert, "image_rope_mask": rope}, context


@pytest.mark.parametrize("template", ["chat_old", "chat", "vqa", "base"])
def test_matches_official_algorithm(tiny_tokenizer, template):
    rng = random.Random(template)
    words = "How many red circles are there ? The answer is 3 , left of blue [INST] <s> Question:".split()
    for image_length in (1, 4, 64):
        tp = TextProcessor(tiny_tokenizer, max_length=1000, image_length=image_length, template=template)
        for _ in range(15):
            query = " ".join(rng.choices(words, k=rng.randint(0, 10))) + rng.choice(["", " "])
            answer = " ".join(rng.choices(words, k=rng.randint(0, 10)))
            expected, context = official_oracle(tiny_tokenizer, template, image_length, answer, query)
            out = tp(answer, query)
            got = as_lists(out)
            got.pop("segment_ids")
            assert got == expected, (template, query, answer)
            assert out["context_length"] == context


def test_image_marker_in_query_gives_official_layout(tiny_tokenizer):
    tp = TextProcessor(tiny_tokenizer, max_length=200, image_length=L)
    plain = as_lists(tp("yes", "Is it red?"))
    for query in ("<image>\nIs it red?", "Is it red?\n<image>", "<image>Is it red?"):
        assert as_lists(tp.encode_turns([Turn("user", query), Turn("assistant", "yes")])) == plain


def two_turns(tp):
    return tp.encode_turns([Turn("user", "<image>\nHow many circles?"), Turn("assistant", "two circles"),
                            Turn("user", "Which colour?"), Turn("assistant", "red")])


def test_multi_turn_loss_on_every_assistant_turn(tiny_tokenizer):
    tok = tiny_tokenizer
    out = two_turns(TextProcessor(tok, max_length=200, image_length=L, template="chat_old"))
    q1, a1 = enc(tok, "Question: How many circles? Answer:"), enc(tok, "two circles")
    q2, a2 = enc(tok, "\nQuestion: Which colour? Answer:"), enc(tok, "red")
    head = [1] + [0] * (L + 2)
    assert out["input_ids"].tolist() == head + q1 + a1 + q2 + a2 + [2]
    ign = lambda ids: [IGNORE_INDEX] * len(ids)
    assert out["labels"].tolist() == ign(head) + ign(q1) + a1 + ign(q2) + a2 + [2]
    assert out["context_length"] == len(head + q1 + a1 + q2)


def test_multi_turn_loss_on_last_turn_only(tiny_tokenizer):
    tok = tiny_tokenizer
    all_turns = two_turns(TextProcessor(tok, max_length=200, image_length=L, loss_on="all"))
    last = two_turns(TextProcessor(tok, max_length=200, image_length=L, loss_on="last"))
    assert last["input_ids"].tolist() == all_turns["input_ids"].tolist()
    trained = [t for t in last["labels"].tolist() if t != IGNORE_INDEX]
    assert trained == enc(tok, "red") + [2]
    assert tok.decode([t for t in all_turns["labels"].tolist() if t != IGNORE_INDEX]) == "two circles red"


def test_several_images_one_span_each(tiny_tokenizer):
    tp = TextProcessor(tiny_tokenizer, max_length=200, image_length=L)
    out = tp.encode_turns([Turn("user", "<image>\nleft or <image> right?"), Turn("assistant", "left")])
    ids, pos = out["input_ids"].tolist(), out["position_ids"].tolist()
    embed, expert, rope = (out[k].tolist() for k in ("image_embed_mask", "vision_expert_mask", "image_rope_mask"))
    assert out["num_images"] == 2
    assert sum(embed) == 2 * (L + 2) and sum(expert) == 2 * (L + 1) and sum(rope) == 2 * L
    boi2 = 1 + (L + 2) + len(enc(tiny_tokenizer, "Question: left or "))
    assert embed[1:L + 3] == [1] * (L + 2) and embed[boi2:boi2 + L + 2] == [1] * (L + 2)
    for boi in (1, boi2):  # BOI, shared image position, EOI: three consecutive positions
        assert expert[boi:boi + L + 2] == [1] * (L + 1) + [0]
        assert rope[boi:boi + L + 2] == [0] + [1] * L + [0]
        assert pos[boi:boi + L + 2] == [pos[boi]] + [pos[boi] + 1] * L + [pos[boi] + 2]
        assert ids[boi:boi + L + 2] == [0] * (L + 2)
    assert pos[-1] == len(ids) - 1 - 2 * (L - 1)  # each span saves L-1 positions
    assert all(out["labels"][i] == IGNORE_INDEX for i in range(len(ids)) if embed[i])


def test_truncation_cuts_the_answer_and_trains_no_false_eos(tiny_tokenizer):
    """A cut sample is the first max_length tokens of the full one, labels unchanged: no EOS is put at
    the cut (the official processor appends one there, teaching the model to stop mid-answer)."""
    full = TextProcessor(tiny_tokenizer, max_length=None, image_length=L)("one two three four five six", "Count?")
    n = len(full["input_ids"])
    out = TextProcessor(tiny_tokenizer, max_length=n - 3, image_length=L)("one two three four five six", "Count?")
    assert len(out["input_ids"]) == n - 3 and out["truncated"] == 3
    for key in ("input_ids", "labels", "position_ids", "image_embed_mask", "vision_expert_mask", "image_rope_mask"):
        assert out[key].tolist() == full[key].tolist()[:n - 3], key
    assert tiny_tokenizer.eos_token_id not in out["input_ids"].tolist()
    assert tiny_tokenizer.eos_token_id not in out["labels"].tolist()
    assert out["context_length"] == full["context_length"]
    # Cutting only the final EOS keeps the whole answer and still trains no EOS.
    just = TextProcessor(tiny_tokenizer, max_length=n - 1, image_length=L)("one two three four five six", "Count?")
    assert just["input_ids"].tolist() == full["input_ids"].tolist()[:-1] and just["truncated"] == 1


def test_truncation_keeps_every_image_span_whole(tiny_tokenizer):
    turns = [Turn("user", "<image>\nleft or <image> right?"), Turn("assistant", "left of the two")]
    full = TextProcessor(tiny_tokenizer, max_length=None, image_length=L).encode(turns)
    eoi2 = full.image_spans[1][1]
    for max_length in range(full.image_spans[1][0], eoi2 + 1):  # the cut would fall inside the second span
        with pytest.raises(SampleTooLong, match="image span"):
            TextProcessor(tiny_tokenizer, max_length=max_length, image_length=L).encode(turns)
    # Room for the second span and two more tokens (the first answer token is trained): both spans whole.
    cut = TextProcessor(tiny_tokenizer, max_length=len(full) - 2, image_length=L).encode(turns)
    assert cut.image_spans == full.image_spans and sum(cut.image_embed_mask) == 2 * (L + 2)
    assert cut.input_ids == full.input_ids[:len(full) - 2]


def test_truncation_drop_skips_what_does_not_fit(tiny_tokenizer):
    from dataset import SampleDropped
    short, long_ = ("yes", "Is it?"), ("one two three four five six", "Count?")
    n = len(TextProcessor(tiny_tokenizer, max_length=None, image_length=L)(*long_)["input_ids"])
    drop = TextProcessor(tiny_tokenizer, max_length=n - 1, image_length=L, truncation="drop")
    cut = TextProcessor(tiny_tokenizer, max_length=n - 1, image_length=L, truncation="cut")
    with pytest.raises(SampleDropped, match=f"needs {n} tokens > max_length {n - 1}"):
        drop(*long_)
    assert as_lists(drop(*short)) == as_lists(cut(*short))  # what fits is untouched
    assert as_lists(TextProcessor(tiny_tokenizer, max_length=n, image_length=L, truncation="drop")(*long_)) == \
        as_lists(TextProcessor(tiny_tokenizer, max_length=None, image_length=L)(*long_))
    with pytest.raises(ValueError, match="truncation"):
        TextProcessor(tiny_tokenizer, image_length=L, truncation="shorten")


def test_sample_that_cannot_fit_raises(tiny_tokenizer):
    tp = TextProcessor(tiny_tokenizer, max_length=L + 2, image_length=L)  # BOS + span already = L + 3
    with pytest.raises(SampleTooLong, match="image span"):
        tp("yes", "Is it?")
    # The image fits but the prompt fills max_length: no trained token would remain.
    n_ctx = TextProcessor(tiny_tokenizer, max_length=None, image_length=L)("yes", "Is it red or blue?")["context_length"]
    with pytest.raises(SampleTooLong, match="no trained token"):
        TextProcessor(tiny_tokenizer, max_length=n_ctx, image_length=L)("yes", "Is it red or blue?")


def test_system_turn_is_context_and_bad_arguments(tiny_tokenizer):
    tp = TextProcessor(tiny_tokenizer, max_length=200, image_length=L)
    with_sys = tp.encode_turns([Turn("system", "Answer briefly."), Turn("user", "<image>\nColour?"),
                                Turn("assistant", "red")])
    plain = tp.encode_turns([Turn("user", "<image>\nColour?"), Turn("assistant", "red")])
    extra = len(enc(tiny_tokenizer, "Answer briefly."))
    assert len(with_sys["input_ids"]) == len(plain["input_ids"]) + extra
    assert with_sys["input_ids"][1:L + 3].tolist() == [0] * (L + 2)  # the image stays right after BOS
    assert with_sys["labels"].tolist()[-3:] == plain["labels"].tolist()[-3:]
    with pytest.raises(ValueError, match="image_length"):
        TextProcessor(tiny_tokenizer, max_length=10)
    with pytest.raises(ValueError, match="template"):
        TextProcessor(tiny_tokenizer, image_length=L, template="llava")


def test_written_out_eoi_prompt_is_accepted_like_the_official(tiny_tokenizer):
    """A prompt that already holds <EOI> is used as written (how the official code passes history)."""
    tp = TextProcessor(tiny_tokenizer, max_length=200, image_length=L)
    assert as_lists(tp("yes", "<EOI>Question: Is it red? Answer:")) == as_lists(tp("yes", "Is it red?"))
    two = tp("yes", "<EOI>Question: left <EOI> right? Answer:")
    assert two["num_images"] == 2 and sum(two["image_rope_mask"].tolist()) == 2 * L
