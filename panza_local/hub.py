"""A small Hugging Face hub client: the one piece of panza that downloads (`panza models pull`).

It speaks the hub's file-download protocol and nothing else: `HEAD {endpoint}/{repo}/resolve/{revision}/{path}`
answers with the file's size and hash (`X-Linked-Size` / `X-Linked-Etag` for LFS files, which redirect to a
CDN; `Content-Length` / `ETag` = git blob id for small files kept in git), and `GET` with `Range` fetches the
bytes, resuming a `.part` file where the last attempt stopped. Every file is verified before it is renamed into
place: against the sha256 the catalogue pins, else against the hub's own hash; a file neither can vouch for is
refused. Standard library only (urllib), so no other library's hub logic or offline switches are involved,
and nothing here runs unless a pull asks for it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__, paths
from .errors import ConfigError, ModelNotFound, OfflineError, PanzaError

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20
SPACE_MARGIN = 64 << 20  # keep this much free beyond the file itself: a full disk breaks SQLite and logs too
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class ChecksumError(PanzaError):
    """Downloaded or assembled bytes are not the ones the catalogue (or the hub) vouches for."""


@dataclass(frozen=True)
class Remote:
    """What the hub says about one file before any byte of it is downloaded."""

    url: str  # where the bytes are: the resolve URL, or the CDN URL it redirects to
    size: int
    sha256: str = ""  # the hub's own sha256 (LFS files)
    git_sha1: str = ""  # git blob id (small files kept in git, no LFS)
    commit: str = ""


def endpoint(settings=None) -> str:
    """The hub to download from: the `hub_endpoint` setting, else $HF_ENDPOINT (mirrors), else huggingface.co."""
    if settings is None:
        from . import config

        settings = config.load()
    url = (getattr(settings, "hub_endpoint", "") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"hub endpoint {url!r} is not an http(s) URL",
                          fix="panza config set hub_endpoint https://huggingface.co (or your mirror's URL)")
    return url.rstrip("/")


def resolve_url(repo: str, path: str, revision: str = "main", base: str = DEFAULT_ENDPOINT) -> str:
    """`{base}/{repo}/resolve/{revision}/{path}`, quoted the way the hub expects."""
    q = urllib.parse.quote
    return f"{base.rstrip('/')}/{repo}/resolve/{q(revision, safe='')}/{q(path)}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Redirects are followed by hand: the first answer carries the hub's headers (size, hash), and a token
    # meant for the hub must not travel on to the CDN.
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _headers(url: str, base_host: str) -> dict[str, str]:
    h = {"User-Agent": f"panza-local/{__version__}", "Accept-Encoding": "identity"}
    token = os.environ.get("HF_TOKEN")
    if token and urllib.parse.urlsplit(url).netloc == base_host:
        h["Authorization"] = f"Bearer {token}"
    return h


def _offline(url: str, exc: BaseException, fix: str) -> OfflineError:
    host = urllib.parse.urlsplit(url).netloc
    return OfflineError(f"cannot reach {host} ({getattr(exc, 'reason', exc)}): this machine looks offline, "
                        "or the hub endpoint is wrong", fix=fix)


def _request(url: str, method: str, *, base_host: str, fix: str, extra: dict | None = None,
             timeout: float = 30.0, hops: int = 8):
    """(response, first response's headers) for `url`, following redirects by hand."""
    first = None
    for _ in range(hops):
        req = urllib.request.Request(url, method=method, headers={**_headers(url, base_host), **(extra or {})})
        try:
            resp = _OPENER.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                first = first or exc.headers
                url = urllib.parse.urljoin(url, exc.headers["Location"])
                exc.close()
                continue
            raise _http_error(exc, url, fix) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise _offline(url, exc, fix) from None
        return resp, url, first or resp.headers
    raise OfflineError(f"too many redirects from {url}", fix=fix)


def _http_error(exc: urllib.error.HTTPError, url: str, fix: str) -> PanzaError:
    if exc.code == 404:
        return ModelNotFound(f"the hub has no file at {url} (HTTP 404)",
                             fix="check the catalogue entry's hf_repo, file and revision; " + fix)
    if exc.code in (401, 403):
        return OfflineError(f"the hub refused {url} (HTTP {exc.code}): the model may need a login or a licence "
                            "accepted on its page", fix="set HF_TOKEN, or " + fix)
    if exc.code == 416:
        return OfflineError(f"the hub refused to resume {url} (HTTP 416)", fix="run the same command again")
    return OfflineError(f"the hub answered HTTP {exc.code} for {url}", fix="try again later, or " + fix)


def _etag(value: str | None) -> str:
    return (value or "").strip().removeprefix("W/").strip('"').lower()


def head(repo: str, path: str, revision: str = "main", *, base: str = DEFAULT_ENDPOINT, fix: str = "") -> Remote:
    """Ask the hub about one file: its size, its hash, and where its bytes are."""
    url = resolve_url(repo, path, revision, base)
    resp, final, first = _request(url, "HEAD", base_host=urllib.parse.urlsplit(base).netloc, fix=fix)
    resp.close()
    linked = _etag(first.get("X-Linked-Etag"))
    etag = _etag(first.get("ETag"))
    size = first.get("X-Linked-Size") or resp.headers.get("Content-Length") or first.get("Content-Length")
    return Remote(url=final, size=int(size or 0), commit=first.get("X-Repo-Commit", "") or "",
                  sha256=linked if _HEX64.match(linked) else "",
                  git_sha1=etag if not linked and _HEX40.match(etag) else "")


def free_space(folder: Path) -> int:
    """Bytes free on the file system that holds `folder`."""
    return shutil.disk_usage(folder).free


def check_space(folder: Path, needed: int, free_bytes: int | None = None) -> None:
    """Refuse before writing when `needed` bytes (plus a margin) will not fit in `folder`."""
    free = free_space(folder) if free_bytes is None else free_bytes
    if needed > 0 and needed + SPACE_MARGIN > free:
        raise PanzaError(f"not enough disk space in {folder}: need {_mb(needed + SPACE_MARGIN)} MB, "
                         f"{_mb(free)} MB free", fix=f"free some space on the disk that holds {folder} "
                         "(or point PANZA_HOME at a bigger disk) and run the same command again")


def _mb(n: int) -> int:
    return max(0, round(n / 2**20))


def git_blob_sha1(path: Path) -> str:
    """The id git gives the file's content (what the hub sends as ETag for files kept in git)."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def expected_hash(remote: Remote, pinned: str, what: str) -> str:
    """The sha256 a download must match: the pinned one (checked against the hub's) or the hub's own."""
    if pinned and remote.sha256 and pinned != remote.sha256:
        raise ChecksumError(f"{what}: the hub now serves a file with sha256 {remote.sha256}, not the "
                            f"{pinned} the catalogue pins; nothing was downloaded",
                            fix="update panza-local (its catalogue), or download the file you trust by hand and "
                                "`panza models add` it")
    if pinned or remote.sha256 or remote.git_sha1:
        return pinned or remote.sha256
    raise ChecksumError(f"{what}: the catalogue pins no sha256 and the hub sent no hash to check it against; "
                        "refusing to install an unverified file", fix="download it by hand, check it, then "
                        "`panza models add FILE --name NAME`")


def fetch(remote: Remote, dest: Path, *, sha256: str = "", what: str = "", fix: str = "",
          base: str = DEFAULT_ENDPOINT, on_progress: Progress | None = None, free_bytes: int | None = None) -> Path:
    """Download `remote` to `dest`, resuming `dest.part`, verify it, and move it into place (0600).

    An interrupted transfer keeps the `.part` file and raises OfflineError: the same call resumes it. Bytes that
    do not match the expected hash are deleted and raise ChecksumError.
    """
    what = what or dest.name
    want = expected_hash(remote, sha256, what)
    paths.ensure_dir(dest.parent)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if remote.size and have > remote.size:  # a stale part of some other file: start again
        part.unlink()
        have = 0
    check_space(dest.parent, (remote.size - have) if remote.size else 0, free_bytes)
    digest = hashlib.sha256()
    if have:
        with open(part, "rb") as fh:  # the resumed hash covers the bytes already on disk
            while block := fh.read(CHUNK):
                digest.update(block)
    if on_progress:
        on_progress(have, remote.size)
    if not remote.size or have < remote.size:
        have, digest = _transfer(remote, part, have, digest, what, fix, base, on_progress)
    if remote.size and have != remote.size:
        raise OfflineError(f"{what}: the download stopped at {have} of {remote.size} bytes",
                           fix="run the same command again: it resumes where it stopped")
    got = digest.hexdigest()
    ok = got == want if want else git_blob_sha1(part) == remote.git_sha1
    if not ok:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{what}: downloaded bytes have sha256 {got}, expected "
                            f"{want or 'git blob ' + remote.git_sha1}; the corrupt file was deleted",
                            fix="run the same command again; if it happens again, the mirror or the network is "
                                "altering files: download by hand and check it")
    os.chmod(part, paths.FILE_MODE)
    os.replace(part, dest)
    return dest


def _transfer(remote: Remote, part: Path, have: int, digest, what: str, fix: str, base: str,
              on_progress: Progress | None):
    extra = {"Range": f"bytes={have}-"} if have else {}
    resp, _, _ = _request(remote.url, "GET", base_host=urllib.parse.urlsplit(base).netloc, fix=fix, extra=extra)
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start from the first byte
            have, digest = 0, hashlib.sha256()
            part.unlink(missing_ok=True)
        elif have and not (resp.headers.get("Content-Range") or "").startswith(f"bytes {have}-"):
            raise OfflineError(f"{what}: the server resumed at the wrong offset", fix="run the same command again")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, paths.FILE_MODE)
        with os.fdopen(fd, "ab") as fh:
            try:
                while block := resp.read(CHUNK):
                    fh.write(block)
                    digest.update(block)
                    have += len(block)
                    if on_progress:
                        on_progress(have, remote.size)
            except (OSError, http.client.HTTPException) as exc:
                fh.flush()
                os.fsync(fh.fileno())
                raise OfflineError(f"{what}: the connection dropped at {have} of {remote.size} bytes ({exc})",
                                   fix="run the same command again: it resumes where it stopped") from None
            fh.flush()
            os.fsync(fh.fileno())
    return have, digest
