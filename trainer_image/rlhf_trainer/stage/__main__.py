"""``python -m rlhf_trainer.stage CONFIG``: run one stage from its stage config (the trainer image's entrypoint).
``python -m rlhf_trainer.stage --check CONFIG...``: check the inputs of a job's stages, in order, training nothing.

Exit codes (``rlhf_contract.runtime``, docs/operator-runtime.md): 0 done, 3 a guardrail failed the stage, 4 the
config or data is invalid (only the project's own checks say so: ``InvalidInput`` and config validation), 143
stopped by a signal after checkpointing, 1 any other error (retried). The message of a failure goes to the log and
to the termination log Kubernetes shows in the pod's status (``RLHF_TERMINATION_LOG`` overrides its path, as
``rlhf run`` does).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from pydantic import ValidationError

from rlhf_contract.runtime import (
    ENV_TERMINATION_LOG,
    EXIT_CRASHED,
    EXIT_GUARDRAIL_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    TERMINATION_LOG,
    TERMINATION_MESSAGE_LIMIT,
)
from rlhf_contract.stages import load_stage_config
from rlhf_contract.workspace import StageDir
from rlhf_trainer.stage.runner import StopSignal

log = logging.getLogger("rlhf_trainer.stage")
USAGE = "usage: python -m rlhf_trainer.stage STAGE_CONFIG.json | --check STAGE_CONFIG.json..."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check = argv[:1] == ["--check"]
    paths = argv[1:] if check else argv
    if not paths or (len(paths) > 1 and not check):
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    configs = []
    for path in paths:
        try:
            configs.append(load_stage_config(path))
        except (OSError, ValidationError) as exc:
            return fail(EXIT_INVALID_INPUT, f"cannot use stage config {path}: {exc}")
    if check:
        return check_stages(configs)
    config = configs[0]
    stop = StopSignal().install()

    from rlhf_trainer.stage.launch import accelerate_env, launch_command

    command = launch_command(config, argv[0], os.environ)
    if command is not None:
        import torch

        return launch(command, {**os.environ, **accelerate_env(config, torch.cuda.is_available())}, config, stop)

    from rlhf_trainer.stage.runner import run_stage

    try:
        return run_stage(config, stop)
    except input_errors() as exc:
        return fail(EXIT_INVALID_INPUT, f"stage {config.name}: {exc}")
    except Exception as exc:  # noqa: BLE001 - the message is kept for the status; the Job retries
        log.exception("stage %s crashed", config.name)
        return fail(EXIT_CRASHED, f"stage {config.name} crashed: {type(exc).__name__}: {exc}")


def input_errors() -> tuple[type[Exception], ...]:
    """Errors that mean the config or its data must change (exit code 4, not retried): the project's own checks."""
    from rlhf_trainer.trainer.inputs import InvalidInput

    return InvalidInput, ValidationError


def check_stages(configs) -> int:
    from rlhf_trainer.stage.check import check_stage

    produced = frozenset(str(StageDir(Path(c.output_dir)).model) for c in configs)
    for config in configs:
        try:
            check_stage(config, produced)
        except input_errors() as exc:
            return fail(EXIT_INVALID_INPUT, f"stage {config.name}: {exc}")
    return EXIT_OK


def launch(command: list[str], env: dict, config, stop: StopSignal) -> int:
    """Run the processes and read the outcome from result.json (torchrun does not pass exit codes through).

    SIGTERM (Kubernetes stopping the pod) is forwarded to torchrun, which forwards it to the processes; a
    terminal's Ctrl-C reaches them directly.
    """
    log.info("starting %s", " ".join(command))
    process = subprocess.Popen(command, env=env)

    def forward(signum, frame):
        stop._handle(signum, frame)
        if signum == signal.SIGTERM:
            process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = process.wait()
    result = StageDir(Path(config.output_dir)).read_result()
    if result is not None:
        return EXIT_OK if result["phase"] == "Succeeded" else EXIT_GUARDRAIL_FAILED
    return EXIT_STOPPED if stop.requested else code or EXIT_CRASHED


def fail(code: int, message: str) -> int:
    log.error(message)
    path = os.environ.get(ENV_TERMINATION_LOG) or (TERMINATION_LOG if os.access(TERMINATION_LOG, os.W_OK) else None)
    if path:
        Path(path).write_text(message[-TERMINATION_MESSAGE_LIMIT:])
    return code


if __name__ == "__main__":
    sys.exit(main())
