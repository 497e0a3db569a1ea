"""`panza schedule install|remove|status`: run `panza retune` periodically, at low priority.

Linux: a systemd user timer (Nice=19, idle I/O class); macOS: a launchd agent (LowPriorityIO, Nice);
elsewhere (or without systemd): one crontab line. Unit files go where the OS looks for them
($XDG_CONFIG_HOME/systemd/user, ~/Library/LaunchAgents), so tests can point those at a temp folder.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import paths
from .errors import PanzaError

NAME = "panza-retune"
MARK = "# panza-local retune"


def command(only_on_ac: bool = True, only_when_idle: bool = False) -> list[str]:
    """The command the scheduler runs (this interpreter, so the right venv is used)."""
    cmd = [sys.executable, "-m", "panza_local", "retune", "--nice"]
    return cmd + (["--only-on-ac"] if only_on_ac else []) + (["--only-when-idle"] if only_when_idle else [])


def _env_lines() -> dict[str, str]:
    env = {"PANZA_HOME": str(paths.home())}
    return env


def backend() -> str:
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux") and shutil.which("systemctl"):
        return "systemd"
    return "cron"


def systemd_dir() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "systemd" / "user"


def launchd_path() -> Path:
    return Path(os.environ.get("PANZA_LAUNCHD_DIR", Path.home() / "Library" / "LaunchAgents")) / f"local.{NAME}.plist"


def systemd_units(every_min: int, only_on_ac: bool, only_when_idle: bool = False) -> dict[str, str]:
    """The .service and .timer file contents."""
    env = "\n".join(f"Environment={k}={shlex.quote(v)}" for k, v in _env_lines().items())
    ac = "ConditionACPower=true\n" if only_on_ac else ""
    service = (f"[Unit]\nDescription=panza-local: learn from new mail\n{ac}\n[Service]\nType=oneshot\n{env}\n"
               f"ExecStart={shlex.join(command(only_on_ac, only_when_idle))}\nNice=19\nIOSchedulingClass=idle\n"
               "CPUWeight=20\n")
    timer = (f"[Unit]\nDescription=panza-local re-tune every {every_min} min\n\n[Timer]\nOnBootSec=10min\n"
             f"OnUnitInactiveSec={every_min}min\nPersistent=true\n\n[Install]\nWantedBy=timers.target\n")
    return {f"{NAME}.service": service, f"{NAME}.timer": timer}


def launchd_plist(every_min: int, only_on_ac: bool, only_when_idle: bool = False) -> str:
    args = "".join(f"<string>{a}</string>" for a in command(only_on_ac, only_when_idle))
    env = "".join(f"<key>{k}</key><string>{v}</string>" for k, v in _env_lines().items())
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
            '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n<plist version="1.0"><dict>'
            f"<key>Label</key><string>local.{NAME}</string><key>ProgramArguments</key><array>{args}</array>"
            f"<key>EnvironmentVariables</key><dict>{env}</dict><key>StartInterval</key><integer>{every_min * 60}"
            "</integer><key>LowPriorityIO</key><true/><key>Nice</key><integer>19</integer>"
            "<key>ProcessType</key><string>Background</string></dict></plist>\n")


def cron_line(every_min: int, only_on_ac: bool, only_when_idle: bool = False) -> str:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _env_lines().items())
    minutes = f"*/{every_min}" if every_min < 60 else "0"
    hours = "*" if every_min <= 60 else f"*/{max(1, every_min // 60)}"
    return f"{minutes} {hours} * * * {env} nice -n 19 {shlex.join(command(only_on_ac, only_when_idle))} {MARK}"


def _run(cmd: list[str], input_text: str | None = None) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, input=input_text, capture_output=True, text=True, timeout=30, check=False)
        return r.returncode, (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return 1, str(exc)


def install(every_min: int = 60, only_on_ac: bool = True, kind: str | None = None, activate: bool = True,
            only_when_idle: bool = False) -> dict:
    """Write the scheduler entry and (when `activate`) enable it. Returns what was done."""
    kind = kind or backend()
    out = {"backend": kind, "every_min": every_min, "files": [], "activated": False, "message": ""}
    if kind == "systemd":
        d = systemd_dir()
        d.mkdir(parents=True, exist_ok=True)
        for name, text in systemd_units(every_min, only_on_ac, only_when_idle).items():
            (d / name).write_text(text)
            out["files"].append(str(d / name))
        if activate:
            rc1, m1 = _run(["systemctl", "--user", "daemon-reload"])
            rc2, m2 = _run(["systemctl", "--user", "enable", "--now", f"{NAME}.timer"])
            out["activated"] = rc1 == 0 and rc2 == 0
            out["message"] = "" if out["activated"] else (
                f"unit files written but systemd did not enable them ({m2 or m1}); "
                f"run: systemctl --user enable --now {NAME}.timer")
    elif kind == "launchd":
        p = launchd_path()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(launchd_plist(every_min, only_on_ac, only_when_idle))
        out["files"].append(str(p))
        if activate:
            rc, msg = _run(["launchctl", "load", "-w", str(p)])
            out["activated"], out["message"] = rc == 0, msg
    elif kind == "cron":
        rc, current = _run(["crontab", "-l"])
        lines = [ln for ln in (current.splitlines() if rc == 0 else []) if MARK not in ln]
        lines.append(cron_line(every_min, only_on_ac, only_when_idle))
        if activate:
            rc, msg = _run(["crontab", "-"], "\n".join(lines) + "\n")
            out["activated"], out["message"] = rc == 0, msg
        out["files"].append("crontab")
    else:
        raise PanzaError(f"unknown scheduler {kind!r}", fix="use systemd, launchd or cron")
    return out


def remove(kind: str | None = None) -> dict:
    """Disable and delete the scheduler entry."""
    kind = kind or backend()
    removed = []
    if kind == "systemd":
        _run(["systemctl", "--user", "disable", "--now", f"{NAME}.timer"])
        for name in (f"{NAME}.service", f"{NAME}.timer"):
            p = systemd_dir() / name
            if p.exists():
                p.unlink()
                removed.append(str(p))
    elif kind == "launchd":
        p = launchd_path()
        if p.exists():
            _run(["launchctl", "unload", "-w", str(p)])
            p.unlink()
            removed.append(str(p))
    else:
        rc, current = _run(["crontab", "-l"])
        if rc == 0 and MARK in current:
            _run(["crontab", "-"], "\n".join(ln for ln in current.splitlines() if MARK not in ln) + "\n")
            removed.append("crontab")
    return {"backend": kind, "removed": removed}


def status(kind: str | None = None) -> dict:
    """Whether a scheduler entry is installed (and active, where the OS can tell)."""
    kind = kind or backend()
    if kind == "systemd":
        installed = (systemd_dir() / f"{NAME}.timer").exists()
        rc, msg = _run(["systemctl", "--user", "is-active", f"{NAME}.timer"])
        return {"backend": kind, "installed": installed, "active": rc == 0 and msg == "active"}
    if kind == "launchd":
        return {"backend": kind, "installed": launchd_path().exists(), "active": None}
    rc, current = _run(["crontab", "-l"])
    return {"backend": kind, "installed": rc == 0 and MARK in current, "active": None}


def low_priority(threads: int | None = None) -> None:
    """Lower this process's CPU and I/O priority (scheduled passes must not disturb the user)."""
    import contextlib

    import psutil

    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    with contextlib.suppress(OSError, AttributeError, psutil.Error):
        psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
    if threads:
        os.environ["PANZA_THREADS"] = str(threads)
        with contextlib.suppress(Exception):
            import torch

            torch.set_num_threads(threads)


def on_battery() -> bool:
    """True when the machine reports running on battery."""
    import psutil

    try:
        batt = psutil.sensors_battery()
    except (AttributeError, OSError, NotImplementedError):
        return False
    return bool(batt) and not batt.power_plugged


IDLE_LOAD = 0.5  # 1-minute load average per CPU under which the machine counts as idle


def busy_machine() -> str | None:
    """Why the machine is not idle (load average per CPU above IDLE_LOAD), or None when it is."""
    try:
        load = os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    except (OSError, AttributeError):
        return None
    return f"load {load:.2f} per CPU > {IDLE_LOAD}" if load > IDLE_LOAD else None
