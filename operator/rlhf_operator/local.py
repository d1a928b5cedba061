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

from rlhf_contract.workspace import StageDir, read_metrics
from rlhf_operator.cli import WORKSPACES, load_plan
from rlhf_operator.plan import Plan, PlannedStage
from rlhf_operator.status import JobState, StageRun, apply_patch, next_status, progress_patch, timestamp

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
    _, plan = load_plan(args.file, args.workspace)
    out = sys.stdout
    out.write(f"{plan.job_name}: {' -> '.join(s.name for s in plan.stages)}  (workspace {plan.workspace})\n")
    files = {stage.name: write_config(stage, plan) for stage in plan.stages}
    pending = [stage for stage in plan.stages if StageDir(Path(stage.config.output_dir)).read_result() is None]
    if pending and (problem := check_inputs([files[stage.name] for stage in pending], Path(plan.workspace))):
        print(f"rlhf: {problem}\nrlhf: nothing was run", file=sys.stderr)
        return 4
    codes: dict[str, int] = {}
    for number, stage in enumerate(plan.stages, 1):
        codes[stage.name] = run_stage(stage, files[stage.name], f"[{number}/{len(plan.stages)}]", out)
        if codes[stage.name] != 0:
            break
    out.write("\nstatus:\n" + status_yaml(job_status(plan, codes)))
    return codes[stage.name]


def write_config(stage: PlannedStage, plan: Plan) -> Path:
    path = Path(plan.workspace) / ".rlhf" / f"{stage.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(stage.config.to_json())
    return path


def check_inputs(config_files: list[Path], workspace: Path) -> str | None:
    """Check the stages' models and datasets before running any; the problem, or None."""
    message = workspace / ".rlhf" / "check.log"
    message.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "rlhf_trainer.stage", "--check", *map(str, config_files)],
                          env={**os.environ, "RLHF_TERMINATION_LOG": str(message)}, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    return message.read_text() if message.is_file() else done.stderr.strip().splitlines()[-1]


def run_stage(stage: PlannedStage, config_file: Path, label: str, out: TextIO) -> int:
    """Run one stage to its end (or skip it when finished); the stage process's exit code."""
    stage_dir = StageDir(Path(stage.config.output_dir))
    if (result := stage_dir.read_result()) is not None:
        out.write(f"{label} {stage.name}: already finished ({result.get('reason')}), not run again\n")
        return 0 if result.get("phase") == "Succeeded" else 3
    stage_dir.root.mkdir(parents=True, exist_ok=True)
    termination_log = stage_dir.root / "termination.log"
    termination_log.unlink(missing_ok=True)
    resumed = stage_dir.latest_checkpoint()
    out.write(f"{label} {stage.name}: {'resuming from ' + resumed.name if resumed else 'starting'} "
              f"(log: {stage_dir.root / 'stage.log'})\n")
    with open(stage_dir.root / "stage.log", "a") as log:
        # Its own session: a terminal's Ctrl-C reaches only us, and we ask the stage to stop cleanly.
        process = subprocess.Popen([sys.executable, "-m", "rlhf_trainer.stage", str(config_file)],
                                   env={**os.environ, "RLHF_TERMINATION_LOG": str(termination_log)},
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
    elif termination_log.is_file():  # the stage said what is wrong
        out.write(f"{label} {stage.name}: failed: {termination_log.read_text()}\n")
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
        new, self.seen = [r for r in records[self.seen:] if "result" not in r], len(records)
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


def status_yaml(status: dict) -> str:
    return yaml.safe_dump(status, sort_keys=False)


def job_status(plan: Plan, codes: dict[str, int]) -> dict:
    """The status the RLHFJob would hold, computed as the operator computes it: the stages' progress records
    patched in, then each stage's outcome (``codes``: exit codes of the stages run or skipped) as its Job's."""
    status: dict = {}
    runs = []
    for stage in plan.stages:
        stage_dir = StageDir(Path(stage.config.output_dir))
        records = read_metrics(stage_dir.metrics)
        for record in records:
            status = apply_patch(status, progress_patch(record, record.get("time")))
        started = records[0]["time"] if records else None
        runs.append(StageRun(stage.name, stage.object_name, str(stage_dir.root),
                             local_job_state(stage_dir, codes.get(stage.name)), started))
    return next_status(status, runs, generation=None, now=timestamp(datetime.now(UTC)))


def local_job_state(stage_dir: StageDir, code: int | None) -> JobState | None:
    """What the stage's Job would say, from its result.json or the exit code of its process."""
    if (result := stage_dir.read_result()) is not None:
        return JobState(result["phase"], result["reason"], result.get("message"),
                        completion_time=result["completionTime"])
    if code is None:
        return None
    if code == 143:
        return JobState("Suspended", "Stopped", "stopped (Ctrl-C); run the same command again to continue")
    last = tail(stage_dir.root / "stage.log", 1)
    return JobState("Failed", "Error", f"exit code {code}: {last[0] if last else ''}".strip())
