"""The PPO seed loop (generate, score, step) with our trainer and, side by side, TRL 0.11.4 (TRL v0.7's API).

    python benchmarks/ppo_cpu.py                                  # CPU: tiny GPT-2, as recorded in README.md
    python benchmarks/ppo_cpu.py --device cuda --shape qwen0.5b   # GPU: Qwen2.5-0.5B's shape, 64 x 128 tokens
    python benchmarks/ppo_cpu.py --no-trl                         # ours only

A step is the whole of it: a rollout of --batch completions, the policy/reference/value passes and 4 PPO epochs
over mini batches of --mini-batch. Same model, prompts, settings (sampling with top_k 0, top_p 1.0) and seed for
both; each library in its own process (peak memory per process); TRL from its own virtual environment:

    python3 -m venv benchmarks/.venv-trl
    benchmarks/.venv-trl/bin/pip install torch==2.13.0 trl==0.11.4 transformers==4.46.3 accelerate==1.1.1 \
        "datasets<3.2" "numpy<2.3" rich
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
    build_model,
    build_tokenizer,
    documents,
    median_rounds,
    peak_memory_mib,
    print_table,
    reset_peak_memory,
    set_threads,
    synchronize,
    trl_python,
    versions,
)

TRL_VENV = ".venv-trl"
SHAPE_CHOICES = ["tiny-gpt2", *sorted(SHAPES)]


def worker(args) -> dict:
    """Run the loop with ``args.worker`` ("ours" or "trl"); timings of the steps after the warm-up, peak memory."""
    import torch

    set_threads(args.device, args.threads)
    if args.worker == "trl":
        from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model
    else:
        sys.path.insert(0, str(ROOT / "trainer_image"))
        from rlhf_trainer import (
            AutoModelForCausalLMWithValueHead,
            PPOConfig,
            PPOTrainer,
            create_reference_model,
        )

    torch.manual_seed(0)
    reset_peak_memory(args.device)
    if args.shape == "tiny-gpt2":
        from transformers import PreTrainedTokenizerFast

        # transformers 4 cannot read a tokenizer_config.json written by transformers 5: build it from tokenizer.json
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(args.model) / "tokenizer.json"),
                                            eos_token="<|endoftext|>", pad_token="<|pad|>")
        base = args.model
    else:
        tokenizer, base = build_tokenizer(), build_model(args.shape).to(args.device)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(base)
    mixed = {"mixed_precision": "bf16"} if args.device == "cuda" else {}
    config = PPOConfig(batch_size=args.batch, mini_batch_size=args.mini_batch, learning_rate=1e-5,
                       accelerator_kwargs=mixed)
    trainer = PPOTrainer(config, model, create_reference_model(model), tokenizer)
    if args.worker == "ours":
        trainer.generation_cache, trainer.compile_generation = args.generation_cache, args.compile_generation
    queries = [torch.tensor(p) for p in json.loads(Path(args.prompts).read_text())]
    target = queries[0][-1].item()  # toy score: how often the response repeats one token
    generation_kwargs = {"max_new_tokens": args.new_tokens, "min_length": -1, "top_k": 0, "top_p": 1.0,
                         "do_sample": True, "pad_token_id": tokenizer.pad_token_id}
    if args.generate_batch_size is not None:
        generation_kwargs["batch_size"] = args.generate_batch_size
    timings = {"generation": 0.0, "forward": 0.0, "optimisation": 0.0, "total": 0.0}
    for step in range(args.warmup + args.steps):
        synchronize(args.device)
        start = time.perf_counter()
        responses = trainer.generate(queries, return_prompt=False, **generation_kwargs)
        synchronize(args.device)
        generated = time.perf_counter()
        scores = [(r == target).float().mean() for r in responses]
        stats = trainer.step(queries, responses, scores)
        synchronize(args.device)
        if step >= args.warmup:
            timings["generation"] += generated - start
            timings["forward"] += stats["time/ppo/forward_pass"]
            timings["optimisation"] += stats["time/ppo/optimize_step"]
            timings["total"] += time.perf_counter() - start
    return {"episodes_per_s": args.batch * args.steps / timings["total"], "peak_mib": peak_memory_mib(args.device),
            **{f"{key}_s": value / args.steps for key, value in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=SHAPE_CHOICES, default=None,
                        help="default: tiny-gpt2 (rlhf_trainer.tiny) on CPU, qwen0.5b on GPU")
    parser.add_argument("--batch", type=int, default=None, help="episodes per step (default 32 CPU, 64 GPU)")
    parser.add_argument("--mini-batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=None, help="default 16 CPU, 128 GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per CPU run (default 1: tiny models gain nothing from more, and on a "
                             "shared machine OpenMP's waiting threads make timings erratic)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all runs; the median is reported")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    parser.add_argument("--generation-cache", choices=["dynamic", "static"], default="dynamic",
                        help="ours: the rollout's KV cache (PPOTrainer.generation_cache)")
    parser.add_argument("--compile-generation", action="store_true",
                        help="ours: compile the decoding step (PPOTrainer.compile_generation; CUDA graphs on GPU)")
    parser.add_argument("--worker", choices=["ours", "trl"])
    parser.add_argument("--model")
    parser.add_argument("--prompts")
    parser.add_argument("--generate-batch-size", type=int)
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.shape = args.shape or ("qwen0.5b" if gpu else "tiny-gpt2")
    args.batch = args.batch or (64 if gpu else 32)
    args.new_tokens = args.new_tokens or (128 if gpu else 16)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.json"
        model_dir = Path(tmp) / "tiny-gpt2"
        if args.shape == "tiny-gpt2":
            sys.path.insert(0, str(ROOT / "trainer_image"))
            from rlhf_trainer.data import tokenizer_corpus
            from rlhf_trainer.tiny import build_tokenizer as tiny_tokenizer
            from rlhf_trainer.tiny import save_builtin

            save_builtin("tiny-gpt2", model_dir)
            tokenizer = tiny_tokenizer()
            texts = [line for line in tokenizer_corpus() if line.strip()][:args.batch]
            prompts.write_text(json.dumps([tokenizer.encode(" ".join(t.split()[:8]))[:12] for t in texts]))
        else:
            prompts.write_text(json.dumps(documents(args.batch, 8, 32, SHAPES[args.shape]["vocab_size"], seed=1)))
        common = ["--device", args.device, "--shape", args.shape, "--batch", str(args.batch), "--mini-batch",
                  str(args.mini_batch), "--new-tokens", str(args.new_tokens), "--steps", str(args.steps),
                  "--warmup", str(args.warmup), "--threads", str(args.threads), "--model", str(model_dir),
                  "--prompts", str(prompts), "--generation-cache", args.generation_cache,
                  *(["--compile-generation"] if args.compile_generation else [])]
        trl = None if args.no_trl else trl_python(TRL_VENV)
        runs = [("ours", sys.executable, ["--worker", "ours", *common])]
        if trl:
            # TRL with its own default generation batching (4 prompts per generate call), then with the whole batch
            # per call, as ours does by default.
            runs += [("TRL 0.11.4 (its default: 4 prompts per generate)", trl, ["--worker", "trl", *common]),
                     (f"TRL 0.11.4, generate batch {args.batch}", trl,
                      ["--worker", "trl", "--generate-batch-size", str(args.batch), *common])]
        elif not args.no_trl:
            print(f"(no benchmarks/{TRL_VENV}: TRL comparison skipped; see this file's docstring)")
        results = median_rounds(runs, __file__, args.threads, args.repeats, "episodes_per_s")
    ours = results[0][1]["episodes_per_s"]
    for _, result in results:
        result["ours_is"] = ours / result["episodes_per_s"]
    memory = "peak GPU MiB" if gpu else "peak RSS MiB"
    print_table(
        f"PPO seed loop, {args.device}, {args.shape}: batch {args.batch}, mini batch {args.mini_batch}, "
        f"{args.new_tokens} new tokens, {args.steps} steps after {args.warmup} warm-up, median of {args.repeats} "
        f"rounds; per step: generation, forward (policy+reference+values), optimise (4 epochs), total; {versions()}",
        [("episodes/s", "episodes_per_s", ".1f"), ("generation s", "generation_s", ".3f"),
         ("forward s", "forward_s", ".3f"), ("optimise s", "optimisation_s", ".3f"), ("total s", "total_s", ".3f"),
         (memory, "peak_mib", ".0f"), ("ours is", "ours_is", ".2f")],
        results)


if __name__ == "__main__":
    main()
