"""Training that fits a time budget: measure the step time on the run's first steps, then fix the step count.

A backend calls the `Pacer` after every optimizer step with its state (`step`, `train_s`, `history`); the
pacer measures the seconds a step takes and what a validation pass costs (the wall time between two calls
that the step itself does not explain), and, once it has `probe` steps, returns the total that finishes
inside the budget (`fit_steps`). Later it only shortens the run: when the next step would overrun, it returns
the current step as the total, so the backend validates once more, checkpoints and stops. Without a budget it
still measures, for the progress bar's ETA. All the arithmetic is in plain functions the tests call with
measured figures; the clock is injectable.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PROBE_STEPS = 3
"""Steps timed before the total is fixed (the first is left out when there are more: it warms caches, kernels)."""
EVAL_COST = 0.5
"""A validation token's cost next to a training token's, until a validation pass has been timed (forward
only, but in exact fp32 where training may run int8: measured 0.35-0.5 on the embedded model)."""
RESERVE_S = 3.0
"""Seconds kept for what follows the last step: export to GGUF and PEFT, registry (~1 s on the 135M model)."""
SAFETY = 0.95
"""Share of the remaining budget planned for: step times drift on a shared machine."""
EVAL_SHARE = 0.25
"""Most of the remaining budget a run spends validating. On 1,090 of arnold-j's emails a validation pass took
42 s and a step 14 s: the preset's 4 passes over a 5-step run validated after every step, and 5 minutes
trained 5 steps (val loss 3.28 -> 3.23)."""


def passes(done: int, total: int, evals: int) -> int:
    """Validation passes the schedule runs after step `done` up to `total` (every `total // evals` steps, and
    at the last step), as `train.schedule` spaces them."""
    every = max(1, total // max(1, evals))
    n = total // every - done // every
    return n + (1 if total % every and total > done else 0)


def fit_steps(budget_s: float, elapsed_s: float, done: int, step_s: float, eval_s: float, evals: int,
              reserve_s: float = RESERVE_S, safety: float = SAFETY) -> int:
    """Total optimizer steps that end within `budget_s` seconds when `done` steps took `elapsed_s` so far, a
    step takes `step_s`, a validation pass `eval_s`, and the schedule validates `evals` times a run (never
    below `done`: a spent budget stops the run where it is)."""
    left = (budget_s - elapsed_s) * safety - reserve_s
    if step_s <= 0 or left <= 0:
        return done
    total = done + math.floor(left / step_s)
    while total > done and (total - done) * step_s + passes(done, total, evals) * eval_s > left:
        total -= 1
    return total


def fit_evals(left_s: float, eval_s: float, evals: int, share: float = EVAL_SHARE) -> int:
    """Validation passes (1 to `evals`: the last one always runs) that take at most `share` of `left_s`."""
    if eval_s <= 0:
        return max(1, evals)
    return max(1, min(evals, math.floor(share * left_s / eval_s)))


def eta_s(step: int, total: int, step_s: float, eval_s: float, evals_left: int) -> float:
    """Seconds until `total` steps are done from `step`, with `evals_left` validation passes on the way."""
    return max(0, total - step) * step_s + max(0, evals_left) * eval_s


def fmt_s(s: float) -> str:
    """'42s', '3m05s', '1h02m'."""
    s = round(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class Pacer:
    """Measures a run's step and validation time; with `budget_s`, fixes its step count to end in time."""

    budget_s: float | None
    """Seconds for the whole run from `started` (None: measure only, for the ETA)."""
    evals: int
    """Validation passes the schedule makes over a run (HParams.evals; a budget may lower it, `fit_evals`)."""
    val_tokens: int = 0
    """Tokens of one validation pass (to estimate its cost before one is timed)."""
    step_tokens: float = 0.0
    """Mean tokens of one optimizer step (all its micro-batches)."""
    cap: int | None = None
    """Most steps the preset asks for: a budget never makes a run longer than its preset."""
    probe: int = PROBE_STEPS
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    step_times: list = field(default_factory=list)
    eval_times: list = field(default_factory=list)
    plan: dict | None = None
    """What the total was fitted from: elapsed_s, done, step_s, eval_s, evals, steps, limited_by."""
    reason: str | None = None
    """'time' when the pacer cut the run short after planning (steps ran slower than measured)."""
    _last: tuple | None = None

    def __post_init__(self):
        self.started = self.started or self.clock()

    @property
    def step_s(self) -> float | None:
        """Measured seconds of one optimizer step (median, first step left out when there are others)."""
        times = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        return statistics.median(times) if times else None

    @property
    def eval_s(self) -> float:
        """Seconds of one validation pass: timed when one was, else estimated from the step's token rate."""
        if self.eval_times:
            return statistics.median(self.eval_times)
        st = self.step_s or 0.0
        return st * EVAL_COST * self.val_tokens / self.step_tokens if self.step_tokens else 0.0

    def __call__(self, state: dict) -> int | None:
        """After a step: a new total for the run (fitted once, then only cut short), or None to keep it."""
        now = self.clock()
        step, train_s, n_hist = state["step"], state["train_s"], len(state.get("history") or ())
        if self._last is not None:
            wall, tr, hist = now - self._last[0], train_s - self._last[1], self._last[2]
            self.step_times.append(tr)
            if hist < n_hist:  # a validation pass (and its checkpoint) ran in the previous step's tail
                self.eval_times.append(max(0.0, wall - tr))
        elif step == 1:  # a fresh run's first step (a resumed run's train_s also holds earlier sessions')
            self.step_times.append(train_s)
        self._last = (now, train_s, n_hist)
        total = state.get("total") or step
        if self.budget_s is None:
            return None
        elapsed = now - self.started
        if self.plan is None:
            if not self.step_times:
                return None
            probe_left = self.probe - len(self.step_times)
            # plan once the probe is done, or sooner when finishing the probe would already overrun the budget
            if probe_left > 0 and step < total and elapsed + (probe_left + 1) * self.step_s + self.eval_s < self.budget_s:
                return None
            # fewer validation passes when they would eat the budget (the backend re-spaces them: `evals`)
            self.evals = fit_evals((self.budget_s - elapsed) * SAFETY - RESERVE_S, self.eval_s, self.evals)
            want = fit_steps(self.budget_s, elapsed, step, self.step_s, self.eval_s, self.evals)
            limited = "budget"
            if self.cap is not None and want >= self.cap:
                want, limited = max(step, self.cap), "preset"
            # unrounded: the figures the total was computed from, so anyone can recompute it
            self.plan = {"elapsed_s": elapsed, "done": step, "step_s": self.step_s, "eval_s": self.eval_s,
                         "evals": self.evals,
                         "budget_s": self.budget_s, "steps": want, "limited_by": limited}
            return want
        # planned: stop here if the next step and the last validation would not fit any more
        if step < total and elapsed + self.step_s + self.eval_s + RESERVE_S > self.budget_s:
            self.reason = "time"
            return step
        return None

    def eta(self, step: int, total: int) -> float | None:
        """Seconds left in the run from the measured times (None until a step was timed)."""
        if self.step_s is None:
            return None
        return eta_s(step, total, self.step_s, self.eval_s, passes(step, total, self.evals))

    def summary(self) -> dict:
        """What `panza train --json` reports of the pacing."""
        return {"budget_s": self.budget_s, "step_s": None if self.step_s is None else round(self.step_s, 4),
                "eval_s": round(self.eval_s, 4), "plan": self.plan}
