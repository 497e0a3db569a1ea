"""Training that fits a budget: steps fitted to the measured step time, early stop on a plateau, presets by size.

The real runs train the embedded model on the sample mailbox's emails with tiny rows, and assert the logic
with the times the run measured (its recorded plan), never on the wall clock.
"""

from __future__ import annotations

import pytest

from panza_local.train import budget

TINY = {"seq_len": 96, "grad_accum": 1, "max_val_rows": 1, "ckpt_every": 1000}


@pytest.fixture
def one_thread(home, monkeypatch):
    """A home, and training on one thread: on a shared 2-core machine two threads wait on each other."""
    monkeypatch.setenv("PANZA_THREADS", "1")
    return home


def sample_examples(n: int | None = None):
    """The sample mailbox's emails by Maya as training examples (subject as the instruction), oldest first."""
    from email.utils import parsedate_to_datetime

    from panza_local import sample
    from panza_local.train import data

    out = []
    for m in sample.sample_messages():
        if sample.SAMPLE_ME not in (m["From"] or ""):
            continue
        body = m.get_payload(decode=True).decode("utf-8").split("\nOn ")[0].split("\n-----")[0]
        date = parsedate_to_datetime(m["Date"]).isoformat()
        out.append(data.make_example(f"Write an email about: {m['Subject']}", body, to=m["To"],
                                     subject=m["Subject"], meta={"date": date, "to": m["To"], "subject": m["Subject"]}))
    return out[:n] if n else out


# -- the arithmetic, with measured figures --------------------------------------------------------------

def test_fit_steps_spends_the_budget_on_steps_and_validations():
    # 60 s budget, 10 s gone, 3 steps done at 1 s a step, validation 2 s, 4 passes a run
    total = budget.fit_steps(60, 10, 3, 1.0, 2.0, 4, reserve_s=3.0, safety=1.0)
    cost = (total - 3) * 1.0 + budget.passes(3, total, 4) * 2.0
    assert cost <= 60 - 10 - 3 < cost + 1.0 + 2.0  # fits, and one more step would not
    assert budget.fit_steps(60, 70, 3, 1.0, 2.0, 4) == 3  # budget spent: stop where it is
    # slower steps, fewer of them
    assert budget.fit_steps(600, 10, 3, 4.0, 2.0, 4) < budget.fit_steps(600, 10, 3, 1.0, 2.0, 4)


def test_a_budget_spends_at_most_a_quarter_on_validation():
    """The full arnold-j run: 14 s a step, 42 s a validation pass, 5 minutes; with the preset's 4 passes every
    step was validated and 5 steps ran. One pass (the last) leaves room for more than twice the steps."""
    assert budget.fit_evals(187.0, 42.5, 4) == 1 and budget.fit_evals(1000.0, 2.0, 4) == 4
    assert budget.fit_evals(10.0, 0.0, 3) == 3 and budget.fit_evals(1.0, 50.0, 4) == 1
    four = budget.fit_steps(300, 100, 3, 13.8, 42.5, 4)
    clock = Clock()
    p = budget.Pacer(300.0, evals=4, probe=3, clock=clock)
    p.eval_times.append(42.5)  # the "val loss before" pass
    clock.t = 58.6
    for k in (1, 2, 3):
        clock.t += 13.8
        fit = p({"step": k, "train_s": 13.8 * k, "history": [], "total": 18})
    assert p.evals == p.plan["evals"] == 1 and fit == budget.fit_steps(300, clock.t, 3, 13.8, 42.5, 1)
    assert fit >= 2 * four and (fit - 3) * 13.8 + 42.5 <= (300 - clock.t) * budget.SAFETY


def test_passes_counts_the_schedules_validations():
    from panza_local.train import HParams, schedule

    for total, evals in ((10, 4), (7, 4), (100, 6), (3, 8)):
        _, every, _ = schedule(HParams(max_steps=total, evals=evals), 10)
        expect = sum(1 for s in range(1, total + 1) if s % every == 0 or s == total)
        assert budget.passes(0, total, evals) == expect


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_pacer_fits_the_total_after_its_probe_steps_then_cuts_a_slow_run():
    clock = Clock()
    p = budget.Pacer(120.0, evals=4, val_tokens=100, step_tokens=400, probe=3, clock=clock)
    state = {"step": 0, "train_s": 0.0, "history": [], "total": 1000}
    clock.t = 5.0  # model load + first validation
    fits = []
    for k, dt in enumerate((3.0, 2.0, 2.0), start=1):  # the first step is slow (warm-up): left out
        clock.t += dt
        state["step"], state["train_s"] = k, state["train_s"] + dt
        fits.append(p(state))
    assert fits[:2] == [None, None] and p.step_s == 2.0
    assert p.eval_s == pytest.approx(2.0 * budget.EVAL_COST * 100 / 400)  # estimated until one is timed
    assert fits[2] == budget.fit_steps(120.0, 12.0, 3, 2.0, p.eval_s, 4) == p.plan["steps"]
    assert p.plan["limited_by"] == "budget" and p.eta(3, fits[2]) > 0
    state["total"] = fits[2]
    # steps turn 3x slower: the pacer ends the run before it overruns
    cut = None
    while cut is None:
        clock.t += 6.0
        state["step"], state["train_s"] = state["step"] + 1, state["train_s"] + 6.0
        cut = p(state)
    assert cut == state["step"] < fits[2] and p.reason == "time" and clock.t <= 120.0


def test_pacer_plans_early_when_its_probe_would_overrun():
    clock = Clock()
    p = budget.Pacer(60.0, evals=2, probe=3, clock=clock)
    clock.t = 10.0 + 25.0  # load, then a 25 s step: two more probe steps would leave nothing
    fit = p({"step": 1, "train_s": 25.0, "history": [], "total": 100})
    assert fit == budget.fit_steps(60.0, 35.0, 1, 25.0, 0.0, 2) == p.plan["steps"] and p.plan["done"] == 1


def test_pacer_never_runs_longer_than_the_preset():
    clock = Clock()
    p = budget.Pacer(3600.0, evals=2, probe=2, cap=20, clock=clock)
    state = {"step": 0, "train_s": 0.0, "history": [], "total": 20}
    for k in (1, 2):
        clock.t += 1.0
        state["step"], state["train_s"] = k, float(k)
        fit = p(state)
    assert fit == 20 and p.plan["limited_by"] == "preset"


def test_presets_are_sized_by_the_data():
    from panza_local.train import HParams, hparams, preset_steps

    small, mid, large = (hparams("standard", n).epochs for n in (100, 400, 2000))
    assert small > mid > large
    assert hparams("quick", 100).epochs < hparams("standard", 100).epochs < hparams("thorough", 100).epochs
    hp = HParams(epochs=2.0, grad_accum=4)
    preset_steps(hp, 2000, "standard")  # 1,000 steps asked for: capped at the preset's MAX_STEPS
    from panza_local.train import MAX_STEPS, schedule

    assert schedule(hp, 2000)[0] == MAX_STEPS["standard"]


# -- real runs on the embedded model ----------------------------------------------------------------------

def test_minutes_fits_the_steps_to_the_measured_step_time(one_thread):
    from panza_local import store
    from panza_local.train import train

    exs = sample_examples(24)
    conn = store.connect()
    res = train(conn, backend="torch", preset="quick", minutes=0.2, train_examples=exs[:20], val_examples=exs[20:],
                overrides={**TINY, "max_steps": 10_000, "evals": 2, "patience": 100})
    plan = res.plan
    assert plan and 1 <= plan["done"] <= budget.PROBE_STEPS and res.step_s > 0
    # the total is what the measured times give, and the run kept to it (or was cut short to end in time)
    assert plan["steps"] == budget.fit_steps(12.0, plan["elapsed_s"], plan["done"], plan["step_s"],
                                             plan["eval_s"], plan["evals"])
    assert plan["limited_by"] == "budget" and res.stop_reason in ("budget", "time")
    assert res.steps == res.planned_steps and res.steps <= plan["steps"]
    assert res.steps >= plan["done"]
    if res.stop_reason == "budget":
        assert res.steps == plan["steps"] and not res.early_stopped


def test_early_stop_on_a_plateau(one_thread):
    from panza_local import store
    from panza_local.train import train

    exs = sample_examples(12)
    conn = store.connect()
    # lr 0: the validation loss cannot improve, so patience (2) ends the run at its second validation
    res = train(conn, backend="torch", preset="quick", train_examples=exs[:10], val_examples=exs[10:],
                overrides={**TINY, "max_steps": 8, "evals": 8, "lr": 0.0, "patience": 2})
    assert res.early_stopped and res.stop_reason == "plateau"
    assert res.steps == 2 < res.planned_steps == 8
    assert res.val_loss_after == res.val_loss_before


# -- choosing what to train on ---------------------------------------------------------------------------

def synthetic(n_people: int = 6, per_person: int = 10):
    """Emails to `n_people` recipients (the first gets half of all mail), one topic each, dated in order."""
    from panza_local.train import data

    out, k = [], 0
    for p in range(n_people):
        for j in range(per_person * (n_people if p == 0 else 1)):
            k += 1
            body = (f"Hello person {p}, about item {j}: the {['oak', 'brick', 'gravel', 'hedge'][j % 4]} order "
                    f"number {k * 7919 % 10007} arrives on day {j % 28 + 1}; please confirm the {k}th quote "
                    f"and the plan for week {k % 52}.")
            out.append(data.make_example(f"item {j}", body, meta={"date": f"2024-01-01T00:00:{k:05d}",
                                                                  "to": f"Person {p} <p{p}@x.example>",
                                                                  "subject": f"Re: project {p}"}))
    return out


def test_near_duplicates_are_dropped_newest_copy_kept():
    from panza_local.train import data, select

    exs = synthetic(3, 4)
    n = len(exs)
    base = exs[5].target
    copy = base.replace("please confirm", "please do confirm") + " Thanks."  # a near-copy, sent later
    exs.append(data.make_example("again", copy, meta={**exs[5].meta, "date": "2025-01-01T00:00:00"}))
    exs.append(data.make_example("same", base, meta={**exs[5].meta, "date": "2023-01-01T00:00:00"}))  # older copy
    chosen, rep = select.choose(exs, len(exs))
    assert rep["dropped"]["near_duplicate"] == 2 and len(chosen) == n  # the original and the older copy go
    kept = {e.target for e in chosen}
    assert copy in kept and base not in kept
    # distinct emails on the same subject are not near-duplicates
    assert select.jaccard(select.shingles(exs[0].target), select.shingles(exs[1].target)) < select.NEAR_DUP


def test_selection_spreads_over_recipients_newest_first():
    from collections import Counter

    from panza_local.train import select

    exs = synthetic(6, 10)  # 60 emails to p0, 10 to each of p1..p5
    chosen, rep = select.choose(exs, 30)
    per = Counter(select.recipient_of(e.meta["to"]) for e in chosen)
    assert len(per) == 6 and rep["recipients"] == {"available": 6, "chosen": 6}
    assert per["p0@x.example"] < 30 * 60 / 110  # below its share of the mailbox
    assert rep["chosen"] == 30 and sum(rep["chosen_by"].values()) == 30
    assert rep["chosen_by"]["new_recipient"] == 6 and rep["dropped"]["over_budget"] == 110 - 30
    # newest first within a recipient: p0's chosen are its newest
    p0 = sorted(e.meta["date"] for e in exs if e.meta["to"].startswith("Person 0"))
    assert sorted(e.meta["date"] for e in chosen if e.meta["to"].startswith("Person 0")) == p0[-per["p0@x.example"]:]


def test_selection_on_the_sample_mailbox():
    from panza_local.train import select

    exs = sample_examples()
    chosen, rep = select.choose(exs, 40)
    assert len(chosen) == 40 and rep["available"] == len(exs)
    assert rep["recipients"]["chosen"] == rep["recipients"]["available"]  # every correspondent kept
    assert rep["topics"]["chosen"] >= 30  # spread over subjects, not 40 of the same few
    # its template-made near-copies go (same sentences reordered), and no two chosen emails are near-copies
    assert rep["dropped"]["near_duplicate"] >= 2
    sets = [select.shingles(e.target) for e in chosen]
    assert max(select.jaccard(a, b) for i, a in enumerate(sets) for b in sets[:i]) < select.NEAR_DUP
    newest = max(e.meta["date"] for e in exs)
    assert rep["dates"]["newest"] == newest


def test_train_reports_the_selection_when_the_budget_cannot_use_every_pair(one_thread):
    """A budget too small for every pair trains on a chosen subset and says which and why in the result."""
    from panza_local import store
    from panza_local.train import train

    exs = sample_examples(40)
    conn = store.connect()
    # the quick preset on a tiny budget: at the default speed, few steps fit, so few of the 36 pairs
    res = train(conn, backend="torch", preset="quick", minutes=0.05, train_examples=exs[:36], val_examples=exs[36:],
                overrides={**TINY, "evals": 1})
    sel = res.selection
    assert sel["available"] == 36 and sel["chosen"] == res.n_train < 36
    assert "tokens/s" in sel["why"] and sel["dropped"]["over_budget"] == 36 - sel["chosen"]
    assert sum(sel["chosen_by"].values()) == sel["chosen"]


def test_cli_rejects_a_budget_of_no_time(home, capsys):
    from panza_local.cli import main

    assert main(["train", "--minutes", "0"]) == 1
    assert "--minutes" in capsys.readouterr().err


def test_progress_note_carries_the_eta_from_measured_times():
    from panza_local.train import _with_eta

    clock = Clock()
    p = budget.Pacer(None, evals=2, clock=clock)
    seen = []
    update = _with_eta(lambda s, t, n=None: seen.append(n), p)
    update(0, 10, "val loss 3.0")  # nothing measured yet: no ETA
    for k in (1, 2):
        clock.t += 2.0
        p({"step": k, "train_s": 2.0 * k, "history": [], "total": 10})
        update(k, 10, None)
    update(10, 10, "done")
    assert seen[0] == "val loss 3.0" and seen[-1] == "done"
    assert seen[2] == f"ETA {budget.fmt_s(p.eta(2, 10))}" and p.eta(2, 10) == 8 * 2.0  # no validation timed yet


@pytest.mark.slow
def test_cli_train_json_reports_the_budget(one_thread, capsys):
    """`panza train --minutes N --json` on stored pairs: the chosen steps, the measured step time, how it ended."""
    import json

    from panza_local import store
    from panza_local.cli import main

    conn = store.connect()
    for e in sample_examples(30):
        mid = conn.execute("INSERT INTO messages (content_hash, date, body, subject, to_addrs, is_mine, ingested_at) "
                           "VALUES (?, ?, ?, ?, ?, 1, ?)", (e.key, e.meta["date"], e.target, e.meta["subject"],
                                                            e.meta["to"], store.now())).lastrowid
        conn.execute("INSERT INTO pairs (message_id, content_hash, gen_config, status, instruction, created_at) "
                     "VALUES (?, ?, 'g', 'ok', ?, ?)", (mid, e.key, f"Write about {e.meta['subject']}", store.now()))
    conn.close()
    capsys.readouterr()
    assert main(["train", "--preset", "quick", "--minutes", "0.3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["plan"]["steps"] >= res["planned_steps"] >= res["steps"] >= 1 and res["step_s"] > 0
    assert res["stop_reason"] in ("budget", "time", "preset", "plateau") and isinstance(res["early_stopped"], bool)
    assert res["stop_why"] and res["selection"]["available"] >= res["selection"]["chosen"] == res["n_train"]
