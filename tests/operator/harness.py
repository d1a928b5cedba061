"""Driving the operator in tests: run it (kopf's KopfRunner) against a ``RunningCluster``, play the Job controller
and the kubelet, and check what a real API server would have checked.

The test talks to the cluster with the official ``kubernetes`` client, as kubectl would.
"""

from __future__ import annotations

import copy
import functools
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import kubernetes
import kubernetes_validate
import yaml
from crd_checks import unknown_fields
from kmock_cluster import RLHFJOBS, RunningCluster
from kopf.testing import KopfRunner

from rlhf_operator import handlers  # noqa: F401 - registers the handlers KopfRunner runs
from rlhf_operator.api import GROUP, PLURAL, VERSION
from rlhf_operator.crd import crd
from rlhf_operator.kube import USER_AGENT

KUBERNETES_VERSION = "1.32"
ROOT = Path(__file__).parents[2]
DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "sentiment-tiny.yaml").read_text())
NS = "team-a"
# kubernetes_validate reads its schemas from disk on every call; the tests validate hundreds of objects.
kubernetes_validate.utils.schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rlhfjob(name: str, namespace: str = NS, **spec) -> dict:
    """The demo RLHFJob (sentiment-tiny) under another name, with ``spec`` fields replaced."""
    body = copy.deepcopy(DEMO)
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"].update(spec)
    return body


def names(cluster, resource: str) -> list[str]:
    return sorted(obj["metadata"]["name"] for obj in cluster.cluster.stored(resource, NS))


def run_stage(api, job: str) -> None:
    """The Job controller ran the stage's pods to success."""
    api.start_job(NS, job)
    api.complete_job(NS, job)


def wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "the condition") -> object:
    """Poll ``condition`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def operator_requests(running: RunningCluster) -> list:
    return [r for r in running.cluster.requests() if r.headers.get("User-Agent", "").startswith(USER_AGENT)]


def wait_idle(running: RunningCluster, quiet: float = 0.3, timeout: float = 15.0) -> None:
    """Wait until the operator has made no API request for ``quiet`` seconds (it has acted on all it saw)."""
    deadline = time.monotonic() + timeout
    count, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = len(operator_requests(running))
        if now_count != count:
            count, since = now_count, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)
    raise AssertionError(f"the operator kept calling the API for {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Api:
    """The official client's APIs, as the test uses them."""

    custom: kubernetes.client.CustomObjectsApi
    batch: kubernetes.client.BatchV1Api
    core: kubernetes.client.CoreV1Api

    @classmethod
    def connect(cls, kubeconfig: Path) -> Api:
        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        return cls(kubernetes.client.CustomObjectsApi(client), kubernetes.client.BatchV1Api(client),
                   kubernetes.client.CoreV1Api(client))

    # --- RLHFJobs

    def create_rlhfjob(self, namespace: str, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def rlhfjob(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def status(self, namespace: str, name: str) -> dict:
        return self.rlhfjob(namespace, name).get("status") or {}

    def patch_rlhfjob(self, namespace: str, name: str, patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)

    def delete_rlhfjob(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 15.0) -> dict:
        return wait_for(lambda: (s := self.status(namespace, name)).get("phase") == phase and s,
                        timeout, f"RLHFJob {name} to reach {phase}")

    # --- Jobs, as the Job controller writes them

    def job(self, namespace: str, name: str) -> dict | None:
        try:
            return self.batch.api_client.sanitize_for_serialization(self.batch.read_namespaced_job(name, namespace))
        except kubernetes.client.ApiException as e:
            if e.status == 404:
                return None
            raise

    def wait_job(self, namespace: str, name: str, timeout: float = 15.0) -> dict:
        return wait_for(lambda: self.job(namespace, name), timeout, f"Job {name}")

    def job_status(self, namespace: str, name: str, status: dict) -> None:
        self.batch.patch_namespaced_job_status(name, namespace, {"status": status})

    def start_job(self, namespace: str, name: str, active: int = 1) -> None:
        """The Job controller created the pods."""
        self.job_status(namespace, name, {"startTime": now(), "active": active, "ready": active})

    def complete_job(self, namespace: str, name: str, completions: int | None = None) -> None:
        """The pods succeeded: SuccessCriteriaMet first, then Complete with completionTime (1.31+)."""
        succeeded = completions or self.job(namespace, name)["spec"].get("completions", 1)
        met = {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
               "message": "Reached expected number of succeeded pods", "lastProbeTime": now(),
               "lastTransitionTime": now()}
        self.job_status(namespace, name, {"active": 0, "ready": 0, "succeeded": succeeded, "conditions": [met]})
        complete = {**met, "type": "Complete"}
        self.job_status(namespace, name, {"completionTime": now(), "conditions": [met, complete]})

    def fail_pod(self, namespace: str, name: str, failed: int) -> None:
        """A pod failed and the Job controller started another one."""
        self.job_status(namespace, name, {"active": 1, "failed": failed})

    def fail_job(self, namespace: str, name: str, reason: str, message: str, failed: int) -> None:
        """The Job failed: FailureTarget first, then Failed."""
        target = {"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
                  "lastProbeTime": now(), "lastTransitionTime": now()}
        self.job_status(namespace, name, {"active": 0, "failed": failed, "conditions": [target]})
        self.job_status(namespace, name, {"conditions": [target, {**target, "type": "Failed"}]})

    def create_pod(self, namespace: str, job_name: str, index: int = 0) -> dict:
        """A pod of the Job, as the Job controller creates it."""
        job = self.job(namespace, job_name)
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"{job_name}-{index}-x{int(time.time() * 1000) % 100000}",
                "namespace": namespace,
                "labels": {**template["metadata"]["labels"], "batch.kubernetes.io/job-name": job_name},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                     "uid": job["metadata"]["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "spec": template["spec"],
        }
        return self.core.api_client.sanitize_for_serialization(self.core.create_namespaced_pod(namespace, pod))

    # --- Events

    def events(self, namespace: str, name: str) -> list[tuple[str, str, str]]:
        """(type, reason, message) of the Events on an RLHFJob, oldest first."""
        events = [e for e in self.core.list_namespaced_event(namespace).items
                  if e.involved_object.kind == "RLHFJob" and e.involved_object.name == name]
        return [(e.type, e.reason, e.message) for e in events]

    def event_reasons(self, namespace: str, name: str) -> list[str]:
        return [reason for _, reason, _ in self.events(namespace, name)]


@dataclass
class OperatorHandle:
    url: str
    runner: KopfRunner

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def push(self, record: dict, token: str | None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url + "/v1/status", json.dumps(record).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name: str, **labels: str) -> float:
        """The value of a sample on /metrics (0 when absent)."""
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in self.get("/metrics")[1].splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0


@contextmanager
def running_operator(running: RunningCluster, monkeypatch, namespaces: tuple[str, ...] = ()):
    """The operator under test (``kopf run --standalone``, all namespaces or ``namespaces``), its HTTP server on
    a free port; on exit, stopped and checked to have ended cleanly."""
    port = free_port()
    if namespaces:
        monkeypatch.setenv("RLHF_WATCH_NAMESPACES", ",".join(namespaces))
    scope = [arg for ns in namespaces for arg in ("--namespace", ns)] or ["--all-namespaces"]
    monkeypatch.setenv("RLHF_PORT", str(port))
    monkeypatch.setenv("RLHF_SERVICE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("RLHF_TRAINER_IMAGE", "registry.example/rlhf-trainer:test")
    before = len(running.cluster.requests())
    with KopfRunner(["run", "--standalone", *scope, "-m", "rlhf_operator.handlers"],
                    timeout=30) as runner:
        handle = OperatorHandle(f"http://127.0.0.1:{port}", runner)
        wait_for(lambda: _watching(running, before), 15, "the operator's watches")
        wait_for(lambda: _ready(handle), 15, "the operator's /readyz")
        yield handle
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None, runner.output


def _watching(running: RunningCluster, since: int) -> bool:
    watched = {request.resource.plural for request in running.cluster.requests()[since:]
               if request.action is not None and request.action.name == "WATCH" and request.resource is not None}
    return {PLURAL, "jobs"} <= watched


def _ready(handle: OperatorHandle) -> bool:
    try:
        return handle.get("/readyz")[0] == 200
    except OSError:
        return False


# --- what a real API server would have checked -----------------------------------------------------------------

def assert_valid_objects(running: RunningCluster) -> None:
    """Every stored built-in object passes the Kubernetes schema, unknown fields included."""
    for (resource, _, _), obj in list(running.cluster.objects.items()):
        if obj.deleted or resource == RLHFJOBS:
            continue
        kubernetes_validate.validate(obj.raw, KUBERNETES_VERSION, strict=True)


def assert_status_matches_the_crd(running: RunningCluster) -> None:
    """Every RLHFJob's status is valid for the CRD's status schema and declares every field it holds (a real API
    server prunes undeclared status fields)."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    for body in running.cluster.stored(RLHFJOBS):
        status = body.get("status") or {}
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in jsonschema.Draft4Validator(schema).iter_errors(status)]
        assert errors == [], (body["metadata"]["name"], errors)
        assert unknown_fields(schema, status, ".status") == [], body["metadata"]["name"]


def assert_status_only_through_subresource(running: RunningCluster) -> None:
    """The operator wrote RLHFJobs only through /status (a real server drops status sent anywhere else), and kopf
    wrote nothing to them (no finalizers, no annotations)."""
    for request in running.cluster.requests():
        if request.resource != RLHFJOBS or request.method.name in ("GET",):
            continue
        agent = request.headers.get("User-Agent", "")
        if agent.startswith(USER_AGENT):
            assert request.method.name == "PATCH" and request.subresource == "status", (request.method, request.url)
        assert not agent.startswith("kopf"), (request.method, request.url)
