"""`relbench.download` against a loopback fake GitHub + Hugging Face hub (never the internet)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from fake_hosts import FakeHosts

from relbench.download import (
    HF_DATASETS,
    STATE_FILE,
    download,
    dreambench_manifest_path,
    load_dreambench_manifest,
)
from relbench.errors import RelbenchError

COMMIT = "4f887af7970a06fc0cd3adaa1d0b368547d6a1d0"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = HF_DATASETS["dreamrelation"]

# Deterministic, distinct contents; sizes span several 64 KiB chunks for the big one.
GITHUB_FILES = {
    "LICENSE.md": b"# Creative Commons Attribution 4.0 International\n",
    "dataset/prompts_and_classes.txt": b"dog,dog\ncat,cat\n",
    "dataset/dog/00.jpg": bytes(range(256)) * 1000,
    "dataset/cat/00.jpg": b"\xff\xd8cat" * 50,
}
HUB_FILES = {
    ".gitattributes": b"*.pth filter=lfs diff=lfs merge=lfs -text\n",
    "hug/prompts.json": b'{"0": {"prompt": "a dog hugs a cat"}}',
    "hug/videos/0/concept0.png": b"\x89PNG-concept0" * 40,
    "hug/videos/0/motion_keyposes.pth": bytes(reversed(range(256))) * 300,
}
HUB_LFS = {"hug/videos/0/motion_keyposes.pth"}
DOG = f"/google/dreambooth/{COMMIT}/dataset/dog/00.jpg"
KEYPOSES_CDN = "/cdn/" + hashlib.sha256(HUB_FILES["hug/videos/0/motion_keyposes.pth"]).hexdigest()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests to 127.0.0.1 must never go through a proxy configured in the environment.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # conftest sets it for the whole suite; these tests only ever reach the loopback fake hosts.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def hosts(tmp_path: Path):
    with FakeHosts() as fake:
        manifest = fake.add_github_tree("google/dreambooth", COMMIT, GITHUB_FILES)
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        fake.add_hub_dataset(REPO, HUB_COMMIT, HUB_FILES, lfs=HUB_LFS, page_size=2)
        yield fake


def run(hosts: FakeHosts, tmp_path: Path, sources=("dreambench", "dreamrelation"), **kwargs):
    options = dict(
        github_base=hosts.url,
        hf_endpoint=hosts.url,
        dreambench_manifest=tmp_path / "manifest.json",
        progress=False,
        timeout=2.0,
        retries=2,
        backoff=0.01,
    )
    options.update(kwargs)
    return download(list(sources), tmp_path / "data", **options)


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.endswith((".part", ".tmp")))


def test_fresh_download_writes_every_file_and_records_revisions(hosts: FakeHosts, tmp_path: Path) -> None:
    lines: list[str] = []
    summaries = run(hosts, tmp_path, echo=lines.append)
    data = tmp_path / "data"

    for path, content in GITHUB_FILES.items():
        target = path.removeprefix("dataset/")
        assert (data / "dreambench" / target).read_bytes() == content
    for path, content in HUB_FILES.items():
        if path != ".gitattributes":
            assert (data / "dreamrelation" / path).read_bytes() == content
    assert not (data / "dreamrelation" / ".gitattributes").exists()  # repository plumbing, not data
    assert leftovers(data) == []

    bench, relation = summaries
    assert (bench.name, bench.revision, bench.files, bench.downloaded, bench.present) == (
        "dreambench", COMMIT, 4, 4, 0
    )
    assert bench.total_bytes == sum(len(c) for c in GITHUB_FILES.values())
    assert (relation.name, relation.revision, relation.files, relation.downloaded) == (
        "dreamrelation", HUB_COMMIT, 3, 3
    )
    assert lines == [bench.line(), relation.line()]
    assert lines[0] == "dreambench: 4 files (0.3 MB) ok, 4 downloaded, 0 already present"

    state = json.loads((data / "dreamrelation" / STATE_FILE).read_text())
    assert (state["revision"], state["origin"], state["files"]) == (HUB_COMMIT, f"hf-dataset:{REPO}", 3)
    assert json.loads((data / "dreambench" / STATE_FILE).read_text())["revision"] == COMMIT

    # The tree was listed at the resolved commit, over both pages; the LFS file came via the CDN redirect.
    tree = f"/api/datasets/{REPO}/tree/{HUB_COMMIT}"
    assert [r.status for r in hosts.requests_to(tree)] == [200, 200, 200]  # 2 folders + 4 files, 2 a page
    assert [r.status for r in hosts.requests_to(KEYPOSES_CDN)] == [200]


def test_second_run_downloads_nothing(hosts: FakeHosts, tmp_path: Path) -> None:
    run(hosts, tmp_path)
    before = len(hosts.log)
    bench, relation = run(hosts, tmp_path)

    assert (bench.downloaded, bench.present, relation.downloaded, relation.present) == (0, 4, 0, 3)
    assert bench.line() == "dreambench: 4 files (0.3 MB) ok, 0 downloaded, 4 already present"
    # Only the hub's revision and tree API were asked again; no file was fetched.
    second = hosts.log[before:]
    assert {r.path for r in second} == {
        f"/api/datasets/{REPO}/revision/main",
        f"/api/datasets/{REPO}/tree/{HUB_COMMIT}",
    }


def test_part_file_is_resumed_with_a_range_request(hosts: FakeHosts, tmp_path: Path) -> None:
    content = GITHUB_FILES["dataset/dog/00.jpg"]
    dest = tmp_path / "data" / "dreambench" / "dog" / "00.jpg"
    dest.parent.mkdir(parents=True)
    (dest.parent / "00.jpg.part").write_bytes(content[:100_000])

    run(hosts, tmp_path, sources=["dreambench"])

    assert dest.read_bytes() == content
    (request,) = hosts.requests_to(DOG)
    assert request.range == "bytes=100000-"
    assert (request.status, request.sent) == (206, len(content) - 100_000)
    assert leftovers(tmp_path / "data") == []


def test_server_ignoring_range_starts_over(hosts: FakeHosts, tmp_path: Path) -> None:
    hosts.ignore_range = True
    content = GITHUB_FILES["dataset/dog/00.jpg"]
    dest = tmp_path / "data" / "dreambench" / "dog" / "00.jpg"
    dest.parent.mkdir(parents=True)
    (dest.parent / "00.jpg.part").write_bytes(content[:100_000])

    run(hosts, tmp_path, sources=["dreambench"])

    # Appending the full answer to the part file would have made it 100 000 bytes too long.
    assert dest.read_bytes() == content
    (request,) = hosts.requests_to(DOG)
    assert (request.range, request.status, request.sent) == ("bytes=100000-", 200, len(content))


def test_dropped_connection_is_retried_from_where_it_stopped(hosts: FakeHosts, tmp_path: Path) -> None:
    content = GITHUB_FILES["dataset/dog/00.jpg"]
    hosts.cut_after[DOG] = 70_000

    run(hosts, tmp_path, sources=["dreambench"])

    assert (tmp_path / "data" / "dreambench" / "dog" / "00.jpg").read_bytes() == content
    first, second = hosts.requests_to(DOG)
    assert (first.range, first.sent) == (None, 70_000)
    # The client keeps what it read before the hang-up (whole chunks: at most the 70 000 bytes sent).
    kept = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < kept <= 70_000
    assert (second.status, second.sent) == (206, len(content) - kept)


def test_corrupted_download_fails_with_one_line_and_leaves_nothing(hosts: FakeHosts, tmp_path: Path) -> None:
    good = GITHUB_FILES["dataset/dog/00.jpg"]
    bad = bytes([good[0] ^ 1]) + good[1:]  # same size, one bit flipped
    hosts.files[DOG] = bad

    with pytest.raises(RelbenchError) as info:
        run(hosts, tmp_path, sources=["dreambench"])

    message = str(info.value)
    dest = tmp_path / "data" / "dreambench" / "dog" / "00.jpg"
    assert "\n" not in message
    assert message.startswith(f"{dest}: checksum mismatch: ")
    assert f"expected sha256 {hashlib.sha256(good).hexdigest()}, got {hashlib.sha256(bad).hexdigest()}" in message
    assert not dest.exists()
    assert not dest.with_name("00.jpg.part").exists()
    assert [r.status for r in hosts.requests_to(DOG)] == [200]  # a checksum mismatch is not retried


def test_git_blob_sha1_is_checked_for_hub_files_without_lfs(hosts: FakeHosts, tmp_path: Path) -> None:
    path = f"/datasets/{REPO}/resolve/{HUB_COMMIT}/hug/prompts.json"
    good = hosts.files[path]
    hosts.files[path] = good.replace(b"dog", b"cat")

    with pytest.raises(RelbenchError, match=r"prompts\.json: checksum mismatch: expected git-sha1 [0-9a-f]{40}, got"):
        run(hosts, tmp_path, sources=["dreamrelation"])


def test_503_then_success_is_retried(hosts: FakeHosts, tmp_path: Path) -> None:
    hosts.fail[DOG] = [503]
    bench, = run(hosts, tmp_path, sources=["dreambench"])

    assert [r.status for r in hosts.requests_to(DOG)] == [503, 200]
    assert bench.downloaded == 4
    assert (tmp_path / "data" / "dreambench" / "dog" / "00.jpg").read_bytes() == GITHUB_FILES["dataset/dog/00.jpg"]


def test_persistent_5xx_gives_up_after_the_retry_budget(hosts: FakeHosts, tmp_path: Path) -> None:
    hosts.fail[DOG] = [503, 502, 500, 200]  # 200 here would be a 4th attempt; it must not happen

    with pytest.raises(RelbenchError) as info:
        run(hosts, tmp_path, sources=["dreambench"], retries=2)

    assert str(info.value) == f"{hosts.url}{DOG}: HTTP 500 Internal Server Error (gave up after 3 attempts)"
    assert len(hosts.requests_to(DOG)) == 3


def test_404_fails_at_once_naming_the_url(hosts: FakeHosts, tmp_path: Path) -> None:
    del hosts.files[DOG]

    with pytest.raises(RelbenchError) as info:
        run(hosts, tmp_path, sources=["dreambench"])

    assert str(info.value) == f"{hosts.url}{DOG}: HTTP 404 Not Found"
    assert len(hosts.requests_to(DOG)) == 1


def test_server_that_never_answers_gives_up_at_once_and_says_what_it_waited_for(hosts: FakeHosts, tmp_path: Path) -> None:
    hosts.stall.add(DOG)
    notices: list[str] = []

    with pytest.raises(RelbenchError) as info:
        run(hosts, tmp_path, sources=["dreambench"], timeout=0.2, retries=3, notice=notices.append)

    host = hosts.url.removeprefix("http://")
    assert str(info.value) == (
        f"{hosts.url}{DOG}: {host} took the request but sent no answer within 0.2 s; "
        "gave up; run the same command again to resume"
    )
    assert len(hosts.requests_to(DOG)) == 1  # a silent server is not asked again: that only multiplies the wait
    assert notices == [f"dreambench: downloading 4 files (0.3 MB) from {host} (gives up after 0.2 s without data)"]


@contextmanager
def accepts_and_never_answers() -> Iterator[str]:
    """A loopback port whose connections the kernel completes but nobody ever reads or answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:  # closed (connections reset) on exit
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def test_hub_that_accepts_and_never_answers_gives_up_at_once(tmp_path: Path) -> None:
    notices: list[str] = []
    with accepts_and_never_answers() as url:
        with pytest.raises(RelbenchError) as info:
            download(["dreamrelation"], tmp_path, hf_endpoint=url, progress=False, timeout=0.5, notice=notices.append)

    host = url.removeprefix("http://")
    assert str(info.value) == (
        f"{url}/api/datasets/{REPO}/revision/main: {host} took the request but sent no answer within 0.5 s; "
        "gave up; run the same command again to resume"
    )
    assert notices == [f"dreamrelation: asking {url} for the files of {REPO} at revision main "
                       "(gives up after 0.5 s without an answer)"]


def test_stalled_transfer_gives_up_and_the_next_run_resumes(hosts: FakeHosts, tmp_path: Path) -> None:
    content = GITHUB_FILES["dataset/dog/00.jpg"]
    hosts.stall_after[DOG] = 70_000
    part = tmp_path / "data" / "dreambench" / "dog" / "00.jpg.part"

    with pytest.raises(RelbenchError) as info:
        run(hosts, tmp_path, sources=["dreambench"], timeout=0.5)

    assert str(info.value) == (
        f"{hosts.url}{DOG}: {hosts.url.removeprefix('http://')} stopped sending data for 0.5 s; "
        "gave up; run the same command again to resume"
    )
    kept = part.stat().st_size
    assert 0 < kept <= 70_000 and part.read_bytes() == content[:kept]
    assert len(hosts.requests_to(DOG)) == 1

    run(hosts, tmp_path, sources=["dreambench"], timeout=0.5)

    assert (tmp_path / "data" / "dreambench" / "dog" / "00.jpg").read_bytes() == content
    second = hosts.requests_to(DOG)[1]
    assert (second.range, second.status, second.sent) == (f"bytes={kept}-", 206, len(content) - kept)


@pytest.mark.parametrize("value", ["1", "ON", "true", " yes "])
def test_hf_hub_offline_fails_at_once_without_asking_anyone(
    hosts: FakeHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", value)

    with pytest.raises(RelbenchError) as info:
        run(hosts, tmp_path)

    assert str(info.value) == (
        "HF_HUB_OFFLINE is set: downloading needs the network; unset it (or set HF_HUB_OFFLINE=0) for this command"
    )
    assert hosts.log == []


def test_hf_hub_offline_0_downloads(hosts: FakeHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    bench, relation = run(hosts, tmp_path)
    assert (bench.downloaded, relation.downloaded) == (4, 3)


def test_present_file_with_other_content_is_downloaded_again(hosts: FakeHosts, tmp_path: Path) -> None:
    # E.g. the downscaled copy of the image: same name, other bytes.
    dest = tmp_path / "data" / "dreambench" / "cat" / "00.jpg"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"downscaled")

    bench, = run(hosts, tmp_path, sources=["dreambench"])

    assert dest.read_bytes() == GITHUB_FILES["dataset/cat/00.jpg"]
    assert bench.downloaded == 4


def test_hf_endpoint_comes_from_the_environment_and_token_goes_to_the_hub_only(
    hosts: FakeHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hosts.url + "/")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    run(hosts, tmp_path, hf_endpoint=None)

    hub = [r for r in hosts.log if "/datasets/" in r.path]
    github = [r for r in hosts.log if r.path.startswith("/google/")]
    assert hub and github
    assert {r.authorization for r in hub} == {"Bearer hf_test"}
    assert {r.authorization for r in github} == {None}


def test_unsafe_hub_path_is_refused(hosts: FakeHosts, tmp_path: Path) -> None:
    tree = f"/api/datasets/{REPO}/tree/{HUB_COMMIT}?recursive=true"
    hosts.json[tree] = ([{"type": "file", "path": "../escape.txt", "size": 1, "oid": "0" * 40}], {})

    with pytest.raises(RelbenchError, match=r"expected a relative path inside the data set, got '\.\./escape\.txt'"):
        run(hosts, tmp_path, sources=["dreamrelation"])
    assert not (tmp_path / "data" / "escape.txt").exists()


def test_unknown_source_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(RelbenchError, match=r"^--only: unknown source 'dreambooth'; expected one of dreambench, "):
        download(["dreambooth"], tmp_path, progress=False)


def test_progress_bar_goes_to_stderr(hosts: FakeHosts, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(hosts, tmp_path, sources=["dreambench"], progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "dreambench: 100%" in captured.err


# --- the committed DreamBench manifest ------------------------------------------------------


def test_committed_dreambench_manifest_is_consistent() -> None:
    manifest = load_dreambench_manifest()
    files = manifest["files"]
    assert manifest["repository"] == "google/dreambooth"
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["commit"])

    images = [f for f in files if f["path"].endswith(".jpg")]
    assert len(images) == 158
    assert all(f["path"].startswith("dataset/") and f["target"] == f["path"][len("dataset/"):] for f in images)
    assert all(re.fullmatch(r"[a-z0-9_]+/\d\d\.jpg", f["target"]) for f in images)
    per_subject = Counter(f["target"].split("/")[0] for f in images)
    assert len(per_subject) == 30
    assert set(per_subject.values()) <= {4, 5, 6}
    others = {f["target"]: f["path"] for f in files if not f["path"].endswith(".jpg")}
    assert others == {
        "LICENSE.md": "LICENSE.md",  # the licence sits at the repository root upstream
        "prompts_and_classes.txt": "dataset/prompts_and_classes.txt",
        "references_and_licenses.txt": "dataset/references_and_licenses.txt",
    }
    assert all(f["size"] > 0 for f in files)
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) and re.fullmatch(r"[0-9a-f]{40}", f["git_sha1"]) for f in files)
    assert len({f["sha256"] for f in files}) == len(files)
    assert len({f["target"] for f in files}) == len(files)


@pytest.mark.shared_data
def test_manifest_names_the_same_files_as_the_shared_copy(shared_data: Path) -> None:
    # The shared copy is downscaled (other bytes), but its layout is the one the manifest produces.
    folder = shared_data / "dreambench"
    shared = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {f["target"] for f in load_dreambench_manifest()["files"]} == shared


def test_manifest_errors_name_the_file_and_field(tmp_path: Path) -> None:
    manifest = json.loads(dreambench_manifest_path().read_text())
    manifest["files"][3]["size"] = "big"
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(RelbenchError) as info:
        load_dreambench_manifest(path)
    assert str(info.value) == f"{path}: files[3].size: expected a non-negative integer"
    assert os.fspath(path) in str(info.value)
