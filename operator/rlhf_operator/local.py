"""``rlhf run FILE``: the plan of an RLHFJob as local processes, one stage after the other (never imports torch).

Each stage runs as ``python -m rlhf_trainer.stage <workspace>/.rlhf/<stage>.json`` on the job's workspace
directory, its output in ``<stage>/stage.log``; the screen shows a progress bar and a line of the stage's key
metrics, read from its ``metrics.jsonl``. Finished stages (their result.json exists) are not run again, and a
stopped stage resumes from its last checkpoint, so running the same file again continues where it stopped.
Ctrl-C asks the running stage to checkpoint and stop. At the end it prints the status the RLHFJob would hold.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import yaml

from rlhf_operator.api import Condition, PPOStatus, RLHFJobStatus, StageStatus, StageStatuses
from rlhf_operator.cli import WORKSPACES, load_plan
from rlhf_operator.plan import Plan, PlannedStage
from rlhf_trainer.stage.workspace import StageDir, read_metrics

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 120
# What the live line shows per stage kind: (label, metric keys in order of preference).
KEY_METRICS = {
    "sft": [("loss", ("loss", "train_loss")), ("eval loss", ("eval_loss",))],
    "reward": [("loss", ("loss", "train_loss")), ("accuracy", ("eval_accuracy",))],
    "ppo": [("score", ("env/reward_mean", "ppo/mean_scores")), ("kl", ("objective/kl",)),
            ("kl coef", ("objective/kl_coef",))],
}


def add_run(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser("run", help="run an RLHFJob's stages on this machine, as local processes")
    command.add_argument("file", help="the RLHFJob YAML file")
    command.add_argument("--workspace", help=f"the job's workspace (default: ./{WORKSPACES}/<job name>)")
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    job, plan = load_plan(args.file, args.workspace)
    out = sys.stdout
    out.write(f"{plan.job_name}: {' -> '.join(s.name for s in plan.stages)}  (workspace {plan.workspace})\n")
    codes: dict[str, int] = {}
    for number, stage in enumerate(plan.stages, 1):
        codes[stage.name] = run_stage(stage, plan, f"[{number}/{len(plan.stages)}]", out)
        if codes[stage.name] != 0:
            break
    out.write("\nstatus:\n" + status_yaml(job_status(plan, codes)))
    return codes[stage.name]


def run_stage(stage: PlannedStage, plan: Plan, label: str, out: TextIO) -> int:
    """Run one stage to its end (or skip it when finished); the stage process's exit code."""
    stage_dir = StageDir(Path(stage.config.output_dir))
    if (result := stage_dir.read_result()) is not None:
        out.write(f"{label} {stage.name}: already finished ({result.get('reason')}), not run again\n")
        return 0 if result.get("phase") == "Succeeded" else 3
    config_file = Path(plan.workspace) / ".rlhf" / f"{stage.name}.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(stage.config.to_json())
    stage_dir.root.mkdir(parents=True, exist_ok=True)
    resumed = stage_dir.latest_checkpoint()
    out.write(f"{label} {stage.name}: {'resuming from ' + resumed.name if resumed else 'starting'} "
              f"(log: {stage_dir.root / 'stage.log'})\n")
    with open(stage_dir.root / "stage.log", "a") as log:
        # Its own session: a terminal's Ctrl-C reaches only us, and we ask the stage to stop cleanly.
        process = subprocess.Popen([sys.executable, "-m", "rlhf_trainer.stage", str(config_file)],
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        progress = Progress(stage.name, stage.config.kind, out)
        try:
            while process.poll() is None:
                progress.update(read_metrics(stage_dir.metrics))
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            out.write(f"\n{label} {stage.name}: stopping, saving a checkpoint (Ctrl-C again to kill) ...\n")
            stop(process)
        progress.update(read_metrics(stage_dir.metrics))
        progress.finish()
    code = process.returncode
    if code == 0:
        out.write(f"{label} {stage.name}: done\n")
    elif code == 143:
        out.write(f"{label} {stage.name}: stopped; run the same command again to continue from its checkpoint\n")
    else:
        out.write(f"{label} {stage.name}: failed (exit code {code}); the end of its log:\n")
        out.write("".join(f"    {line}\n" for line in tail(stage_dir.root / "stage.log", 15)))
    return code


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class Progress:
    """A progress bar and the stage's key metrics: redrawn in place on a terminal, one line per record else."""

    def __init__(self, stage: str, kind: str, out: TextIO, width: int = 24):
        self.stage, self.kind, self.out, self.width = stage, kind, out, width
        self.seen = 0
        self.tty = out.isatty()
        self.line = ""

    def update(self, records: list[dict]) -> None:
        if len(records) == self.seen:
            return
        new, self.seen = records[self.seen:], len(records)
        for record in new if not self.tty else new[-1:]:
            self.line = self.render(record)
            self.out.write(f"\r{self.line}\033[K" if self.tty else f"    {self.line}\n")
        self.out.flush()

    def render(self, record: dict) -> str:
        step, total = record.get("step") or 0, record.get("totalSteps") or 0
        filled = int(self.width * step / total) if total else 0
        bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {step}/{total or '?'}"
        metrics = record.get("metrics", {})
        shown = []
        for name, keys in KEY_METRICS.get(self.kind, []):
            value = next((metrics[k] for k in keys if k in metrics), None)
            if value is not None:
                shown.append(f"{name} {value:.4g}")
        return f"{self.stage:<7}{bar}  {'  '.join(shown)}"

    def finish(self) -> None:
        if self.tty and self.line:
            self.out.write("\n")


def tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def status_yaml(status: RLHFJobStatus) -> str:
    return yaml.safe_dump(status.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def job_status(plan: Plan, codes: dict[str, int]) -> RLHFJobStatus:
    """The status the RLHFJob would hold, from the stages' results and metrics (``codes``: exit codes of the
    stages run or skipped, in order; the last one decides the phase)."""
    stages, ppo = {}, None
    for stage in plan.stages:
        if stage.name not in codes:
            break
        stage_dir = StageDir(Path(stage.config.output_dir))
        records = read_metrics(stage_dir.metrics)
        result = stage_dir.read_result()
        if result is not None:
            stages[stage.name] = StageStatus(
                phase=result["phase"], start_time=result["startTime"], completion_time=result["completionTime"],
                output=result["output"], metrics=result.get("metrics"), reason=result["reason"])
        else:
            stopped = codes[stage.name] == 143
            stages[stage.name] = StageStatus(
                phase="Suspended" if stopped else "Failed", output=str(stage_dir.root),
                metrics=records[-1]["metrics"] if records else None,
                reason="Stopped" if stopped else f"ExitCode{codes[stage.name]}")
        if stage.config.kind == "ppo" and records:
            ppo = ppo_status(records[-1])
    last = list(stages)[-1]
    done = len(stages) == len(plan.stages) and stages[last].phase == "Succeeded"
    phase = "Succeeded" if done else stages[last].phase if stages[last].phase != "Succeeded" else "Running"
    condition = Condition(type=phase, status="True", reason=stages[last].reason,
                          message=f"stage {last}: {stages[last].reason}", last_transition_time=now())
    return RLHFJobStatus(phase=phase, stage=last, stages=StageStatuses(**stages), ppo=ppo, conditions=[condition])


def ppo_status(record: dict) -> PPOStatus:
    metrics = record.get("metrics", {})
    return PPOStatus(
        step=record.get("step"), total_steps=record.get("totalSteps"),
        mean_reward=metrics.get("env/reward_mean", metrics.get("ppo/mean_scores")),
        kl=metrics.get("objective/kl"), kl_coef=metrics.get("objective/kl_coef"),
        policy_loss=metrics.get("ppo/loss/policy"), value_loss=metrics.get("ppo/loss/value"),
        entropy=metrics.get("objective/entropy"), updated_at=record.get("time"))


def now() -> datetime:
    return datetime.now(UTC)
