"""``rlhf run FILE``: the plan of an RLHFJob as local processes, one stage after the other (never imports torch).

Each stage runs as ``python -m rlhf_trainer.stage <workspace>/.rlhf/<stage>.json`` on the job's workspace
directory, its output in ``<stage>/stage.log``; the screen shows each stage's progress and key metrics, read from
its ``metrics.jsonl`` (``rlhf_operator.view``), and a short summary at the end. Finished stages (their result.json
exists) are not run again, and a stopped stage resumes from its last checkpoint, so running the same command
again continues where it stopped. Ctrl-C, SIGTERM (``kill``, ``timeout``, service managers) and SIGHUP (the
terminal closed) ask the running stage to checkpoint and stop. One ``rlhf run`` at a time uses a workspace: it and
the stage process it starts hold a lock on it, so a second run on the same workspace refuses to start, even when
the first ``rlhf run`` was killed and its stage goes on.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import yaml

from rlhf_contract.progress import now_rfc3339
from rlhf_contract.runtime import ENV_TERMINATION_LOG, EXIT_INVALID_INPUT, EXIT_OK, EXIT_STOPPED
from rlhf_contract.workspace import StageDir, read_metrics
from rlhf_operator.cli import WORKSPACES, UserError, load_plan
from rlhf_operator.plan import Plan, PlannedStage
from rlhf_operator.status import JobState, StageRun, apply_patch, next_status, progress_patch
from rlhf_operator.view import LiveView, Stage, StageSummary, show, summary

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 120
LOG_TAIL_LINES = 15
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run as Ctrl-C does: what kill, timeout and service managers send, and a closed terminal."""


def add_run(subparsers: argparse._SubParsersAction) -> None:
    command = subparsers.add_parser(
        "run", help="run an RLHFJob's stages on this machine, as local processes",
        description="Run an RLHFJob's stages on this machine, one process per stage, in its workspace directory. "
                    "Running it again continues where it stopped.")
    command.add_argument("file", help="the RLHFJob YAML file")
    command.add_argument("--workspace", help=f"the job's workspace (default: ./{WORKSPACES}/<job name>)")
    command.add_argument("--status", action="store_true",
                         help="show the job's status from its workspace, without running anything")
    command.add_argument("-o", "--output", choices=("yaml",),
                         help="yaml: end with the full status the RLHFJob resource would hold")
    command.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    _, plan = load_plan(args.file, args.workspace)
    out = sys.stdout
    command = shlex.join(["rlhf", "run", args.file, *(["--workspace", args.workspace] if args.workspace else [])])
    codes: dict[str, int] = {}
    if not args.status:
        try:
            with workspace_lock(Path(plan.workspace)) as lock, stopped_by_signals():
                codes = run_stages(plan, out, lock)
        except KeyboardInterrupt:  # between stages, or while checking their inputs: nothing to stop
            out.write("stopped before a stage started\n")
            return EXIT_STOPPED
    show(out, summary(stage_summaries(plan, codes), workspace=plan.workspace, command=command))
    if args.output == "yaml":
        out.write("\nstatus:\n" + yaml.safe_dump(job_status(plan, codes), sort_keys=False))
    return next((code for code in codes.values() if code != EXIT_OK), EXIT_OK)


def run_stages(plan: Plan, out: TextIO, lock: int) -> dict[str, int]:
    """Check every stage's inputs, then run the stages in order until one does not succeed; their exit codes."""
    out.write(f"{plan.job_name}: {' -> '.join(s.name for s in plan.stages)}  (workspace {plan.workspace})\n")
    files = {stage.name: write_config(stage, plan) for stage in plan.stages}
    pending = [stage for stage in plan.stages if StageDir(Path(stage.config.output_dir)).read_result() is None]
    if pending and (problem := check_inputs([files[stage.name] for stage in pending], Path(plan.workspace))):
        raise UserError(f"{problem}\nnothing was run", EXIT_INVALID_INPUT)
    codes: dict[str, int] = {}
    stages = [Stage(s.name, s.config.kind, str(_log(s))) for s in plan.stages]
    with LiveView(out, stages) as view:
        for stage in plan.stages:
            codes[stage.name] = run_stage(stage, files[stage.name], view, lock)
            if codes[stage.name] != EXIT_OK:
                break
    return codes


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
                          env={**os.environ, ENV_TERMINATION_LOG: str(message)}, capture_output=True, text=True)
    if done.returncode == 0:
        return None
    return message.read_text() if message.is_file() else done.stderr.strip().splitlines()[-1]


def run_stage(stage: PlannedStage, config_file: Path, view: LiveView, lock: int) -> int:
    """Run one stage to its end (or skip it when finished); the stage process's exit code."""
    stage_dir = StageDir(Path(stage.config.output_dir))
    if (result := stage_dir.read_result()) is not None:
        view.stage_done(stage.name, "Skipped", f"finished before: {result.get('reason')}")
        return EXIT_OK if result.get("phase") == "Succeeded" else 3
    stage_dir.root.mkdir(parents=True, exist_ok=True)
    _termination_log(stage_dir).unlink(missing_ok=True)
    if resumed := stage_dir.latest_checkpoint():
        view.note(f"{stage.name}: resuming from {resumed.name}")
    with open(_log(stage), "a") as log:
        # Its own session: a terminal's Ctrl-C reaches only us, and we ask the stage to stop cleanly. It holds the
        # workspace lock too, so that no other run starts on this workspace while it lives.
        process = subprocess.Popen([sys.executable, "-m", "rlhf_trainer.stage", str(config_file)],
                                   env={**os.environ, ENV_TERMINATION_LOG: str(_termination_log(stage_dir))},
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(lock,))
        _holders(lock, os.getpid(), process.pid)
        try:
            while process.poll() is None:
                view.update(stage.name, read_metrics(stage_dir.metrics))
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP
            stop(process)
        view.update(stage.name, read_metrics(stage_dir.metrics))
    code = process.returncode
    outcome = {EXIT_OK: "Succeeded", EXIT_STOPPED: "Stopped"}.get(code, "Failed")
    view.stage_done(stage.name, outcome, "" if code in (EXIT_OK, EXIT_STOPPED) else f"exit code {code}")
    return code


def stop(process: subprocess.Popen) -> None:
    """Ask the stage to checkpoint and stop; kill it when asked again, or when it takes too long."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_SECONDS)
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the running stage as Ctrl-C does (checkpoint, exit 143), never leaving it behind."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def workspace_lock(workspace: Path) -> Iterator[int]:
    """Hold the workspace's lock (``<workspace>/.rlhf/lock``); refuse when another run holds it. The lock lives as
    long as any process holding its file descriptor: this one, or a stage process it started."""
    path = workspace / ".rlhf" / "lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pids = os.pread(fd, 64, 0).decode(errors="replace").split() or ["?"]
            holders = f"`rlhf run` (pid {pids[0]})" + (f" and its stage process (pid {pids[1]})" if pids[1:] else "")
            raise UserError(f"the workspace {workspace} is in use by another {holders}; wait for it to end, or stop "
                            f"it (kill {' '.join(pids)}), then run this again") from None
        _holders(fd, os.getpid())
        yield fd
    finally:
        os.close(fd)


def _holders(lock: int, *pids: int) -> None:
    """Write who holds the lock into its file, for the message of a run that finds it taken."""
    os.ftruncate(lock, 0)
    os.pwrite(lock, " ".join(map(str, pids)).encode(), 0)


def _log(stage: PlannedStage) -> Path:
    return Path(stage.config.output_dir) / "stage.log"


def _termination_log(stage_dir: StageDir) -> Path:
    return stage_dir.root / "termination.log"


# --- what the job's stages have done, read from the workspace ----------------------------------------------------

def stage_summaries(plan: Plan, codes: dict[str, int]) -> list[StageSummary]:
    """Each stage's row of the summary: from its result.json, else from its records and the exit code of its run."""
    summaries = []
    for stage in plan.stages:
        stage_dir = StageDir(Path(stage.config.output_dir))
        picture = str(stage_dir.curves) if stage_dir.curves.is_file() else None
        if (result := stage_dir.read_result()) is not None:
            summaries.append(StageSummary.from_result(result, log=str(_log(stage)), picture=picture))
            continue
        records = [r for r in read_metrics(stage_dir.metrics) if "result" not in r]
        last = records[-1] if records else {}
        code = codes.get(stage.name)
        phase = "Pending" if code is None else "Suspended" if code == EXIT_STOPPED else "Failed"
        termination = _termination_log(stage_dir)
        message = termination.read_text().strip() if code not in (None, EXIT_STOPPED) and termination.is_file() \
            else None
        tail = tuple(_tail(_log(stage), LOG_TAIL_LINES)) if phase == "Failed" and not message else ()
        summaries.append(StageSummary(
            stage.name, stage.config.kind, phase, steps=last.get("step"), total_steps=last.get("totalSteps"),
            message=message or (f"exit code {code}" if phase == "Failed" else None), reason=None,
            log=str(_log(stage)) if _log(stage).is_file() else None, picture=picture, log_tail=tail))
    return summaries


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


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
    return next_status(status, runs, generation=None, now=now_rfc3339())


def local_job_state(stage_dir: StageDir, code: int | None) -> JobState | None:
    """What the stage's Job would say, from its result.json or the exit code of its process."""
    if (result := stage_dir.read_result()) is not None:
        return JobState(result["phase"], result["reason"], result.get("message"),
                        completion_time=result["completionTime"])
    if code is None:
        return None
    if code == EXIT_STOPPED:
        return JobState("Suspended", "Stopped", "stopped (Ctrl-C or SIGTERM); run the same command again to continue")
    termination = _termination_log(stage_dir)
    said = termination.read_text().strip() if termination.is_file() else ""
    last = _tail(stage_dir.root / "stage.log", 1)
    return JobState("Failed", "Error", f"exit code {code}: {said or (last[0] if last else '')}".strip())
