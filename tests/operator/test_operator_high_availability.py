"""Two operator replicas with leader election, as the chart runs them: one acts, the other stands by and takes
over when the leader's process is killed, and nothing is done twice."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import kubernetes
from harness import OperatorHandle, _ready, free_port, names, rlhfjob, run_stage, wait_for

LEASE = {"RLHF_LEADER_ELECT_LEASE_DURATION": "3", "RLHF_LEADER_ELECT_RENEW_DEADLINE": "2",
         "RLHF_LEADER_ELECT_RETRY_PERIOD": "0.5"}


class Replica:
    """``rlhf operator --leader-elect`` in a process of its own, watching the test's namespace."""

    def __init__(self, cluster, ns: str, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig), RLHF_PORT=str(self.port),
                   RLHF_SERVICE_URL=self.url, RLHF_TRAINER_IMAGE="registry.example/rlhf-trainer:test",
                   RLHF_LEADER_ELECT="true", RLHF_LEADER_ELECT_RESOURCE_NAMESPACE=ns, **LEASE)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "rlhf_operator.cli", "operator", "--namespace", ns],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT)

        self.http = OperatorHandle(self.url, runner=None)  # probes and metrics, as for an in-process operator

    def leads(self) -> bool:
        return self.http.metric("rlhf_operator_leader") == 1

    def push(self, record: dict, token: str) -> tuple[int, dict]:
        """The answer's status and headers (a standby's Retry-After)."""
        request = urllib.request.Request(self.url + "/v1/status", json.dumps(record).encode(),
                                         {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(30)
        self.log.close()
        return code


def lease(api_client, ns: str) -> dict:
    return kubernetes.client.CoordinationV1Api(api_client).read_namespaced_lease("rlhf-operator", ns).spec.to_dict()


def event_instances(api, ns: str) -> list[tuple[str, str]]:
    """(reason, reportingInstance) of the Events on RLHFJobs, oldest first."""
    events = sorted((e for e in api.core.list_namespaced_event(ns).items if e.involved_object.kind == "RLHFJob"),
                    key=lambda e: int(e.metadata.resource_version))
    return [(e.reason, e.reporting_instance) for e in events]


def test_the_standby_takes_over_when_the_leader_is_killed_mid_chain_and_nothing_is_done_twice(
        cluster, api, ns, tmp_path):
    replicas = [Replica(cluster, ns, tmp_path / f"replica-{i}.log") for i in range(2)]
    try:
        for replica in replicas:  # both serve: probes, metrics, pushes
            wait_for(lambda r=replica: _ready(r.http), 30, "both replicas' /readyz")
        leader = wait_for(lambda: next((r for r in replicas if r.leads()), None), 15, "a leader")
        standby = next(r for r in replicas if r is not leader)
        assert not standby.leads()
        first_term = lease(cluster.client, ns)

        api.create_rlhfjob(ns, rlhfjob("ha"))
        uids = {"ha-sft": api.wait_job(ns, "ha-sft")["metadata"]["uid"]}
        api.start_job(ns, "ha-sft")
        token = cluster.issue_pod_token(ns, api.pod(ns, "ha-sft"))
        record = {"stage": "sft", "kind": "sft", "step": 5, "metrics": {"loss": 2.0}}
        status, headers = standby.push(record, token)
        assert (status, headers.get("Retry-After")) == (503, "1")  # a standby never writes; the pod retries
        assert leader.push(record, token)[0] == 200
        run_stage(api, ns, "ha-sft")
        uids["ha-reward"] = api.wait_job(ns, "ha-reward")["metadata"]["uid"]
        time.sleep(1)  # the leader writes the reward stage's status and Event

        killed = time.monotonic()
        leader.stop(signal.SIGKILL)
        wait_for(standby.leads, 15, "the standby to take over")
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL: {takeover:.1f}s (lease duration 3s, retry period 0.5s)")
        assert takeover <= 3 + 2 * 0.5 + 2  # the lease duration, a retry period's wait, and the first try
        second_term = lease(cluster.client, ns)
        assert second_term["holder_identity"] != first_term["holder_identity"]
        assert second_term["lease_transitions"] == first_term["lease_transitions"] + 1

        run_stage(api, ns, "ha-reward")
        uids["ha-ppo"] = api.wait_job(ns, "ha-ppo")["metadata"]["uid"]
        run_stage(api, ns, "ha-ppo")
        api.wait_phase(ns, "ha", "Succeeded", timeout=30)
        time.sleep(1)
        assert standby.stop() == 0
        assert lease(cluster.client, ns)["holder_identity"] is None  # released on a clean stop
    finally:
        for replica in replicas:
            replica.stop(signal.SIGKILL)

    # Each Job made once, every stage started once, and every Event from the replica that led at the time.
    assert {job["metadata"]["name"]: job["metadata"]["uid"] for job in cluster.stored("batch/v1/jobs")} == uids
    assert names(cluster, "v1/configmaps") == ["ha-ppo", "ha-reward", "ha-sft"]
    events = event_instances(api, ns)
    assert [reason for reason, _ in events].count("StageStarted") == 3
    assert {instance for _, instance in events} == {first_term["holder_identity"], second_term["holder_identity"]}
    switch = [instance for _, instance in events].index(second_term["holder_identity"])
    assert all(instance == first_term["holder_identity"] for _, instance in events[:switch])
    assert all(instance == second_term["holder_identity"] for _, instance in events[switch:])
    status = api.status(ns, "ha")
    assert [status["stages"][s]["phase"] for s in ("sft", "reward", "ppo")] == ["Succeeded"] * 3
