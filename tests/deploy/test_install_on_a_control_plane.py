"""`kubectl apply -k manifests/` and `helm install` onto a real control plane: the API server takes every object.

Pods never start on a control plane without a node; what is checked is what the server decides: it admits each
object (CRD included, already installed by the ``control_plane`` fixture from the same generated file) and the
operator's Deployment, ServiceAccount, RBAC and Service exist as written."""

import json

import pytest
import yaml
from deploy_helpers import CHART, MANIFESTS, RELEASE, kustomize, run, tool


def objects(control_plane, namespace: str) -> set[tuple[str, str]]:
    listed = control_plane.run_kubectl("get", "deployments,serviceaccounts,services", "-n", namespace, "-o", "json")
    names = {(item["kind"], item["metadata"]["name"]) for item in json.loads(listed.stdout)["items"]}
    return names - {("ServiceAccount", "default")}


def cluster_rbac(control_plane, name: str) -> dict:
    role = control_plane.run_kubectl("get", "clusterrole", name, "-o", "json", check=False)
    return json.loads(role.stdout) if role.returncode == 0 else {}


def test_kubectl_apply_k_installs_everything(control_plane):
    control_plane.run_kubectl("apply", "--server-side", "-k", str(MANIFESTS))
    # everything but the CRD goes again: the other tests of the session use it
    rest = [obj for obj in kustomize(MANIFESTS) if obj["kind"] != "CustomResourceDefinition"]
    try:
        assert objects(control_plane, "rlhf-system") == {
            ("Deployment", "rlhf-operator"), ("ServiceAccount", "rlhf-operator"), ("Service", "rlhf-operator")}
        assert cluster_rbac(control_plane, "rlhf-operator")["rules"]
    finally:
        control_plane.run_kubectl("delete", "--wait=false", "-f", "-", input=yaml.safe_dump_all(rest))


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]}], ids=["cluster-wide", "namespaced"])
def test_helm_install_installs_the_chart(control_plane, tmp_path, values):
    namespace = f"helm-{'namespaced' if values else 'cluster'}"
    release = f"{RELEASE}-{namespace}"  # cluster-wide objects are named after the release
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    if values:
        control_plane.run_kubectl("create", "namespace", "team-a", check=False)
    helm = [tool("helm"), "--kubeconfig", str(control_plane.kubeconfig)]
    run(*helm, "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        "--values", str(tmp_path / "values.yaml"))
    try:
        status = json.loads(run(*helm, "status", release, "--namespace", namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"
        assert ("Deployment", release) in objects(control_plane, namespace)
        if values:  # a Role in each watched namespace, no cluster-wide write
            roles = control_plane.run_kubectl("get", "roles", "-n", "team-a", "-o", "name").stdout.split()
            assert f"role.rbac.authorization.k8s.io/{release}" in roles
        else:
            assert cluster_rbac(control_plane, release)["rules"]
    finally:
        run(*helm, "uninstall", release, "--namespace", namespace, "--wait")
