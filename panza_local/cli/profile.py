"""`panza profile show|set|edit|seed`: who drafts are written as."""

from __future__ import annotations

from ._out import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("profile", help="your writing profile: name, role, greeting, sign-off, languages, length")
    ps = p.add_subparsers(dest="profile_cmd", metavar="ACTION", required=True)
    show = ps.add_parser("show", help="the profile drafts use (seeded from your mail until you save one)")
    add_json(show)
    show.set_defaults(func=show_cmd)
    st = ps.add_parser("set", help="set one field (\\n in a value is a line break)")
    st.add_argument("field", help="name, role, signoff, greeting, languages (comma separated), typical_words")
    st.add_argument("value")
    st.set_defaults(func=set_cmd)
    ed = ps.add_parser("edit", help="open profile.toml in $EDITOR")
    ed.set_defaults(func=edit_cmd)
    sd = ps.add_parser("seed", help="infer the profile from the mail you wrote and save it")
    add_json(sd)
    sd.set_defaults(func=seed_cmd)


def _human(data: dict) -> None:
    for k, v in data.items():
        if k == "source":
            continue
        shown = ", ".join(v) if isinstance(v, list) else (repr(v) if isinstance(v, str) and "\n" in v else v)
        print(f"{k:14} {shown}")
    print(f"({data['source']})")


def show_cmd(args) -> int:
    from dataclasses import asdict

    from .. import profile

    stored = profile.path().exists()
    data = {**asdict(profile.load()),
            "source": str(profile.path()) if stored else "seeded from your mail, not saved: `panza profile seed`"}
    emit(args, data, _human)
    return 0


def set_cmd(args) -> int:
    from .. import profile

    prof = profile.set_value(args.field, args.value)
    print(f"{args.field} = {getattr(prof, args.field)!r}  (saved to {profile.path()})")
    return 0


def seed_cmd(args) -> int:
    from dataclasses import asdict

    from .. import profile

    prof = profile.seed()
    profile.save(prof)
    emit(args, {**asdict(prof), "source": str(profile.path())}, _human)
    return 0


def edit_cmd(args) -> int:
    import os
    import shlex
    import subprocess

    from .. import profile
    from ..errors import ConfigError

    if not profile.path().exists():
        profile.save(profile.load())
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    subprocess.call([*shlex.split(editor), str(profile.path())])
    try:
        profile.load(seed_if_missing=False)
    except ConfigError as exc:
        print(f"warning: {exc}")
        return 1
    print(f"saved {profile.path()}")
    return 0
