"""One progress view of a re-tune pass: every stage reports running, then done or skipped with its counts."""

from __future__ import annotations

import pytest

from panza_local import retune, store


def _own_mail(n: int) -> None:
    """n of the user's emails with ok pairs (already played back: the pass reuses them)."""
    conn = store.connect()
    for i in range(n):
        body = f"Carol,\n\nThe budget review moves to day {i}.\n\nBest,\nAda"
        mid = conn.execute("INSERT INTO messages (content_hash, date, body, subject, to_addrs, is_mine, ingested_at) "
                           "VALUES (?, ?, ?, ?, ?, 1, ?)", (f"h{i}", f"2026-01-{i + 1:02d}T09:00:00", body,
                                                            f"Review {i}", "carol@example.com", store.now())).lastrowid
        conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                     "VALUES (?, ?, 'g', 'ok', ?, ?)", (mid, f"h{i}", f"Tell Carol the review moves to day {i}.",
                                                        store.now()))
    conn.close()


def finals(events: list[dict]) -> dict[str, dict]:
    return {e["stage"]: e for e in events if e["state"] != "running"}


def test_every_stage_reports_and_a_pass_with_nothing_new_skips_the_work(home, monkeypatch):
    monkeypatch.setenv("PANZA_THREADS", "1")
    _own_mail(3)  # fewer than training needs: the pass stops after the index
    events: list[dict] = []
    out = retune.run_once(on_stage=events.append)
    end = finals(events)
    assert list(end) == list(retune.STAGES)  # every stage ends once, in pipeline order
    assert end["ingest"]["state"] == "skipped" and "no registered sources" in end["ingest"]["note"]
    assert end["index"]["state"] == "done" and end["index"]["done"] == 3 and "3 embedded" in end["index"]["note"]
    assert end["train"]["state"] == "skipped" and end["train"]["note"] == out.reason
    assert end["evaluate"]["state"] == end["promote"]["state"] == "skipped"
    running = [e for e in events if e["state"] == "running"]
    assert {"playback", "index"} <= {e["stage"] for e in running}
    # a second pass finds nothing new: the index is not reopened, nothing is trained
    again: list[dict] = []
    out2 = retune.run_once(on_stage=again.append)
    end2 = finals(again)
    assert list(end2) == list(retune.STAGES) and end2["index"]["state"] == "skipped"
    assert end2["index"]["note"] == "up to date" and out2.new_pairs == 0 and "index" not in out2.steps
    assert end2["playback"]["note"].startswith("0 new pairs")


@pytest.mark.asyncio
async def test_the_status_screen_shows_the_same_stages(home, monkeypatch):
    """A real pass started with `r` on the status screen fills its stage table with each stage's end state."""
    from test_tui import wait_workers
    from test_tui_snapshots import make_app
    from textual.widgets import DataTable

    monkeypatch.setenv("PANZA_THREADS", "1")
    _own_mail(3)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f4")
        await pilot.pause()
        table = app.screen.query_one("#retune-stages", DataTable)
        assert [str(table.get_cell(s, "state")) for s in retune.STAGES] == ["· waiting"] * 6
        await pilot.press("r")
        await wait_workers(app, pilot, timeout=120)
        state = {s: str(table.get_cell(s, "state")) for s in retune.STAGES}
        assert state == {"ingest": "– skipped", "playback": "✓ done", "index": "✓ done", "train": "– skipped",
                         "evaluate": "– skipped", "promote": "– skipped"}
        assert "3 embedded" in str(table.get_cell("index", "note"))
        assert str(table.get_cell("index", "count")) == "3 / 3"
