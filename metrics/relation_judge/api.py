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
* Failures never stop a run: 429, 5xx, timeouts and dropped connections are retried. The wait
  before each retry is the server's ``Retry-After`` (seconds or an HTTP date) when it sends one,
  else an exponential backoff (``backoff`` x 2^retry, at most ``max_backoff``) with jitter (each
  wait drawn from [50 %, 100 %] of that, so concurrent workers do not retry in step). A question
  gives up after ``attempts`` tries or when the next wait would take its total waiting past
  ``retry_budget`` seconds, whichever comes first; it is then a failed answer (not cached, asked
  again when the run is resumed). An answer whose first word is not the expected one is an
  unparseable failure with its raw text. Only 401 / 403 / 404 (a wrong key, base URL or model
  name, wrong for every request) end the run with one error line.
* Transport settings (``TRANSPORT_OPTIONS``: timeout, attempts, retry_budget, concurrency) change
  how answers are fetched, never what they are: they are not in ``settings()``, the cache key or
  a run's identity, and ``relbench evaluate --judge-option KEY=VALUE`` sets them.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
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
# What an APIJudge built without ``sleep=`` waits with (a test of the whole CLI replaces it).
default_sleep: Callable[[float], None] = time.sleep
JITTER = 0.5  # a backoff wait is drawn from [(1 - JITTER), 1] x its exponential value


@dataclass(frozen=True)
class TransportOption:
    kind: type  # int or float
    minimum: float
    exclusive: bool  # minimum itself not allowed
    help: str


# How answers are fetched, not what they are (see the module docstring); each is an APIJudge argument.
TRANSPORT_OPTIONS: dict[str, TransportOption] = {
    "timeout": TransportOption(float, 0, True, "seconds to wait for one HTTP answer (default 60)"),
    "attempts": TransportOption(int, 1, False, "tries per question, the first included (default 20)"),
    "retry_budget": TransportOption(float, 0, False, "seconds one question may spend waiting between tries (default 900)"),
    "concurrency": TransportOption(int, 1, False, "requests in flight at once (default 4)"),
}


def parse_transport_options(values: Mapping[str, str]) -> dict[str, Any]:
    """``{"timeout": "120"}`` -> ``{"timeout": 120.0}``; unknown keys and bad values are one-line errors."""
    out: dict[str, Any] = {}
    for key, raw in values.items():
        option = TRANSPORT_OPTIONS.get(key)
        if option is None:
            raise RelbenchError(f"--judge-option {key}: unknown; expected one of {', '.join(TRANSPORT_OPTIONS)}")
        try:
            value = option.kind(str(raw).strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < option.minimum or (option.exclusive and value == option.minimum):
            bound = f"{'>' if option.exclusive else '>='} {option.minimum:g}"
            raise RelbenchError(f"--judge-option {key}={raw}: expected {'an integer' if option.kind is int else 'a number'} {bound} ({option.help})")
        out[key] = value
    return out


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
        attempts: int = 20,
        retry_budget: float = 900.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        logprobs: str = "auto",
        top_logprobs: int = 20,
        max_tokens: int = 16,
        concurrency: int = 4,
        image_format: str = "PNG",
        sleep: Callable[[float], None] | None = None,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
    ):
        """``sleep`` (default: the module's ``default_sleep`` at construction, ``time.sleep``), ``jitter`` (a draw in [0, 1))
        and ``clock`` (wall-clock seconds, for HTTP-date ``Retry-After``) are injectable for tests."""
        if not model or not model.strip():
            raise RelbenchError("--model judge=api:MODEL: the model name is empty")
        if logprobs not in LOGPROBS_MODES:
            raise RelbenchError(f"judge logprobs: expected one of {', '.join(LOGPROBS_MODES)}, got {logprobs!r}")
        if image_format.upper() not in ("PNG", "JPEG"):
            raise RelbenchError(f"judge image_format: expected PNG or JPEG, got {image_format!r}")
        parse_transport_options({"timeout": str(timeout), "attempts": str(attempts), "retry_budget": str(retry_budget),
                                 "concurrency": str(concurrency)})  # the same checks as on the command line
        if backoff < 0 or max_backoff < 0 or not 0 <= top_logprobs <= 20:
            raise RelbenchError("judge API options: backoff >= 0, max_backoff >= 0, 0 <= top_logprobs <= 20 expected")
        self.model = model.strip()
        self.judge_id = f"api:{self.model}"
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        if urlsplit(base).scheme not in ("http", "https"):
            raise RelbenchError(f"judge base URL {safe_url(base)!r} (OPENAI_BASE_URL): expected an http(s) URL")
        self._base_url = base.rstrip("/")
        self.base_url = safe_url(base)
        self._key = _Secret(api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"))
        self.timeout = timeout
        self.attempts = attempts
        self.retry_budget = retry_budget
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.logprobs_mode = logprobs
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.concurrency = concurrency
        self.image_format = image_format.upper()
        self._sleep = sleep if sleep is not None else default_sleep
        self._jitter = jitter
        self._clock = clock
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
            # Transport settings (timeout, attempts, retry budget, concurrency) are left out on
            # purpose: they do not move an answer, and run.json's metric settings must not differ
            # between two runs of the same judge (the leaderboard refuses to merge those).
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
        from relbench.metrics.functional.judge import normalized_yes, parse_yes_no, unparseable_reason

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
            return YesNoAnswer(None, None, None, source="text", error=unparseable_reason(reply.text), **common)
        value = 1.0 if parsed else 0.0
        return YesNoAnswer(value, 1.0 - value, value, source="text", **common)

    def _choice(self, reply: _Reply, n_options: int) -> ChoiceAnswer:
        from relbench.metrics.functional.judge import option_letter, parse_choice, unparseable_reason

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
            return ChoiceAnswer(None, probabilities, source="text", error=unparseable_reason(reply.text), **common)
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
            # In any letter case: a server may echo the key lower- or upper-cased.
            text = re.sub(re.escape(key), "***", text, flags=re.IGNORECASE)
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
        tries = 0
        waited = 0.0  # seconds this question has spent waiting between tries
        while True:
            problem: str
            retry_after: float | None = None
            tries += 1
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
                    tries -= 1  # not the server failing: this try does not count
                    continue
                if status not in RETRY_STATUSES:
                    return _Reply(None, None, None, error=f"HTTP {status}: {detail}")
                problem = f"HTTP {status}"
                retry_after = retry_after_seconds(response.headers.get("Retry-After"), self._clock())
            if tries >= self.attempts:
                return _Reply(None, None, None, error=f"{problem} (gave up after {tries} attempts)")
            delay = retry_after if retry_after is not None else self._backoff_delay(tries)
            if waited + delay > self.retry_budget:
                return _Reply(None, None, None, error=(
                    f"{problem} (gave up after {tries} attempts: waiting {delay:.3g} s more would pass "
                    f"the retry budget of {self.retry_budget:g} s)"))
            log.warning("judge API %s: %s; try %d of %d in %.2f s", self.base_url, problem, tries + 1, self.attempts, delay)
            self._sleep(delay)
            waited += delay

    def _backoff_delay(self, tries: int) -> float:
        """Exponential backoff after the ``tries``-th failed try, with jitter (module docstring)."""
        full = min(self.max_backoff, self.backoff * 2 ** (tries - 1))
        return full * (1.0 - JITTER * self._jitter())

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


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds ("120") or an HTTP date
    ("Wed, 21 Oct 2026 07:28:00 GMT", measured from ``now``, wall-clock seconds); never negative;
    None when absent or unreadable (the backoff schedule applies)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _first_top_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]] | None:
    """``[(token, logprob), ...]`` of the first answer token, if the server sent them."""
    try:
        first = choice["logprobs"]["content"][0]
        entries = first.get("top_logprobs") or [first]
        pairs = [(str(entry["token"]), float(entry["logprob"])) for entry in entries]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    return pairs or None
