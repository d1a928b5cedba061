"""Driving the operator in tests: run it (kopf's KopfRunner) against a real control plane (``Namespace``: the
test's own namespace on it), and play the kubelet and the trainer: no node runs pods there, so the test writes
what a kubelet would (pod and Job status) and pushes progress with the pods' real tokens.

The test talks to the cluster with the official ``kubernetes`` client, as kubectl would.
"""

from __future__ import annotations

import copy
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import kubernetes
import yaml
from kopf.testing import KopfRunner

from rlhf_operator import handlers  # noqa: F401 - registers the handlers KopfRunner runs
from rlhf_operator.api import GROUP, PLURAL, VERSION

ROOT = Path(__file__).parents[2]
DEMO = yaml.safe_load((ROOT / "manifests" / "examples" / "sentiment-tiny.yaml").read_text())
# What the control plane itself puts in every namespace.
BUILT_IN = {("v1/configmaps", "kube-root-ca.crt"), ("v1/serviceaccounts", "default")}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rlhfjob(name: str, **spec) -> dict:
    """The demo RLHFJob (sentiment-tiny) under another name, with ``spec`` fields replaced."""
    body = copy.deepcopy(DEMO)
    body["metadata"] = {"name": name}
    body["spec"].update(spec)
    return body


def names(cluster, resource: str) -> list[str]:
    return sorted(obj["metadata"]["name"] for obj in cluster.stored(resource))


def run_stage(api, namespace: str, job: str) -> None:
    """The stage's pods ran to success."""
    api.complete_job(namespace, job)


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


def wait_idle(cluster, quiet: float = 1.0) -> None:
    """Give the operator ``quiet`` seconds to act on what it saw: what it has not done by then, it does not do."""
    time.sleep(quiet)


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

    # --- Jobs: the real Job controller creates their pods; the test writes what the pods' ends would make it write

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

    def start_job(self, namespace: str, name: str, field: str = "active") -> None:
        """Wait until the Job controller has started the Job and created its pods (``active``)."""
        wait_for(lambda: ((self.job(namespace, name) or {}).get("status") or {}).get(field), 45,
                 f"the Job controller to start {name}")

    def complete_job(self, namespace: str, name: str, completions: int | None = None) -> None:
        """The pods succeeded: SuccessCriteriaMet first, then Complete with completionTime (1.31+), as the Job
        controller writes them."""
        self.start_job(namespace, name, "startTime")  # a finished Job has one
        succeeded = completions or self.job(namespace, name)["spec"].get("completions", 1)
        met = {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
               "message": "Reached expected number of succeeded pods", "lastProbeTime": now(),
               "lastTransitionTime": now()}
        self.job_status(namespace, name, {"active": 0, "ready": 0, "terminating": 0, "succeeded": succeeded,
                                          "conditions": [met]})
        complete = {**met, "type": "Complete"}
        self.job_status(namespace, name, {"completionTime": now(), "conditions": [met, complete]})

    def fail_pod(self, namespace: str, name: str, failed: int) -> None:
        """A pod failed and the Job controller started another one."""
        self.job_status(namespace, name, {"failed": failed})

    def fail_job(self, namespace: str, name: str, reason: str, message: str, failed: int) -> None:
        """The Job failed: FailureTarget first, then Failed."""
        self.start_job(namespace, name, "startTime")
        target = {"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
                  "lastProbeTime": now(), "lastTransitionTime": now()}
        self.job_status(namespace, name, {"active": 0, "terminating": 0, "failed": failed, "conditions": [target]})
        self.job_status(namespace, name, {"conditions": [target, {**target, "type": "Failed"}]})

    def pod(self, namespace: str, job_name: str) -> dict:
        """A pod of the Job: the one the Job controller created (waited for), or, for a Job that has finished, one
        created as the Job controller would."""
        job = self.job(namespace, job_name)
        if not any(c["status"] == "True" for c in (job.get("status") or {}).get("conditions") or []):
            selector = f"batch.kubernetes.io/job-name={job_name}"
            found = wait_for(lambda: self.core.list_namespaced_pod(namespace, label_selector=selector).items, 15,
                             f"a pod of {job_name}")
            return self.core.api_client.sanitize_for_serialization(found[0])
        template = job["spec"]["template"]
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "generateName": f"{job_name}-", "namespace": namespace, "labels": template["metadata"]["labels"],
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
        events = sorted((e for e in self.core.list_namespaced_event(namespace).items
                         if e.involved_object.kind == "RLHFJob" and e.involved_object.name == name),
                        key=lambda e: int(e.metadata.resource_version))
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


def log_in(monkeypatch, kubeconfig: Path) -> None:
    """Make ``kubeconfig`` the one the operator under test (kopf and its client) logs in with. The client reads
    $KUBECONFIG once, at import: its default location is pointed there too."""
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))


@contextmanager
def running_operator(cluster: Namespace, monkeypatch, namespaces: tuple[str, ...] = ()):
    """The operator under test (``kopf run --standalone``, all namespaces or ``namespaces``), its HTTP server on
    a free port; on exit, stopped and checked to have ended cleanly."""
    port = free_port()
    if namespaces:
        monkeypatch.setenv("RLHF_WATCH_NAMESPACES", ",".join(namespaces))
    scope = [arg for ns in namespaces for arg in ("--namespace", ns)] or ["--all-namespaces"]
    monkeypatch.setenv("RLHF_PORT", str(port))
    monkeypatch.setenv("RLHF_SERVICE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("RLHF_TRAINER_IMAGE", "registry.example/rlhf-trainer:test")
    with KopfRunner(["run", "--standalone", *scope, "-m", "rlhf_operator.handlers"], timeout=30) as runner:
        handle = OperatorHandle(f"http://127.0.0.1:{port}", runner)
        wait_for(lambda: _ready(handle), 15, "the operator's /readyz")
        yield handle
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None, runner.output


def _ready(handle: OperatorHandle) -> bool:
    try:
        return handle.get("/readyz")[0] == 200
    except OSError:
        return False


@dataclass
class Namespace:
    """The test's own namespace on the control plane: what is stored in it, and the kubelet's part (pod tokens)."""

    kubeconfig: Path
    namespace: str
    client: kubernetes.client.ApiClient

    def stored(self, resource: str, namespace: str | None = None) -> list[dict]:
        """The objects of a resource (``"batch/v1/jobs"``) in the test's namespace (or ``namespace``), less those
        the control plane puts in every namespace."""
        group_version, _, plural = resource.rpartition("/")
        prefix = "/api" if group_version == "v1" else "/apis"
        path = f"{prefix}/{group_version}/namespaces/{namespace or self.namespace}/{plural}"
        listed = self._get(path)["items"]
        return [obj for obj in listed if (resource, obj["metadata"]["name"]) not in BUILT_IN]

    def columns(self, name: str) -> dict[str, object]:
        """What ``kubectl get rlhfjob NAME -o wide`` shows: the server's Table of the RLHFJob, by column."""
        table = self._get(f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/{name}",
                          "application/json;as=Table;v=v1;g=meta.k8s.io")
        (row,) = table["rows"]
        return {column["name"].upper(): cell for column, cell in zip(table["columnDefinitions"], row["cells"],
                                                                     strict=True)}

    def _get(self, path: str, accept: str = "application/json") -> dict:
        request = self.client.param_serialize("GET", path, header_params={"Accept": accept},
                                              auth_settings=["BearerToken"])
        response = self.client.call_api(*request[:3])
        response.read()
        return json.loads(response.data)

    def issue_pod_token(self, namespace: str, pod: dict, audience: str = "rlhf-operator") -> str:
        """A service-account token bound to ``pod``, as the kubelet projects it into the pod."""
        account = pod["spec"].get("serviceAccountName") or "default"
        request = {"spec": {"audiences": [audience], "expirationSeconds": 3600, "boundObjectRef": {
            "apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}}}
        core = kubernetes.client.CoreV1Api(self.client)
        return core.create_namespaced_service_account_token(account, namespace, request).status.token

    def assert_untouched_by_kopf(self) -> None:
        """The operator keeps no state on RLHFJobs: kopf wrote no finalizer or annotation to any."""
        for body in self.stored(f"{GROUP}/{VERSION}/{PLURAL}"):
            meta = body["metadata"]
            assert not meta.get("finalizers"), meta
            assert not any(key.startswith("kopf.") for key in meta.get("annotations") or {}), meta
