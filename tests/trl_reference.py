"""TRL itself, to compare against: TRL 1.16 installed once into ``.trl116/`` beside the project's environment
(``pip install --no-deps --target``), never into it. Its dependencies (torch, transformers, accelerate, datasets)
are the project's, so the two libraries run on the same versions and differ only in their own code.

A parity script takes the library to import as its first argument, then its inputs, a cases file (name -> config
keywords) and an output folder; for each case it writes NAME/logs.json and NAME/step-N.pt (the weights after each
optimizer step), or NAME/error.txt when the library refuses the case."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TRL_VERSION = "1.16.0"
ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".trl116"
LIBRARIES = ("trl", "rlhf_trainer")
TOLERANCE = 1e-4


def install() -> Path:
    """The folder holding TRL (``PYTHONPATH`` for a Python that runs it); installed on first use."""
    if not (SITE / f"trl-{TRL_VERSION}.dist-info").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade", "--target",
                        str(SITE), f"trl=={TRL_VERSION}"], check=True, timeout=600)
    return SITE


def start(script: Path, *args: str, library: str) -> subprocess.Popen:
    """Start ``script`` with this interpreter (text pipes for its output); for ``library="trl"`` with TRL
    importable."""
    path = [str(ROOT / "trainer_image")] + ([str(SITE)] if library == "trl" else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRL_EXPERIMENTAL_SILENCE="1")
    return subprocess.Popen([sys.executable, "-P", str(script), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_both(script: Path, inputs: list[str], cases: dict | None, folder: Path) -> dict[str, Path]:
    """Run a script with each library, side by side (one process each), over ``cases`` (a parity script) or
    with ``inputs`` only: {library: its output folder}."""
    install()
    if cases is not None:
        cases_file = folder / "cases.json"
        cases_file.write_text(json.dumps(cases))
        inputs = [*inputs, str(cases_file)]
    processes = {library: start(script, library, *inputs, str(folder / library), library=library)
                 for library in LIBRARIES}
    for library, process in processes.items():
        _, err = process.communicate(timeout=1200)
        assert process.returncode == 0, f"{library}: {err[-3000:]}"
    return {library: folder / library for library in LIBRARIES}


def assert_same_run(runs: dict[str, Path], case: str, steps: int) -> None:
    """Every number TRL logged for ``case`` (timings aside) and the weights after each of its ``steps`` equal
    ours within TOLERANCE."""
    trl_logs, trl_weights = _read(runs["trl"] / case)
    our_logs, our_weights = _read(runs["rlhf_trainer"] / case)
    assert len(our_logs) == len(trl_logs)
    for record, (theirs, ours) in enumerate(zip(trl_logs, our_logs, strict=True), start=1):
        numbers = {key: value for key, value in theirs.items() if not _timing(key)}
        assert set(numbers) <= set(ours), f"record {record}: metrics TRL logs and we do not"
        differ = {key: (value, ours[key]) for key, value in numbers.items() if not _close(value, ours[key])}
        assert not differ, f"record {record}: (TRL, ours) {differ}"
    assert len(our_weights) == len(trl_weights) == steps
    for step, (theirs, ours) in enumerate(zip(trl_weights, our_weights, strict=True), start=1):
        worst = max((theirs[name] - ours[name]).abs().max().item() for name in theirs)
        assert worst <= TOLERANCE, f"weights after step {step} differ by up to {worst:.3g}"


def _read(folder: Path) -> tuple[list[dict], list[dict]]:
    if (folder / "error.txt").exists():
        pytest.fail(f"{folder.parent.name} refused {folder.name}:\n{(folder / 'error.txt').read_text()[-1500:]}")
    steps = sorted(folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return json.loads((folder / "logs.json").read_text()), [torch.load(p) for p in steps]


def _timing(key: str) -> bool:
    return key == "step_time" or key.endswith(("_runtime", "_per_second"))


def _close(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return b == pytest.approx(a, abs=TOLERANCE, rel=TOLERANCE)
