"""Start a stage's processes: one process runs it directly; several are started with torchrun and configured
through accelerate's environment variables (DDP by default, FSDP or DeepSpeed ZeRO as the config says).

On Kubernetes a multi-worker stage is an Indexed Job: the operator sets the PET_* variables torchrun reads
(PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT), and each pod starts ``numProcesses`` processes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.runtime import ENV_MASTER_ADDR, ENV_MASTER_PORT, ENV_NNODES, ENV_NODE_RANK, RENDEZVOUS_PORT


def launch_command(config: StageAssignment, config_path: str, env: Mapping[str, str]) -> list[str] | None:
    """The torchrun command that starts this stage's processes, or None when this process runs it alone."""
    if "LOCAL_RANK" in env:  # already one of the launched processes
        return None
    nnodes = int(env.get(ENV_NNODES, "1"))
    nproc = config.distributed.num_processes
    if nnodes * nproc == 1:
        return None
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={nproc}"]
    if nnodes > 1:
        command += [f"--node_rank={env[ENV_NODE_RANK]}", f"--master_addr={env[ENV_MASTER_ADDR]}",
                    f"--master_port={env.get(ENV_MASTER_PORT, str(RENDEZVOUS_PORT))}"]
    else:
        command.append("--standalone")  # a free local port, so concurrent local runs do not clash
    return [*command, "-m", "rlhf_trainer.stage", config_path]


def accelerate_env(config: StageAssignment, cuda: bool) -> dict[str, str]:
    """accelerate's configuration of the strategy and precision, as environment variables of the processes."""
    env = {"ACCELERATE_MIXED_PRECISION": config.distributed.mixed_precision}
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "true"
    strategy = config.distributed.strategy
    if strategy == "fsdp":
        env.update(ACCELERATE_USE_FSDP="true", FSDP_SHARDING_STRATEGY="FULL_SHARD",
                   FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP", FSDP_STATE_DICT_TYPE="FULL_STATE_DICT")
    elif strategy.startswith("deepspeed"):
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE=strategy[-1])
    return env
