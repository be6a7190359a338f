"""A loopback HTTP server that plays raw.githubusercontent.com and the Hugging Face hub.

Only what `relbench.download` uses is implemented: raw files, the hub's revision and tree APIs
(paginated with a Link header like the real hub), `resolve` URLs (LFS files answer with a 302 to a
CDN path, as the real hub does), and HTTP Range requests. Faults are switched on per URL path, and
every request is logged so tests can assert what went over the wire.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote, urlsplit


@dataclass(frozen=True)
class Logged:
    path: str  # URL path, unquoted, without the query
    range: str | None  # the Range header, if any
    status: int  # 0 when the server never answered
    sent: int  # body bytes written
    authorization: str | None


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHosts:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # URL path -> body
        self.redirects: dict[str, str] = {}  # URL path -> location
        self.json: dict[str, tuple[Any, dict[str, str]]] = {}  # path?query -> (body, extra headers)
        self.fail: dict[str, list[int]] = {}  # URL path -> statuses to answer first, one per request
        self.stall: set[str] = set()  # URL paths that never answer
        self.cut_after: dict[str, int] = {}  # URL path -> send only N body bytes then hang up (once)
        self.stall_after: dict[str, int] = {}  # URL path -> send only N body bytes then go silent (once)
        self.ignore_range = False
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHosts":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # releases stalled handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def requests_to(self, path: str) -> list[Logged]:
        with self._lock:
            return [entry for entry in self.log if entry.path == path]

    # --- content ------------------------------------------------------------------------

    def add_github_tree(self, repository: str, commit: str, files: dict[str, bytes]) -> dict[str, Any]:
        """Serve ``files`` (repo path -> bytes) as raw GitHub files; return a matching manifest."""
        entries = []
        for path, data in sorted(files.items()):
            self.files[f"/{repository}/{commit}/{path}"] = data
            target = path[len("dataset/"):] if path.startswith("dataset/") else path
            entries.append(
                {
                    "path": path,
                    "target": target,
                    "size": len(data),
                    "git_sha1": git_blob_sha1(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
        return {"repository": repository, "commit": commit, "license": "CC-BY-4.0", "files": entries}

    def add_hub_dataset(
        self,
        repo_id: str,
        commit: str,
        files: dict[str, bytes],
        *,
        lfs: set[str] = frozenset(),  # type: ignore[assignment]
        page_size: int = 1000,
        revision: str = "main",
    ) -> None:
        """Serve a dataset repository: revision info, a paginated tree, and resolve URLs."""
        self.json[f"/api/datasets/{repo_id}/revision/{revision}"] = ({"id": repo_id, "sha": commit}, {})
        entries: list[dict[str, Any]] = []
        folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
        for folder in folders:
            entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
        for path, data in sorted(files.items()):
            resolve = f"/datasets/{repo_id}/resolve/{commit}/{path}"
            entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data)}
            if path in lfs:
                sha256 = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
                entry["oid"] = git_blob_sha1(pointer.encode())  # the hub gives the pointer's blob id
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}
                self.redirects[resolve] = f"/cdn/{sha256}"
                self.files[f"/cdn/{sha256}"] = data
            else:
                entry["oid"] = git_blob_sha1(data)
                self.files[resolve] = data
            entries.append(entry)
        tree = f"/api/datasets/{repo_id}/tree/{commit}"
        pages = [entries[i : i + page_size] for i in range(0, len(entries), page_size)] or [[]]
        for n, page in enumerate(pages):
            query = "recursive=true" if n == 0 else f"recursive=true&cursor={n}"
            headers = {}
            if n + 1 < len(pages):
                headers["Link"] = f'<{self.url}{tree}?recursive=true&cursor={n + 1}>; rel="next"'
            self.json[f"{tree}?{query}"] = (page, headers)

    # --- serving ------------------------------------------------------------------------

    def _record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def _next_failure(self, path: str) -> int | None:
        with self._lock:
            queue = self.fail.get(path)
            return queue.pop(0) if queue else None


def _handler_for(hosts: FakeHosts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            split = urlsplit(self.path)
            path = unquote(split.path)
            key = f"{path}?{split.query}" if split.query else path
            range_header = self.headers.get("Range")
            auth = self.headers.get("Authorization")

            # Each answer is logged before it is sent, so the log is complete once the client has it.
            def record(status: int, sent: int = 0) -> None:
                hosts._record(Logged(path, range_header, status, sent, auth))

            if path in hosts.stall:
                record(0)
                hosts._stop.wait(30)
                return
            failure = hosts._next_failure(path)
            if failure is not None:
                record(failure)
                self._send(failure, b"failure\n", {})
                return
            if key in hosts.json:
                body, headers = hosts.json[key]
                record(200)
                self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json", **headers})
                return
            if path in hosts.redirects:
                record(302)
                self._send(302, b"", {"Location": quote(hosts.redirects[path])})
                return
            if path not in hosts.files:
                record(404)
                self._send(404, b"not found\n", {})
                return
            data = hosts.files[path]
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and not hosts.ignore_range:
                start = int(match.group(1))
                if start >= len(data):
                    record(416)
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    return
            status = 206 if start else 200
            body = data[start:]
            headers = {"Accept-Ranges": "bytes"}
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            with hosts._lock:
                cut = hosts.cut_after.pop(path, None)
                stall = hosts.stall_after.pop(path, None)
            if stall is not None:
                # Promise the whole body, send part of it, then nothing (until the hosts stop).
                record(status, min(stall, len(body)))
                self._send_head(status, len(body), headers)
                self.wfile.write(body[:stall])
                self.wfile.flush()
                hosts._stop.wait(30)
                self.close_connection = True
                return
            if cut is not None:
                # Promise the whole body, send part of it, hang up: a dropped connection.
                record(status, min(cut, len(body)))
                self._send_head(status, len(body), headers)
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            record(status, len(body))
            self._send(status, body, headers)

        def _send_head(self, status: int, length: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.end_headers()

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self._send_head(status, len(body), headers)
            self.wfile.write(body)

    return Handler
