"""The kopf handlers: start and stop the operator's parts, and turn watch events into reconciliations.

kopf watches RLHFJobs and the operator's Jobs; every event only queues its RLHFJob for ``Controller.reconcile``,
which reads the cluster afresh. No handler keeps state in the RLHFJob (no finalizers, no kopf annotations): the
status, written through the status subresource, is the whole record.

Run it with ``rlhf operator`` (``run``) or ``kopf run --standalone -m rlhf_operator.handlers``; settings come from
the memo (``rlhf operator``) or the RLHF_* environment variables.

With leader election on, the startup handler serves HTTP (probes, metrics, and pushes refused as a standby's) and
then waits for the Lease: kopf starts no watch before its startup handlers finish, so a standby reads and writes
nothing. A leader that cannot renew ends the process at once, as client-go's leaders do, so it never acts beside
the next one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import kopf
from aiohttp import web

from rlhf_operator.api import GROUP, PLURAL, VERSION
from rlhf_operator.controller import Controller
from rlhf_operator.kube import Kube, connect
from rlhf_operator.leader import LeaderElector
from rlhf_operator.metrics import Metrics
from rlhf_operator.resources import MANAGED_BY, OPERATOR
from rlhf_operator.server import StatusEndpoint, make_app, serve
from rlhf_operator.settings import OperatorSettings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The operator's parts, shared by the handlers through kopf's memo."""

    settings: OperatorSettings
    kube: Kube
    metrics: Metrics
    controller: Controller
    http: web.AppRunner
    ready: asyncio.Event
    elector: LeaderElector | None = None
    keeper: asyncio.Task | None = None

    async def close(self) -> None:
        self.ready.clear()
        if self.keeper is not None:
            self.keeper.cancel()
        if self.elector is not None:
            await self.elector.release()
        await self.http.cleanup()
        await self.controller.close()
        await self.kube.close()


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    ours = memo.get("settings") or OperatorSettings.from_env()
    settings.posting.enabled = False  # the operator posts its own Events, one per transition
    settings.watching.server_timeout = 600  # re-list now and then: every RLHFJob is reconciled again
    # Namespaced mode names its namespaces exactly: no need to list and watch all namespaces (and CRDs) for
    # patterns, which a Role-only installation may not do.
    settings.scanning.disabled = bool(ours.namespaces)
    election = ours.leader_election
    kube = Kube(await connect(), instance=election.identity if election else None)
    metrics = Metrics()
    controller = Controller(kube, ours, metrics)
    ready = asyncio.Event()
    elector = LeaderElector(kube, election) if election else None
    leading = (lambda: elector.leading) if elector else (lambda: True)
    http = await serve(make_app(StatusEndpoint(kube, metrics, leading=leading), metrics, ready=ready.is_set),
                       ours.port)
    memo.runtime = runtime = Runtime(ours, kube, metrics, controller, http, ready, elector)
    ready.set()  # a standby is ready too: it answers probes and refuses pushes with 503, which pods retry
    if elector:
        await elector.acquire()
        runtime.keeper = asyncio.create_task(_exit_when_lost(elector), name="leader election")
    metrics.leader.set(1)
    log.info("rlhf-operator: watching %s; HTTP on :%d; trainer image %s",
             ", ".join(ours.namespaces) or "all namespaces", ours.port, ours.trainer_image)


async def _exit_when_lost(elector: LeaderElector) -> None:
    await elector.keep()
    logging.shutdown()  # flush the lost-Lease line
    os._exit(1)  # at once: no reconcile of this replica may run beside the next leader's


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_) -> None:
    if runtime := memo.get("runtime"):
        await runtime.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def rlhfjob_event(type: str | None, body: kopf.Body, namespace: str, name: str, memo: kopf.Memo,
                        **_) -> None:
    runtime: Runtime = memo.runtime
    key = (namespace, name)
    if type == "DELETED":
        runtime.metrics.job_seen(key, None)
        runtime.controller.queue.forget(key)
        return
    status = body.get("status") or {}
    runtime.metrics.job_seen(key, status.get("phase") or "Pending")
    # Listed, created, or its spec changed; a change of status alone is the operator's (or a pod's) own doing.
    if type in (None, "ADDED") or status.get("observedGeneration") != body.metadata.get("generation"):
        runtime.controller.trigger(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY: OPERATOR})
async def job_event(body: kopf.Body, namespace: str, memo: kopf.Memo, **_) -> None:
    owner = next((ref for ref in body.metadata.get("ownerReferences") or []
                  if ref.get("controller") and ref.get("apiVersion", "").startswith(f"{GROUP}/")), None)
    if owner is not None:
        memo.runtime.controller.trigger(namespace, owner["name"])


def run(settings: OperatorSettings) -> None:
    """Run the operator until it is stopped (SIGINT/SIGTERM): kopf in standalone mode; one replica acts (the
    Lease holder, with leader election on)."""
    kopf.configure(verbose=settings.log_level == "debug", quiet=settings.log_level in ("warning", "error"))
    quiet = logging.DEBUG if settings.log_level == "debug" else logging.WARNING
    logging.getLogger("kopf.objects").setLevel(quiet)  # kopf's line per handled event
    logging.getLogger().setLevel(settings.log_level.upper())
    kopf.run(standalone=True, clusterwide=not settings.namespaces, namespaces=settings.namespaces,
             memo=kopf.Memo(settings=settings))
