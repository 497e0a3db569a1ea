"""`panza`: the command line. Each command group is one thin module with `register(subparsers)`."""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import sqlite3
import sys

from .. import __version__

# Command modules, in help order. A module registers its own sub-commands; heavy imports stay inside
# the functions they serve so `panza --help` stays instant.
COMMANDS = ["quickstart", "doctor", "config", "models", "sources", "ingest", "messages", "search", "playback",
            "index", "train", "adapters", "profile", "draft", "chat", "serve", "retune", "schedule", "eval"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="panza", description="Your personal writing assistant: learns how you write email, offline.")
    parser.add_argument("--version", action="version", version=f"panza-local {__version__}")
    parser.add_argument("--debug", action="store_true", help="log message contents (off by default)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if importlib.util.find_spec(f"panza_local.cli.{name}") is None:
            continue
        importlib.import_module(f"panza_local.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `panza` console script."""
    from .. import paths
    from ..errors import PanzaError

    paths.private_umask()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.debug:
        import os

        os.environ["PANZA_DEBUG"] = "1"
    if not getattr(args, "func", None):
        if args.command is None and "panza_local.cli.chat" in sys.modules:
            args = parser.parse_args(["chat"])
        else:
            parser.print_help()
            return 2
    try:
        return int(args.func(args) or 0)
    except PanzaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: nothing half-written was kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `panza messages export - | head`
        return 0
    except sqlite3.Error as exc:  # disk full, read-only home, busy past the timeout: say what to do
        from ..store import _explain

        print(f"error: {_explain(exc, paths.db_path())}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        print(f"error: {_disk_error(exc)}", file=sys.stderr)
        return 1


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _disk_error(exc: OSError):
    """A PanzaError naming the file and the fix for a full, read-only or forbidden disk."""
    from ..errors import StoreError

    where = exc.filename or "the panza home"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"the disk holding {where} is full ({exc.strerror}); what was committed is kept",
                          fix="free some disk space and run the same command again")
    return StoreError(f"cannot write {where} ({exc.strerror})",
                      fix="make the panza home writable, or point PANZA_HOME at a writable folder")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
