"""The plain manifests (`kubectl apply -k manifests/`): valid, complete, and the same operator as the chart's."""

import pytest
import yaml
from deploy_helpers import CRD_FILE, MANIFESTS, NAMESPACE, kustomize, only, schema_errors

CLUSTER_SCOPED_KINDS = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def test_every_object_matches_the_kubernetes_schema(manifests):
    assert schema_errors(manifests) == []


def test_everything_lands_in_the_rlhf_system_namespace(manifests):
    namespace = only(manifests, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in manifests:
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']}/{obj['metadata']['name']}"
    (subject,) = only(manifests, "ClusterRoleBinding")["subjects"]
    assert subject["namespace"] == NAMESPACE


def test_the_same_objects_as_the_chart_with_default_values(manifests, default_chart):
    def names(objects):
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] not in ("Namespace",
                                                                                             "CustomResourceDefinition"))

    assert names(manifests) == names(default_chart)


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("ClusterRole", "rules"),
        ("ClusterRoleBinding", "roleRef"),
        ("ClusterRoleBinding", "subjects"),
        ("Role", "rules"),
        ("RoleBinding", "roleRef"),
        ("RoleBinding", "subjects"),
        ("Service", "spec"),
        ("Deployment", "spec.replicas"),
        ("Deployment", "spec.strategy"),
        ("Deployment", "spec.selector"),
        # The whole pod: image, env (RLHF_SERVICE_URL included), ports, probes, securityContext, resources, volumes.
        ("Deployment", "spec.template.spec"),
    ],
)
def test_matches_the_chart_rendered_with_default_values(manifests, default_chart, kind, field):
    def get(objects):
        value = only(objects, kind)
        for key in field.split("."):
            value = value.get(key)
        return value

    assert get(manifests) == get(default_chart)


@pytest.mark.skipif(not CRD_FILE.exists(), reason=f"{CRD_FILE.relative_to(MANIFESTS.parent)} comes from the CRD's branch")
def test_kustomization_installs_the_generated_crd():
    objects = kustomize(MANIFESTS)
    crd = only(objects, "CustomResourceDefinition")
    assert crd == yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"]["group"] == "rlhf.dev"
    assert schema_errors([crd]) == []
