"""Operator latency and memory, against the API emulator of the tests (kmock, in this process).

    python benchmarks/operator.py [--samples 20] [--jobs 200]

The operator runs as `rlhf operator` in its own process; this one serves the API and plays the Job controller.
It measures the time from creating an RLHFJob to its first Job existing, from a Job's Complete condition to the
next stage's Job existing (both as the API server sees the creates), and the operator's resident memory with
``--jobs`` RLHFJobs in flight. Prints a Markdown table. The emulator shares the machine's cores with the
operator, so latencies include its own time: read them as an upper bound.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT / "tests" / "operator"), str(ROOT / "operator"), str(ROOT / "trainer_image")]

from harness import Api, free_port, now, wait_for  # noqa: E402
from kmock_cluster import RunningCluster  # noqa: E402

NS = "bench"
DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "sentiment-tiny.yaml").read_text())


def rlhfjob(name: str) -> dict:
    body = copy.deepcopy(DEMO)
    body["metadata"] = {"name": name, "namespace": NS}
    return body


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_operator(running: RunningCluster, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(running.kubeconfig), "RLHF_PORT": str(port),
           "RLHF_SERVICE_URL": f"http://127.0.0.1:{port}", "RLHF_LOG_LEVEL": "warning",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image")])}
    process = subprocess.Popen([sys.executable, "-m", "rlhf_operator.cli", "operator"], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(ready, 60, "the operator to start")
    wait_for(lambda: {r.resource.plural for r in running.cluster.requests()
                      if r.action is not None and r.action.name == "WATCH" and r.resource} >= {"rlhfjobs", "jobs"},
             30, "the operator's watches")
    return process, url


def created(running: RunningCluster, name: str, timeout: float = 60) -> float:
    key = ("jobs", NS, name)
    return wait_for(lambda: running.cluster.created_at.get(key), timeout, f"Job {name}")


def percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{statistics.median(ms):.0f} / {p95:.0f} / {ms[-1]:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="RLHFJobs timed one at a time")
    parser.add_argument("--jobs", type=int, default=200, help="RLHFJobs in flight for the memory measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, RunningCluster(Path(tmp)) as running:
        api = Api.connect(running.kubeconfig)
        process, _ = start_operator(running, Path(tmp) / "operator.log")
        try:
            idle = rss_mib(process.pid)
            first_job, next_job = [], []
            for i in range(args.samples):
                started = time.monotonic()
                api.create_rlhfjob(NS, rlhfjob(f"latency-{i}"))
                first_job.append(created(running, f"latency-{i}-sft") - started)
            for i in range(args.samples):
                met = {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                       "lastTransitionTime": now()}
                api.job_status(NS, f"latency-{i}-sft", {"active": 0, "succeeded": 1, "conditions": [met]})
                finished = time.monotonic()
                api.job_status(NS, f"latency-{i}-sft", {"completionTime": now(), "conditions": [
                    met, {**met, "type": "Complete"}]})
                next_job.append(created(running, f"latency-{i}-reward") - finished)

            started, peak = time.monotonic(), idle
            for i in range(args.jobs):
                api.create_rlhfjob(NS, rlhfjob(f"load-{i}"))
                peak = max(peak, rss_mib(process.pid))
            for i in range(args.jobs):
                created(running, f"load-{i}-sft", timeout=300)
                peak = max(peak, rss_mib(process.pid))
            all_started = time.monotonic() - started
            time.sleep(2)
            in_flight = rss_mib(process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)

    versions = ", ".join(f"{p} {version(p)}" for p in ("kopf", "kubernetes", "aiohttp", "kmock"))
    print(f"rlhf-operator operator benchmark, {time.strftime('%Y-%m-%d')}, Python {platform.python_version()}, "
          f"{versions}, {os.cpu_count()} CPUs\n")
    print("| measurement | result |")
    print("|---|---|")
    print(f"| create RLHFJob -> first Job created, ms (median / p95 / max of {args.samples}) | "
          f"{percentiles(first_job)} |")
    print(f"| Job Complete -> next stage's Job created, ms (median / p95 / max of {args.samples}) | "
          f"{percentiles(next_job)} |")
    print(f"| {args.jobs} RLHFJobs created -> all {args.jobs} first Jobs created, s | {all_started:.1f} |")
    print(f"| operator RSS idle, MiB | {idle:.0f} |")
    print(f"| operator RSS, {args.jobs + args.samples} RLHFJobs in flight (peak while creating), MiB | "
          f"{in_flight:.0f} ({peak:.0f}) |")


if __name__ == "__main__":
    main()
