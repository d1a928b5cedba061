"""PPO on CPU: the seed-style loop (generate, score, step) with our trainer and, side by side, TRL 0.11.4.

    python benchmarks/ppo_cpu.py                  # ours + TRL (if benchmarks/.venv-trl exists)
    python benchmarks/ppo_cpu.py --no-trl         # ours only

Workload: tiny GPT-2 (rlhf_trainer.tiny), batch 32, mini batch 8, 4 PPO epochs, 16 new tokens, 10 steps.
Each library runs in its own process (peak RSS per process); TRL runs from its own virtual environment:

    python3 -m venv benchmarks/.venv-trl
    benchmarks/.venv-trl/bin/pip install torch==2.13.0 trl==0.11.4 transformers==4.46.3 accelerate==1.1.1 \
        "datasets<3.2" "numpy<2.3" rich
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_PYTHON = HERE / ".venv-trl" / "bin" / "python"
BATCH, MINI_BATCH, NEW_TOKENS, STEPS, WARMUP = 32, 8, 16, 10, 1


def prepare(directory: Path) -> tuple[Path, Path]:
    """The tiny GPT-2 and BATCH prompts (token ids), saved for both workers."""
    sys.path.insert(0, str(HERE.parent / "trainer_image"))
    from rlhf_trainer.data import tokenizer_corpus
    from rlhf_trainer.tiny import build_tokenizer, save_builtin

    model_dir = save_builtin("tiny-gpt2", directory / "tiny-gpt2")
    tokenizer = build_tokenizer()
    texts = [line for line in tokenizer_corpus() if line.strip()][:BATCH]
    prompts = [tokenizer.encode(" ".join(text.split()[:8]))[:12] for text in texts]
    prompts_file = directory / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    return model_dir, prompts_file


def worker(library: str, model_dir: str, prompts_file: str, generate_batch_size: int | None, threads: int) -> dict:
    """Run the loop with ``library`` ("ours" or "trl") and return timings and peak RSS."""
    import torch

    torch.set_num_threads(threads)

    if library == "trl":
        from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model
    else:
        from rlhf_trainer import (
            AutoModelForCausalLMWithValueHead,
            PPOConfig,
            PPOTrainer,
            create_reference_model,
        )
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    # transformers 4 cannot read a tokenizer_config.json written by transformers 5: build it from tokenizer.json.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"),
                                        eos_token="<|endoftext|>", pad_token="<|pad|>")
    model = AutoModelForCausalLMWithValueHead.from_pretrained(model_dir)
    trainer = PPOTrainer(PPOConfig(batch_size=BATCH, mini_batch_size=MINI_BATCH, learning_rate=1e-4),
                         model, create_reference_model(model), tokenizer)
    queries = [torch.tensor(p) for p in json.loads(Path(prompts_file).read_text())]
    target = queries[0][-1].item()  # toy score: how often the response repeats one token
    generation_kwargs = {"max_new_tokens": NEW_TOKENS, "min_length": -1, "top_k": 0, "top_p": 1.0,
                         "do_sample": True, "pad_token_id": tokenizer.pad_token_id}
    if generate_batch_size is not None:
        generation_kwargs["batch_size"] = generate_batch_size
    timings = {"generation": 0.0, "forward": 0.0, "optimisation": 0.0, "total": 0.0}
    for step in range(WARMUP + STEPS):
        start = time.perf_counter()
        responses = trainer.generate(queries, return_prompt=False, **generation_kwargs)
        generated = time.perf_counter()
        scores = [(r == target).float().mean() for r in responses]
        stats = trainer.step(queries, responses, scores)
        if step >= WARMUP:
            timings["generation"] += generated - start
            timings["forward"] += stats["time/ppo/forward_pass"]
            timings["optimisation"] += stats["time/ppo/optimize_step"]
            timings["total"] += time.perf_counter() - start
    return {
        "library": library,
        "episodes_per_s": BATCH * STEPS / timings["total"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"{key}_s": value for key, value in timings.items()},
    }


def run_worker(python: str, library: str, model_dir: Path, prompts: Path, generate_batch_size: int | None,
               threads: int) -> dict:
    command = [python, __file__, "--worker", library, "--model", str(model_dir), "--prompts", str(prompts),
               "--threads", str(threads)]
    if generate_batch_size is not None:
        command += ["--generate-batch-size", str(generate_batch_size)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "trainer_image"), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=str(threads))
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{library} worker failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median_run(results: list[dict]) -> dict:
    return sorted(results, key=lambda r: r["episodes_per_s"])[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["ours", "trl"])
    parser.add_argument("--model")
    parser.add_argument("--prompts")
    parser.add_argument("--generate-batch-size", type=int)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: tiny models gain nothing from more, and on a "
                             "shared machine OpenMP's waiting threads make timings erratic)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all runs; the median is reported")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL comparison")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.prompts, args.generate_batch_size, args.threads)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, prompts = prepare(Path(tmp))
        # Each library with its own default generation batching (TRL: 4 prompts per generate call), then
        # TRL with all 32 prompts per call, as ours does by default.
        runs = [("ours", sys.executable, "ours", None)]
        if not args.no_trl and TRL_PYTHON.exists():
            runs += [("TRL 0.11.4", str(TRL_PYTHON), "trl", None),
                     ("TRL 0.11.4, generate batch 32", str(TRL_PYTHON), "trl", BATCH)]
        elif not args.no_trl:
            print(f"(no {TRL_PYTHON}: TRL comparison skipped; see this file's docstring)")
        # Rounds alternate the runs so that a busy spell on a shared machine hits all of them; each run's
        # median round is reported.
        rounds = [[run_worker(python, library, model_dir, prompts, gbs, args.threads)
                   for _, python, library, gbs in runs] for _ in range(args.repeats)]
        results = [(name, _median_run([r[i] for r in rounds])) for i, (name, *_) in enumerate(runs)]

    print(f"\nPPO seed loop, CPU: tiny GPT-2, batch {BATCH}, mini batch {MINI_BATCH}, {NEW_TOKENS} new tokens, "
          f"{STEPS} steps (after {WARMUP} warm-up), {args.threads} torch thread(s), median of {args.repeats} "
          "rounds\n")
    header = f"{'run':32} {'episodes/s':>10} {'generation s':>12} {'forward s':>9} {'optimise s':>10} " \
             f"{'total s':>8} {'peak RSS MiB':>12} {'ours is':>8}"
    print(header)
    print("-" * len(header))
    ours = results[0][1]["episodes_per_s"]
    for name, r in results:
        print(f"{name:32} {r['episodes_per_s']:10.1f} {r['generation_s']:12.2f} {r['forward_s']:9.2f} "
              f"{r['optimisation_s']:10.2f} {r['total_s']:8.2f} {r['peak_rss_mib']:12.0f} "
              f"{ours / r['episodes_per_s']:7.2f}x")


if __name__ == "__main__":
    main()
