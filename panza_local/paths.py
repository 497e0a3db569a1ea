"""One home for all state: platformdirs' user data dir, or $PANZA_HOME. Dirs 0700, files 0600."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

APP = "panza-local"
DIR_MODE = 0o700
FILE_MODE = 0o600


def home() -> Path:
    """The panza home directory (created 0700 on first use)."""
    env = os.environ.get("PANZA_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir(APP, appauthor=False))
    return ensure_dir(path)


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) with mode 0700 and return it."""
    path = Path(path)
    if not path.is_dir():
        old = os.umask(0o077)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        finally:
            os.umask(old)
    with contextlib.suppress(PermissionError):
        if path.stat().st_mode & 0o777 != DIR_MODE and path.owner() == _me():
            path.chmod(DIR_MODE)
    return path


def _me() -> str:
    import getpass

    return getpass.getuser()


def private_umask() -> None:
    """Make every file this process creates 0600 and every dir 0700 (called once at CLI/TUI start)."""
    os.umask(0o077)


def subdir(name: str) -> Path:
    """A 0700 subdirectory of the home (`chroma`, `models`, `adapters`, ...)."""
    return ensure_dir(home() / name)


def db_path() -> Path:
    return home() / "panza.db"


def config_path() -> Path:
    return home() / "config.toml"


def write_private(path: Path, data: bytes | str) -> Path:
    """Atomically write `data` to `path` with mode 0600 (temp file + fsync + rename)."""
    path = Path(path)
    ensure_dir(path.parent)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_symlink(target: str | Path, link: Path) -> None:
    """Point `link` at `target` atomically (create a temp link, then rename over the old one)."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(str(target), tmp)
    os.replace(tmp, link)
