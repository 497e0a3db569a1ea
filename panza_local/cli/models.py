"""`panza models list|pull|add|use`."""

from __future__ import annotations

import contextlib
import sys

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("models", help="base models: list the catalogue, pull, add a file, pick one")
    ms = p.add_subparsers(dest="models_cmd", metavar="ACTION", required=True)
    ls = ms.add_parser("list", help="catalogue models and the ones you added, with what is on this machine")
    add_json(ls)
    ls.set_defaults(func=list_cmd)
    pull = ms.add_parser("pull", help="download a catalogue model (the only command that uses the network)")
    pull.add_argument("name")
    add_json(pull)
    pull.set_defaults(func=pull_cmd)
    add = ms.add_parser("add", help="register a GGUF file you already have")
    add.add_argument("path")
    add.add_argument("--name", required=True, help="the name you will use it by")
    add_json(add)
    add.set_defaults(func=add_cmd)
    use = ms.add_parser("use", help="make a model the active base model")
    use.add_argument("name")
    use.set_defaults(func=use_cmd)


def list_cmd(args) -> int:
    from dataclasses import asdict

    from .. import catalogue, config

    active = config.load().model
    rows = []
    for m in catalogue.load_catalogue().values():
        path, state = catalogue.status(m)
        verified = "package" if m.kind == "embedding" else "pinned" if m.pinned else "hub hash"
        rows.append({**asdict(m), "present": path is not None, "path": path, "state": state,
                     "pinned": m.pinned, "verified": verified, "active": m.name == active,
                     "trainable_by": m.trainable_by})
    for name, row in catalogue.user_models().items():
        rows.append({"name": name, "kind": "chat", "arch": row["arch"], "display": f"added: {row['path']}",
                     "ram_gb": None, "license": "?", "present": True, "path": row["path"], "state": "added",
                     "pinned": bool(row.get("sha256")), "verified": "added", "active": name == active,
                     "trainable_by": catalogue.trainable_by(row["arch"])})

    def human(rows):
        for r in rows:
            mark = "*" if r["active"] else " "
            state = "on disk" if r["present"] else "not pulled"
            ram = f"{r['ram_gb']:>4} GB" if r.get("ram_gb") else "    ?  "
            trains = ("" if r["kind"] != "chat" else "  (cannot be trained)" if not r["trainable_by"]
                      else "  (trains on Apple Silicon only)" if r["trainable_by"] == ["mlx"] else "")
            print(f"{mark} {r['name']:18} {r['kind']:9} {ram}  {state:10}  {r['verified']:8}  {r['display']}  "
                  f"[{r['license']}]{trains}")
        print("\n* = active.  verified: pinned = sha256 in the catalogue; hub hash = checked against the hash the hub "
              "sends;\npackage = installed with pip.  panza models pull NAME | panza models add FILE.gguf --name NAME | "
              "panza models use NAME")

    emit(args, rows, human)
    return 0


def pull_cmd(args) -> int:
    from .. import catalogue

    with _download_bar(enabled=not args.json) as update:
        path = catalogue.pull(args.name, on_progress=update)
    emit(args, {"name": args.name, "path": str(path)}, lambda d: print(f"{d['name']}: {d['path']}"))
    return 0


@contextlib.contextmanager
def _download_bar(enabled: bool = True):
    """A byte progress bar (size, speed, ETA) on stderr; yields `update(done, total, note)`."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total, note="": None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from ._out import console

    with Progress(TextColumn("[bold]{task.fields[note]}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console()) as bar:
        task = bar.add_task("pull", total=None, note="")

        def update(done: int, total: int, note: str = "") -> None:
            bar.update(task, completed=done, total=total or None, note=note)

        yield update


def add_cmd(args) -> int:
    from .. import catalogue

    info = catalogue.add(args.path, args.name)
    emit(args, info, lambda d: print(f"added {d['name']} ({d['arch']}, {d['path']}); "
                                     f"`panza models use {d['name']}` to make it active\n{d['training']}"))
    return 0


def use_cmd(args) -> int:
    from .. import catalogue, config

    path = catalogue.resolve(args.name)  # raises with the fix when it is not on this machine
    config.set_value("model", args.name)
    print(f"active model: {args.name} ({path})")
    return 0
