"""The DPO demo's settings, measured: SFT of the builtin tiny GPT-2 on the builtin movie reviews (the sft stage of
manifests/examples/sentiment-tiny.yaml), then DPO on the builtin movie-preferences pairs; the VADER judge scores
the policy's continuations of the held-out prompts before and after DPO.

    python benchmarks/dpo_demo.py --seeds 0 1 2

Held-out evaluation as the PPO stage does it: the `movie-prompts` test split (subjects never trained on), 8
samples per prompt (seed 1234, top_k 0, top_p 1, 16 new tokens), VADER's compound score of prompt + continuation,
averaged. Prints one JSON line per seed and a table; the SFT model of each seed is kept under --workdir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer_image"))

EVALUATION_SEED, SAMPLES, NEW_TOKENS = 1234, 8, 16
# RPO (DPO + 0.2 x the chosen answers' NLL). DPO alone also lifts VADER here with beta 0.5 (lr 1e-3, 300 steps:
# +0.21 to +0.32 over seeds 0-2), but with beta 0.1 and 150-600 steps VADER fell by 0.1-0.2 on seed 0 although
# every held-out pair was ranked right; the NLL term keeps the chosen answers likely (benchmarks/README.md).
DPO_SETTINGS = dict(beta=0.1, learning_rate=5e-4, max_steps=600, per_device_train_batch_size=16, warmup_steps=0.1,
                    lr_scheduler_type="linear", max_length=64, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.2])


def sft(seed: int, directory: Path) -> Path:
    """The demo's sft stage: 600 steps, lr 1e-3, batch 16, max length 64, 5% warm-up."""
    from transformers import TrainingArguments

    from rlhf_trainer.data import load_builtin
    from rlhf_trainer.tiny import save_builtin
    from rlhf_trainer.trainer.sft import SFTTrainer

    output = directory / f"sft-seed{seed}"
    if (output / "config.json").exists():
        return output
    base = save_builtin("tiny-gpt2", directory / "base")
    args = TrainingArguments(output_dir=str(directory / "sft-run"), learning_rate=1e-3, max_steps=600,
                             per_device_train_batch_size=16, warmup_steps=0.05, logging_steps=100, seed=seed,
                             save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                             dataloader_pin_memory=False)
    trainer = SFTTrainer(str(base), args=args, train_dataset=load_builtin("movie-reviews"),
                         dataset_text_field="text", max_seq_length=64)
    trainer.train()
    trainer.save_model(str(output))
    return output


def vader_of(model, tokenizer) -> float:
    """Mean VADER compound score of 8 sampled continuations of each held-out prompt."""
    import torch

    from rlhf_trainer.data import load_builtin
    from rlhf_trainer.rewards import vader_compound

    prompts = [row["query"] for row in load_builtin("movie-prompts", "test")]
    texts = []
    model.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(EVALUATION_SEED)
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].repeat(SAMPLES, 1)
            out = model.generate(ids, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS,
                                 pad_token_id=tokenizer.pad_token_id)
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return statistics.fmean(vader_compound(texts))


def dpo(seed: int, sft_model: Path, directory: Path, settings: dict) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_trainer import DPOConfig, DPOTrainer
    from rlhf_trainer.data import load_builtin

    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    before = vader_of(AutoModelForCausalLM.from_pretrained(sft_model), tokenizer)
    args = DPOConfig(output_dir=str(directory / f"dpo-seed{seed}"), seed=seed, bf16=False, use_cpu=True,
                     gradient_checkpointing=False, report_to="none", save_strategy="no", disable_tqdm=True,
                     logging_steps=10, dataloader_pin_memory=False, **settings)
    trainer = DPOTrainer(str(sft_model), args=args, train_dataset=load_builtin("movie-preferences"),
                         eval_dataset=load_builtin("movie-preferences", "test"), processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    accuracy = trainer.evaluate()["eval_rewards/accuracies"]
    after = vader_of(trainer.model, tokenizer)
    return {"seed": seed, "vader_before": before, "vader_after": after, "rise": after - before,
            "dpo_seconds": seconds, "eval_reward_accuracy": accuracy, **settings}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rlhf-dpo-demo"))
    parser.add_argument("--settings", default="{}", help="JSON overriding DPO_SETTINGS")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = {**DPO_SETTINGS, **json.loads(args.settings)}
    directory = Path(args.workdir)
    results = []
    for seed in args.seeds:
        result = dpo(seed, sft(seed, directory), directory, settings)
        print(json.dumps(result), flush=True)
        results.append(result)
    print("\n| seed | VADER after SFT | after SFT + DPO | rise | DPO s | eval reward accuracy |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['seed']} | {r['vader_before']:.3f} | {r['vader_after']:.3f} | {r['rise']:+.3f} | "
              f"{r['dpo_seconds']:.0f} | {r['eval_reward_accuracy']:.2f} |")


if __name__ == "__main__":
    main()
