"""The operator's HTTP server: trainer progress in, metrics and probes out.

    POST /v1/status   a trainer pod's progress record (docs/operator-runtime.md), with its projected
                      service-account token (audience rlhf-operator) as a bearer token
    GET  /metrics     Prometheus metrics
    GET  /healthz     the process serves requests
    GET  /readyz      the operator has started (its API client and handlers are ready)

A push is written to the RLHFJob's status only when the token is valid for the audience (TokenReview), names a
pod that exists and is a pod of the Job of that RLHFJob's stage (labels and controller ownerReferences, by uid),
and the RLHFJob is within its rate. Pods get no access to the Kubernetes API: this endpoint is their only way in.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from rlhf_contract.progress import ProgressRecord
from rlhf_contract.runtime import STATUS_AUDIENCE
from rlhf_operator.api import KIND
from rlhf_operator.kube import ApiError, Kube
from rlhf_operator.metrics import Metrics
from rlhf_operator.resources import JOB_LABEL, MANAGED_BY, OPERATOR, STAGE_LABEL
from rlhf_operator.status import progress_patch, timestamp

log = logging.getLogger(__name__)

POD_NAME = "authentication.kubernetes.io/pod-name"
POD_UID = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
PUSH_RATE = 2.0
"""Pushes per second an RLHFJob may make, sustained (pods push at most one every 5 s)."""
PUSH_BURST = 10
VERIFIED_SECONDS = 60.0
"""How long a verified token's identity is reused before it is checked again."""
MAX_VERIFIED = 10_000
STANDBY_RETRY_SECONDS = 1


class Rejected(Exception):
    """A push the endpoint refuses: HTTP status, metric reason, message for the caller."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass(frozen=True)
class Pusher:
    """Who a verified push comes from: a pod of the Job of an RLHFJob's stage."""

    namespace: str
    rlhfjob: str
    stage: str
    pod: str


class TokenBucket:
    """``rate`` per second, up to ``burst`` at once, per key."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[tuple, tuple[float, float]] = {}

    def take(self, key: tuple) -> bool:
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1, now)
        return True


class StatusEndpoint:
    """POST /v1/status."""

    def __init__(self, kube: Kube, metrics: Metrics, clock: Callable[[], float] = time.monotonic,
                 leading: Callable[[], bool] = lambda: True):
        self.kube, self.metrics, self.clock, self.leading = kube, metrics, clock, leading
        self.limiter = TokenBucket(PUSH_RATE, PUSH_BURST, clock)
        self._verified: dict[str, tuple[float, Pusher]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        try:
            if not self.leading():  # a standby never writes; the pod sends the record again, to another replica
                raise Rejected(503, "standby", "this operator replica is a standby; retry")
            token = _bearer(request)
            record = await _record(request)
            pusher = await self._pusher(token, record.stage)
            if not self.limiter.take((pusher.namespace, pusher.rlhfjob)):
                raise Rejected(429, "throttled", f"too many pushes for {pusher.rlhfjob}; at most {PUSH_RATE}/s")
            if patch := progress_patch(record, timestamp(datetime.now(UTC))):
                await self.kube.patch_rlhfjob_status(pusher.namespace, pusher.rlhfjob, patch)
        except Rejected as e:
            self.metrics.rejected_pushes.labels(e.reason).inc()
            log.warning("refused a progress push (%s): %s", e.reason, e.message)
            headers = {"Retry-After": str(STANDBY_RETRY_SECONDS)} if e.reason == "standby" else None
            return web.json_response({"error": e.message}, status=e.status, headers=headers)
        except ApiError as e:
            if e.status == 404:  # the RLHFJob was deleted since its pod was verified
                return web.json_response({"error": "the RLHFJob is gone"}, status=404)
            log.error("progress push: the API server refused a call: %s", e)
            return web.json_response({"error": "the operator cannot reach the Kubernetes API"}, status=503)
        self.metrics.pushes.inc()
        return web.json_response({"accepted": True})

    async def _pusher(self, token: str, stage: str) -> Pusher:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._verified.get(key)
        if cached is None or cached[0] < self.clock():
            if len(self._verified) >= MAX_VERIFIED:
                self._verified.clear()
            cached = self._verified[key] = (self.clock() + VERIFIED_SECONDS, await self._verify(token))
        pusher = cached[1]
        if pusher.stage != stage:
            raise Rejected(403, "forbidden", f"pod {pusher.pod} runs stage {pusher.stage}, not {stage}")
        return pusher

    async def _verify(self, token: str) -> Pusher:
        """The pod a token was issued to, checked to be a pod of one of the operator's stage Jobs."""
        review = await self.kube.review_token(token, STATUS_AUDIENCE)
        if review.get("authenticated") is not True:  # a rejected token comes back without it, not with False
            raise Rejected(401, "unauthenticated", f"token rejected: {review.get('error') or 'not authenticated'}")
        if review.get("audiences") and STATUS_AUDIENCE not in review["audiences"]:
            raise Rejected(401, "unauthenticated", f"the token is not for audience {STATUS_AUDIENCE}")
        user = review.get("user") or {}
        extra = user.get("extra") or {}
        username = user.get("username") or ""
        if not (username.startswith(SERVICE_ACCOUNT_PREFIX) and extra.get(POD_NAME) and extra.get(POD_UID)):
            raise Rejected(403, "forbidden", f"{username or 'the caller'} is not a pod's service account token")
        namespace = username.removeprefix(SERVICE_ACCOUNT_PREFIX).split(":")[0]
        pod_name, pod_uid = extra[POD_NAME][0], extra[POD_UID][0]

        pod = await self.kube.get("Pod", namespace, pod_name)
        if pod is None or pod["metadata"].get("uid") != pod_uid:
            raise Rejected(403, "forbidden", f"pod {namespace}/{pod_name} of the token does not exist")
        labels = pod["metadata"].get("labels") or {}
        job_ref = _controller(pod, "Job")
        if labels.get(MANAGED_BY) != OPERATOR or job_ref is None or STAGE_LABEL not in labels:
            raise Rejected(403, "forbidden", f"pod {namespace}/{pod_name} is not a pod of an RLHFJob stage")
        job = await self.kube.get("Job", namespace, job_ref["name"])
        owner_ref = _controller(job, KIND) if job else None
        if job is None or job["metadata"].get("uid") != job_ref["uid"] or owner_ref is None:
            raise Rejected(403, "forbidden", f"pod {namespace}/{pod_name} is not a pod of an RLHFJob's Job")
        owner = await self.kube.get_rlhfjob(namespace, owner_ref["name"])
        job_labels = job["metadata"].get("labels") or {}
        if (owner is None or owner["metadata"].get("uid") != owner_ref["uid"]
                or job_labels.get(STAGE_LABEL) != labels[STAGE_LABEL]
                or job_labels.get(JOB_LABEL) != labels.get(JOB_LABEL)):
            raise Rejected(403, "forbidden", f"pod {namespace}/{pod_name} does not belong to its RLHFJob's stage")
        return Pusher(namespace, owner_ref["name"], labels[STAGE_LABEL], pod_name)


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Rejected(401, "unauthenticated", "no bearer token")
    return token.strip()


async def _record(request: web.Request) -> ProgressRecord:
    try:
        data = await request.json()
    except ValueError:
        raise Rejected(400, "invalid", "the body is not JSON") from None
    try:
        return ProgressRecord.model_validate(data)
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, error['loc'])) or 'the record'}: {error['msg']}" for error in e.errors())
        raise Rejected(400, "invalid", f"not a progress record (docs/operator-runtime.md): {where}") from None


def _controller(obj: dict, kind: str) -> dict | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller") and ref.get("kind") == kind), None)


def make_app(endpoint: StatusEndpoint, metrics: Metrics, ready: Callable[[], bool]) -> web.Application:
    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok") if ready() else web.Response(text="starting", status=503)

    app = web.Application(client_max_size=1024 * 1024)
    app.add_routes([web.post("/v1/status", endpoint.handle), web.get("/metrics", serve_metrics),
                    web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return app


async def serve(app: web.Application, port: int) -> web.AppRunner:
    """Serve ``app`` on all interfaces; stop it with ``await runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host="0.0.0.0", port=port).start()  # noqa: S104 - a Service routes to it
    return runner
