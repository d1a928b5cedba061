"""The look of ``rlhf run``: a live view of the stages as they train, and a summary at the end (never imports torch).

Both are built from what the stages write and nothing else: the records of each ``metrics.jsonl``
(``{"stage", "kind", "step", "totalSteps", "metrics", "time"}``, the last one carrying ``"result"``) and each
``result.json``. On a terminal the live view is a rich display redrawn in place: a progress bar per stage with its
speed and time left, the running stage's key metrics and its log. Anywhere else (CI logs, ``| tee``) it writes
plain lines, one per new record, with no escape codes and no carriage returns. The summary is a rich renderable:
``show`` prints it styled on a terminal and as plain text elsewhere; ``plain_text`` gives that text.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rlhf_contract.stages import KINDS

# What each kind shows comes from the contract (rlhf_contract.kinds): its live numbers as it trains, its results
# once it ended. A few more keys, for records written before a kind declared them, or by the trainer's end of run.
LIVE_SHOWN = 3  # live numbers on a stage's progress line
FALLBACK_KEYS = {"loss": ("train_loss",), "score": ("ppo/mean_scores",)}
JUDGES = {"reward": "reward", "vader": "VADER"}  # <key>Before/<key>After in a result's metrics -> its label
SPEED_WINDOW = 60.0  # seconds: speed is measured over the current run's latest minute (times are whole seconds)
SPEED_RECORDS = 1000  # ... or its latest this many records, when it logs faster (the cost of a line stays small)
WIDE = 160  # plain text is this wide: tables keep their rows on one line in logs


@dataclass(frozen=True)
class Stage:
    """A stage as the live view shows it."""

    name: str
    kind: str
    log: str | None = None


@dataclass(frozen=True)
class StageSummary:
    """One row of the summary: a stage's outcome, as its result.json (or its last record and exit) tells it."""

    name: str
    kind: str
    phase: str  # Succeeded | Failed | Suspended (stopped, can continue) | Pending (not run)
    steps: int | None = None
    total_steps: int | None = None
    duration_seconds: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)  # the result's metrics
    reason: str | None = None
    message: str | None = None  # the trainer's message: result.json's or the termination log's
    output: str | None = None  # the model the stage wrote
    log: str | None = None
    picture: str | None = None  # its training curves
    log_tail: tuple[str, ...] = ()  # the log's last lines, shown when the stage failed
    # Whether running the job again continues this stage from its checkpoint. A stage that ended itself (a
    # guardrail) wrote its result.json, and a finished stage is not run again.
    can_resume: bool = True

    @classmethod
    def from_result(cls, result: Mapping, *, log: str | None = None, picture: str | None = None) -> StageSummary:
        """From a stage's result.json (a finished stage: running the job again does not run it again)."""
        return cls(name=result["stage"], kind=result["kind"], phase=result["phase"], steps=result.get("steps"),
                   total_steps=result.get("totalSteps"), duration_seconds=result.get("durationSeconds"),
                   metrics=result.get("metrics", {}), reason=result.get("reason"), message=result.get("message"),
                   output=result.get("model"), log=log, picture=picture, can_resume=False)


# ---------------------------------------------------------------------------------------------------------------
# Small pure pieces


def number(value: float) -> str:
    """A metric as people read it: two decimals in the usual range, three significant digits outside it."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if 0.01 <= abs(value) < 1000 else f"{value:.3g}"


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 04 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def key_metrics(kind: str, metrics: Mapping[str, float]) -> list[tuple[str, float]]:
    """The kind's key metrics found in ``metrics``, as (label, value), in the kind's order: its first live
    numbers (``rlhf_contract``)."""
    shown = []
    numbers = list(KINDS[kind].live.values())[:LIVE_SHOWN] if kind in KINDS else []
    for number_ in numbers:
        keys = (number_.key, *FALLBACK_KEYS.get(number_.label, ()))
        value = next((metrics[key] for key in keys if key in metrics), None)
        if value is not None:
            shown.append((number_.label, value))
    return shown


def _training(record: dict) -> bool:
    """A record of a training step (with a step and a time), not the closing result."""
    return "result" not in record and record.get("step") is not None and bool(record.get("time"))


def last_step(records: Sequence[dict]) -> dict | None:
    return next((record for record in reversed(records) if _training(record)), None)


def recent_run(records: Sequence[dict], seconds: float = SPEED_WINDOW) -> list[dict]:
    """The training records of the last ``seconds`` since the stage last (re)started, oldest first, with the one
    before them as the start of the span. A resumed run logs steps again from its checkpoint: reading back from
    the end, a step above the one after it belongs to an earlier run. Reads only the end of ``records``."""
    run: list[dict] = []
    for record in reversed(records):
        if not _training(record):
            continue
        if run and record["step"] > run[-1]["step"]:
            break
        run.append(record)
        if _seconds(record, run[0]) >= seconds or len(run) > SPEED_RECORDS:
            break
    return run[::-1]


def _seconds(earlier: dict, later: dict) -> float:
    return (datetime.fromisoformat(later["time"]) - datetime.fromisoformat(earlier["time"])).total_seconds()


def steps_per_second(records: Sequence[dict], seconds: float = SPEED_WINDOW) -> float | None:
    """Training speed over the current run's latest ``seconds``; None until it can be measured (the records'
    times are whole seconds, so it settles as the span grows)."""
    run = recent_run(records, seconds)
    if len(run) < 2:
        return None
    span, steps = _seconds(run[0], run[-1]), run[-1]["step"] - run[0]["step"]
    return steps / span if span > 0 and steps > 0 else None


def seconds_left(records: Sequence[dict]) -> float | None:
    """Estimated time to the last step, at the current speed."""
    last, rate = last_step(records), steps_per_second(records)
    if last is None or rate is None or not last.get("totalSteps"):
        return None
    return max(0, last["totalSteps"] - last["step"]) / rate


def _steps(step: int | None, total: int | None, align: bool = False) -> str:
    """``7/100`` (`` 7/100`` aligned: the step as wide as the total, so that successive lines align)."""
    width = len(str(total or "?")) if align else 0
    return f"{step if step is not None else '-':>{width}}/{total or '?'}"


def speed(rate: float) -> str:
    return f"{number(rate)} steps/s" if rate >= 1 else f"{number(1 / rate)} s/step"


def progress_line(stage: str, kind: str, records: Sequence[dict], width: int = 0) -> str:
    """The plain line for the last of ``records``: stage, step/total, its key metrics, speed and time left."""
    record = records[-1]
    parts = [f"{stage:<{width}}", _steps(record.get("step"), record.get("totalSteps"), align=True)]
    parts += [f"{label} {number(value)}" for label, value in key_metrics(kind, record.get("metrics", {}))]
    if (rate := steps_per_second(records)) is not None:
        parts.append(speed(rate))
    if (left := seconds_left(records)) is not None and left >= 0.5:
        parts.append(f"ETA {duration(left)}")
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# The live view


class LiveView:
    """The stages' progress while ``rlhf run`` runs them.

    ``update(stage, records)`` takes all the records the stage's metrics.jsonl holds so far (call it as often as
    you like: only new records are shown); ``stage_done(stage, outcome, detail)`` marks its end (outcome:
    Succeeded, Failed, Stopped, Skipped, ...); ``note(text)`` prints a message above the live display;
    ``close()`` leaves the last picture on screen (or use the view as a context manager). On a terminal the
    display is redrawn in place; anywhere else each new record is one plain line.
    """

    def __init__(self, out: TextIO, stages: Sequence[Stage]):
        self.out = out
        self.stages = {stage.name: stage for stage in stages}
        self.records: dict[str, list[dict]] = {stage.name: [] for stage in stages}
        self.latest: dict[str, dict[str, float]] = {stage.name: {} for stage in stages}  # each metric's last value
        self.outcomes: dict[str, tuple[str, str]] = {}
        self.running: str | None = None
        self.width = max((len(name) for name in self.stages), default=0)
        self.live: Live | None = None
        self.tty = out.isatty()
        if self.tty:
            self.console = Console(file=out)
            self.live = Live(self.renderable(), console=self.console, auto_refresh=False,
                             redirect_stdout=False, redirect_stderr=False)
            self.live.start()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, stage: str, records: Sequence[dict]) -> None:
        known = self.records[stage]
        if len(records) < len(known):  # the file started over
            known.clear()
            self.latest[stage].clear()
        new = list(records[len(known):])
        if self.running != stage:
            self.running = stage
            self._plain(f"{stage}: running" + (f" (log: {self.stages[stage].log})" if self.stages[stage].log else ""))
        kind = self.stages[stage].kind
        for record in new:
            shown_step = last_step(known)
            known.append(record)
            if "result" not in record:
                self.latest[stage].update(record.get("metrics", {}))
                # an evaluation's record at a step already shown adds nothing to the line
                metrics = record.get("metrics", {})
                if key_metrics(kind, metrics) or record.get("step") != (shown_step or {}).get("step"):
                    self._plain("  " + progress_line(stage, kind, known, self.width))
        self._refresh()

    def stage_done(self, stage: str, outcome: str, detail: str = "") -> None:
        self.outcomes[stage] = (outcome, detail)
        if self.running == stage:
            self.running = None
        self._plain(f"{stage}: {outcome}" + (f" ({detail})" if detail else ""))
        self._refresh()

    def note(self, text: str) -> None:
        if self.tty:
            self.console.print(text, soft_wrap=True, highlight=False, markup=False)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self.renderable(), refresh=True)
            self.live.stop()
            self.live = None

    def _plain(self, line: str) -> None:
        if not self.tty:
            self.out.write(line + "\n")
            self.out.flush()

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.renderable(), refresh=True)

    def renderable(self) -> RenderableType:
        """The terminal picture: a bar per stage, then the running stage's key metrics and log."""
        table = Table.grid(padding=(0, 2))
        for _ in range(6):
            table.add_column()
        for name, stage in self.stages.items():
            table.add_row(*self._row(name, stage))
        parts: list[RenderableType] = [table]
        if self.running is not None:
            stage = self.stages[self.running]
            latest = self.latest[self.running]
            shown = "   ".join(f"{label} {number(value)}" for label, value in key_metrics(stage.kind, latest))
            if shown:
                parts.append(Text(f"{stage.name}: {shown}"))
            if stage.log:
                parts.append(Text(f"log: {stage.log}", style="dim"))
        return Group(*parts)

    def _row(self, name: str, stage: Stage) -> list[RenderableType]:
        records = self.records[name]
        last = last_step(records) or {}
        step, total = last.get("step"), last.get("totalSteps")
        outcome, detail = self.outcomes.get(name, ("", ""))
        if outcome:
            state = Text(outcome + (f" ({detail})" if detail else ""), style=_STYLES.get(outcome, ""))
        elif name == self.running:
            state = Text("running", style="cyan")
        else:
            state = Text("waiting", style="dim")
        finished = outcome in ("Succeeded", "Skipped")
        bar = ProgressBar(total=total or 1, completed=(total or 1) if finished else step or 0, width=30,
                          finished_style="red" if outcome == "Failed" else "bar.finished")
        rate, left = steps_per_second(records), seconds_left(records)
        running = name == self.running
        return [Text(name, style="bold"), bar, Text(_steps(step, total) if last else ""),
                Text(speed(rate) if rate and running else ""),
                Text(f"ETA {duration(left)}" if left is not None and left >= 0.5 and running else ""), state]


_STYLES = {"Succeeded": "green", "Skipped": "green", "Failed": "bold red", "Stopped": "yellow",
           "Suspended": "yellow"}


# ---------------------------------------------------------------------------------------------------------------
# The summary at the end


def before_after(metrics: Mapping[str, float]) -> list[str]:
    """``reward 0.67 → 2.43`` for each score of held-out prompts taken before and after training: the reward and
    the judge first, then each reward function's own (GRPO's ``<name>Before``/``<name>After``)."""
    names = [key.removesuffix("Before") for key in metrics if key.endswith("Before")]
    names = [name for name in names if f"{name}After" in metrics]
    names.sort(key=lambda name: (list(JUDGES).index(name) if name in JUDGES else len(JUDGES), name))
    return [f"{JUDGES.get(name, name)} {number(metrics[f'{name}Before'])} → {number(metrics[f'{name}After'])}"
            for name in names]


def headline(stage: StageSummary) -> str:
    """What the stage achieved, in a few numbers: held-out scores before → after, or its score over the first →
    the last steps; then the first of its kind's other results (``rlhf_contract``)."""
    metrics = stage.metrics
    results = KINDS[stage.kind].results.values() if stage.kind in KINDS else []
    others = [f"{n.label} {number(metrics[n.key])}" for n in results if n.key in metrics
              and not n.key.endswith(("Before", "After", "FirstSteps", "LastSteps"))]
    if held_out := before_after(metrics):
        return "; ".join(["held-out " + ", ".join(held_out), *others[:1]])
    for name in ("meanScore", "reward"):
        if f"{name}FirstSteps" in metrics and f"{name}LastSteps" in metrics:
            label = "score" if name == "meanScore" else name
            return (f"{label} {number(metrics[f'{name}FirstSteps'])} → {number(metrics[f'{name}LastSteps'])}"
                    " (first → last steps)")
    return ", ".join(others[:3])


def summary(stages: Sequence[StageSummary], *, workspace: str, command: str) -> RenderableType:
    """The end of ``rlhf run``: a row per stage, then where its outputs are and how to look further, or, when a
    stage failed or was stopped, what happened and how to continue. ``command`` is the command that was run
    (``rlhf run FILE [--workspace DIR]``): running it again continues where the job stopped."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for heading, justify in (("stage", "left"), ("phase", "left"), ("steps", "right"), ("time", "right"),
                             ("result", "left")):
        table.add_column(heading, justify=justify, no_wrap=heading != "result")
    for stage in stages:
        table.add_row(Text(stage.name), Text(stage.phase, style=_STYLES.get(stage.phase, "")),
                      Text(_steps(stage.steps, stage.total_steps) if stage.steps is not None else "-"),
                      Text(duration(stage.duration_seconds) if stage.duration_seconds is not None else "-"),
                      Text(headline(stage) or "-"))
    parts: list[RenderableType] = [table]
    failed = next((stage for stage in stages if stage.phase == "Failed"), None)
    stopped = next((stage for stage in stages if stage.phase == "Suspended"), None)
    if failed is not None:
        parts.append(failure(failed, command))
    elif stopped is not None:
        parts.append(Text(f"\n{stopped.name} stopped at step {_steps(stopped.steps, stopped.total_steps)}; continue "
                          f"from its last checkpoint with:\n  {command}"))
    parts.append(outputs(stages, workspace))
    parts.append(look_further(workspace, command))
    return Group(*parts)


def failure(stage: StageSummary, command: str) -> RenderableType:
    """Which stage failed, the trainer's message, the end of its log, and how to continue (when it can)."""
    lines = Text("\n")
    lines.append(f"{stage.name} failed", style="bold red")
    lines.append(f" ({stage.reason})" if stage.reason else "")
    lines.append(f": {stage.message}\n" if stage.message else "\n")
    if stage.log_tail:
        lines.append(f"The end of its log{f' ({stage.log})' if stage.log else ''}:\n")
        lines.append("".join(f"    {line}\n" for line in stage.log_tail), style="dim")
    elif stage.log:
        lines.append(f"Its log: {stage.log}\n")
    if stage.can_resume:
        lines.append(f"After fixing the cause, continue from its last checkpoint with:\n  {command}")
    lines.rstrip()
    return lines


def outputs(stages: Sequence[StageSummary], workspace: str) -> RenderableType:
    """Where each stage's model, curves and log are, in aligned columns."""
    rows = [[stage.name] + [f"{what} {path}" if path else "" for what, path in
                            (("model", stage.output), ("curves", stage.picture), ("log", stage.log))]
            for stage in stages if stage.output or stage.picture or stage.log]
    widths = [max(len(row[column]) for row in rows) for column in range(4)] if rows else []
    lines = "".join("\n  " + "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                    for row in rows)
    return Text(f"\nOutputs (workspace {workspace}):{lines}")


def look_further(workspace: str, command: str) -> RenderableType:
    hints = [(f"tensorboard --logdir {workspace}", "every logged metric, per stage"),
             (f"{command} --status", "the job's status, without running anything"),
             (f"{command} --status -o yaml", "the full status the RLHFJob resource would hold")]
    width = min(max(len(hint) for hint, _ in hints), 48)  # long commands push their comment right, alone
    return Text("\nLook further:" + "".join(f"\n  {hint:<{width}}   # {what}" for hint, what in hints))


# ---------------------------------------------------------------------------------------------------------------
# Printing


def show(out: TextIO, renderable: RenderableType) -> None:
    """Print ``renderable`` to ``out``: styled on a terminal, plain text (no escape codes) anywhere else."""
    if out.isatty():
        Console(file=out).print(renderable, soft_wrap=True)
    else:
        out.write(plain_text(renderable))
        out.flush()


def plain_text(renderable: RenderableType, width: int = WIDE) -> str:
    """``renderable`` as plain text, the same whatever the environment (no colour, fixed width)."""
    buffer = io.StringIO()
    # _environ={}: COLUMNS, NO_COLOR, FORCE_COLOR, TTY_* and the like must not change the text.
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, force_jupyter=False,
                      force_interactive=False, no_color=True, highlight=False, _environ={})
    console.print(renderable, soft_wrap=True)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
