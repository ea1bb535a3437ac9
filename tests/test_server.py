"""inference.server over real HTTP: uvicorn on a free loopback port, the official `openai` SDK as the
client, a random cogvlm-tiny as the model (fixture `tiny_server`). Answers are checked against the
library run directly on the same model (greedy chat, staged search), so the server is shown to add
nothing and lose nothing."""
import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image

from inference.chat import Chat
from inference.options import REFERENCE_SAMPLING, SamplingOptions, SearchOptions
from inference.prompt import build_prompt
from inference.search import StagedSearch


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url, api_key="unused", max_retries=0, timeout=120)


def ask(client, content, **kw):
    return client.chat.completions.create(model="cogvlm-tiny", messages=[{"role": "user", "content": content}], **kw)


def greedy(srv, question, image=None, max_tokens=8):
    """The library's greedy answer (chat with a KV cache, batch 1) to compare the server with."""
    chat = Chat(srv.model, srv.tokenizer, template=srv.template, options=SamplingOptions(max_new_tokens=max_tokens))
    return chat(question, image=image)[0]


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "PNG")
    return buf.getvalue()


_RED = _png((220, 30, 30))


def test_models_and_a_plain_reply_equal_to_the_library(tiny_server, client):
    assert [m.id for m in client.models.list().data] == ["cogvlm-tiny"]
    r = ask(client, "What is this?", max_tokens=8, temperature=0)
    assert r.choices[0].message.content.strip() == greedy(tiny_server, "What is this?")
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.role == "assistant"
    prompt = build_prompt(tiny_server.tokenizer, "What is this?", image_length=tiny_server.model.args.image_length,
                          template=tiny_server.template, image=False)
    assert r.usage.prompt_tokens == len(prompt)
    assert 1 <= r.usage.completion_tokens <= 8 and r.usage.total_tokens == len(prompt) + r.usage.completion_tokens


def test_a_conversation_with_a_system_message_equals_chat_with_that_history(tiny_server, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a shape."},
                {"role": "assistant", "content": "A circle."}, {"role": "user", "content": [
                    {"type": "text", "text": "And a colour?"}]}]
    r = client.chat.completions.create(model="cogvlm-tiny", messages=messages, max_tokens=8, temperature=0)
    chat = Chat(tiny_server.model, tiny_server.tokenizer, template=tiny_server.template,
                options=SamplingOptions(max_new_tokens=8))
    expected, _ = chat("And a colour?", history=[("Be brief.\nName a shape.", "A circle.")])
    assert r.choices[0].message.content.strip() == expected
    assert r.usage.prompt_tokens > ask(client, "And a colour?", max_tokens=1).usage.prompt_tokens  # the history


def test_image_reply_from_a_data_url_and_from_the_image_root(tiny_server, client):
    url = "data:image/png;base64," + base64.b64encode(_RED).decode()
    def parts(u):
        return [{"type": "image_url", "image_url": {"url": u}}, {"type": "text", "text": "Colour?"}]
    from_data = ask(client, parts(url), max_tokens=8, temperature=0)
    expected = greedy(tiny_server, "Colour?", image=Image.open(io.BytesIO(_RED)))
    assert from_data.choices[0].message.content.strip() == expected
    assert from_data.usage.prompt_tokens > tiny_server.model.args.image_length  # the image span is in the prompt
    from_file = ask(client, parts("red.png"), max_tokens=8, temperature=0)
    assert from_file.choices[0].message.content == from_data.choices[0].message.content
    text_only = ask(client, "Colour?", max_tokens=8, temperature=0)
    assert text_only.choices[0].message.content != from_data.choices[0].message.content
    for bad in ("../red.png", "/etc/hostname", "https://example.com/a.png", "data:image/png;base64,AAAA"):
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, parts(bad), max_tokens=4)
        assert e.value.body["param"] == "messages[0].content[0].image_url.url", bad


def test_streaming_sends_the_same_text_in_openai_chunks(tiny_server, client):
    whole = ask(client, "Tell me more", max_tokens=10, temperature=0).choices[0].message.content
    chunks = list(ask(client, "Tell me more", max_tokens=10, temperature=0, stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"] or finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    with httpx.stream("POST", f"{tiny_server.url}/chat/completions", json={
            "model": "cogvlm-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "stream": True}) as raw:  # the wire format: SSE data lines ending with [DONE]
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_n_choices_seeds_and_stop(tiny_server, client):
    kw = dict(max_tokens=8, temperature=1.0, n=2)
    first = ask(client, "Count", seed=7, **kw)
    assert [c.index for c in first.choices] == [0, 1]
    texts = [c.message.content for c in first.choices]
    assert texts[0] != texts[1]  # each choice has its own random stream
    assert [c.message.content for c in ask(client, "Count", seed=7, **kw).choices] == texts  # reproducible
    assert [c.message.content for c in ask(client, "Count", seed=8, **kw).choices] != texts
    assert 2 <= first.usage.completion_tokens <= 16
    whole = ask(client, "Count", max_tokens=8, temperature=0).choices[0].message.content
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    cut = ask(client, "Count", max_tokens=8, temperature=0, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == whole[:whole.index(stop)]


def test_staged_search_extension_equals_the_library_search(tiny_server, client):
    r = ask(client, "How many circles?", max_tokens=64, seed=5,
            extra_body={"stage_search": {"n": 2, "mode": "stage", "judge": "logprob", "max_step_tokens": 4}})
    options = SearchOptions(mode="stage", n=2, sampling=REFERENCE_SAMPLING, max_step_tokens=4, max_new_tokens=64,
                            seed=5)
    expected = StagedSearch(tiny_server.model, tiny_server.tokenizer, judge="logprob", options=options,
                            template=tiny_server.template)(None, "How many circles?")
    assert r.choices[0].message.content == expected.text
    steps = r.stage_search["steps"]  # the extra field, kept by the SDK
    assert [s["name"] for s in steps] == ["SUMMARY", "CAPTION", "REASONING", "CONCLUSION"]
    assert [s["winner"] for s in steps] == [s.winner for s in expected.steps]
    assert all(len(s["candidates"]) == 2 and len(s["judgments"]) == 1 for s in steps)
    assert "".join(s["text"] for s in steps).strip() == r.choices[0].message.content
    chunks = list(ask(client, "How many circles?", max_tokens=64, seed=5, stream=True, extra_body={
        "stage_search": {"n": 2, "mode": "stage", "judge": "logprob", "max_step_tokens": 4}}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == expected.text and len(deltas) > 1  # each step's text as it is chosen
    assert [s["winner"] for s in chunks[-1].stage_search["steps"]] == [s.winner for s in expected.steps]


@pytest.mark.parametrize("body, param", [
    ({"model": "cogvlm-tiny"}, "messages"),
    ({"model": "cogvlm-tiny", "messages": []}, "messages"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "hi"}], "best_of": 3}, "best_of"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1},
     "presence_penalty"),
    ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "word " * 1200}]}, "messages"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "hi"}],
      "stage_search": {"mode": "beam"}}, "stage_search.mode"),
    ({"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "hi"}],
      "stage_search": {"judge": "api"}}, "stage_search.judge"),
])
def test_bad_requests_get_400_with_an_openai_error(tiny_server, body, param):
    r = httpx.post(f"{tiny_server.url}/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_the_sdk_sees_a_400_and_the_server_keeps_serving(tiny_server, client):
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "hi", temperature=-1)
    assert "temperature" in str(e.value)
    r = httpx.post(f"{tiny_server.url}/chat/completions", content=b"{not json", timeout=60)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    assert ask(client, "still there?", max_tokens=2).choices[0].message.content is not None


def test_eight_concurrent_requests_are_answered_in_one_batch(tiny_server, client):
    questions = [f"Question {k}: " + "what " * k for k in range(8)]  # different lengths: left padding
    expected = [greedy(tiny_server, q) for q in questions]
    before = tiny_server.worker.stats()
    with ThreadPoolExecutor(8) as pool:
        with tiny_server.worker.paused():  # all 8 are queued before the model thread takes a batch
            futures = [pool.submit(ask, client, q, max_tokens=8, temperature=0) for q in questions]
            deadline = time.monotonic() + 60
            while tiny_server.worker.queued() < 8 and time.monotonic() < deadline:
                time.sleep(0.01)
        answers = [f.result().choices[0].message.content.strip() for f in futures]
    assert answers == expected  # batched answers equal one-at-a-time ones
    stats = httpx.get(f"{tiny_server.url}/stats").json()
    assert stats["admitted_rows"]["8"] == before["admitted_rows"].get("8", 0) + 1  # all 8 joined at once
    assert stats["batch_rows"]["8"] > before["batch_rows"].get("8", 0)  # and were decoded together
    assert stats["errors"] == 0 and stats["served"] == before["served"] + 8


def test_a_failing_request_fails_alone_and_the_server_goes_on(tiny_server, client, monkeypatch):
    from inference.batch_generate import BatchDecoder
    real_add = BatchDecoder.add

    def add_failing_on_seven(self, requests, *args, **kw):  # a fault tied to one request (max_tokens=7)
        if any(r.max_new_tokens == 7 for r in requests):
            raise RuntimeError("injected fault")
        return real_add(self, requests, *args, **kw)

    monkeypatch.setattr(BatchDecoder, "add", add_failing_on_seven)
    errors = tiny_server.worker.stats()["errors"]
    with ThreadPoolExecutor(2) as pool:
        with tiny_server.worker.paused():  # both are admitted together, so the fault hits the good one too
            good = pool.submit(ask, client, "fine", max_tokens=8, temperature=0)
            bad = pool.submit(ask, client, "fails", max_tokens=7, temperature=0)
            deadline = time.monotonic() + 60
            while tiny_server.worker.queued() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        assert good.result().choices[0].message.content.strip() == greedy(tiny_server, "fine")  # retried alone
        with pytest.raises(openai.InternalServerError) as e:
            bad.result()
    assert e.value.status_code == 500 and e.value.body["type"] == "server_error"
    assert tiny_server.worker.stats()["errors"] == errors + 1
    monkeypatch.undo()
    assert ask(client, "after", max_tokens=3).choices[0].finish_reason in ("stop", "length")


def test_a_stream_whose_client_goes_away_leaves_the_batch(tiny_server):
    before = tiny_server.worker.stats()["cancelled_rows"]
    body = {"model": "cogvlm-tiny", "messages": [{"role": "user", "content": "Tell me more"}], "max_tokens": 900,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{tiny_server.url}/chat/completions", json=body, timeout=60) as raw:
        lines = raw.iter_lines()
        assert next(lines).startswith("data: ")  # the stream started; now hang up
    deadline = time.monotonic() + 30
    while tiny_server.worker.stats()["cancelled_rows"] == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tiny_server.worker.stats()["cancelled_rows"] == before + 1  # dropped, not decoded to 900 tokens
