"""SFT throughput, ours vs TRL 1.16, side by side: non-padding tokens/s and peak memory, packed and padded.

    python benchmarks/sft_throughput.py                                  # CPU, tiny shape
    python benchmarks/sft_throughput.py --device cuda --shape qwen0.5b   # the GPU setting

Both trainers get the same random-init Qwen2 model, the same pre-tokenized documents (60-560 words,
scaled to --max-length), the same batch, learning rate and fused AdamW, bf16 mixed precision on GPU (fp32 on CPU).
"packed": TRL's default packing (best-fit, padding-free rows) vs ours (best-fit rows of max length; padding-free
with flash-attention); "padded": one document per row. TRL runs from benchmarks/.venv-trl116:

    python3 -m venv benchmarks/.venv-trl116
    benchmarks/.venv-trl116/bin/pip install torch==2.13.0 trl==1.16.0 transformers==5.17.0
"""

from __future__ import annotations

import argparse
import json
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
    same_setting_in_trl,
    set_threads,
    trl_python,
    versions,
)

TRL_VENV = ".venv-trl116"


def worker(args) -> dict:
    import torch
    from transformers import TrainerCallback

    set_threads(args.device, args.threads)
    rows = [{"input_ids": ids} for ids in json.loads(Path(args.data).read_text())]
    attention = args.attn or ("flash_attention_2" if args.device == "cuda" and _has_flash_attn() else "sdpa")
    model = build_model(args.shape, attention=attention)
    packing = args.mode == "packed"
    settings = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch,
                    max_steps=args.warmup + args.steps, learning_rate=1e-5, lr_scheduler_type="constant",
                    optim="adamw_torch_fused", bf16=args.device == "cuda", use_cpu=args.device == "cpu",
                    report_to="none", save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0,
                    dataloader_pin_memory=False, torch_compile=args.compile)
    if args.worker == "trl":
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(**settings, packing=packing, max_length=args.max_length)
        trainer = SFTTrainer(model, args=config, train_dataset=_dataset(rows), processing_class=build_tokenizer())
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer_image"))
        from transformers import TrainingArguments

        from rlhf_trainer import SFTTrainer

        trainer = SFTTrainer(model, args=TrainingArguments(**settings), train_dataset=_dataset(rows),
                             tokenizer=build_tokenizer(), packing=packing, max_seq_length=args.max_length)

    clock, seen = StepClock(args.device, args.warmup), []

    def count_tokens(module, positional, kwargs):
        seen.append(int((kwargs["input_ids"] != 0).sum()))  # documents never hold the pad id 0

    class Tick(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.tick(seen.pop() if seen else 0)
            seen.clear()

    trainer.model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    trainer.add_callback(Tick())
    trainer.train()
    torch.set_num_threads(1)
    return {"tokens_per_s": clock.tokens / clock.seconds, "step_s": clock.seconds / args.steps,
            "peak_mib": peak_memory_mib(args.device), "attention": attention}


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: tiny on CPU, qwen0.5b on GPU")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=None, help="default: 256 on CPU, 1024 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 6 on CPU, 30 on GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each run's median round is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU run")
    parser.add_argument("--attn", help="attention implementation (default: flash_attention_2 on GPU if installed, "
                                       "else sdpa)")
    parser.add_argument("--modes", default="packed,padded")
    parser.add_argument("--compile", action="store_true", help="TrainingArguments(torch_compile=True) for both")
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
    needed = args.batch * (args.warmup + args.steps) * args.max_length * 2 // (low + high) + args.batch
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "documents.json"
        data.write_text(json.dumps(documents(needed, low, high, SHAPES[args.shape]["vocab_size"])))
        common = ["--device", args.device, "--shape", args.shape, "--batch", str(args.batch), "--max-length",
                  str(args.max_length), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
                  str(args.threads), "--data", str(data), *(["--attn", args.attn] if args.attn else []),
                  *(["--compile"] if args.compile else [])]
        trl = None if args.no_trl else trl_python(TRL_VENV)
        runs = []
        for mode in args.modes.split(","):
            runs.append((f"ours, {mode}", sys.executable, ["--worker", "ours", "--mode", mode, *common]))
            if trl:
                runs.append((f"TRL 1.16, {mode}", trl, ["--worker", "trl", "--mode", mode, *common]))
        results = median_rounds(runs, __file__, args.threads, args.repeats, "tokens_per_s")
    if not trl and not args.no_trl:
        print(f"(no benchmarks/{TRL_VENV}: TRL runs skipped; see this file's docstring)")
    add_ratios(results, "tokens_per_s", same_setting_in_trl)
    memory = "peak GPU MiB (allocated)" if gpu else "peak RSS MiB"
    print_table(
        f"SFT throughput, {args.device}, shape {args.shape}, batch {args.batch}, max length {args.max_length}, "
        f"{args.steps} steps after {args.warmup} warm-up, median of {args.repeats} rounds; {versions()}",
        [("tokens/s", "tokens_per_s", ".0f"), ("s/step", "step_s", ".3f"), (memory, "peak_mib", ".0f"),
         ("ours/TRL speed", "ratio", ".2f"), ("ours/TRL memory", "memory_ratio", ".2f"), ("attention", "attention", "")],
        results)


if __name__ == "__main__":
    main()
