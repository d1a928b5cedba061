"""``python -m rlhf_trainer.stage CONFIG``: run one stage from its stage config (the trainer image's entrypoint).

Exit codes (docs/operator-runtime.md): 0 done, 3 a guardrail failed the stage, 4 invalid config or data,
143 stopped by a signal after checkpointing, anything else an error worth retrying.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from pydantic import ValidationError

from rlhf_trainer.stage.config import load_stage_config
from rlhf_trainer.stage.runner import (
    EXIT_GUARDRAIL_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    EXIT_STOPPED,
    StopSignal,
)
from rlhf_trainer.stage.workspace import StageDir

log = logging.getLogger("rlhf_trainer.stage")
TERMINATION_LOG = "/dev/termination-log"  # Kubernetes shows it in the pod's status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m rlhf_trainer.stage STAGE_CONFIG.json", file=sys.stderr)
        return 2
    try:
        config = load_stage_config(argv[0])
    except (OSError, ValidationError) as exc:
        return fail(EXIT_INVALID_INPUT, f"cannot use stage config {argv[0]}: {exc}")
    stop = StopSignal().install()

    from rlhf_trainer.stage.launch import accelerate_env, launch_command

    command = launch_command(config, argv[0], os.environ)
    if command is not None:
        import torch

        return launch(command, {**os.environ, **accelerate_env(config, torch.cuda.is_available())}, config, stop)

    from rlhf_trainer.stage.runner import run_stage
    from rlhf_trainer.stage.sources import StageInputError
    from rlhf_trainer.trainer.inputs import DatasetError

    try:
        return run_stage(config, stop)
    except (StageInputError, DatasetError, ValueError) as exc:
        return fail(EXIT_INVALID_INPUT, f"stage {config.name}: {exc}")


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
    return EXIT_STOPPED if stop.requested else code or 1


def fail(code: int, message: str) -> int:
    log.error(message)
    if os.access(TERMINATION_LOG, os.W_OK):
        Path(TERMINATION_LOG).write_text(message[-4000:])
    return code


if __name__ == "__main__":
    sys.exit(main())
