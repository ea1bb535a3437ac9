"""A scriptable fake OpenAI-compatible endpoint on 127.0.0.1 for the client, judge and teacher tests.

Each POST to /v1/chat/completions is answered by the next scripted action (or by `responder(body)`
once the script is used up): a good reply, a bad reply, an HTTP error (429 with Retry-After), a hang,
a trickle of one byte per interval, a body cut short, a connection reset, a malformed body, or a slow
reply. The server records every request and the most requests it ever had in flight at once.
"""
from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional


@dataclass
class Action:
    """What the fake does with one request (build with the functions below)."""
    kind: str  # reply | status | trickle | cut | reset | malformed (a hang is a delayed reply)
    text: str = ""
    status: int = 200
    delay: float = 0.0  # seconds before answering (slow reply, hang)
    interval: float = 1.0  # trickle: seconds between bytes
    headers: dict = field(default_factory=dict)
    usage: tuple = (10, 20)  # (prompt_tokens, completion_tokens)


def reply(text: str, delay: float = 0.0, usage=(10, 20)) -> Action:
    """A well-formed chat completion whose message content is `text` (after `delay` seconds)."""
    return Action("reply", text=text, delay=delay, usage=usage)


def status(code: int, retry_after: Optional[float] = None) -> Action:
    """An HTTP error with an OpenAI-style error body (Retry-After header when given)."""
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Action("status", status=code, headers=headers)


def hang(seconds: float) -> Action:
    """No answer at all for `seconds`, then a good reply (a client with a shorter deadline gives up)."""
    return Action("reply", text="late", delay=seconds)


def trickle(interval: float = 1.0, text: str = "trickled") -> Action:
    """A good reply sent one byte per `interval` seconds (each socket read succeeds; the whole is slow)."""
    return Action("trickle", text=text, interval=interval)


def cut() -> Action:
    """Headers promise a body longer than what is sent before the connection closes (IncompleteRead)."""
    return Action("cut")


def reset() -> Action:
    """The connection is reset (TCP RST) before any byte of the reply."""
    return Action("reset")


def malformed() -> Action:
    """HTTP 200 with a body that is not JSON."""
    return Action("malformed")


def completion_body(text: str, model: str = "fake", usage=(10, 20)) -> bytes:
    """The JSON of a chat.completion object holding one assistant message."""
    return json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do

    def setup(self):
        super().setup()
        # headers and body go out as two writes: without this, Nagle + the client's delayed ACK add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        fake: FakeOpenAI = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        action = fake._enter(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        try:
            self._answer(action, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (deadline): expected in the fault tests
        finally:
            fake._leave()

    def _answer(self, action: Action, body: dict) -> None:
        if action.delay and not self._wait_while_connected(action.delay):
            return  # the client gave up and closed the connection: this request is no longer in flight
        if action.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # linger 0: the close sends RST
            self.close_connection = True
        elif action.kind == "status":
            payload = json.dumps({"error": {"message": f"fake error {action.status}", "type": "fake"}}).encode()
            self._head(action.status, len(payload), action.headers)
            self.wfile.write(payload)
        elif action.kind == "malformed":
            payload = b'{"choices": [ this is not json'
            self._head(200, len(payload))
            self.wfile.write(payload)
        elif action.kind == "cut":
            payload = completion_body("cut short")
            self._head(200, len(payload))
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif action.kind == "trickle":
            payload = completion_body(action.text, body.get("model", "fake"))
            self._head(200, len(payload))
            for i in range(len(payload)):
                self.wfile.write(payload[i:i + 1])
                self.wfile.flush()
                time.sleep(action.interval)
        else:
            payload = completion_body(action.text, body.get("model", "fake"), action.usage)
            self._head(200, len(payload))
            self.wfile.write(payload)

    def _wait_while_connected(self, seconds: float) -> bool:
        """Sleep `seconds`, watching the socket; False as soon as the client closes its end."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # a client waiting for its reply sends nothing: readable means closed
            readable, _, _ = select.select([self.connection], [], [], max(0.0, end - time.monotonic()))
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                self.close_connection = True
                return False
            if readable:
                time.sleep(min(0.01, max(0.0, end - time.monotonic())))  # pipelined bytes: just wait
        return True

    def _head(self, code: int, length: int, headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def log_message(self, *args):
        pass


class FakeOpenAI:
    """The fake endpoint: `with FakeOpenAI() as fake:` serves on a free loopback port (`fake.base_url`).

    `fake.script` is a list of Actions used first, one per request in arrival order; then
    `fake.responder(body) -> Action` answers (default: a good reply "ok"). `fake.requests` holds
    (path, headers with lower-case names, body) per request; `fake.max_in_flight` the most requests
    open at once (a request whose client closed the connection during a delay stops counting).
    """

    def __init__(self, responder: Optional[Callable[[dict], Action]] = None):
        self.script: List[Action] = []
        self.responder = responder or (lambda body: reply("ok"))
        self.requests: List[tuple] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def _enter(self, path: str, headers: dict, body: dict) -> Action:
        with self._lock:
            self.requests.append((path, headers, body))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            action = self.script.pop(0) if self.script else None
        return action if action is not None else self.responder(body)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def prompt_text(body: dict) -> str:
    """The text parts of a request's last user message (what the fake's responders read)."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def serve_forever(latency: float = 0.0, text: str = "ok") -> None:  # pragma: no cover - manual use
    """Run a fake that answers `text` after `latency` seconds until interrupted (prints its URL)."""
    with FakeOpenAI(lambda body: reply(text, delay=latency)) as fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()
