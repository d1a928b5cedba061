"""GRPO training throughput, ours vs TRL 1.16, side by side: episodes/s, rollout tokens/s and peak memory.

    python benchmarks/grpo_throughput.py                                  # CPU: tiny GPT-2 and tiny Llama
    python benchmarks/grpo_throughput.py --device cuda --shape qwen0.5b   # GPU: Qwen2.5-0.5B shape, random init

The same workload for both libraries: the same local model directory, the same prompts, 8 prompts x 4 generations
per step (per_device_train_batch_size 32, one optimizer step per generation), --new-tokens new tokens, the default
loss (dapo), beta 0 and learning rate, bf16 mixed precision on GPU and fp32 on CPU (GRPOConfig's bf16 default on a
CPU without native bf16 autocasts to bfloat16 emulated in software, not a fair comparison, so both run fp32) and the same gradient_checkpointing
setting (off by default; --gradient-checkpointing turns it on for both), and by default the same Python environment
(ours runs with the TRL virtual environment's interpreter too, so torch, transformers, accelerate, datasets and
peft are the same versions for both; --ours-python picks another, e.g. the project's). The reward is a cheap program (the share
of vowels) so that the trainers are what is timed. An episode is one completion trained on. Each library runs in
its own process (peak memory per process); TRL from benchmarks/.venv-trl116:

    python3 -m venv benchmarks/.venv-trl116
    benchmarks/.venv-trl116/bin/pip install torch==2.13.0 trl==1.16.0 transformers==5.17.0 peft==0.21.2 pillow
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the stdlib (see common.run_worker)
from common import (  # noqa: E402
    ROOT,
    SHAPES,
    add_ratios,
    build_model,
    median_rounds,
    peak_memory_mib,
    print_table,
    same_setting_in_trl,
    synchronize,
    trl_python,
    versions,
)

TRL_VENV = ".venv-trl116"
SHAPE_CHOICES = ["tiny-gpt2", "tiny-llama", *sorted(SHAPES)]
PROMPTS = ["The movie", "I think that", "A film about", "This is the", "The actor was", "My friend said",
           "The plot of", "One scene in", "After the end", "We watched a", "Nobody expected", "It was not"]


def vowel_share(completions, **kwargs):
    out = []
    for text in completions:
        letters = [c for c in text.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
    return out


def worker(args) -> dict:
    import torch
    from transformers import TrainerCallback

    torch.set_num_threads(args.threads)
    if args.worker == "trl":
        from trl import GRPOConfig, GRPOTrainer
    else:
        sys.path.insert(0, str(ROOT / "trainer_image"))
        from rlhf_trainer import GRPOConfig, GRPOTrainer

    steps = args.warmup + args.steps
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=32, num_generations=4,
        max_completion_length=args.new_tokens, max_steps=steps, bf16=args.device == "cuda", use_cpu=args.device == "cpu",
        gradient_checkpointing=args.gradient_checkpointing, report_to="none", save_strategy="no",
        logging_steps=10**6, disable_tqdm=True, seed=0, dataloader_pin_memory=False,
        generation_kwargs={"min_new_tokens": args.new_tokens})  # every completion the same length in both
    dataset = [{"prompt": p} for p in PROMPTS * 8]
    from datasets import Dataset

    trainer = GRPOTrainer(model=args.model, reward_funcs=vowel_share, args=config, train_dataset=Dataset.from_list(dataset))
    times = []

    class Tick(TrainerCallback):
        def on_step_end(self, *_, **__):
            synchronize(args.device)
            times.append(time.perf_counter())

    trainer.add_callback(Tick())
    trainer.train()
    seconds = times[-1] - times[args.warmup - 1]
    episodes = 32 * args.steps
    return {"episodes_per_s": episodes / seconds, "step_s": seconds / args.steps,
            "rollout_tokens_per_s": episodes * args.new_tokens / seconds, "peak_mib": peak_memory_mib(args.device)}


def save_model(shape: str, directory: Path) -> str:
    """A local model directory (weights + tokenizer) both libraries load by path. The Qwen shapes get the package's
    byte-level tokenizer (prompts become real token ids, completions decode to text for the reward)."""
    sys.path.insert(0, str(ROOT / "trainer_image"))
    from rlhf_trainer.tiny import build_tokenizer, save_builtin

    if shape.startswith("tiny-"):
        return str(save_builtin(shape, directory))
    tokenizer = build_tokenizer()
    model = build_model(shape)
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=SHAPE_CHOICES, nargs="+", default=None,
                        help="default: tiny-gpt2 tiny-llama on CPU, qwen0.5b on GPU")
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 24 on CPU, 256 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 8 on CPU, 10 on GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each run's median round is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU run")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--ours-python", help="interpreter for our runs (default: the TRL environment's, else this one)")
    parser.add_argument("--worker", choices=["ours", "trl"])
    parser.add_argument("--model")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.new_tokens = args.new_tokens or (256 if gpu else 24)
    args.steps = args.steps or (10 if gpu else 8)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    shapes = args.shape or (["qwen0.5b"] if gpu else ["tiny-gpt2", "tiny-llama"])
    trl = None if args.no_trl else trl_python(TRL_VENV)
    ours_python = args.ours_python or trl_python(TRL_VENV) or sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for shape in shapes:
            model = save_model(shape, Path(tmp) / shape)
            common = ["--device", args.device, "--model", model, "--new-tokens", str(args.new_tokens), "--steps",
                      str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                      *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])]
            runs.append((f"ours, {shape}", ours_python, ["--worker", "ours", *common]))
            if trl:
                runs.append((f"TRL 1.16, {shape}", trl, ["--worker", "trl", *common]))
        results = median_rounds(runs, __file__, args.threads, args.repeats, "episodes_per_s")
    if not trl and not args.no_trl:
        print(f"(no benchmarks/{TRL_VENV}: TRL runs skipped; see this file's docstring)")
    add_ratios(results, "episodes_per_s", same_setting_in_trl)
    memory = "peak GPU MiB (allocated)" if gpu else "peak RSS MiB"
    print_table(
        f"GRPO throughput, {args.device}, 8 prompts x 4 generations x {args.new_tokens} new tokens per step, "
        f"{args.steps} steps after {args.warmup} warm-up, median of {args.repeats} rounds, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; {versions()}",
        [("episodes/s", "episodes_per_s", ".1f"), ("s/step", "step_s", ".3f"),
         ("rollout tok/s", "rollout_tokens_per_s", ".0f"), (memory, "peak_mib", ".0f"),
         ("ours/TRL speed", "ratio", ".2f"), ("ours/TRL memory", "memory_ratio", ".2f")],
        results)


if __name__ == "__main__":
    main()
