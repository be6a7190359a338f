"""An OpenAI-compatible chat endpoint as relation judge (``--model judge=api:MODEL``).

* Endpoint: ``{base_url}/chat/completions``; ``base_url`` and the key come from the options, else
  from ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` as the openai client reads them (default base URL
  ``https://api.openai.com/v1``). The key is sent in the Authorization header only: it is never
  written to settings, results, the cache or logs, and is masked in any text a server echoes.
* Each question is one request: one user message with the question and the image inline as a
  base64 PNG data URL; ``temperature`` 0; a few output tokens.
* P(yes): with ``logprobs`` "auto" (default) the request asks for ``top_logprobs`` of the first
  answer token; P(yes) / P(no) are the summed probabilities of the listed tokens that read "yes"
  / "no" (case and surrounding spaces ignored). Only the top entries are listed, so these are
  lower bounds; their ratio is the normalised P(yes). When the server sends no logprobs, or
  neither word is among them, the text answer is parsed (yes -> 1, no -> 0). ``source`` says
  which. A server that refuses logprobs (HTTP 400) is asked again without them, and from then on.
* Failures never stop a run: 429, 5xx, timeouts and dropped connections are retried with
  exponential backoff (``Retry-After`` honoured, capped), then recorded as a failed answer; an
  unparseable answer is recorded with its raw text. Only 401 / 403 / 404 (a wrong key, base URL
  or model name, wrong for every request) end the run with one error line.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from relbench.errors import RelbenchError
from relbench.metrics.relation_judge import ChoiceAnswer, ChoiceQuestion, Judge, YesNoAnswer, YesNoQuestion

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOGPROBS_MODES = ("auto", "on", "off")
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 403, 404})
MAX_RECORDED_TEXT = 2000  # characters of a raw answer or error body kept in a result


def safe_url(url: str) -> str:
    """The URL without user info, query or fragment: what may be written into settings."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def image_data_url(image: "Image.Image", image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=image_format)
    mime = "image/png" if image_format.upper() == "PNG" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


@dataclass(frozen=True)
class _Reply:
    """One finished request: the answer text and first-token logprobs, or why there is none."""

    text: str | None
    top_logprobs: list[tuple[str, float]] | None
    served_model: str | None
    error: str | None = None


class _Secret:
    """Holds the key; its repr never shows it, so it cannot leak through a printed object."""

    def __init__(self, value: str | None):
        self._value = value or None

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<api key>" if self._value else "<no api key>"


class APIJudge(Judge):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        logprobs: str = "auto",
        top_logprobs: int = 20,
        max_tokens: int = 16,
        concurrency: int = 4,
        image_format: str = "PNG",
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not model or not model.strip():
            raise RelbenchError("--model judge=api:MODEL: the model name is empty")
        if logprobs not in LOGPROBS_MODES:
            raise RelbenchError(f"judge logprobs: expected one of {', '.join(LOGPROBS_MODES)}, got {logprobs!r}")
        if image_format.upper() not in ("PNG", "JPEG"):
            raise RelbenchError(f"judge image_format: expected PNG or JPEG, got {image_format!r}")
        if timeout <= 0 or max_retries < 0 or concurrency < 1 or not 0 <= top_logprobs <= 20:
            raise RelbenchError("judge API options: timeout > 0, max_retries >= 0, concurrency >= 1, 0 <= top_logprobs <= 20 expected")
        self.model = model.strip()
        self.judge_id = f"api:{self.model}"
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if urlsplit(base).scheme not in ("http", "https"):
            raise RelbenchError(f"judge base URL {safe_url(base)!r} (OPENAI_BASE_URL): expected an http(s) URL")
        self._base_url = base.rstrip("/")
        self.base_url = safe_url(base)
        self._key = _Secret(api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"))
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.logprobs_mode = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.image_format = image_format.upper()
        self._sleep = sleep
        self._lock = threading.Lock()
        self.logprobs_supported: bool | None = None if logprobs == "auto" else logprobs == "on"
        self.requests_sent = 0

    # --- records --------------------------------------------------------------------------

    def identity(self) -> str | None:
        # The answer mode is part of it: text answers and logprob answers are different numbers.
        return f"api:{self.model}@{self.base_url}:logprobs={self.logprobs_mode}:{self.image_format}"

    def settings(self) -> dict[str, Any]:
        return {
            "judge": "api",
            "judge_id": self.judge_id,
            "model": self.model,
            "base_url": self.base_url,
            "revision": None,  # an API names no weights; each answer records the model it reports serving
            "dtype": None,  # unknown for an API
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "logprobs": self.logprobs_mode,
            "top_logprobs": self.top_logprobs,
            "p_yes": "first-token top_logprobs reading 'yes'/'no' when sent, else the text answer (yes -> 1, no -> 0); see each answer's source",
            "image": f"inline base64 {self.image_format} data URL",
            "timeout_s": self.timeout,
            "max_retries": self.max_retries,
        }

    # --- questions ------------------------------------------------------------------------

    def yes_no(self, questions: Sequence[YesNoQuestion]) -> list[YesNoAnswer]:
        return self._map(lambda q: self._yes_no(self._ask(q.image, q.text)), questions)

    def choice(self, questions: Sequence[ChoiceQuestion]) -> list[ChoiceAnswer]:
        return self._map(lambda q: self._choice(self._ask(q.image, q.text), q.n_options), questions)

    def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if self.concurrency == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))  # in order; a fatal RelbenchError propagates

    def _yes_no(self, reply: _Reply) -> YesNoAnswer:
        from relbench.metrics.functional.judge import normalized_yes, parse_yes_no

        common = dict(raw_text=reply.text, served_model=reply.served_model)
        if reply.error is not None:
            return YesNoAnswer(None, None, None, source="none", error=reply.error, **common)
        if reply.top_logprobs:
            p_yes = sum(math.exp(lp) for token, lp in reply.top_logprobs if token.strip().lower() == "yes")
            p_no = sum(math.exp(lp) for token, lp in reply.top_logprobs if token.strip().lower() == "no")
            normalized = normalized_yes(p_yes, p_no)
            if normalized is not None:
                return YesNoAnswer(p_yes, p_no, normalized, source="logprobs", **common)
        parsed = parse_yes_no(reply.text)
        if parsed is None:
            return YesNoAnswer(None, None, None, source="text", error="unparseable answer: no 'yes' or 'no'", **common)
        value = 1.0 if parsed else 0.0
        return YesNoAnswer(value, 1.0 - value, value, source="text", **common)

    def _choice(self, reply: _Reply, n_options: int) -> ChoiceAnswer:
        from relbench.metrics.functional.judge import option_letter, parse_choice

        common = dict(raw_text=reply.text, served_model=reply.served_model)
        if reply.error is not None:
            return ChoiceAnswer(None, None, source="none", error=reply.error, **common)
        probabilities = None
        if reply.top_logprobs:
            letters = [option_letter(i) for i in range(n_options)]
            masses = [sum(math.exp(lp) for token, lp in reply.top_logprobs if token.strip() == letter) for letter in letters]
            probabilities = tuple(masses) if any(masses) else None
        chosen = parse_choice(reply.text, n_options)
        if chosen is None:
            return ChoiceAnswer(None, probabilities, source="text",
                                error=f"unparseable answer: no option letter A-{option_letter(n_options - 1)}", **common)
        return ChoiceAnswer(chosen, probabilities, source="text", **common)

    # --- HTTP -----------------------------------------------------------------------------

    def _payload(self, image: "Image.Image", question: str, with_logprobs: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "text", "text": question},
                    {"type": "image_url", "image_url": {"url": image_data_url(image, self.image_format)}},
                ],
            }],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        if with_logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = self.top_logprobs
        return payload

    def _scrub(self, text: str | None) -> str | None:
        """Cut to a sane length and mask the key, should a server echo it."""
        if text is None:
            return None
        key = self._key.get()
        if key:
            text = text.replace(key, "***")
        return text[:MAX_RECORDED_TEXT]

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self._key.get()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _ask(self, image: "Image.Image", question: str) -> _Reply:
        import requests

        url = f"{self._base_url}/chat/completions"
        with_logprobs = self.logprobs_supported is not False and self.top_logprobs > 0
        body = self._payload(image, question, with_logprobs)
        attempt = 0
        while True:
            problem: str
            retry_after: float | None = None
            try:
                with self._lock:
                    self.requests_sent += 1
                response = requests.post(url, data=json.dumps(body), headers=self._headers(), timeout=self.timeout)
            except requests.Timeout:
                problem = f"timed out after {self.timeout:g} s"
            except requests.RequestException as exc:  # refused or dropped connections, cut-off bodies
                problem = f"request failed: {type(exc).__name__}"
            else:
                status = response.status_code
                if status == 200:
                    return self._reply(response.text)
                detail = self._scrub(response.text.strip().splitlines()[0] if response.text.strip() else "") or ""
                if status in FATAL_STATUSES:
                    hint = "check OPENAI_API_KEY" if status in (401, 403) else "check OPENAI_BASE_URL and the model name"
                    raise RelbenchError(f"judge API {self.base_url} model {self.model!r}: HTTP {status} {detail[:200]}; {hint}")
                if status == 400 and with_logprobs and self.logprobs_mode == "auto":
                    # Most likely the logprobs fields; ask this and every later question without them.
                    log.warning("judge API %s: HTTP 400 to a request with logprobs; asking without logprobs from now on", self.base_url)
                    self.logprobs_supported = False
                    with_logprobs = False
                    body = self._payload(image, question, with_logprobs)
                    continue
                if status not in RETRY_STATUSES:
                    return _Reply(None, None, None, error=f"HTTP {status}: {detail}")
                problem = f"HTTP {status}"
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if attempt >= self.max_retries:
                return _Reply(None, None, None, error=f"{problem} (gave up after {attempt + 1} attempts)")
            delay = min(self.max_backoff, retry_after if retry_after is not None else self.backoff * 2**attempt)
            log.warning("judge API %s: %s; retry %d of %d in %.2f s", self.base_url, problem, attempt + 1, self.max_retries, delay)
            self._sleep(delay)
            attempt += 1

    def _reply(self, text: str) -> _Reply:
        """Parse a 200 answer; anything malformed is a failure that keeps the raw body."""
        try:
            data = json.loads(text)
            choice = data["choices"][0]
            content = choice["message"]["content"]
            if isinstance(content, list):  # content parts
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            if not isinstance(content, str):
                raise TypeError("message content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return _Reply(self._scrub(text), None, None, error=f"malformed response ({type(exc).__name__})")
        served = data.get("model") if isinstance(data.get("model"), str) else None
        return _Reply(self._scrub(content), _first_top_logprobs(choice), served)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to the backoff schedule
        return None


def _first_top_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]] | None:
    """``[(token, logprob), ...]`` of the first answer token, if the server sent them."""
    try:
        first = choice["logprobs"]["content"][0]
        entries = first.get("top_logprobs") or [first]
        pairs = [(str(entry["token"]), float(entry["logprob"])) for entry in entries]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    return pairs or None
