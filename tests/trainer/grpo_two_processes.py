"""A small GRPO run for `accelerate launch --num_processes 2` on CPU (run by test_grpo_distributed.py).

Every group of 4 completions spans both processes (2 each). Rank 0's completions are rewarded 0 and rank 1's 1,
so only advantages computed over the whole group are non-zero. Each process writes rank-<N>.json: its
advantages, its logged records and a checksum of the policy's parameters.
"""

import gc
import json
import sys
import warnings
from pathlib import Path

import torch

from rlhf_trainer import GRPOConfig, GRPOTrainer

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def by_rank(completions, trainer_state, **kwargs):
    return [float(RANK)] * len(completions)


args = GRPOConfig(output_dir="out", report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,
                  bf16=False, gradient_checkpointing=False, disable_dropout=True, per_device_train_batch_size=2,
                  num_generations=4, max_completion_length=5, max_steps=2, learning_rate=1e-2, scale_rewards="none",
                  dataloader_pin_memory=False, beta=0.1)
prompts = [{"prompt": p} for p in ["The movie", "I think", "A film", "This is"]]
trainer = GRPOTrainer(model=sys.argv[1], reward_funcs=by_rank, args=args, train_dataset=prompts)
RANK = trainer.accelerator.process_index
advantages = []
original = trainer._generate_and_score


def recording(*a):
    batch = original(*a)
    advantages.append(batch["advantages"].tolist())
    return batch


trainer._generate_and_score = recording
trainer.train()
checksum = sum(p.double().sum().item() for p in trainer.model.parameters())
records = [{k: v for k, v in r.items() if k not in ("step_time", "train_runtime", "train_samples_per_second",
                                                        "train_steps_per_second")} for r in trainer.state.log_history]
Path(f"rank-{RANK}.json").write_text(json.dumps({"rank": RANK, "world": trainer.accelerator.num_processes,
                                                 "advantages": advantages, "records": records,
                                                 "checksum": checksum}))
accelerator = trainer.accelerator
del trainer  # the DDP model (and its gloo work) goes first, while its process group is alive: freed at
gc.collect()  # interpreter exit after it, gloo aborts the process now and then (exit -6)
accelerator.end_training()  # destroys the process group
