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
        with pytest.raises(retune.RetuneBusy, match="another"):
            with retune.lock():
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
