"""Leader election through a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

One replica holds the Lease and reconciles; the others wait. The holder renews every retry period; one that has
not renewed for the renew deadline gives up. A standby takes the Lease once it has seen the same record, unchanged,
for the lease duration, measured on its own clock (no trust in other machines' clocks). Writes carry the Lease's
resourceVersion, so of two replicas that try at once, one wins and the other gets a conflict. A leader that stops
cleanly releases the Lease, so a standby takes over at its next try instead of after the lease duration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from rlhf_operator.kube import ApiError, Kube
from rlhf_operator.settings import LeaderElection

log = logging.getLogger(__name__)


def micro_time(moment: datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def held_spec(current: dict | None, identity: str, now: datetime, lease_duration: float) -> dict:
    """The Lease spec that makes ``identity`` the holder at ``now``: a renewal when it holds the Lease already,
    else a new term (acquireTime now; on an existing Lease, one more leaseTransition)."""
    stamp = micro_time(now)
    spec = {"holderIdentity": identity, "leaseDurationSeconds": max(1, round(lease_duration)), "renewTime": stamp}
    if current is None:
        return {**spec, "acquireTime": stamp, "leaseTransitions": 0}
    if current.get("holderIdentity") == identity:
        return {**current, **spec}
    return {**current, **spec, "acquireTime": stamp, "leaseTransitions": (current.get("leaseTransitions") or 0) + 1}


def released_spec(current: dict, now: datetime) -> dict:
    """A held Lease given up: no holder, a 1 s duration, so that any standby may take it at once."""
    return {**current, "holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": micro_time(now)}


class LeaderElector:
    """Holds or waits for the Lease of ``election`` through ``kube``."""

    def __init__(self, kube: Kube, election: LeaderElection, clock: Callable[[], float] = time.monotonic):
        self.kube, self.election, self.clock = kube, election, clock
        self.leading = False
        self._observed: tuple | None = None  # the Lease record last seen, and when (own clock) it last changed
        self._observed_at = 0.0
        self._lease: dict | None = None

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        log.info("leader election: waiting for Lease %s/%s as %s", self.election.namespace, self.election.name,
                 self.election.identity)
        while not await self._try():
            await asyncio.sleep(self.election.retry_period)
        self.leading = True
        log.info("leader election: %s now leads", self.election.identity)

    async def keep(self) -> None:
        """Renew the Lease every retry period; return when it could not be renewed for the renew deadline (this
        replica must then stop acting at once)."""
        last_renewed = self.clock()
        while True:
            await asyncio.sleep(self.election.retry_period)
            if await self._try():
                last_renewed = self.clock()
            elif self.clock() - last_renewed >= self.election.renew_deadline:
                self.leading = False
                log.error("leader election: lost Lease %s/%s (not renewed for %.1fs)", self.election.namespace,
                          self.election.name, self.election.renew_deadline)
                return

    async def release(self) -> None:
        """Give the Lease up, if this replica holds it (a clean stop)."""
        if not self.leading or self._lease is None:
            return
        self.leading = False
        lease = {**self._lease, "spec": released_spec(self._lease["spec"], datetime.now(UTC))}
        try:
            await self.kube.replace(lease)
            log.info("leader election: released Lease %s/%s", self.election.namespace, self.election.name)
        except Exception as e:  # noqa: BLE001 - the standby then waits out the lease duration
            log.warning("leader election: could not release the Lease: %s", e)

    async def _try(self) -> bool:
        """One attempt to acquire or renew; True when this replica holds the Lease now."""
        election = self.election
        try:
            lease = await self.kube.get("Lease", election.namespace, election.name)
            now = datetime.now(UTC)
            if lease is None:
                self._lease = await self.kube.create({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": election.name, "namespace": election.namespace},
                    "spec": held_spec(None, election.identity, now, election.lease_duration)})
                return True
            spec = lease.get("spec") or {}
            if not self._held_by_us(spec) and self._held_by_another(spec):
                return False
            lease = {**lease, "spec": held_spec(spec, election.identity, now, election.lease_duration)}
            self._lease = await self.kube.replace(lease)
            self._observe(self._lease["spec"])
            return True
        except ApiError as e:
            if e.status != 409:  # a conflict: another replica wrote first
                log.warning("leader election: %s", e)
            return False
        except Exception as e:  # noqa: BLE001 - an unreachable API server is one more failed try
            log.warning("leader election: %s", e)
            return False

    def _held_by_us(self, spec: dict) -> bool:
        return spec.get("holderIdentity") == self.election.identity

    def _held_by_another(self, spec: dict) -> bool:
        """Whether another replica's term is still running, judged from when this replica saw the record change."""
        self._observe(spec)
        if not spec.get("holderIdentity"):
            return False
        return self.clock() < self._observed_at + (spec.get("leaseDurationSeconds") or 0)

    def _observe(self, spec: dict) -> None:
        record = tuple(spec.get(key) for key in ("holderIdentity", "leaseDurationSeconds", "acquireTime",
                                                  "renewTime", "leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
