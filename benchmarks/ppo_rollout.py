"""PPO rollout generation: tokens/s of HF ``generate`` vs our sampling loop, for the same batch and model.

    python benchmarks/ppo_rollout.py                                  # CPU, tiny shape
    python benchmarks/ppo_rollout.py --device cuda --shape qwen0.5b   # the GPU setting (64 x 128 tokens)

Every run samples (top_k 0, top_p 1, as the PPO seed does) exactly --new-tokens tokens for each of --batch
left-padded prompts (min_new_tokens = max_new_tokens, so no run stops early), from the same random-init Qwen2
(bf16 weights on GPU, fp32 on CPU), in one process. Ours draws the same tokens as generate from the same seed
(tests/trainer/test_generation.py; the last column checks it here); "static" preallocates the KV cache, "compiled" also captures the decoding step
with torch.compile(mode="reduce-overhead") (CUDA graphs on a GPU), compiled once before timing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))  # after the stdlib (see common.run_worker)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer_image"))
from common import SHAPES, build_model, documents, peak_memory_mib, print_table, synchronize, versions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: tiny on CPU, qwen0.5b on GPU")
    parser.add_argument("--batch", type=int, default=None, help="completions per rollout (default 16 CPU, 64 GPU)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per completion (default 32 CPU, 128 GPU)")
    parser.add_argument("--prompt-tokens", type=int, nargs=2, default=(8, 32), help="prompt length range")
    parser.add_argument("--repeats", type=int, default=5, help="timed rollouts per run; the median is shown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--runs", default="generate,ours,ours-static,ours-static-compiled")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    args.shape = args.shape or ("qwen0.5b" if gpu else "tiny")
    args.batch = args.batch or (64 if gpu else 16)
    args.new_tokens = args.new_tokens or (128 if gpu else 32)

    import torch

    from rlhf_trainer.trainer.generation import fast_sampling_settings, sample_tokens
    from rlhf_trainer.trainer.ppo import _pad

    if not gpu:
        torch.set_num_threads(args.threads)
    model = build_model(args.shape).to(args.device, torch.bfloat16 if gpu else torch.float32).eval()
    prompts = [torch.tensor(p, device=args.device)
               for p in documents(args.batch, *args.prompt_tokens, SHAPES[args.shape]["vocab_size"], seed=1)]
    input_ids, attention_mask = _pad(prompts, 0, "left")
    attention_mask = attention_mask.long()
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=True, top_k=0,
                  top_p=1.0, pad_token_id=0, eos_token_id=2)
    settings = fast_sampling_settings(model, input_ids.shape[1], **kwargs)

    def hf_generate():
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)[:, input_ids.shape[1]:]

    runs = {
        "generate": ("HF generate", hf_generate),
        "ours": ("ours", lambda: sample_tokens(model, input_ids, attention_mask, settings)),
        "ours-static": ("ours, static cache",
                        lambda: sample_tokens(model, input_ids, attention_mask, settings, cache="static")),
        "ours-static-compiled": ("ours, static cache, compiled step",
                                 lambda: sample_tokens(model, input_ids, attention_mask, settings, cache="static",
                                                       compile=True)),
    }
    results, reference = [], None
    for key in args.runs.split(","):
        name, rollout = runs[key]
        with torch.no_grad():
            torch.manual_seed(0)
            start = time.perf_counter()
            tokens = rollout()  # warm-up (and compilation)
            synchronize(args.device)
            first = time.perf_counter() - start
            assert tokens.shape == (args.batch, args.new_tokens), tokens.shape
            reference = tokens if reference is None else reference
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                rollout()
                synchronize(args.device)
                times.append(time.perf_counter() - start)
        seconds = sorted(times)[len(times) // 2]
        results.append((name, {"tokens_per_s": args.batch * args.new_tokens / seconds, "rollout_s": seconds,
                               "first_s": first, "same": "yes" if torch.equal(tokens, reference) else "no"}))
    baseline = results[0][1]["tokens_per_s"] if args.runs.startswith("generate") else None
    for _, result in results:
        result["ratio"] = result["tokens_per_s"] / baseline if baseline else None
    print_table(
        f"Rollout generation, {args.device}, shape {args.shape}, {args.batch} completions x {args.new_tokens} "
        f"tokens, prompts of {args.prompt_tokens[0]}-{args.prompt_tokens[1]} tokens, median of {args.repeats}; "
        f"{versions()}; peak memory {peak_memory_mib(args.device):.0f} MiB",
        [("tokens/s", "tokens_per_s", ".0f"), ("s/rollout", "rollout_s", ".3f"),
         ("first call s", "first_s", ".1f"), ("vs generate", "ratio", ".2f"),
         ("same tokens as the first run", "same", "")],
        results)


if __name__ == "__main__":
    main()
