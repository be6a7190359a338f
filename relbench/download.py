"""`relbench data download`: fetch the real benchmark files into the data root.

Sources (each goes to ``<data_root>/<name>/``):

* ``dreambench``: the ``dataset/`` folder (and the CC-BY-4.0 ``LICENSE.md``) of the GitHub
  repository google/dreambooth, pinned to one commit by the manifest committed in
  ``relbench/manifests/dreambench.json`` (path, size, git blob SHA-1 and SHA-256 of every file);
* ``dreamrelation``: the Hugging Face dataset ``QingyuShi/DreamRelation_Data`` (training triplets);
* ``relationbench``: the Hugging Face dataset ``QingyuShi/RelationBench`` (evaluation set; only
  fetched when asked for).

Hub datasets have no committed manifest: the revision is resolved to a commit first, then the file
list comes from the hub's tree API at that commit, so every file of one run comes from the same
commit. The commit is recorded in ``<data_root>/<name>/.relbench-download.json``.

Every file is downloaded to ``<file>.part``, resumed with an HTTP Range request when a part file is
left over, checked against its size and checksum, then renamed into place. Files already present
with the right checksum are not downloaded again. Connection errors and 5xx/429 answers are
retried with exponential backoff; a checksum mismatch is never retried. A server that stays silent
for ``timeout`` seconds (no connection, no answer, or a transfer that stalls) ends the command at
once with one line saying what it waited for: retrying a silent server only multiplies the wait,
and the same command resumes later. With ``HF_HUB_OFFLINE=1`` nothing is fetched at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import quote, urljoin, urlsplit

import requests

from relbench import __version__
from relbench.atomic import atomic_write_text
from relbench.errors import RelbenchError

GITHUB_RAW_BASE = "https://raw.githubusercontent.com"
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HF_DATASETS: dict[str, str] = {
    "dreamrelation": "QingyuShi/DreamRelation_Data",
    "relationbench": "QingyuShi/RelationBench",
}
ALL_SOURCES: tuple[str, ...] = ("dreambench", "dreamrelation", "relationbench")
DEFAULT_SOURCES: tuple[str, ...] = ("dreambench", "dreamrelation")
STATE_FILE = ".relbench-download.json"
PART_SUFFIX = ".part"

# Hub files that are repository plumbing, not data.
_HUB_SKIP = {".gitattributes"}
_CHUNK = 1 << 16
_MAX_BACKOFF_S = 30.0
# Values huggingface_hub reads as true in HF_HUB_OFFLINE.
_TRUE = {"1", "ON", "YES", "TRUE"}
_RESUME = "gave up; run the same command again to resume"


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where it goes, where it comes from, and how to check it."""

    target: str  # POSIX path relative to the source's folder in the data root
    url: str
    size: int
    sha256: str | None = None  # preferred when known
    git_sha1: str | None = None  # git blob id: sha1(b"blob <size>\0" + content)


@dataclass(frozen=True)
class SourceSummary:
    name: str
    revision: str
    files: int
    total_bytes: int
    downloaded: int
    present: int

    def line(self) -> str:
        return (
            f"{self.name}: {self.files} file{'' if self.files == 1 else 's'} ({self.total_bytes / 1e6:.1f} MB) ok, "
            f"{self.downloaded} downloaded, {self.present} already present"
        )


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 5xx); the message is one short line."""


def download(
    sources: Sequence[str] | None,
    data_root: Path,
    *,
    github_base: str = GITHUB_RAW_BASE,
    hf_endpoint: str | None = None,
    hf_revision: str = "main",
    dreambench_manifest: Path | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 4,
    backoff: float = 1.0,
    echo: Callable[[str], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> list[SourceSummary]:
    """Fetch ``sources`` (default: dreambench and dreamrelation) into ``data_root``.

    ``hf_endpoint`` defaults to ``$HF_ENDPOINT``, then https://huggingface.co. ``echo`` receives
    each source's summary line as soon as that source is complete; ``notice`` a line saying what
    is asked of which server before each wait. ``timeout`` bounds the connection and each wait
    for data, in seconds. Raises ``RelbenchError`` with one line on any failure; finished files
    stay, and a rerun resumes where this one stopped.
    """
    names = list(sources) if sources else list(DEFAULT_SOURCES)
    for name in names:
        if name not in ALL_SOURCES:
            raise RelbenchError(f"--only: unknown source {name!r}; expected one of {', '.join(ALL_SOURCES)}")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE:
        raise RelbenchError(
            "HF_HUB_OFFLINE is set: downloading needs the network; unset it (or set HF_HUB_OFFLINE=0) for this command"
        )
    say = notice or (lambda line: None)
    endpoint = (hf_endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    summaries = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        if name == "dreambench":
            fetcher = _Fetcher(timeout, retries, backoff, {})
            revision, files = _dreambench_files(dreambench_manifest, github_base.rstrip("/"))
            origin = "github:google/dreambooth"
        else:
            token = os.environ.get("HF_TOKEN")  # only needed for gated or private repositories
            fetcher = _Fetcher(timeout, retries, backoff, {"Authorization": f"Bearer {token}"} if token else {})
            say(f"{name}: asking {endpoint} for the files of {HF_DATASETS[name]} at revision {hf_revision} "
                f"(gives up after {timeout:g} s without an answer)")
            revision, files = _hub_files(fetcher, endpoint, HF_DATASETS[name], hf_revision)
            origin = f"hf-dataset:{HF_DATASETS[name]}"
        summary = _fetch_all(fetcher, name, revision, files, Path(data_root) / name, progress, say)
        _write_state(Path(data_root) / name, name, origin, summary)
        summaries.append(summary)
        if echo is not None:
            echo(summary.line())
    return summaries


# --- manifests -------------------------------------------------------------------------------


def dreambench_manifest_path() -> Path:
    return Path(str(resources.files("relbench") / "manifests" / "dreambench.json"))


def load_dreambench_manifest(path: Path | None = None) -> dict[str, Any]:
    """The committed manifest, checked field by field."""
    path = path or dreambench_manifest_path()
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RelbenchError(f"{path}: cannot read manifest: {exc}") from exc
    if not isinstance(manifest, dict):
        raise RelbenchError(f"{path}: expected a JSON object")
    for field in ("repository", "commit"):
        if not isinstance(manifest.get(field), str) or not manifest[field]:
            raise RelbenchError(f"{path}: {field}: expected a non-empty string")
    if not isinstance(manifest.get("files"), list) or not manifest["files"]:
        raise RelbenchError(f"{path}: files: expected a non-empty list")
    for i, entry in enumerate(manifest["files"]):
        where = f"{path}: files[{i}]"
        if not isinstance(entry, dict):
            raise RelbenchError(f"{where}: expected an object")
        for field in ("path", "target", "sha256"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise RelbenchError(f"{where}.{field}: expected a non-empty string")
        if not isinstance(entry.get("size"), int) or entry["size"] < 0:
            raise RelbenchError(f"{where}.size: expected a non-negative integer")
        _check_relative(entry["path"], f"{where}.path")
        _check_relative(entry["target"], f"{where}.target")
    return manifest


def _dreambench_files(manifest_path: Path | None, github_base: str) -> tuple[str, list[RemoteFile]]:
    manifest = load_dreambench_manifest(manifest_path)
    base = f"{github_base}/{manifest['repository']}/{manifest['commit']}"
    files = [
        RemoteFile(
            target=entry["target"],
            url=f"{base}/{quote(entry['path'])}",
            size=entry["size"],
            sha256=entry["sha256"],
            git_sha1=entry.get("git_sha1"),
        )
        for entry in manifest["files"]
    ]
    return manifest["commit"], files


def _hub_files(fetcher: "_Fetcher", endpoint: str, repo_id: str, revision: str) -> tuple[str, list[RemoteFile]]:
    """Resolve ``revision`` to a commit, then list every file of the dataset at that commit."""
    info_url = f"{endpoint}/api/datasets/{repo_id}/revision/{quote(revision, safe='')}"
    info, _ = fetcher.get_json(info_url)
    commit = info.get("sha") if isinstance(info, dict) else None
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise RelbenchError(f"{info_url}: sha: expected the 40-hex commit of revision {revision!r}")
    url: str | None = f"{endpoint}/api/datasets/{repo_id}/tree/{commit}?recursive=true"
    files = []
    while url:
        page, response = fetcher.get_json(url)
        if not isinstance(page, list):
            raise RelbenchError(f"{url}: expected a JSON list of tree entries")
        for i, entry in enumerate(page):
            item = _hub_entry(entry, f"{url}: [{i}]", endpoint, repo_id, commit)
            if item is not None:
                files.append(item)
        # The tree API pages like GitHub's: a Link header with rel="next".
        next_url = response.links.get("next", {}).get("url")
        url = urljoin(response.url, next_url) if next_url else None
    if not files:
        raise RelbenchError(f"{endpoint}/datasets/{repo_id}: no files at commit {commit}")
    return commit, files


def _hub_entry(entry: Any, where: str, endpoint: str, repo_id: str, commit: str) -> RemoteFile | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise RelbenchError(f"{where}: expected an object with a 'path'")
    path = entry["path"]
    if entry.get("type") != "file" or path in _HUB_SKIP:
        return None
    _check_relative(path, f"{where}.path")
    url = f"{endpoint}/datasets/{repo_id}/resolve/{commit}/{quote(path)}"
    lfs = entry.get("lfs")
    if lfs is not None:
        # The git blob of an LFS file is the pointer; the content is checked by its sha256.
        if not isinstance(lfs, dict) or not isinstance(lfs.get("oid"), str) or not isinstance(lfs.get("size"), int):
            raise RelbenchError(f"{where}.lfs: expected {{oid: <sha256>, size: <int>}} for {path}")
        return RemoteFile(target=path, url=url, size=lfs["size"], sha256=lfs["oid"])
    if not isinstance(entry.get("oid"), str) or not isinstance(entry.get("size"), int):
        raise RelbenchError(f"{where}: expected 'oid' (git blob sha1) and 'size' for {path}")
    return RemoteFile(target=path, url=url, size=entry["size"], git_sha1=entry["oid"])


def _check_relative(path: str, where: str) -> None:
    """Refuse paths that would land outside the source folder (absolute, '..', backslashes)."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or "\\" in path or any(p in ("..", ".") for p in parts):
        raise RelbenchError(f"{where}: expected a relative path inside the data set, got {path!r}")


# --- fetching --------------------------------------------------------------------------------


def _fetch_all(
    fetcher: "_Fetcher",
    name: str,
    revision: str,
    files: list[RemoteFile],
    folder: Path,
    progress: bool,
    say: Callable[[str], None],
) -> SourceSummary:
    todo = [f for f in files if not _is_intact(folder / f.target, f)]
    todo_bytes = sum(f.size for f in todo)
    if todo:
        hosts = ", ".join(dict.fromkeys(urlsplit(f.url).netloc for f in todo))
        say(f"{name}: downloading {len(todo)} file{'' if len(todo) == 1 else 's'} ({todo_bytes / 1e6:.1f} MB) from "
            f"{hosts} (gives up after {fetcher.timeout:g} s without data)")
    from tqdm import tqdm  # lazy: only the download command draws a progress bar

    with tqdm(
        total=todo_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        disable=not progress or not todo,
    ) as bar:
        for item in todo:
            fetcher.fetch(item, folder / item.target, bar)
    return SourceSummary(
        name=name,
        revision=revision,
        files=len(files),
        total_bytes=sum(f.size for f in files),
        downloaded=len(todo),
        present=len(files) - len(todo),
    )


def _is_intact(path: Path, item: RemoteFile) -> bool:
    if not path.is_file() or path.stat().st_size != item.size:
        return False
    _, expected, got = _checksum(path, item)
    return expected == got


def _checksum(path: Path, item: RemoteFile) -> tuple[str, str, str]:
    """(algorithm, expected, actual) for ``path``: sha256 when known, else the git blob sha1."""
    if item.sha256:
        algorithm, expected, digest = "sha256", item.sha256.lower(), hashlib.sha256()
    elif item.git_sha1:
        algorithm, expected, digest = "git-sha1", item.git_sha1.lower(), hashlib.sha1()
        digest.update(b"blob %d\0" % path.stat().st_size)
    else:
        raise RelbenchError(f"{item.url}: no checksum known for this file")
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return algorithm, expected, digest.hexdigest()


def _write_state(folder: Path, name: str, origin: str, summary: SourceSummary) -> None:
    state = {
        "source": name,
        "origin": origin,
        "revision": summary.revision,
        "files": summary.files,
        "bytes": summary.total_bytes,
        "relbench": __version__,
    }
    atomic_write_text(folder / STATE_FILE, json.dumps(state, indent=2) + "\n")


class _Bar(Protocol):
    """The part of tqdm that ``_Fetcher.fetch`` uses."""

    def update(self, n: int = 1) -> Any: ...


class _Fetcher:
    def __init__(self, timeout: float, retries: int, backoff: float, headers: dict[str, str]):
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.session = requests.Session()
        # identity: a Range offset must count the bytes as stored, not a gzip stream of them.
        self.session.headers.update(
            {"User-Agent": f"relbench/{__version__}", "Accept-Encoding": "identity", **headers}
        )

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        reason = ""
        for i in range(self.retries + 1):
            if i:
                time.sleep(min(self.backoff * 2 ** (i - 1), _MAX_BACKOFF_S))
            try:
                return attempt()
            except _Transient as exc:
                reason = str(exc)
        raise RelbenchError(f"{what}: {reason} (gave up after {self.retries + 1} attempts)")

    def _get(self, url: str, headers: dict[str, str]) -> requests.Response:
        host = urlsplit(url).netloc
        try:
            response = self.session.get(url, headers=headers, stream=True, timeout=self.timeout)
        except requests.ConnectTimeout as exc:  # before ConnectionError: it is both
            raise RelbenchError(f"{url}: could not connect to {host} within {self.timeout:g} s; {_RESUME}") from exc
        except requests.Timeout as exc:
            raise RelbenchError(
                f"{url}: {host} took the request but sent no answer within {self.timeout:g} s; {_RESUME}"
            ) from exc
        except requests.RequestException as exc:
            raise _Transient(_describe(exc)) from exc
        if response.status_code >= 500 or response.status_code == 429:
            response.close()
            raise _Transient(f"HTTP {response.status_code} {response.reason}")
        return response

    def _raise_if_stalled(self, exc: requests.RequestException, url: str) -> None:
        """A body that stopped coming for ``timeout`` s (requests wraps that read timeout in a ConnectionError)."""
        if isinstance(exc, requests.Timeout) or "timed out" in str(exc).lower():
            raise RelbenchError(
                f"{url}: {urlsplit(url).netloc} stopped sending data for {self.timeout:g} s; {_RESUME}"
            ) from exc

    def get_json(self, url: str) -> tuple[Any, requests.Response]:
        def attempt() -> tuple[Any, requests.Response]:
            with self._get(url, {}) as response:
                _raise_for_client_error(response, url)
                try:
                    return response.json(), response
                except requests.RequestException as exc:
                    self._raise_if_stalled(exc, url)
                    raise _Transient(_describe(exc)) from exc
                except ValueError as exc:
                    raise RelbenchError(f"{url}: expected a JSON answer: {exc}") from exc

        return self._retrying(url, attempt)

    def fetch(self, item: RemoteFile, dest: Path, bar: _Bar) -> None:
        """Download ``item`` to ``dest`` through ``dest.part``, resuming and verifying."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + PART_SUFFIX)
        counted = 0  # bytes of this file currently shown on the progress bar

        def show(n: int) -> None:
            nonlocal counted
            bar.update(n - counted)
            counted = n

        def attempt() -> None:
            offset = part.stat().st_size if part.exists() else 0
            if offset >= item.size:  # a stale or oversized leftover: it cannot be resumed
                part.unlink(missing_ok=True)
                offset = 0
            show(offset)
            with self._get(item.url, {"Range": f"bytes={offset}-"} if offset else {}) as response:
                if offset and response.status_code == 206:
                    start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                    if not start or int(start.group(1)) != offset:
                        part.unlink(missing_ok=True)
                        show(0)
                        raise _Transient(f"server answered a different range than bytes={offset}-")
                    mode = "ab"
                elif response.status_code == 200:
                    mode = "wb"  # no Range asked, or the server ignored it: start over
                    show(0)
                elif response.status_code == 416:
                    part.unlink(missing_ok=True)
                    show(0)
                    raise _Transient("HTTP 416 Range Not Satisfiable")
                else:
                    _raise_for_client_error(response, item.url)
                    raise RelbenchError(f"{item.url}: unexpected HTTP {response.status_code} {response.reason}")
                with open(part, mode) as fh:
                    try:
                        for chunk in response.iter_content(_CHUNK):
                            fh.write(chunk)
                            show(counted + len(chunk))
                    except requests.RequestException as exc:
                        self._raise_if_stalled(exc, item.url)
                        raise _Transient(_describe(exc)) from exc

        self._retrying(item.url, attempt)
        got_size = part.stat().st_size
        if got_size != item.size:
            part.unlink()
            raise RelbenchError(
                f"{dest}: size mismatch: expected {item.size} bytes, got {got_size} from {item.url} (download deleted)"
            )
        algorithm, expected, got = _checksum(part, item)
        if got != expected:
            part.unlink()
            raise RelbenchError(
                f"{dest}: checksum mismatch: expected {algorithm} {expected}, got {got} from {item.url} (download deleted)"
            )
        os.replace(part, dest)


def _raise_for_client_error(response: requests.Response, url: str) -> None:
    if 400 <= response.status_code < 500:
        hint = " (gated or private? set HF_TOKEN)" if response.status_code in (401, 403) else ""
        raise RelbenchError(f"{url}: HTTP {response.status_code} {response.reason}{hint}")


def _describe(exc: requests.RequestException) -> str:
    """One short line for a network failure (requests' own messages nest several reprs)."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return f"connection failed: {errno.group(0)}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken before the end of the file"
    return f"{type(exc).__name__}: {text[:200]}"
