"""What the benchmark scripts share: model shapes, synthetic documents, one process per run, medians, tables.

Each run is its own process (so peak memory is that run's alone); TRL runs from its own virtual environment,
never a project dependency. The parent alternates the runs over rounds and reports each run's median round.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The GPU shape (Qwen2.5-0.5B, random init) and a CPU-sized one of the same family and proportions.
SHAPES = {
    "qwen0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                     intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                     max_position_embeddings=32768, rope_theta=1000000.0),
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=1376, vocab_size=8192, tie_word_embeddings=True,
                 max_position_embeddings=2048, rope_theta=1000000.0),
}
PAD_ID = 0  # documents never contain it, so "not the pad id" counts real tokens


def build_model(shape: str, head: str = "causal-lm", seed: int = 0, attention: str = "sdpa"):
    """A random-init Qwen2 model of ``shape`` (``causal-lm`` or ``seq-cls`` with one label), fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config

    config = Qwen2Config(**SHAPES[shape], pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2, num_labels=1)
    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if head == "causal-lm" else AutoModelForSequenceClassification
    return auto.from_config(config, attn_implementation=attention).float()


def build_tokenizer():
    """A word-level tokenizer with the pad/EOS ids of ``build_model``; the benchmarks feed token ids directly."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<s>": 1, "</s>": 2, "<unk>": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=1 << 20)


def documents(count: int, low: int, high: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """``count`` documents of random token ids (never the pad id), lengths uniform in [low, high]."""
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab_size) for _ in range(rng.randint(low, high))] for _ in range(count)]


def document_lengths(max_length: int) -> tuple[int, int]:
    """Documents of 60-560 words (~1.3 tokens a word) at max length 1024, scaled to ``max_length``."""
    return max(2, 78 * max_length // 1024), 728 * max_length // 1024


def set_threads(device: str, threads: int) -> None:
    import torch

    if device == "cpu":
        torch.set_num_threads(threads)


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float:
    """Peak GPU memory allocated by tensors (cuda), else the process's peak resident set."""
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TensorMemoryPeak:
    """``with TensorMemoryPeak(device) as peak:`` ... ``peak.mib``: the most memory tensors held at once inside
    the block. On GPU torch.cuda.max_memory_allocated; on CPU the same quantity from the profiler's record of every
    allocation and free (so it excludes the interpreter, libraries and allocator slack that a resident set has)."""

    def __init__(self, device: str):
        self.device, self.mib = device, None

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                   profile_memory=True)
            self._profile.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            self.mib = torch.cuda.max_memory_allocated() / 2**20
            return
        self._profile.__exit__(*exc)
        cpu = torch.autograd.DeviceType.CPU
        changes = sorted((e.start_ns(), e.nbytes()) for e in self._profile.profiler.kineto_results.events()
                         if e.name() == "[memory]" and e.device_type() == cpu)
        live = peak = 0
        for _, change in changes:
            live += change
            peak = max(peak, live)
        self.mib = peak / 2**20


class StepClock:
    """Seconds and tokens of the steps after ``warmup``: ``tick(tokens)`` at every step end."""

    def __init__(self, device: str, warmup: int):
        self.device, self.warmup = device, warmup
        self.steps, self.tokens, self.start, self.seconds = 0, 0, None, 0.0

    def tick(self, tokens: int) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.steps += 1
        if self.steps == self.warmup:
            self.start = now
            reset_peak_memory(self.device)
        elif self.steps > self.warmup:
            self.tokens += tokens
            self.seconds = now - self.start


def run_worker(python: str, script: str, worker_args: list[str], threads: int) -> dict:
    """Run ``script --worker ...`` with ``python`` and return the JSON its last output line holds."""
    path = os.pathsep.join(filter(None, [str(ROOT / "trainer_image"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=str(threads))
    # -P: benchmarks/ not first on sys.path, where its operator.py would shadow the stdlib module
    result = subprocess.run([python, "-P", script, *worker_args], env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker {worker_args} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def median_rounds(runs: list[tuple[str, str, list[str]]], script: str, threads: int, repeats: int, key: str
                  ) -> list[tuple[str, dict]]:
    """Alternate ``runs`` (name, python, worker args) over ``repeats`` rounds; each run's median round by ``key``.

    Alternating means a busy spell on a shared machine hits every run, not just one.
    """
    rounds = [[run_worker(python, script, args, threads) for _, python, args in runs] for _ in range(repeats)]
    return [(name, sorted((r[i] for r in rounds), key=lambda r: r[key])[len(rounds) // 2])
            for i, (name, _, _) in enumerate(runs)]


def add_ratios(results: list[tuple[str, dict]], key: str, baseline_of) -> None:
    """Each result's ``ratio`` (speed by ``key``) and ``memory_ratio`` (peak) to the run named
    ``baseline_of(name)``; None where that run is missing."""
    by_name = dict(results)
    for name, result in results:
        baseline = by_name.get(baseline_of(name))
        result["ratio"] = result[key] / baseline[key] if baseline else None
        result["memory_ratio"] = result["peak_mib"] / baseline["peak_mib"] if baseline else None


def same_setting_in_trl(name: str) -> str | None:
    """The TRL run of the same setting as our run ``name`` ("ours, packed" -> "TRL 1.16, packed")."""
    return name.replace("ours", "TRL 1.16") if name.startswith("ours") else None


def print_table(title: str, columns: list[tuple[str, str, str]], rows: list[tuple[str, dict]]) -> None:
    """``columns``: (header, result key, format). Rows are (run name, result)."""
    print(f"\n{title}\n")
    name_width = max(len(name) for name, _ in rows) + 2
    headers = [header for header, _, _ in columns]
    widths = [max(len(h), 10) for h in headers]
    line = f"{'run':{name_width}}" + " ".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for name, result in rows:
        cells = [format(result[key], fmt) if result.get(key) is not None else "-" for _, key, fmt in columns]
        print(f"{name:{name_width}}" + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))


def versions() -> str:
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, python {sys.version.split()[0]}"


def trl_python(name: str) -> str | None:
    """The Python of the TRL virtual environment ``benchmarks/<name>``, if it exists."""
    python = HERE / name / "bin" / "python"
    return str(python) if python.exists() else None
