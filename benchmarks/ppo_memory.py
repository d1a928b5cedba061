"""PPO memory: adapters-only (LoRA; the reference is the base model with adapters off) vs full fine-tuning with a
full reference copy, on the same model and workload. The target: adapters-only peak <= 0.6x full copy.

    python benchmarks/ppo_memory.py                                  # CPU, tiny shape
    python benchmarks/ppo_memory.py --device cuda --shape qwen0.5b   # GPU: bf16 mixed precision, 64 x 128 tokens

Each run is its own process: a rollout and PPO steps (4 epochs) with our trainer. Peak: on GPU
torch.cuda.max_memory_allocated; on CPU the same quantity, the most memory tensors held at once (parameters,
gradients, optimizer state, activations, logits), from the profiler's record of every allocation and free.
"held" counts the tensors the trainer keeps between steps: policy and reference parameters, gradients and
optimizer state.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the stdlib (see common.run_worker)
from common import (  # noqa: E402
    ROOT,
    SHAPES,
    TensorMemoryPeak,
    build_model,
    build_tokenizer,
    documents,
    median_rounds,
    print_table,
    set_threads,
    versions,
)

LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def held_mib(trainer) -> float:
    """Distinct storages of the policy's and reference's parameters, gradients and optimizer state."""
    import torch

    tensors = [*trainer.model.parameters(), *(trainer.ref_model.parameters() if trainer.ref_model else [])]
    tensors += [p.grad for p in trainer.model.parameters() if p.grad is not None]
    tensors += [value for state in trainer.optimizer.state.values() for value in state.values()
                if isinstance(value, torch.Tensor)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values()) / 2**20


def worker(args) -> dict:
    import torch
    from peft import LoraConfig

    sys.path.insert(0, str(ROOT / "trainer_image"))
    from rlhf_trainer import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer

    set_threads(args.device, args.threads)
    torch.manual_seed(0)
    peft_config = (LoraConfig(r=16, lora_alpha=32, target_modules=LORA_MODULES, task_type="CAUSAL_LM")
                   if args.worker == "adapters" else None)
    queries = [torch.tensor(p) for p in documents(args.batch, 8, 32, SHAPES[args.shape]["vocab_size"], seed=1)]
    generation_kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "top_k": 0,
                         "do_sample": True, "pad_token_id": 0}
    with TensorMemoryPeak(args.device) as peak:
        model = AutoModelForCausalLMWithValueHead.from_pretrained(build_model(args.shape).to(args.device),
                                                                  peft_config=peft_config)
        mixed = {"mixed_precision": "bf16"} if args.device == "cuda" else {}
        config = PPOConfig(batch_size=args.batch, mini_batch_size=args.mini_batch, learning_rate=1e-5,
                           accelerator_kwargs=mixed)
        trainer = PPOTrainer(config, model, None, build_tokenizer())  # full: a reference copy; adapters: none
        for _ in range(args.steps):
            responses = trainer.generate(queries, return_prompt=False, **generation_kwargs)
            trainer.step(queries, responses, [torch.tensor(1.0)] * len(queries))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"peak_mib": peak.mib, "held_mib": held_mib(trainer),
            "trainable_m": trainable / 1e6, "reference": "copy" if trainer.ref_model is not None else "adapters off"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: tiny on CPU, qwen0.5b on GPU")
    parser.add_argument("--batch", type=int, default=None, help="episodes per step (default 16 CPU, 64 GPU)")
    parser.add_argument("--mini-batch", type=int, default=None, help="default 4 CPU, 16 GPU")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 32 CPU, 128 GPU")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", choices=["full", "adapters"])
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.shape = args.shape or ("qwen0.5b" if gpu else "tiny")
    args.batch = args.batch or (64 if gpu else 16)
    args.mini_batch = args.mini_batch or (16 if gpu else 4)
    args.new_tokens = args.new_tokens or (128 if gpu else 32)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    common = ["--device", args.device, "--shape", args.shape, "--batch", str(args.batch), "--mini-batch",
              str(args.mini_batch), "--new-tokens", str(args.new_tokens), "--steps", str(args.steps), "--threads",
              str(args.threads)]
    runs = [("full fine-tuning + reference copy", sys.executable, ["--worker", "full", *common]),
            ("adapters only (LoRA r=16, all linear layers)", sys.executable, ["--worker", "adapters", *common])]
    results = median_rounds(runs, __file__, args.threads, args.repeats, "peak_mib")
    full = results[0][1]
    for _, result in results:
        result["peak_ratio"] = result["peak_mib"] / full["peak_mib"]
        result["held_ratio"] = result["held_mib"] / full["held_mib"]
    peak = "peak tensor MiB"
    print_table(
        f"PPO memory, {args.device}, shape {args.shape}: batch {args.batch}, mini batch {args.mini_batch}, "
        f"{args.new_tokens} new tokens, {args.steps} steps; {versions()}",
        [("trainable M", "trainable_m", ".2f"), (peak, "peak_mib", ".0f"), ("vs full", "peak_ratio", ".2f"),
         ("held MiB", "held_mib", ".0f"), ("held vs full", "held_ratio", ".2f"), ("reference", "reference", "")],
        results)


if __name__ == "__main__":
    main()
