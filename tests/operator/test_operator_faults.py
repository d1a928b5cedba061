"""What is transient is retried with backoff, never in a hot loop. A real API server cannot be made to fail on
cue, so these run against kmock's emulator (``kmock_cluster``) answering with the errors the test chooses."""

import time

import pytest
from harness import log_in, rlhfjob
from kmock_cluster import RunningCluster

from rlhf_operator.kube import USER_AGENT

NS = "team-a"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """kmock's emulator in place of the control plane: the ``api`` and ``operator`` fixtures use it."""
    with RunningCluster(tmp_path) as running:
        log_in(monkeypatch, running.kubeconfig)
        yield running


def operator_requests(cluster: RunningCluster) -> list:
    return [r for r in cluster.cluster.requests() if r.headers.get("User-Agent", "").startswith(USER_AGENT)]


def creates(cluster: RunningCluster, plural: str) -> int:
    return sum(1 for r in operator_requests(cluster) if r.action is not None and r.action.name == "CREATE"
               and r.resource is not None and r.resource.plural == plural)


def test_server_errors_are_retried_with_backoff_and_the_job_starts(cluster, api, operator):
    cluster.cluster.fail_next("jobs", 500, times=2)
    cluster.cluster.fail_next("configmaps", 429)
    api.create_rlhfjob(NS, rlhfjob("flaky"))
    api.wait_job(NS, "flaky-sft", timeout=20)
    assert api.wait_phase(NS, "flaky", "Running")["stage"] == "sft"
    assert creates(cluster, "jobs") == 3
    assert operator.metric("rlhf_reconcile_errors_total") >= 3


def test_a_status_write_that_keeps_losing_its_race_backs_off_instead_of_looping(cluster, api, operator):
    cluster.cluster.fail_next("rlhfjobs/status", 409, times=1000)
    api.create_rlhfjob(NS, rlhfjob("racy"))
    time.sleep(3)
    refused = len([r for r in operator_requests(cluster) if r.subresource == "status"])
    assert 2 <= refused <= 8  # backoff 0.5, 1, 2 s (and a watch event or two): a hot loop would make hundreds
    cluster.cluster.failures.clear()
    assert api.wait_phase(NS, "racy", "Running", timeout=20)["stage"] == "sft"
