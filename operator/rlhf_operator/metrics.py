"""The operator's Prometheus metrics, in a registry of its own (served at GET /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rlhf_operator.api import Phase

PHASES: tuple[str, ...] = Phase.__args__
STAGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge("rlhf_jobs", "RLHFJobs by phase.", ["phase"], registry=self.registry)
        self.stage_seconds = Histogram(
            "rlhf_stage_duration_seconds", "Time from a stage's Job creation to its end.", ["stage", "phase"],
            buckets=STAGE_BUCKETS, registry=self.registry)
        self.reconcile_errors = Counter(
            "rlhf_reconcile_errors_total", "Reconciliations that failed (each is retried).", registry=self.registry)
        self.pushes = Counter(
            "rlhf_status_pushes_total", "Progress pushes from trainer pods written to status.", registry=self.registry)
        self.rejected_pushes = Counter(
            "rlhf_status_pushes_rejected_total", "Progress pushes refused, by reason.", ["reason"],
            registry=self.registry)
        self.leader = Gauge("rlhf_operator_leader", "1 while this replica holds the leader Lease (or runs alone).",
                            registry=self.registry)
        for phase in PHASES:
            self.jobs.labels(phase)
        self._phases: dict[tuple[str, str], str] = {}

    def job_seen(self, key: tuple[str, str], phase: str | None) -> None:
        """An RLHFJob is in ``phase`` now (None: deleted)."""
        before = self._phases.pop(key, None)
        if before is not None:
            self.jobs.labels(before).dec()
        if phase is not None:
            self._phases[key] = phase
            self.jobs.labels(phase).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
