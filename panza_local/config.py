"""Typed settings. One precedence: CLI > environment (PANZA_<NAME>) > config.toml > defaults."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import paths
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class Settings:
    """Every knob panza-local has. Each field's docstring is what `panza config show` prints."""

    model: str = "smollm2-135m"
    """Active base model: a catalogue name (`panza models list`) or a name given to `panza models add`."""
    n_ctx: int = 4096
    """Context window (tokens) the engine allocates."""
    threads: int = 0
    """CPU threads for generation and training; 0 = one per physical core."""
    temperature: float = 0.7
    """Sampling temperature for drafts (0 = greedy)."""
    max_tokens: int = 400
    """Longest draft, in tokens."""
    seed: int = -1
    """Sampling seed; -1 = random each time."""
    gpu_layers: int = 0
    """Layers to offload to a GPU when llama.cpp was built with one (-1 = all)."""
    merge_adapter: bool = True
    """On CPU, serve an adapter merged into a BF16 or Q8_0 copy of a Q4_1/Q5_1 base (the embedded model), and
    play back and draft without an adapter on such a copy of the base: faster prompts, built once in a few
    seconds (serving.py); false loads the shipped file and applies the adapter at run time."""
    flash_attention: bool = True
    """llama.cpp's fused attention for drafts, chat and playback: the prompt before a draft's first token is
    evaluated faster (bench/results/draft.md); false uses the separate matrix products llama-cpp-python defaults
    to (same results up to rounding)."""
    reflow: bool = True
    """Drafts join the lines a model wraps inside a paragraph (it learned hard wraps from plain-text mail, which
    mail clients add at ~72-78 characters): each paragraph is one line, for the mail client to wrap. false
    keeps the model's line breaks (a plain-text user who wraps by hand)."""
    embedding_model: str = "all-minilm-l6-v2"
    """Embedding model for the retrieval index (catalogue name)."""
    chroma_url: str = ""
    """Empty: the embedded Chroma store under the home. Else a Chroma server URL (http://host:port)."""
    engine_url: str = ""
    """Empty: generate on this machine (llama.cpp in process). Else the URL of an OpenAI-compatible server
    that holds your model and adapter (llama.cpp server, Ollama, vLLM), e.g. http://gpu-box:8080."""
    engine_model: str = ""
    """Model name sent to engine_url (Ollama: the Modelfile's name; vLLM: the LoRA's name); empty = `model`."""
    engine_api_key: str = ""
    """Bearer token for engine_url, when the server asks for one."""
    hub_endpoint: str = ""
    """Where `panza models pull` downloads from: empty = $HF_ENDPOINT or https://huggingface.co; set a mirror's
    URL here when you are behind one."""
    rag_k: int = 3
    """Past emails retrieved as style examples for each draft."""
    rag_min_score: float = 0.25
    """Cosine similarity under which a retrieved email is not used."""
    raft_context_share: float = 0.55
    """Share of training prompts that carry retrieved context (Panza used 0.55)."""
    me: list[str] = field(default_factory=list)
    """Your email addresses: messages From/Sender these are yours (training targets)."""
    user_name: str = ""
    """Your name, as you sign emails (seeded from your mail)."""
    train_backend: str = "auto"
    """Training backend: auto, torch or mlx."""
    train_preset: str = "standard"
    """Training preset: quick, standard or thorough."""
    train_native_kernels: bool = True
    """CPU training: fused C kernels for the int8 step, built with the system C compiler on first use
    (x86-64 with AVX-512, or AVX2 + FMA + F16C); false = torch's own element-wise ops (same results,
    slower)."""
    serve_host: str = "127.0.0.1"
    """Address `panza serve` binds to. Anything but loopback requires api_key."""
    serve_port: int = 8765
    """Port `panza serve` listens on."""
    api_key: str = ""
    """Bearer token required by `panza serve` (mandatory on a non-loopback bind)."""
    retune_min_new: int = 5
    """New emails needed before a background re-tune trains a new adapter."""
    retune_interval_min: int = 60
    """Minimum minutes between two background re-tunes."""
    retune_minutes: float = 3.0
    """Training budget of one re-tune pass, in minutes (the steps fitted to this machine's measured step
    time, as `panza train --minutes`); 0 = the preset's full steps."""
    debug: bool = False
    """Log message bodies, subjects and addresses (off: logs carry only counts and ids)."""


def field_doc(name: str) -> str:
    """The docstring of setting `name` (read from the source, so it never drifts)."""
    return _docs().get(name, "")


def _docs() -> dict[str, str]:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(Settings))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if isinstance(prev, ast.AnnAssign) and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[prev.target.id] = str(node.value.value)  # type: ignore[union-attr]
    return docs


def _field(name: str) -> dataclasses.Field:
    for f in fields(Settings):
        if f.name == name:
            return f
    raise ConfigError(f"unknown setting {name!r}", fix="see `panza config show` for the list of settings")


def coerce(name: str, raw: Any) -> Any:
    """Turn `raw` (a string from env/CLI, or a TOML value) into the type of setting `name`."""
    f = _field(name)
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("list"):
            if isinstance(raw, str):
                return [p.strip() for p in raw.split(",") if p.strip()]
            return [str(p) for p in raw]
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            low = str(raw).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name} expects {kind}, got {raw!r}",
                          fix=f"panza config set {name} <{kind}>") from None


def read_file(path: Path | None = None) -> dict[str, Any]:
    """The settings stored in config.toml (empty when there is none)."""
    path = path or paths.config_path()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", fix=f"fix or delete {path}") from None
    return {k: coerce(k, v) for k, v in data.items()}


def env_values() -> dict[str, Any]:
    """Settings given as PANZA_<NAME> environment variables."""
    out = {}
    for f in fields(Settings):
        raw = os.environ.get(f"PANZA_{f.name.upper()}")
        if raw is not None:
            out[f.name] = coerce(f.name, raw)
    return out


def load(cli: dict[str, Any] | None = None) -> Settings:
    """Settings with CLI > env > file > defaults applied (None values in `cli` are ignored)."""
    values: dict[str, Any] = {}
    values.update(read_file())
    values.update(env_values())
    values.update({k: coerce(k, v) for k, v in (cli or {}).items() if v is not None})
    return Settings(**values)


def sources(cli: dict[str, Any] | None = None) -> dict[str, str]:
    """Where each setting's effective value comes from: cli, env, file or default."""
    file_v, env_v = read_file(), env_values()
    out = {}
    for f in fields(Settings):
        if cli and cli.get(f.name) is not None:
            out[f.name] = "cli"
        elif f.name in env_v:
            out[f.name] = "env"
        elif f.name in file_v:
            out[f.name] = "file"
        else:
            out[f.name] = "default"
    return out


def set_value(name: str, raw: str) -> Any:
    """Persist one setting to config.toml (validated, atomic, 0600) and return its typed value."""
    import tomli_w

    value = coerce(name, raw)
    data = read_file()
    data[name] = value
    paths.write_private(paths.config_path(), tomli_w.dumps(data))
    return value
