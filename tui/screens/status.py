"""The pipeline at a glance: sources and last sync, counts, adapters with scores, runs, re-tune now."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label, ProgressBar, Static

from panza_local.errors import PanzaError

from .. import backend
from ..messages import RetuneDone, RetuneProgress

COUNTS = ("messages", "mine", "pairs", "indexed", "adapters", "documents", "sources")
STAGES = ("ingest", "playback", "index", "train", "evaluate", "promote")  # retune.STAGES (not imported: startup)
MARKS = {"waiting": "·", "running": "▶", "done": "✓", "skipped": "–"}


class RetuneStage(Message):
    """One stage event of a running re-tune (retune.run_once's on_stage)."""

    def __init__(self, event: dict) -> None:
        super().__init__()
        self.event = event


class StatusScreen(Screen):
    """Sources, counts, adapters and recent runs; `r` re-tunes in a worker."""

    BINDINGS: ClassVar = [Binding("r", "retune", "Re-tune now"), Binding("f5", "reload", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.retuning = False
        self.stage_started: dict[str, float] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="status-body"):
            yield Static(id="status-counts")
            yield Label("Sources", classes="section")
            yield DataTable(id="status-sources", cursor_type="row", zebra_stripes=True)
            yield Label("Adapters", classes="section")
            yield DataTable(id="status-adapters", cursor_type="row", zebra_stripes=True)
            yield Label("Re-tune history", classes="section")
            yield DataTable(id="status-retunes", cursor_type="row", zebra_stripes=True)
            yield Label("Recent runs", classes="section")
            yield DataTable(id="status-runs", cursor_type="row", zebra_stripes=True)
            yield Label("Re-tune", classes="section")
            with Horizontal(id="retune-row"):
                yield ProgressBar(id="retune-bar", show_eta=False)
                yield Static("idle: press r to re-tune now", id="retune-note")
            yield DataTable(id="retune-stages", cursor_type="none", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = "status"
        self.query_one("#status-sources", DataTable).add_columns("source", "kind", "messages", "watched", "last sync")
        self.query_one("#status-adapters", DataTable).add_columns("adapter", "base model", "status", "scores",
                                                                  "created")
        self.query_one("#status-runs", DataTable).add_columns("stage", "status", "started", "finished")
        self.query_one("#status-retunes", DataTable).add_columns("started", "status", "new mail", "new pairs",
                                                                 "promoted", "held-out loss new / current", "why")
        self.query_one("#retune-bar", ProgressBar).update(total=100, progress=0)  # idle, not animating
        stages = self.query_one("#retune-stages", DataTable)
        for key, label in (("stage", "stage"), ("state", "state"), ("count", "done / total"), ("eta", "ETA"),
                           ("note", "note")):
            stages.add_column(label, key=key)
        for name in STAGES:
            stages.add_row(name, f"{MARKS['waiting']} waiting", "", "", "", key=name)
        self.action_reload()
        self.query_one("#status-sources").focus()

    def on_screen_resume(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        """Re-read the store."""
        st = backend.pipeline_status(self.app.conn)
        c = st["counts"]
        self.query_one("#status-counts", Static).update(
            "  ".join(f"[b]{c[k]}[/] {k}" for k in COUNTS)
            + f"\nmodel [b]{backend.model_name(self.app.settings)}[/]  adapter [b]{self.app.adapter_label()}[/]")
        current = (self.app.adapter or {}).get("id")
        sources = self.query_one("#status-sources", DataTable)
        sources.clear()
        for s in st["sources"]:
            sources.add_row(s["uri"], s["kind"], str(s["messages"]), "yes" if s["registered"] else "no",
                            _when(s["last_sync"]) or "never")
        if not st["sources"]:
            sources.add_row("[dim]none: panza ingest PATH or panza sources add PATH[/]", "", "", "", "")
        adapters = self.query_one("#status-adapters", DataTable)
        adapters.clear()
        for a in st["adapters"]:
            mark = "● " if a["id"] == current else ""
            adapters.add_row(mark + a["id"], a["base_model"], a["status"], _scores(a["metrics"]),
                             _when(a["created_at"]))
        if not st["adapters"]:
            adapters.add_row("[dim]none: panza train[/]", "", "", "", "")
        passes = self.query_one("#status-retunes", DataTable)
        passes.clear()
        for p in backend.retune_history(8):
            passes.add_row(_when(p.get("started_at")), p.get("status", ""), str(p.get("new_messages", "")),
                           str(p.get("new_pairs", "")), "[b]yes[/]" if p.get("promoted") else "no",
                           _losses(p.get("score_new"), p.get("score_current")), p.get("reason") or "")
        if passes.row_count == 0:
            passes.add_row("[dim]none yet: press r, or panza schedule install[/]", "", "", "", "", "", "")
        runs = self.query_one("#status-runs", DataTable)
        runs.clear()
        for r in st["runs"]:
            runs.add_row(r["stage"], r["status"], _when(r["started_at"]), _when(r["finished_at"]))

    # -- re-tune in a worker -------------------------------------------------------------------------------

    def action_retune(self) -> None:
        if self.retuning:
            self.notify("A re-tune is already running.", severity="warning")
            return
        self.retuning = True
        self.query_one("#retune-note", Static).update("starting…")
        self.query_one("#retune-bar", ProgressBar).update(total=None, progress=0)
        stages = self.query_one("#retune-stages", DataTable)
        for name in STAGES:
            stages.update_cell(name, "state", f"{MARKS['waiting']} waiting")
            for col in ("count", "eta", "note"):
                stages.update_cell(name, col, "")
        self.stage_started: dict[str, float] = {}
        self.retune()

    @work(thread=True, exclusive=True, group="retune")
    def retune(self) -> None:
        """Run one re-tune; progress and the result come back as messages."""
        try:
            summary = backend.run_retune(
                lambda done, total=None, note=None: self.post_message(RetuneProgress(done, total, note or "")),
                say=lambda line: self.post_message(RetuneProgress(-1, None, line)), settings=self.app.settings,
                on_stage=lambda ev: self.post_message(RetuneStage(ev)))
        except PanzaError as exc:
            self.post_message(RetuneDone(None, str(exc)))
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user, never swallowed
            self.post_message(RetuneDone(None, f"{type(exc).__name__}: {exc}\n  fix: run `panza retune` to see details"))
            return
        self.post_message(RetuneDone(summary))

    @on(RetuneProgress)
    def _progress(self, event: RetuneProgress) -> None:
        if event.done >= 0:  # -1: a stage summary line, no count
            self.query_one("#retune-bar", ProgressBar).update(total=event.total, progress=event.done)
        self.query_one("#retune-note", Static).update(event.note or f"{event.done}/{event.total or '?'}")

    @on(RetuneStage)
    def _stage(self, event: RetuneStage) -> None:
        """The stage table: each stage's state, counts and note, as `panza retune` shows them."""
        ev = event.event
        if ev["stage"] not in STAGES:
            return
        stages = self.query_one("#retune-stages", DataTable)
        count = f"{ev['done']} / {ev['total']}" if ev.get("total") else (str(ev["done"]) if ev.get("done") else "")
        stages.update_cell(ev["stage"], "state", f"{MARKS.get(ev['state'], '')} {ev['state']}")
        stages.update_cell(ev["stage"], "count", "" if ev["state"] == "skipped" else count)
        stages.update_cell(ev["stage"], "eta", _eta(self.stage_started, ev))
        if ev.get("note") or ev["state"] != "running":
            stages.update_cell(ev["stage"], "note", ev.get("note") or "")
        if ev["state"] == "running":
            self.query_one("#retune-bar", ProgressBar).update(total=ev.get("total"), progress=ev.get("done") or 0)

    @on(RetuneDone)
    def _retuned(self, event: RetuneDone) -> None:
        self.retuning = False
        self.query_one("#retune-bar", ProgressBar).update(total=100, progress=0 if event.error else 100)
        if event.error:
            self.query_one("#retune-note", Static).update("failed")
            self.app.notify_error(event.error)
            self.action_reload()  # the failed run is listed under Recent runs
            return
        s = event.summary
        note = ", ".join(f"{k} {getattr(s, k)}" for k in ("new_messages", "new_pairs", "trained", "promoted", "reason"))
        self.query_one("#retune-note", Static).update(f"done: {note}")
        self.notify(f"Re-tune finished: {note}", title="Re-tune")
        self.app.refresh_adapter()
        self.action_reload()


def _eta(started: dict[str, float], ev: dict) -> str:
    """Time left in a running stage at its rate so far ('' when unknown or not running)."""
    import time

    now = time.monotonic()
    t0 = started.setdefault(ev["stage"], now)
    done, total = ev.get("done") or 0, ev.get("total")
    if ev["state"] != "running" or not total or done <= 0 or done >= total:
        return ""
    left = (now - t0) / done * (total - done)
    return f"{int(left // 60)}:{int(left % 60):02d}"


def _when(iso: str | None) -> str:
    return (iso or "").replace("T", " ")[:16]


def _losses(new, current) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "—"
    return "" if new is None and current is None else f"{fmt(new)} / {fmt(current)}"


def _scores(metrics: dict) -> str:
    keys = [k for k in ("val_loss_after", "rougeL", "bleu", "bertscore", "mauve") if k in metrics]
    return " ".join(f"{k} {metrics[k]:.3g}" if isinstance(metrics[k], (int, float)) else f"{k} {metrics[k]}"
                    for k in keys[:3]) or "—"
