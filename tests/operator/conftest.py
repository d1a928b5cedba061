"""Fixtures of the operator tests: a Kubernetes API (kmock) per test, the official client, the operator."""

import kubernetes
import pytest
from harness import (
    Api,
    assert_status_matches_the_crd,
    assert_status_only_through_subresource,
    assert_valid_objects,
    running_operator,
)
from kmock_cluster import RunningCluster


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """An emulated API server; at the end of the test every stored object must be valid (built-ins for Kubernetes,
    RLHFJob statuses for the CRD) and the operator must have written RLHFJobs only through /status."""
    with RunningCluster(tmp_path) as running:
        # The client reads $KUBECONFIG once, at import: point its default at this cluster (kopf logs in with it).
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(running.kubeconfig))
        monkeypatch.setenv("KUBECONFIG", str(running.kubeconfig))
        yield running
        assert_valid_objects(running)
        assert_status_matches_the_crd(running)
        assert_status_only_through_subresource(running)


@pytest.fixture
def api(cluster):
    return Api.connect(cluster.kubeconfig)


@pytest.fixture
def operator(cluster, monkeypatch):
    with running_operator(cluster, monkeypatch) as handle:
        yield handle
