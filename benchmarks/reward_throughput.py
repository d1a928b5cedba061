"""Reward-model training throughput, ours vs TRL 1.16, side by side: pairs/s and peak memory.

    python benchmarks/reward_throughput.py                                  # CPU, tiny shape
    python benchmarks/reward_throughput.py --device cuda --shape qwen0.5b   # the GPU setting

Both trainers get the same random-init Qwen2 sequence classifier (one label), the same pre-tokenized pairs
(chosen and rejected each like 60-560-word documents, scaled to --max-length), the same batch,
learning rate and fused AdamW, bf16 mixed precision on GPU (fp32 on CPU). TRL pads chosen and rejected into one
batch; ours packs them (padding-free) and scores each text's last token. TRL runs from benchmarks/.venv-trl116
(see sft_throughput.py for the install line).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the stdlib (see common.run_worker)
from common import (  # noqa: E402
    SHAPES,
    StepClock,
    add_ratios,
    build_model,
    build_tokenizer,
    document_lengths,
    documents,
    median_rounds,
    peak_memory_mib,
    print_table,
    set_threads,
    trl_python,
    versions,
)

TRL_VENV = ".venv-trl116"


def worker(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    set_threads(args.device, args.threads)
    pairs = json.loads(Path(args.data).read_text())
    attention = args.attn or "sdpa"
    model = build_model(args.shape, head="seq-cls", attention=attention)
    settings = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch,
                    max_steps=args.warmup + args.steps, learning_rate=1e-5, lr_scheduler_type="constant",
                    optim="adamw_torch_fused", bf16=args.device == "cuda", use_cpu=args.device == "cpu",
                    report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0,
                    dataloader_pin_memory=False, max_length=args.max_length)
    if args.worker == "trl":
        from trl import RewardConfig, RewardTrainer

        rows = [{"chosen_ids": chosen, "rejected_ids": rejected} for chosen, rejected in pairs]
        trainer = RewardTrainer(model, args=RewardConfig(**settings), train_dataset=Dataset.from_list(rows),
                                processing_class=build_tokenizer())
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer_image"))
        from rlhf_trainer import RewardConfig, RewardTrainer

        rows = [{"input_ids_chosen": chosen, "attention_mask_chosen": [1] * len(chosen),
                 "input_ids_rejected": rejected, "attention_mask_rejected": [1] * len(rejected)}
                for chosen, rejected in pairs]
        trainer = RewardTrainer(model, args=RewardConfig(**settings, padding_free=args.mode != "padded"),
                                train_dataset=Dataset.from_list(rows), tokenizer=build_tokenizer())

    clock, seen = StepClock(args.device, args.warmup), []

    def count_tokens(module, positional, kwargs):
        seen.append(int((kwargs["input_ids"] != 0).sum()))  # texts never hold the pad id 0

    class Tick(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.tick(seen.pop() if seen else 0)
            seen.clear()

    trainer.model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    trainer.add_callback(Tick())
    trainer.train()
    torch.set_num_threads(1)
    return {"pairs_per_s": args.batch * args.steps / clock.seconds, "tokens_per_s": clock.tokens / clock.seconds,
            "peak_mib": peak_memory_mib(args.device), "attention": attention}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: tiny on CPU, qwen0.5b on GPU")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=None, help="default: 256 on CPU, 1024 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 6 on CPU, 30 on GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each run's median round is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU run")
    parser.add_argument("--attn", help="attention implementation (default sdpa)")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--worker", choices=["ours", "trl"])
    parser.add_argument("--mode", choices=["packed", "padded"])
    parser.add_argument("--data")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.shape = args.shape or ("qwen0.5b" if gpu else "tiny")
    args.max_length = args.max_length or (1024 if gpu else 256)
    args.steps = args.steps or (30 if gpu else 6)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    low, high = document_lengths(args.max_length)
    count = args.batch * (args.warmup + args.steps)
    texts = documents(2 * count, low, high, SHAPES[args.shape]["vocab_size"])
    random.Random(1).shuffle(texts)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.json"
        data.write_text(json.dumps(list(zip(texts[:count], texts[count:], strict=True))))
        common = ["--device", args.device, "--shape", args.shape, "--batch", str(args.batch), "--max-length",
                  str(args.max_length), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
                  str(args.threads), "--data", str(data), *(["--attn", args.attn] if args.attn else [])]
        trl = None if args.no_trl else trl_python(TRL_VENV)
        runs = [("ours (padding-free)", sys.executable, ["--worker", "ours", "--mode", "packed", *common]),
                ("ours, padded", sys.executable, ["--worker", "ours", "--mode", "padded", *common])]
        if trl:
            runs.append(("TRL 1.16", trl, ["--worker", "trl", "--mode", "padded", *common]))
        results = median_rounds(runs, __file__, args.threads, args.repeats, "pairs_per_s")
    if not trl and not args.no_trl:
        print(f"(no benchmarks/{TRL_VENV}: TRL runs skipped; see sft_throughput.py's docstring)")
    add_ratios(results, "pairs_per_s", lambda _: "TRL 1.16")
    memory = "peak GPU MiB (allocated)" if gpu else "peak RSS MiB"
    print_table(
        f"Reward modelling, {args.device}, shape {args.shape}, {args.batch} pairs a step, max length "
        f"{args.max_length}, {args.steps} steps after {args.warmup} warm-up, median of {args.repeats} rounds; "
        f"{versions()}",
        [("pairs/s", "pairs_per_s", ".2f"), ("tokens/s", "tokens_per_s", ".0f"), (memory, "peak_mib", ".0f"),
         ("vs TRL speed", "ratio", ".2f"), ("vs TRL memory", "memory_ratio", ".2f"), ("attention", "attention", "")],
        results)


if __name__ == "__main__":
    main()
