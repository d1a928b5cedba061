"""DPO training throughput, ours vs TRL 1.16, side by side: pairs/s and peak memory.

    python benchmarks/dpo_throughput.py                                  # CPU, tiny shape
    python benchmarks/dpo_throughput.py --device cuda --shape qwen0.5b   # the GPU setting

Both trainers get the same random-init Qwen2 causal LM (saved to a directory, loaded from its path, so TRL's
reference is a reload and ours a copy of the same weights), the same pairs (prompt, chosen and rejected each a
random-token document like the 60-560-word ones of the other benchmarks, scaled to --max-length; a word-level tokenizer maps
"t<id>" to id), the same batch, learning rate, fused AdamW and the default sigmoid loss with a live reference
model. fp32 with bf16 off on both: DPOConfig turns bf16 on by default, which on a CPU without native bf16 is many
times slower and nobody trains that way; on GPU --device cuda turns bf16 on for both. Gradient checkpointing is
the same on both (on by default: DPOConfig's default in both libraries; --no-gradient-checkpointing turns it off
on both), because it trades a second forward pass for memory and a difference would measure the setting, not
the trainer. TRL runs from benchmarks/.venv-trl116 (see sft_throughput.py for the install line).
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
    PAD_ID,
    SHAPES,
    StepClock,
    add_ratios,
    build_model,
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


def build_word_tokenizer(vocab_size: int):
    """Word-level: "t<id>" is token id, with the pad/BOS/EOS ids of common.build_model; no special tokens added."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=1 << 20)


def text(ids: list[int], leading_space: bool) -> str:
    return (" " if leading_space else "") + " ".join(f"t{i}" for i in ids)


def worker(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    set_threads(args.device, args.threads)
    rows = json.loads(Path(args.data).read_text())
    settings = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch,
                    max_steps=args.warmup + args.steps, learning_rate=1e-6, lr_scheduler_type="constant",
                    optim="adamw_torch_fused", bf16=args.device == "cuda", use_cpu=args.device == "cpu",
                    gradient_checkpointing=args.gradient_checkpointing, report_to="none", save_strategy="no",
                    logging_steps=10**6, disable_tqdm=True, seed=0, dataloader_pin_memory=False,
                    max_length=args.max_length)
    tokenizer = build_word_tokenizer(SHAPES[args.shape]["vocab_size"])
    if args.worker == "trl":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**settings)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer_image"))
        from rlhf_trainer import DPOConfig, DPOTrainer

        fast = args.mode == "fast"
        config = DPOConfig(**settings, padding_free=None if fast else False, chunked_lm_head=None if fast else False,
                           precompute_ref_log_probs=args.precompute)
    trainer = DPOTrainer(args.model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)

    clock = StepClock(args.device, args.warmup)

    class Tick(TrainerCallback):
        def on_step_end(self, *_, **__):
            clock.tick(0)

    trainer.add_callback(Tick())
    trainer.train()
    torch.set_num_threads(1)
    return {"pairs_per_s": args.batch * args.steps / clock.seconds, "s_per_step": clock.seconds / args.steps,
            "peak_mib": peak_memory_mib(args.device)}


def make_pairs(args) -> list[dict]:
    low, high = document_lengths(args.max_length)
    count = args.batch * (args.warmup + args.steps)
    docs = documents(3 * count, low, high, SHAPES[args.shape]["vocab_size"])
    random.Random(1).shuffle(docs)
    return [{"prompt": text(docs[i], False), "chosen": text(docs[count + i], True),
             "rejected": text(docs[2 * count + i], True)} for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: tiny on CPU, qwen0.5b on GPU")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=None, help="default: 256 on CPU, 1024 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 6 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each run's median round is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per CPU run")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--no-plain", action="store_true", help="skip ours with the fast paths off")
    parser.add_argument("--precompute", action="store_true", help="also ours with precompute_ref_log_probs")
    parser.add_argument("--worker", choices=["ours", "trl"])
    parser.add_argument("--mode", choices=["fast", "plain"])
    parser.add_argument("--data")
    parser.add_argument("--model")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.shape = args.shape or ("qwen0.5b" if gpu else "tiny")
    args.max_length = args.max_length or (1024 if gpu else 256)
    args.steps = args.steps or (20 if gpu else 6)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data, model = Path(tmp) / "pairs.json", Path(tmp) / "model"
        data.write_text(json.dumps(make_pairs(args)))
        build_model(args.shape).save_pretrained(model)
        common = ["--device", args.device, "--shape", args.shape, "--batch", str(args.batch), "--max-length",
                  str(args.max_length), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
                  str(args.threads), "--data", str(data), "--model", str(model),
                  *([] if args.gradient_checkpointing else ["--no-gradient-checkpointing"])]
        trl = None if args.no_trl else trl_python(TRL_VENV)
        runs = [("ours", sys.executable, ["--worker", "ours", "--mode", "fast", *common])]
        if args.precompute:
            runs.append(("ours, precomputed reference", sys.executable,
                         ["--worker", "ours", "--mode", "fast", "--precompute", *common]))
        if not args.no_plain:
            runs.append(("ours, fast paths off", sys.executable, ["--worker", "ours", "--mode", "plain", *common]))
        if trl:
            runs.append(("TRL 1.16", trl, ["--worker", "trl", "--mode", "plain", *common]))
        results = median_rounds(runs, __file__, args.threads, args.repeats, "pairs_per_s")
    if not trl and not args.no_trl:
        print(f"(no benchmarks/{TRL_VENV}: TRL runs skipped; see sft_throughput.py's docstring)")
    add_ratios(results, "pairs_per_s", lambda _: "TRL 1.16")
    memory = "peak GPU MiB (allocated)" if gpu else "peak RSS MiB"
    print_table(
        f"DPO, {args.device}, shape {args.shape}, {args.batch} pairs a step, max length {args.max_length}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, {args.steps} steps after "
        f"{args.warmup} warm-up, median of {args.repeats} rounds; {versions()}",
        [("pairs/s", "pairs_per_s", ".2f"), ("s/step", "s_per_step", ".3f"),
         (memory, "peak_mib", ".0f"), ("vs TRL speed", "ratio", ".2f"), ("vs TRL memory", "memory_ratio", ".2f")],
        results)


if __name__ == "__main__":
    main()
