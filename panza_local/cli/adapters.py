"""`panza adapters list|use|rm|export`."""

from __future__ import annotations

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("adapters", help="list, switch, remove or export trained adapters")
    cs = p.add_subparsers(dest="adapters_cmd", metavar="ACTION", required=True)
    ls = cs.add_parser("list", help="every adapter with its metrics; * marks the one served")
    add_json(ls)
    ls.set_defaults(func=list_cmd)
    use = cs.add_parser("use", help="serve adapter ID from now on ('none': the base model alone)")
    use.add_argument("id")
    add_json(use)
    use.set_defaults(func=use_cmd)
    rm = cs.add_parser("rm", help="delete an adapter and its files")
    rm.add_argument("id")
    add_json(rm)
    rm.set_defaults(func=rm_cmd)
    ex = cs.add_parser("export", help="copy an adapter out as GGUF, PEFT or an Ollama Modelfile")
    ex.add_argument("id")
    ex.add_argument("--format", choices=["gguf", "peft", "ollama"], default="gguf")
    ex.add_argument("--out", default=None, help="target file or folder (default: next to you, named by id)")
    add_json(ex)
    ex.set_defaults(func=export_cmd)


def _brief(r: dict) -> dict:
    m = r.get("metrics") or {}
    return {"id": r["id"], "current": r.get("current", False), "status": r["status"], "base_model": r["base_model"],
            "created_at": r["created_at"], "val_loss_before": m.get("val_loss_before"),
            "val_loss_after": m.get("val_loss_after"), "n_train": m.get("n_train"), "gguf": r["gguf"],
            "serving_copy": _copy(r["gguf"])}


def _copy(gguf: str) -> str | None:
    from .. import serving

    out = serving.copy_path(gguf)
    return str(out) if out.exists() else None


def list_cmd(args) -> int:
    from ..train import registry

    rows = [_brief(r) for r in registry.list_()]

    def human(d):
        if not d["adapters"]:
            print("no adapters yet: run `panza train`")
        for r in d["adapters"]:
            loss = (f"val {r['val_loss_before']:.3f} -> {r['val_loss_after']:.3f}"
                    if r["val_loss_after"] is not None else "")
            print(f"{'*' if r['current'] else ' '} {r['id']}  {r['status']:8} {r['base_model']:16} "
                  f"{r['created_at']}  {loss}{'  (merged copy)' if r['serving_copy'] else ''}")

    emit(args, {"adapters": rows, "current": next((r["id"] for r in rows if r["current"]), None)}, human)
    return 0


def use_cmd(args) -> int:
    from ..train import registry

    row = registry.use(args.id)
    emit(args, {"current": row["id"] if row else None},
         lambda d: print(f"now serving {d['current']}" if d["current"] else "now serving the base model alone"))
    return 0


def rm_cmd(args) -> int:
    from ..train import registry

    row = registry.rm(args.id)
    emit(args, {"removed": row["id"]}, lambda d: print(f"removed {d['removed']}"))
    return 0


def export_cmd(args) -> int:
    from ..train import registry

    out = registry.export(args.id, args.format, args.out)
    emit(args, {"id": args.id, "format": args.format, "path": str(out)}, lambda d: print(d["path"]))
    return 0
