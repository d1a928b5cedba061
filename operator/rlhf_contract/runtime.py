"""How a trainer pod runs: where it finds its stage config and workspace, the environment it gets, and what its
exit code means (docs/operator-runtime.md). The operator builds pods from these names; the stage runner obeys them.
"""

from __future__ import annotations

# --- where things are in a trainer pod -----------------------------------------------------------------------
WORKSPACE = "/workspace"
"""The job's workspace volume (a PersistentVolumeClaim shared by the stages)."""
CONFIG_DIR = "/etc/rlhf"
CONFIG_FILE = "stage.json"
"""The stage config, from the stage's ConfigMap: ``python -m rlhf_trainer.stage /etc/rlhf/stage.json``."""
TERMINATION_LOG = "/dev/termination-log"
"""Where a failing stage writes why; Kubernetes keeps its last 4 KiB in the pod's status."""
TERMINATION_MESSAGE_LIMIT = 4000
STATUS_AUDIENCE = "rlhf-operator"
"""Audience of the projected service-account token a pod pushes progress with."""
TOKEN_DIR = "/var/run/secrets/rlhf"
TOKEN_FILE = f"{TOKEN_DIR}/token"

# --- environment ---------------------------------------------------------------------------------------------
ENV_STATUS_URL = "RLHF_STATUS_URL"
"""The operator's progress endpoint (``<service>/v1/status``); unset outside a cluster."""
ENV_STATUS_TOKEN_FILE = "RLHF_STATUS_TOKEN_FILE"
"""The file holding the token to push with (re-read on every push: the kubelet rotates it)."""
ENV_TERMINATION_LOG = "RLHF_TERMINATION_LOG"
"""Overrides TERMINATION_LOG (``rlhf run`` points it into the stage's directory)."""
# torchrun's own variables, which the operator sets on the pods of a multi-worker stage.
ENV_NNODES, ENV_NODE_RANK = "PET_NNODES", "PET_NODE_RANK"
ENV_MASTER_ADDR, ENV_MASTER_PORT = "PET_MASTER_ADDR", "PET_MASTER_PORT"
ENV_NPROC_PER_NODE = "PET_NPROC_PER_NODE"
RENDEZVOUS_PORT = 29500

# --- exit codes of ``python -m rlhf_trainer.stage`` ----------------------------------------------------------
EXIT_OK = 0
"""Done (also when a guardrail with action stop ended the stage early)."""
EXIT_CRASHED = 1
"""An unexpected error: retried, resuming from the last complete checkpoint."""
EXIT_USAGE = 2
EXIT_GUARDRAIL_FAILED = 3
"""A guardrail with action fail ended the stage: not retried."""
EXIT_INVALID_INPUT = 4
"""The stage config or its data is invalid: not retried."""
EXIT_STOPPED = 143
"""Stopped by SIGTERM/SIGINT after saving a checkpoint: retried, resuming from it."""
NOT_RETRIED = (EXIT_GUARDRAIL_FAILED, EXIT_INVALID_INPUT)
"""Exit codes that end the stage's Job at once (its podFailurePolicy: FailJob)."""
