"""Helpers of the deployment checks: the pinned tools in .tools/, chart rendering, schema validation."""

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rlhf-operator"
MANIFESTS = REPO / "manifests"
CRD_FILE = MANIFESTS / "crd" / "rlhf.dev_rlhfjobs.yaml"
TOOLS = REPO / ".tools" / "bin"

RELEASE = "rlhf-operator"
NAMESPACE = "rlhf-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
# Kinds whose schemas are not built in: checked by the tests that render them.
CUSTOM_KINDS = {"ServiceMonitor"}

# Value sets the chart is rendered with: defaults, namespaced mode, ServiceMonitor on, everything customised.
GPU_TEMPLATE = {
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "priorityClassName": "training",
}
VALUE_SETS = {
    "defaults": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "single-replica": {"replicas": 1, "leaderElection": {"enabled": False}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "custom": {
        "image": {"repository": "registry.example.com/rlhf/operator", "tag": "1.2.3", "pullPolicy": "Always"},
        "trainer": {"image": {"repository": "registry.example.com/rlhf/trainer", "tag": "1.2.3-cu128"}},
        "imagePullSecrets": [{"name": "registry"}],
        "storage": {"defaultStorageClass": "fast-ssd", "defaultSize": "200Gi"},
        "defaultPodTemplate": GPU_TEMPLATE,
        "logLevel": "debug",
        "podAnnotations": {"example.com/team": "ml"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "control", "effect": "NoSchedule"}],
    },
}


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{name} is not in {TOOLS}: run `make tools` (scripts/install-tools.sh)", pytrace=False)
    return str(path)


def run(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def helm_template(values: dict | None = None, *extra: str, release: str = RELEASE, namespace: str = NAMESPACE):
    """`helm template` of the chart with these values (YAML on stdin); returns the completed process."""
    return run(
        tool("helm"), "template", release, str(CHART), "--namespace", namespace,
        "--kube-version", KUBE_VERSIONS[0], "--values", "-", *extra,
        input=yaml.safe_dump(values or {}), check=False,
    )


def parse(stream: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(stream) if doc]


def render(values: dict | None = None, **kwargs) -> list[dict]:
    """The chart's objects (CRDs included) for these values; fails the test if helm refuses them."""
    result = helm_template(values, "--include-crds", **kwargs)
    if result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}")
    return parse(result.stdout)


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: install kubectl (its `kustomize` builds manifests/)", pytrace=False)
    return parse(run(kubectl, "kustomize", str(directory)).stdout)


def schema_errors(objects: list[dict]) -> list[str]:
    """Every object checked, strictly (unknown fields are errors), against each Kubernetes version's schema."""
    errors = []
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(map(str, error.path))
                errors.append(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}) {where}: {error.message}")
    return errors


def only(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def container_env(deployment: dict) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env", [])}


def rbac_grants(rules: list[dict]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every combination a rule list allows."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }
