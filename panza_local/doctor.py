"""What this machine can do and whether panza's state is healthy (`panza doctor`)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from . import __version__, catalogue, config, paths, store
from .errors import PanzaError

_CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_tile", "neon")


def cpu() -> dict:
    """CPU model and the instruction-set features llama.cpp and torch care about."""
    info = {"arch": platform.machine(), "model": platform.processor() or "", "features": []}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("model name") and not info["model"].replace("x86_64", "").strip():
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                info["features"] = [f for f in _CPU_FLAGS if f in flags or (f == "neon" and "asimd" in flags)]
                break
    elif sys.platform == "darwin":
        info["features"] = ["neon"] if platform.machine() == "arm64" else []
    return info


def accelerators(deep: bool = False) -> dict:
    """GPU / MPS / MLX availability. `deep` imports torch to ask it (slow: ~2 s)."""
    out = {
        "nvidia_smi": bool(shutil.which("nvidia-smi")),
        "apple_silicon": sys.platform == "darwin" and platform.machine() == "arm64",
        "mlx_installed": importlib.util.find_spec("mlx") is not None,
        "torch_installed": importlib.util.find_spec("torch") is not None,
    }
    if out["nvidia_smi"]:
        try:
            res = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 check=False, capture_output=True, text=True, timeout=5)
            out["gpus"] = [g.strip() for g in res.stdout.splitlines() if g.strip()]
        except (OSError, subprocess.SubprocessError):
            out["gpus"] = []
    if deep and out["torch_installed"]:
        import torch

        out["torch"] = torch.__version__
        out["torch_device"] = ("cuda" if torch.cuda.is_available()
                               else "mps" if torch.backends.mps.is_available() else "cpu")
        if out["torch_device"] == "cpu":
            from .train.torch import int8, native

            # what `panza train` on this CPU runs: int8 products (VNNI), and the fused kernels (AVX-512 or
            # AVX2 + FMA + F16C, and a C compiler; built into <home>/cache/native on first use, here if not yet)
            out["cpu_int8"], out["cpu_fused_kernels"] = int8.available(), native.lib() is not None
    return out


def memory() -> dict:
    import psutil

    vm = psutil.virtual_memory()
    return {"total_gb": round(vm.total / 2**30, 1), "available_gb": round(vm.available / 2**30, 1)}


def llama_build() -> dict:
    """llama-cpp-python version and llama.cpp's system info line (CPU features it was built with)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None:
        return {"installed": False}
    from importlib.metadata import version

    from . import engine

    return {"installed": True, "version": version("llama-cpp-python"), "system_info": engine.system_info()}


def models() -> list[dict]:
    """Every catalogue chat model and user-added model, with whether it is on this machine."""
    rows = []
    for m in catalogue.load_catalogue().values():
        if m.kind != "chat":
            continue
        path, state = catalogue.status(m)  # cheap: doctor never downloads or assembles a model
        rows.append({"name": m.name, "present": path is not None, "path": path, "embedded": bool(m.package),
                     "state": state, "pinned": m.pinned})
    for name, row in catalogue.user_models().items():
        rows.append({"name": name, "present": Path(row["path"]).exists(), "path": row["path"], "embedded": False})
    return rows


def engine_info(settings) -> dict:
    """Which engine generates: llama.cpp in this process, or the OpenAI-compatible server at engine_url."""
    if not settings.engine_url:
        return {"kind": "local", "url": None, "model": settings.model}
    from . import remote

    return {"kind": "remote", "url": settings.engine_url, "model": remote.model_name(settings), **remote.ping(settings)}


def store_counts(conn) -> dict[str, int]:
    """Row counts the status views show (messages, mine, documents, pairs, indexed, adapters, sources), each
    from the module that owns its table."""
    from .ingest import messages
    from .playback import count_ok
    from .retrieval import index
    from .train import registry

    c = messages.counts(conn)
    return {"messages": c["messages"], "mine": c["mine"], "documents": c["documents"], "pairs": count_ok(conn),
            "indexed": index.count(conn), "adapters": registry.count(conn), "sources": c["sources"]}


def disk(home: Path | None = None) -> dict:
    """What the home holds on disk: bytes per top-level folder (and the store's files at its root), and the
    faster copies of models (`serving.py`: `*.serve-*.gguf` in cache/serving and beside adapters), which
    are safe to delete: each is rebuilt when it is next needed."""
    home = Path(home or paths.home())
    by: dict[str, int] = {}
    copies = {"files": 0, "bytes": 0}
    stack = [home]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                    continue
                size = e.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            rel = Path(e.path).relative_to(home)
            key = rel.parts[0] if len(rel.parts) > 1 else "(files)"
            by[key] = by.get(key, 0) + size
            if ".serve-" in e.name and e.name.endswith(".gguf"):
                copies["files"] += 1
                copies["bytes"] += size
    return {"total_bytes": sum(by.values()), "by_folder": dict(sorted(by.items(), key=lambda kv: -kv[1])),
            "model_copies": copies}


def report(deep: bool = False) -> dict:
    """Everything `panza doctor` shows, as one dict (the --json output)."""
    settings = config.load()
    conn = store.connect()
    try:
        health = store.health(conn)
        counts = store_counts(conn)
    finally:
        conn.close()
    try:
        embedded = str(catalogue.resolve("smollm2-135m"))
    except PanzaError:
        embedded = None
    try:
        embedder = str(catalogue.embedding_model_dir(settings.embedding_model))
    except PanzaError:
        embedder = None
    return {
        "version": __version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu(),
        "memory": memory(),
        "accelerators": accelerators(deep),
        "llama_cpp": llama_build(),
        "home": str(paths.home()),
        "active_model": settings.model,
        "engine": engine_info(settings),
        "models": models(),
        "embedded_model": embedded,
        "embedding_model": embedder,
        "store": health,
        "counts": counts,
        "disk": disk(),
    }
