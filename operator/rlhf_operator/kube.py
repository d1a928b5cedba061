"""The operator's calls to the Kubernetes API, through the official client's asyncio flavour (kubernetes.aio).

Objects go in and come out as plain dicts, exactly as the API server stores them; errors are ``ApiError`` with
the HTTP status. Status is written only through the status subresource. Nothing here decides anything.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.config import ConfigException, load_incluster_config, load_kube_config

from rlhf_operator import __version__
from rlhf_operator.api import GROUP, PLURAL, VERSION
from rlhf_operator.status import Event, timestamp

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
COMPONENT = "rlhf-operator"
USER_AGENT = f"rlhf-operator/{__version__}"


class ApiError(Exception):
    """A request the API server refused; ``fields``: the fields its Status names as causes."""

    def __init__(self, status: int, reason: str, message: str, fields: tuple[str, ...] = ()):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message, self.fields = status, reason, message, fields


async def connect() -> client.ApiClient:
    """A client for the cluster the operator runs in, else for the current context of $KUBECONFIG."""
    configuration = client.Configuration()
    try:
        load_incluster_config(client_configuration=configuration)
    except ConfigException:
        config_file = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        await load_kube_config(config_file=config_file, client_configuration=configuration)
    api_client = client.ApiClient(configuration)
    api_client.user_agent = USER_AGENT
    return api_client


async def _json(response) -> dict:
    body = await response.read()
    try:
        data = json.loads(body) if body else {}
    except ValueError:  # a proxy's or a webhook's plain-text error
        data = {}
    if response.status >= 400:
        error = data if isinstance(data, dict) else {}
        causes = (error.get("details") or {}).get("causes") or []
        fields = tuple(cause["field"] for cause in causes if cause.get("field"))
        raise ApiError(response.status, error.get("reason", ""),
                       error.get("message") or body[:500].decode(errors="replace"), fields)
    return data


class Kube:
    """The API calls the operator makes (see docs/operator-runtime.md for the RBAC they need)."""

    def __init__(self, api_client: client.ApiClient, instance: str | None = None):
        self.api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._batch = client.BatchV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._auth = client.AuthenticationV1Api(api_client)
        coordination = client.CoordinationV1Api(api_client)
        # kind -> (API, the suffix of its *_namespaced_<suffix> methods)
        self._kinds = {
            "Job": (self._batch, "namespaced_job"),
            "ConfigMap": (self._core, "namespaced_config_map"),
            "Service": (self._core, "namespaced_service"),
            "PersistentVolumeClaim": (self._core, "namespaced_persistent_volume_claim"),
            "Pod": (self._core, "namespaced_pod"),
            "Event": (self._core, "namespaced_event"),
            "Lease": (coordination, "namespaced_lease"),
        }
        self._instance = instance or socket.gethostname()  # the Events' reportingInstance

    async def close(self) -> None:
        await self.api_client.close()

    def _method(self, verb: str, kind: str):
        api, suffix = self._kinds[kind]
        return getattr(api, f"{verb}_{suffix}_without_preload_content")

    # --- RLHFJobs -------------------------------------------------------------------------------------------

    async def get_rlhfjob(self, namespace: str, name: str) -> dict | None:
        call = self._custom.get_namespaced_custom_object_without_preload_content
        return await _absent_is_none(call(GROUP, VERSION, namespace, PLURAL, name))

    async def patch_rlhfjob_status(self, namespace: str, name: str, status: dict,
                                   resource_version: str | None = None) -> dict:
        """Merge-patch ``status`` into the RLHFJob's status, through the status subresource. With
        ``resource_version``, only if the RLHFJob has not changed since (else ApiError 409)."""
        call = self._custom.patch_namespaced_custom_object_status_without_preload_content
        body = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return await _json(await call(GROUP, VERSION, namespace, PLURAL, name, body, _content_type=MERGE_PATCH))

    # --- built-in objects -----------------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> dict | None:
        return await _absent_is_none(self._method("read", kind)(name, namespace))

    async def create(self, obj: dict) -> dict:
        """Create ``obj``; ApiError 409 when an object of that name exists."""
        return await _json(await self._method("create", obj["kind"])(obj["metadata"]["namespace"], obj))

    async def replace(self, obj: dict) -> dict:
        """Replace ``obj`` as read (its resourceVersion included); ApiError 409 when it changed since."""
        meta = obj["metadata"]
        return await _json(await self._method("replace", obj["kind"])(meta["name"], meta["namespace"], obj))

    async def patch(self, kind: str, namespace: str, name: str, patch: dict) -> dict:
        """Merge-patch an object (not its status)."""
        return await _json(await self._method("patch", kind)(name, namespace, patch, _content_type=MERGE_PATCH))

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object and, in the background, what it owns (a Job's pods); gone already is fine."""
        await _absent_is_none(self._method("delete", kind)(name, namespace, propagation_policy="Background"))

    async def list(self, kind: str, namespace: str, **selectors: str) -> list[dict]:
        """Objects of a kind in a namespace; ``selectors`` (label_selector, field_selector) narrow it on a real
        API server; callers still filter, as not every server honours them."""
        return (await _json(await self._method("list", kind)(namespace, **selectors))).get("items") or []

    # --- Events ---------------------------------------------------------------------------------------------

    async def post_event(self, involved: dict, event: Event) -> None:
        """Record a core/v1 Event on ``involved`` (an object as read); a failure is logged, never raised."""
        meta = involved["metadata"]
        now = timestamp(datetime.now(UTC))
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.create(body)
        except Exception as e:  # noqa: BLE001 - an Event is worth a log line, not a failed reconcile
            log.warning("could not post event %s on %s/%s: %s", event.reason, meta["namespace"], meta["name"], e)

    async def job_events(self, job: dict) -> list[dict]:
        """The Events on ``job`` (its controller's SuccessfulCreate, FailedCreate, ...)."""
        meta = job["metadata"]
        selector = f"involvedObject.kind=Job,involvedObject.name={meta['name']}"
        events = await self.list("Event", meta["namespace"], field_selector=selector)
        return [e for e in events if (e.get("involvedObject") or {}).get("uid") == meta.get("uid")]

    # --- authentication -------------------------------------------------------------------------------------

    async def review_token(self, token: str, audience: str) -> dict:
        """The status of a TokenReview of ``token`` for ``audience``."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [audience]}}
        review = await _json(await self._auth.create_token_review_without_preload_content(body))
        return review.get("status") or {}


async def _absent_is_none(call) -> Any:
    try:
        return await _json(await call)
    except ApiError as e:
        if e.status == 404:
            return None
        raise

