"""Scheduler entries: contents, install/remove round trip into temp folders, low priority, lock."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from panza_local import retune, schedule


def test_systemd_units_are_low_priority_and_point_at_this_home(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    out = schedule.install(30, only_on_ac=True, kind="systemd", activate=False)
    service = (tmp_path / "cfg/systemd/user/panza-retune.service").read_text()
    timer = (tmp_path / "cfg/systemd/user/panza-retune.timer").read_text()
    assert len(out["files"]) == 2
    assert "Nice=19" in service and "IOSchedulingClass=idle" in service and "ConditionACPower=true" in service
    assert f"PANZA_HOME={home}" in service and "retune --nice --only-on-ac" in service
    assert "OnUnitInactiveSec=30min" in timer
    assert schedule.status("systemd")["installed"]
    assert len(schedule.remove("systemd")["removed"]) == 2
    assert not schedule.status("systemd")["installed"]


def test_launchd_plist_and_cron_line(home, tmp_path, monkeypatch):
    import plistlib

    monkeypatch.setenv("PANZA_LAUNCHD_DIR", str(tmp_path / "agents"))
    schedule.install(15, only_on_ac=False, kind="launchd", activate=False)
    plist = plistlib.loads(schedule.launchd_path().read_bytes())
    assert plist["StartInterval"] == 900 and plist["LowPriorityIO"] is True
    assert plist["ProgramArguments"][-2:] == ["retune", "--nice"]
    line = schedule.cron_line(120, only_on_ac=True)
    assert line.startswith("0 */2 * * * ") and "nice -n 19" in line and schedule.MARK in line


def _hold_lock(home, ready, release):
    os.environ["PANZA_HOME"] = str(home)
    with retune.lock():
        ready.set()
        release.wait(20)


def test_two_passes_cannot_run_at_once(home):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(home, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(retune.RetuneBusy, match="another"), retune.lock():
            pass
    finally:
        release.set()
        p.join(20)
    with retune.lock():  # released when the holder exits
        pass


def test_lock_is_released_when_holder_is_killed(home):
    import signal

    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(home, ready, release))
    p.start()
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    with retune.lock():
        pass


def test_cron_install_remove_round_trip_with_a_fake_crontab(home, tmp_path, monkeypatch):
    """The real install/remove code against a `crontab` program on PATH that keeps its table in a file."""
    table = tmp_path / "crontab.txt"
    table.write_text("0 5 * * * backup.sh\n")
    fake = tmp_path / "bin" / "crontab"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -l ]; then cat {table}; else cat > {table}; fi\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    out = schedule.install(30, only_on_ac=False, kind="cron", only_when_idle=True)
    assert out["activated"] and schedule.status("cron")["installed"]
    lines = table.read_text().splitlines()
    assert lines[0] == "0 5 * * * backup.sh" and lines[1].startswith("*/30 * * * * PANZA_HOME=")
    assert lines[1].rstrip().endswith(f"retune --nice --only-when-idle {schedule.MARK}")
    schedule.install(30, only_on_ac=False, kind="cron")  # reinstall replaces, never duplicates
    assert sum(schedule.MARK in ln for ln in table.read_text().splitlines()) == 1
    assert schedule.remove("cron")["removed"] == ["crontab"]
    assert table.read_text().splitlines() == ["0 5 * * * backup.sh"]


def test_only_when_idle_skips_a_pass_on_a_busy_machine(home, monkeypatch, capsys):
    import json

    from panza_local import cli

    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert schedule.busy_machine().startswith("load ")
    assert cli.main(["retune", "--only-when-idle", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trained"] is False and out["reason"].endswith(": skipped") and "per CPU" in out["reason"]
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert schedule.busy_machine() is None
