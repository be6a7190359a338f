"""A loopback server that speaks OpenAI's ``/v1/chat/completions``, for the API judge's tests.

Answers come from a function of the request body (so a test can answer each question as it
likes), optionally with first-token ``top_logprobs``. Faults are queued and used one per request,
before any normal answer: an HTTP status (429, 500, ...; a 429 says ``Retry-After: 0``),
``(status, "Retry-After value")`` (that status with that header: seconds or an HTTP date),
``"garbage"`` (200 with a body that is not JSON), ``"no_choices"`` (200 JSON without choices) or
``("slow", seconds)`` (waits, then answers normally). Every request is logged with its body and
Authorization header; ``questions()`` lists the question texts asked, in order.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Fault = int | str | tuple[str, float] | tuple[int, str]


@dataclass(frozen=True)
class Reply:
    text: str
    top_logprobs: list[tuple[str, float]] | None = None  # first answer token's alternatives


@dataclass(frozen=True)
class Logged:
    path: str
    body: dict[str, Any] | None
    authorization: str | None
    status: int


def question_of(body: dict[str, Any]) -> str:
    """The text part of the last user message."""
    content = body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def image_url_of(body: dict[str, Any]) -> str | None:
    content = body["messages"][-1]["content"]
    for part in content if isinstance(content, list) else []:
        if part.get("type") == "image_url":
            return part["image_url"]["url"]
    return None


class FakeOpenAI:
    def __init__(self, answer: Callable[[dict[str, Any]], Reply] | None = None, *, model: str = "fake-vlm-2026-01-01",
                 logprobs: bool = True, reject_logprobs: bool = False):
        self.answer = answer or (lambda body: Reply("Yes"))
        self.model = model
        self.logprobs = logprobs  # send logprobs when asked
        self.reject_logprobs = reject_logprobs  # answer 400 to requests that ask for logprobs
        self.faults: list[Fault] = []
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.log)

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # ends slow answers early
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def questions(self, status: int | None = None) -> list[str]:
        """The question text of every logged request (only those answered ``status`` if given)."""
        with self._lock:
            return [question_of(e.body) for e in self.log if e.body is not None and (status is None or e.status == status)]

    def next_fault(self) -> Fault | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.answer(body)
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": "stop"}
        if body.get("logprobs") and self.logprobs and reply.top_logprobs is not None:
            top = [{"token": token, "logprob": lp, "bytes": list(token.encode())} for token, lp in reply.top_logprobs]
            first = top[0] if top else {"token": reply.text[:1], "logprob": 0.0}
            choice["logprobs"] = {"content": [{**first, "top_logprobs": top[: int(body.get("top_logprobs") or 0)]}]}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, payload: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            auth = self.headers.get("Authorization")
            if self.path != "/v1/chat/completions" or body is None:
                server.record(Logged(self.path, body, auth, 404))
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            fault = server.next_fault()
            if isinstance(fault, tuple) and fault[0] == "slow":
                server._stop.wait(fault[1])
                fault = None
            if isinstance(fault, tuple) and isinstance(fault[0], int):
                status, headers = fault[0], {"Retry-After": str(fault[1])}
            elif isinstance(fault, int):
                status, headers = fault, ({"Retry-After": "0"} if fault == 429 else None)
            else:
                status = None
            if status is not None:
                server.record(Logged(self.path, body, auth, status))
                self._send(status, json.dumps({"error": {"message": f"fake error {status}"}}).encode(), headers=headers)
                return
            if fault == "garbage":
                server.record(Logged(self.path, body, auth, 200))
                self._send(200, b"<html>upstream proxy error</html>", content_type="text/html")
                return
            if fault == "no_choices":
                server.record(Logged(self.path, body, auth, 200))
                self._send(200, json.dumps({"id": "x", "choices": []}).encode())
                return
            if body.get("logprobs") and server.reject_logprobs:
                server.record(Logged(self.path, body, auth, 400))
                self._send(400, b'{"error": {"message": "logprobs are not supported"}}')
                return
            server.record(Logged(self.path, body, auth, 200))
            self._send(200, json.dumps(server.completion(body)).encode())

    return Handler
