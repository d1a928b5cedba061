"""An API server that fails when a test says so (``fail_next``: a 5xx, a 429, a lost race), which a real one cannot
be told to do: kmock's emulator, plus what the operator needs of a real API server.

``Cluster`` fills uid, resourceVersion, generation and creationTimestamp, honours ``generateName``, keeps status
behind the status subresource (status sent with a create or a plain patch is dropped, only ``status`` is taken
from a ``/status`` patch), refuses stale writes (409), and fixes the core ``/api/v1`` discovery and the lists'
``kind``/``apiVersion``; ``created_at`` says when each object was created (benchmarks/operator.py times the operator
with it). Everything else the operator meets is tested on the real control plane.
``RunningCluster`` serves it over HTTP from a background thread (the operator under test runs in another one)
and writes a kubeconfig pointing at it.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp.web
import kmock
import yaml

from rlhf_operator.api import GROUP, KIND, PLURAL, SINGULAR, VERSION

RLHFJOBS = kmock.resource(GROUP, VERSION, PLURAL)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the API server behaviours the operator relies on."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.resources[RLHFJOBS] = kmock.ResourceInfo(
            kind=KIND, singular=SINGULAR, namespaced=True, subresources={"status"},
            verbs={"get", "list", "watch", "create", "patch", "delete"})
        self._versions = itertools.count(1)
        self.log: list[kmock.Request] = []
        self.created_at: dict[tuple[str, str | None, str], float] = {}  # (plural, namespace, name): monotonic time
        self.failures: dict[str, list[int]] = {}  # "<plural>" (creates) or "<plural>/status" (patches) -> codes

    def fail_next(self, what: str, code: int, times: int = 1) -> None:
        """Answer the next ``times`` creates of ``what`` (a plural), or patches of ``<plural>/status``, with
        ``code``: a server in trouble (5xx), too busy (429), or a write that lost a race (409)."""
        self.failures.setdefault(what, []).extend([code] * times)

    # --- what the API server adds to writes ------------------------------------------------------------------

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        try:
            return "status" in self.resources[resource].subresources
        except KeyError:
            return False

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock matches every request against every request it has kept, which grows quadratic with the test's
        # length: keep only the requests in flight there, and the whole log in `log`.
        self.log.append(request)
        try:
            return await self._serve(request)
        finally:
            self._requests.remove(request)

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is not None and (injected := self._injected_failure(request)):
            return injected
        if resource is not None and isinstance(request.data, dict | list):
            if request.action == kmock.action.CREATE:
                self._prepare_create(request)
            elif request.action == kmock.action.UPDATE and request.name is not None:
                if conflict := self._stale(request):
                    return conflict
                self._prepare_patch(request)
        response = await super()._handle(request)
        if resource is not None and request.action == kmock.action.CREATE and response.status == 200:
            response.set_status(201)  # what the real server answers a create with
            meta = request.data["metadata"]
            self.created_at[resource.plural, meta.get("namespace"), meta["name"]] = time.monotonic()
        return response

    def _injected_failure(self, request: kmock.Request) -> aiohttp.web.Response | None:
        if request.action == kmock.action.CREATE:
            what = request.resource.plural
        elif request.action == kmock.action.UPDATE and request.subresource == "status":
            what = f"{request.resource.plural}/status"
        else:
            return None
        if not self.failures.get(what):
            return None
        code = self.failures[what].pop(0)
        reason = {409: "Conflict", 429: "TooManyRequests"}.get(code, "InternalError")
        return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                          "reason": reason, "message": f"injected by the test: {reason}"}, status=code)

    def _prepare_create(self, request: kmock.Request) -> None:
        data = request.data
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)), generation=1,
                    creationTimestamp=now())
        if self._has_status_subresource(request.resource):
            data.pop("status", None)

    def _stale(self, request: kmock.Request) -> aiohttp.web.Response | None:
        """409 Conflict for a merge patch that names a resourceVersion the object has moved on from."""
        given = (request.data.get("metadata") or {}).get("resourceVersion") if isinstance(request.data, dict) else None
        stored = self._find(request.resource, request.namespace, request.name)
        if given is None or stored is None or stored.deleted or stored.raw["metadata"]["resourceVersion"] == given:
            return None
        message = (f"Operation cannot be fulfilled on {request.resource.plural} \"{request.name}\": the object has "
                   "been modified; please apply your changes to the latest version and try again")
        return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                          "message": message, "reason": "Conflict", "code": 409}, status=409)

    def _prepare_patch(self, request: kmock.Request) -> None:
        version = str(next(self._versions))
        data = request.data
        status_only = request.subresource == "status"
        if isinstance(data, list):  # JSON patch
            kept = [op for op in data if op.get("path", "").startswith("/status") == status_only
                    or not self._has_status_subresource(request.resource)]
            data[:] = [*kept, {"op": "add", "path": "/metadata/resourceVersion", "value": version}]
            return
        if status_only:
            for key in [key for key in data if key != "status"]:
                del data[key]
        elif self._has_status_subresource(request.resource):
            data.pop("status", None)
        meta = data.setdefault("metadata", {})
        meta["resourceVersion"] = version
        if "spec" in data and not status_only:
            key = (request.resource, request.namespace, request.name)
            stored = next((obj for k, obj in self.objects.items() if k == key and not obj.deleted), None)
            if stored is not None:
                meta["generation"] = stored.get("metadata", {}).get("generation", 1) + 1

    # --- the same answers as kmock's, found by key instead of by scanning every object ---------------------

    def _find(self, resource: kmock.resource, namespace: str | None, name: str | None):
        key = (resource, namespace, name)
        return self.objects[key] if key in self.objects else None  # noqa: SIM401 - kmock's objects have no get()

    async def _serve_fetch(self, request: kmock.Request) -> dict:
        obj = self._find(request.resource, request.namespace, request.name)
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> dict:
        meta = request.data.get("metadata", {})
        return self._find(request.resource, request.namespace or meta.get("namespace"), meta.get("name")).raw

    async def _serve_update(self, request: kmock.Request) -> dict:
        return self._find(request.resource, request.namespace, request.name).last.raw

    _serve_delete = _serve_update

    # --- discovery and lists as the real server serves them ---------------------------------------------------

    async def _serve_version(self, request: kmock.Request) -> dict:
        served = await super()._serve_version(request)
        if request.resource.group == "":
            served["groupVersion"] = "v1"
        return served

    async def _serve_list(self, request: kmock.Request) -> dict:
        served = await super()._serve_list(request)
        resource = request.resource
        served["apiVersion"] = f"{resource.group}/{resource.version}".lstrip("/")
        served["kind"] = f"{self.resources[resource].kind}List"
        return served

    # --- for assertions -------------------------------------------------------------------------------------

    def stored(self, resource: str | kmock.resource, namespace: str | None = None) -> list[dict]:
        """The live objects of a resource (``"batch/v1/jobs"``), optionally of one namespace."""
        wanted = kmock.resource(resource) if isinstance(resource, str) else resource
        return [copy.deepcopy(obj.raw) for (res, ns, _), obj in list(self.objects.items())
                if res == wanted and not obj.deleted and (namespace is None or ns == namespace)]

    def requests(self) -> list[kmock.Request]:
        return list(self.log)


class RunningCluster:
    """``Cluster`` served over HTTP from its own thread and event loop; a kubeconfig for it in ``kubeconfig``."""

    def __init__(self, directory: Path):
        self.kubeconfig = directory / "kubeconfig"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)

    def __enter__(self) -> RunningCluster:
        self._thread.start()
        self.cluster, self._server = self.call(self._start())
        self.url = str(self._server.url).rstrip("/")
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}],
        }))
        return self

    def __exit__(self, *exc_info) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def call(self, coroutine):
        """Run a coroutine on the cluster's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    async def _start(self) -> tuple[Cluster, kmock.Server]:
        cluster = Cluster()
        await cluster.__aenter__()
        server = kmock.Server(cluster)
        await server.__aenter__()
        return cluster, server

    async def _stop(self) -> None:
        await self._server.__aexit__(None, None, None)
        await self.cluster.__aexit__(None, None, None)
