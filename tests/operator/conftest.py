"""Fixtures of the operator tests: a namespace of its own on the real control plane per test, the official
client, the operator."""

import secrets

import kubernetes
import pytest
from harness import Api, Namespace, log_in, running_operator, wait_for
from kube_cluster import NO_CONTROLLERS

from rlhf_operator.api import GROUP, PLURAL, VERSION


@pytest.fixture
def ns(control_plane):
    """A new namespace, deleted after the test (its RLHFJobs first, so that no later test's operator sees them)."""
    if not control_plane.controllers:
        pytest.skip(NO_CONTROLLERS)
    name = f"t-{secrets.token_hex(4)}"
    core = kubernetes.client.CoreV1Api(control_plane.client())
    core.create_namespace({"metadata": {"name": name}})
    # the pods' ServiceAccount, made by the ServiceAccount controller
    wait_for(lambda: core.list_namespaced_service_account(name).items, what=f"ServiceAccount {name}/default")
    yield name
    custom = kubernetes.client.CustomObjectsApi(core.api_client)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, name, PLURAL)
    wait_for(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"],
             what=f"the RLHFJobs of {name} to go")
    core.delete_namespace(name)


@pytest.fixture
def cluster(control_plane, ns, monkeypatch):
    """The test's namespace on the control plane; the operator logs in with the control plane's kubeconfig."""
    log_in(monkeypatch, control_plane.kubeconfig)
    namespace = Namespace(control_plane.kubeconfig, ns, control_plane.client())
    yield namespace
    namespace.assert_untouched_by_kopf()


@pytest.fixture
def api(cluster):
    return Api.connect(cluster.kubeconfig)


@pytest.fixture
def operator(cluster, monkeypatch):
    with running_operator(cluster, monkeypatch) as handle:
        yield handle
