"""Shared fixtures: a private temp home per test, the shared data folder, the embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PANZA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def _never_the_real_home(tmp_path_factory):
    """A test that does not ask for `home` still never writes to the user's real one (the fused-kernel
    cache is built on first use, from whichever test trains first)."""
    if "PANZA_HOME" not in os.environ:
        os.environ["PANZA_HOME"] = str(tmp_path_factory.mktemp("session-home") / "home")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh PANZA_HOME (and no stray PANZA_* settings from the environment)."""
    for key in list(os.environ):
        if key.startswith("PANZA_") and key != "PANZA_SHARED_DATA":
            monkeypatch.delenv(key, raising=False)
    h = tmp_path / "home"
    monkeypatch.setenv("PANZA_HOME", str(h))
    return h


def needs_shared(path: Path = SHARED) -> Path:
    """`path` (a file or folder of ../shared/data), or a skip that says why."""
    if not path.exists():
        pytest.skip(f"needs the shared data set at {SHARED} (absent in a fresh clone)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says why."""
    return needs_shared()


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """Path of the embedded SmolLM2-135M GGUF."""
    from panza_local import catalogue

    return catalogue.embedded_path("smollm2-135m")


# ---------------------------------------------------------------------------------------------------------
# Test-wide network guard: any connect() or DNS lookup to a non-loopback address fails the test that made
# it (the call itself raises OSError, so code under test sees what an offline machine gives it). A test that
# checks offline behaviour on purpose marks itself @pytest.mark.allow_network_attempt.

import ipaddress
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
_violations: list[str] = []


class NetworkBlocked(OSError):
    """Raised by the guard instead of touching the network."""


def _is_local(host) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host)
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard(kind: str, host) -> None:
    if not _is_local(host):
        _violations.append(f"{kind} {host}")
        raise NetworkBlocked(f"test network guard: {kind} to non-loopback {host!r} blocked")


_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard("connect", address[0])
    return _real_connect(self, address)


def _connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _guard("connect", address[0])
    return _real_connect_ex(self, address)


def _getaddrinfo(host, *args, **kwargs):
    _guard("getaddrinfo", host)
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = _connect, _connect_ex, _getaddrinfo


@pytest.fixture(autouse=True)
def _no_network(request):
    """Fail any test that tried to reach a non-loopback address (unless it is marked as expecting to)."""
    start = len(_violations)
    yield
    new = _violations[start:]
    if new and not request.node.get_closest_marker("allow_network_attempt"):
        pytest.fail(f"test tried to use the network: {new}")


HEAVY_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config, items):
    """A heavy test is minutes of real work (training, a whole pipeline), several times that on a busy laptop:
    it gets HEAVY_TIMEOUT_S unless it names its own, so pyproject's 600 s cannot fail it on a loaded machine.
    The timeout only catches a hang: on two cores shared with a CPU hog each and another test suite, the
    quickstart voice test took five times as long as on idle ones, and must not fail there."""
    for item in items:
        if item.get_closest_marker("heavy") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(HEAVY_TIMEOUT_S))
