"""Run one stage: skip it if finished, report progress, stop cleanly on SIGTERM/SIGINT, write result.json last.

Each stage kind has a runner module (``rlhf_trainer.stage.<kind>``) with ``run(ctx) -> dict``: it trains,
saves ``<stage>/model`` and returns the kind's part of the result, and ``dataset_columns(config)``: what it reads
(for ``--check``). Everything else is here, the same for all kinds.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import logging
import platform
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.runtime import EXIT_GUARDRAIL_FAILED, EXIT_OK, EXIT_STOPPED
from rlhf_contract.workspace import StageDir, read_metrics
from rlhf_trainer.stage.report import Reporter, make_reporter

log = logging.getLogger("rlhf_trainer.stage")

VERSIONED_PACKAGES = ("rlhf-operator", "torch", "transformers", "datasets", "accelerate", "peft", "tokenizers")


class StageStopped(Exception):
    """A stop was requested (SIGTERM, Ctrl-C); a checkpoint was saved and a re-run resumes from it."""


class StopSignal:
    """SIGTERM or SIGINT asks the stage to checkpoint and stop; a second SIGINT interrupts at once."""

    def __init__(self):
        self.requested = False

    def install(self) -> StopSignal:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("%s received: saving a checkpoint and stopping", signal.Signals(signum).name)


@dataclass
class StageContext:
    """What a kind's runner gets: its config, its directory, where to report, whether to stop."""

    config: StageAssignment
    dir: StageDir
    reporter: Reporter | None  # None on every process but the main one
    stop: StopSignal = field(default_factory=StopSignal)

    def should_stop(self) -> bool:
        """Whether to stop now: asked for (SIGTERM, Ctrl-C) on any of the stage's processes. Every process must ask
        at the same point: they agree on the answer, so that none goes on alone and waits for the others forever."""
        state = processes()
        if state.num_processes == 1:
            return self.stop.requested
        import torch

        flag = torch.tensor([float(self.stop.requested)], device=state.device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item())

    def report(self, step: int, total_steps: int | None, metrics: dict, result: dict | None = None) -> None:
        if self.reporter is not None:
            self.reporter.report(step, total_steps, metrics, result)


def run_stage(config: StageAssignment, stop: StopSignal | None = None) -> int:
    """Run the stage ``config`` describes; returns the process exit code (see docs/operator-runtime.md)."""
    stage_dir = StageDir(Path(config.output_dir))
    if (done := stage_dir.read_result()) is not None:
        log.info("stage %s already finished (%s): not running it again", config.name, done.get("reason"))
        return EXIT_OK if done.get("phase") == "Succeeded" else EXIT_GUARDRAIL_FAILED
    is_main = processes().is_main_process
    reporter = make_reporter(config.name, config.kind, stage_dir.root) if is_main else None
    ctx = StageContext(config, stage_dir, reporter, stop or StopSignal())
    if (checkpoint := stage_dir.latest_checkpoint()) is not None:
        log.info("stage %s resumes from %s", config.name, checkpoint.name)
    try:
        result = run_kind(ctx)
    except StageStopped:
        log.warning("stage %s stopped; run it again to resume from its last checkpoint", config.name)
        return EXIT_STOPPED
    finally:
        if reporter is not None:
            reporter.close()  # the last progress record goes out whatever happened
        # the trainer's DDP model (and its gloo work) first, then the process group: left to interpreter exit in
        # the other order, gloo aborts the process now and then (exit -6)
        gc.collect()
        processes().destroy_process_group()
    return EXIT_OK if result["phase"] == "Succeeded" else EXIT_GUARDRAIL_FAILED


def run_kind(ctx: StageContext) -> dict:
    """Train with the kind's runner, then write result.json (the main process) and report it."""
    config, stage_dir = ctx.config, ctx.dir
    started, clock = datetime.now(UTC), time.monotonic()
    outcome = runner(config.kind).run(ctx)
    processes().wait_for_everyone()
    result = {
        "stage": config.name, "kind": config.kind, "job": config.job_name,
        "phase": "Succeeded", "reason": "Completed",
        "output": str(stage_dir.root), "model": str(stage_dir.model),
        "startTime": started.isoformat(timespec="seconds"),
        "completionTime": datetime.now(UTC).isoformat(timespec="seconds"),
        "durationSeconds": round(time.monotonic() - clock, 1),
        "configSha256": hashlib.sha256(config.to_json().encode()).hexdigest(),
        "seed": config.seed,
        "processes": processes().num_processes,
        "versions": package_versions(),
        **outcome,
    }
    if ctx.reporter is not None:
        draw_curves(config.kind, stage_dir, result)
        stage_dir.write_result(result)
        ctx.report(result.get("steps", 0), result.get("totalSteps"), result.get("metrics", {}), result=result)
    return result


def draw_curves(kind: str, stage_dir: StageDir, result: dict) -> None:
    """The stage's curves as ``<stage>/curves.png`` (skipped where matplotlib is not installed); a picture that
    cannot be drawn is worth a warning, never the stage."""
    from rlhf_trainer.plots import write_curves

    try:
        write_curves(kind, [*read_metrics(stage_dir.metrics), {"result": result}], stage_dir.curves)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not draw the curves of stage %s: %s", stage_dir.root.name, exc)


def processes():
    """accelerate's view of the stage's processes (CPU processes when launched with ACCELERATE_USE_CPU)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def runner(kind: str):
    """The runner module of a stage kind."""
    return importlib.import_module(f"rlhf_trainer.stage.{kind}")
