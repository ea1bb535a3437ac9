"""dataset.api_client against the fake endpoint: replies, every fault of the HTTP stack, Retry-After,
the whole-request deadline, backoff, the circuit breaker, and a key that is never shown."""
import logging
import time

import pytest
from PIL import Image

from dataset.api_client import ApiClient, ApiError, EndpointDown, image_part, retry_after_seconds, text_part
from tests.fake_openai import FakeOpenAI, cut, hang, malformed, reply, reset, status, trickle


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def _client(fake, **kw):
    """A client with fast retries; the 5 s deadline is only reached by the faults (a loaded box is slow)."""
    kw.setdefault("timeout", 5.0)
    kw.setdefault("attempts", 3)
    kw.setdefault("backoff", 0.01)
    return ApiClient(fake.base_url, "teacher-model", **kw)


def test_reply_usage_image_part_and_key(fake, monkeypatch):
    monkeypatch.setenv("COGCOT_TEST_KEY", "sk-secret-123")
    fake.script = [reply("hello there", usage=(7, 3))]
    client = _client(fake, api_key_env="COGCOT_TEST_KEY")
    image = Image.new("RGB", (8, 8), (0, 255, 0))
    out = client.chat([text_part("what?"), image_part(image)], max_tokens=32, temperature=0.2, seed=5)
    assert (out.text, out.prompt_tokens, out.completion_tokens, out.attempts) == ("hello there", 7, 3, 1)
    path, headers, body = fake.requests[0]
    assert path == "/v1/chat/completions" and headers["authorization"] == "Bearer sk-secret-123"
    assert body["model"] == "teacher-model" and body["max_tokens"] == 32 and body["seed"] == 5
    text, img = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "what?"}
    assert img["type"] == "image_url" and img["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.parametrize("fault,shows", [
    (status(500), "HTTP 500"), (status(503), "HTTP 503"), (malformed(), "malformed reply body"),
    (cut(), "RemoteProtocolError"), (reset(), "connection error"),
])
def test_each_fault_is_caught_and_retried(fake, fault, shows):
    fake.script = [fault, reply("recovered")]
    client = _client(fake)
    out = client.chat("q")
    assert out.text == "recovered" and out.attempts == 2 and len(fake.requests) == 2
    fake.script = [fault] * 3
    with pytest.raises(ApiError, match=shows) as e:
        client.chat("q")
    assert "after 3 attempts" in str(e.value) and len(fake.requests) == 5


def test_a_hang_past_the_deadline_is_retried(fake):
    fake.script = [hang(3.0), reply("recovered")]
    client = _client(fake, timeout=1.0)
    start = time.monotonic()
    out = client.chat("q")
    assert out.text == "recovered" and out.attempts == 2 and 1.0 <= time.monotonic() - start < 2.5


def test_deadline_is_for_the_whole_request_not_each_read(fake):
    """A trickle of one byte per 0.1 s never trips a per-read timeout of 0.3 s, but the whole reply
    (~280 bytes, ~28 s) is far past the 0.3 s deadline: the request ends at the deadline."""
    fake.script = [trickle(interval=0.1)]
    client = _client(fake, attempts=1, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(ApiError, match="no complete reply within 0.3 s"):
        client.chat("q")
    assert time.monotonic() - start < 1.0


def test_429_honours_retry_after(fake):
    fake.script = [status(429, retry_after=0.4), reply("after the wait")]
    client = _client(fake, backoff=0.0)
    start = time.monotonic()
    assert client.chat("q").text == "after the wait"
    assert time.monotonic() - start >= 0.4
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_client_errors_are_not_retried(fake):
    fake.script = [status(400), reply("never asked")]
    with pytest.raises(ApiError, match="HTTP 400.*not retried"):
        _client(fake).chat("q")
    assert len(fake.requests) == 1


def test_backoff_grows_with_jitter(fake):
    client = _client(fake, backoff=1.0, max_backoff=5.0)
    waits = [[client._wait(k, None) for k in (1, 2, 3, 4)] for _ in range(50)]
    for k, bound in enumerate((1.0, 2.0, 4.0, 5.0)):
        seen = [w[k] for w in waits]
        assert all(bound * 0.5 <= x <= bound for x in seen) and len(set(seen)) > 1  # jittered, capped
    assert client._wait(1, 3.0) == 3.0 and client._wait(1, 1e6) == client.max_retry_after


def test_breaker_opens_after_failures_in_a_row_and_warns_once(fake, caplog):
    fake.responder = lambda body: status(500)
    client = _client(fake, attempts=2, down_after=2)
    with caplog.at_level(logging.WARNING, logger="dataset.api_client"):
        for _ in range(2):
            with pytest.raises(ApiError):
                client.chat("q")
        assert client.down and len(fake.requests) == 4
        for _ in range(5):
            with pytest.raises(EndpointDown, match="down"):
                client.chat("q")
    assert len(fake.requests) == 4  # nothing more was sent
    assert sum("treated as down" in r.getMessage() for r in caplog.records) == 1


def test_a_success_resets_the_breaker_count(fake):
    fake.script = [status(500), reply("ok"), status(500)]
    client = _client(fake, attempts=1, down_after=2)
    with pytest.raises(ApiError):
        client.chat("q")
    client.chat("q")
    with pytest.raises(ApiError):
        client.chat("q")
    assert not client.down


def test_key_never_appears_in_errors(fake, monkeypatch, caplog):
    monkeypatch.setenv("COGCOT_TEST_KEY", "sk-leak-me")
    client = ApiClient("http://127.0.0.1:9/v1", "m", api_key_env="COGCOT_TEST_KEY", timeout=0.3, attempts=1,
                       down_after=1)  # port 9 (discard): the connection is refused
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ApiError) as e:
            client.chat("q")
        with pytest.raises(EndpointDown) as down:
            client.chat("q")
    shown = str(e.value) + str(down.value) + caplog.text + repr(vars(client).get("down_reason"))
    assert "connection" in str(e.value).lower() and "sk-leak-me" not in shown
