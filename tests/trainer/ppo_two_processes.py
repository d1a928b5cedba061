"""A small PPO loop for `accelerate launch --num_processes 2 --cpu` (run by test_ppo_distributed.py).

Each process writes rank-<N>.json in the working directory (its own file: two processes sharing stdout can
interleave their lines): its rank, its own sampled responses, the stats of each step and a checksum of the
policy's parameters.
"""

import gc
import json
import sys
import warnings
from pathlib import Path

import torch

from rlhf_trainer import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from rlhf_trainer.tiny import build_tokenizer

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
tokenizer = build_tokenizer()
model = AutoModelForCausalLMWithValueHead.from_pretrained(sys.argv[1])
trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, learning_rate=1e-3), model, None, tokenizer)
rank = trainer.accelerator.process_index
queries = [torch.tensor(tokenizer.encode(text)) for text in ["the movie", "I think", "a film", "this is"]]
steps, sampled = [], []
for _ in range(2):
    responses = trainer.generate(queries, return_prompt=False, max_new_tokens=5, min_new_tokens=5,
                                 do_sample=True, top_k=0)
    sampled.append([r.tolist() for r in responses])
    scores = [torch.tensor(float(rank))] * 4  # rank 0 scores 0, rank 1 scores 1
    stats = trainer.step(queries, responses, scores)
    steps.append({key: stats[key] for key in ("objective/kl", "ppo/mean_scores", "ppo/loss/total",
                                                "ppo/policy/approxkl", "objective/kl_coef")}
                 | {"kl_dist_len": len(stats["objective/kl_dist"])})
checksum = sum(p.double().sum().item() for p in trainer.model.parameters())
Path(f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "world": trainer.accelerator.num_processes,
                                                 "sampled": sampled, "steps": steps, "checksum": checksum}))
accelerator = trainer.accelerator
del trainer, model  # the DDP model (and its gloo work) goes first, while its process group is alive: freed at
gc.collect()  # interpreter exit after it, gloo aborts the process now and then (exit -6)
accelerator.end_training()  # destroys the process group
