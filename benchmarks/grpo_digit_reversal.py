"""The GRPO demo task, measured: SFT the tiny GPT-2 on digit reversal, then GRPO it with the program checkers, and
report the held-out reward (test prompts never trained on, sampled with a fixed seed) before and after GRPO.

    python benchmarks/grpo_digit_reversal.py --seeds 0 1 2

Settings are the defaults below (recorded with the numbers in docs/algorithms/grpo.md, "Demo task").
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer_image"))


def run(seed: int, args) -> dict:
    import torch
    from transformers import TrainingArguments

    from rlhf_trainer import GRPOConfig, GRPOTrainer, SFTTrainer
    from rlhf_trainer.data.digits import digit_reversal, digit_reversal_sft
    from rlhf_trainer.rewards import reversal_digits, reversal_exact
    from rlhf_trainer.tiny import build_tokenizer, save_builtin

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp())
    base = save_builtin("tiny-gpt2", work / "base", seed=seed)
    start = time.perf_counter()
    sft = SFTTrainer(str(base), args=TrainingArguments(
        output_dir=str(work / "sft"), per_device_train_batch_size=args.sft_batch, learning_rate=args.sft_lr,
        max_steps=args.sft_steps, lr_scheduler_type="cosine", warmup_steps=20, report_to="none", save_strategy="no",
        logging_steps=50, disable_tqdm=True, seed=seed, use_cpu=True, dataloader_pin_memory=False),
        train_dataset=digit_reversal_sft("train", seed=seed), tokenizer=build_tokenizer())
    sft.train()
    sft.save_model(str(work / "sft-model"))
    sft_seconds = time.perf_counter() - start

    config = GRPOConfig(
        output_dir=str(work / "grpo"), bf16=False, use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, logging_steps=10, seed=seed, disable_dropout=True, gradient_checkpointing=False,
        per_device_train_batch_size=args.grpo_batch, num_generations=args.generations, max_completion_length=6,
        learning_rate=args.grpo_lr, max_steps=args.grpo_steps, per_device_eval_batch_size=64,
        beta=0.0, loss_type="dapo", dataloader_pin_memory=False)
    trainer = GRPOTrainer(model=str(work / "sft-model"), reward_funcs=[reversal_exact, reversal_digits],
                          args=config, train_dataset=digit_reversal("train"),
                          eval_dataset=digit_reversal("test", n=args.eval_prompts), processing_class=build_tokenizer())
    before = trainer.evaluate()
    start = time.perf_counter()
    trainer.train()
    grpo_seconds = time.perf_counter() - start
    after = trainer.evaluate()
    keys = ("eval_rewards/reversal_exact/mean", "eval_rewards/reversal_digits/mean")
    return {"seed": seed, "sft_s": round(sft_seconds, 1), "grpo_s": round(grpo_seconds, 1),
            "before": {k.split("/")[1]: round(before[k], 3) for k in keys},
            "after": {k.split("/")[1]: round(after[k], 3) for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sft-steps", type=int, default=400)
    parser.add_argument("--sft-batch", type=int, default=32)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--grpo-steps", type=int, default=600)
    parser.add_argument("--grpo-batch", type=int, default=32)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--grpo-lr", type=float, default=1e-3)
    parser.add_argument("--eval-prompts", type=int, default=64)
    args = parser.parse_args()
    for seed in args.seeds:
        print(json.dumps(run(seed, args)), flush=True)


if __name__ == "__main__":
    main()
