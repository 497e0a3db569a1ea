"""`panza config show|path|set`."""

from __future__ import annotations

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("config", help="show or change settings (CLI > env > config.toml > defaults)")
    cs = p.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    show = cs.add_parser("show", help="every setting, its value, where it comes from and what it does")
    add_json(show)
    show.set_defaults(func=show_cmd)
    path = cs.add_parser("path", help="where config.toml lives")
    path.set_defaults(func=lambda a: print(_config_path()) or 0)
    st = cs.add_parser("set", help="store one setting in config.toml")
    st.add_argument("name")
    st.add_argument("value", help="lists are comma separated")
    st.set_defaults(func=set_cmd)


def _config_path():
    from .. import paths

    return paths.config_path()


def show_cmd(args) -> int:
    from dataclasses import asdict

    from .. import config

    settings, origin = config.load(), config.sources()
    data = {k: {"value": v, "source": origin[k], "doc": config.field_doc(k)} for k, v in asdict(settings).items()}

    def human(d):
        for k, row in d.items():
            print(f"{k:22} = {row['value']!r:24} [{row['source']}]  {row['doc']}")

    emit(args, data, human)
    return 0


def set_cmd(args) -> int:
    from .. import config

    value = config.set_value(args.name, args.value)
    print(f"{args.name} = {value!r}  (saved to {_config_path()})")
    return 0
