"""Many RLHFJobs at once, multi-worker stages, and watching only some namespaces."""

import time

from harness import NS, rlhfjob, running_operator, wait_for, wait_idle

from rlhf_operator.api import GROUP, PLURAL, VERSION

COUNT = 50


def test_fifty_rlhfjobs_at_once_all_succeed(cluster, api, operator):
    for i in range(COUNT):
        api.create_rlhfjob(NS, rlhfjob(f"many-{i}"))

    def play_job_controller() -> bool:
        """Complete every Job not yet complete; True once every RLHFJob succeeded."""
        for job in cluster.cluster.stored("batch/v1/jobs", NS):
            if not any(c["type"] == "Complete" for c in (job.get("status") or {}).get("conditions", [])):
                api.complete_job(NS, job["metadata"]["name"], job["spec"]["completions"])
        items = api.custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
        return len(items) == COUNT and all((j.get("status") or {}).get("phase") == "Succeeded" for j in items)

    wait_for(lambda: play_job_controller() or time.sleep(0.2), timeout=90, what=f"{COUNT} RLHFJobs to succeed")
    assert len(api.batch.list_namespaced_job(NS).items) == 3 * COUNT
    assert operator.metric("rlhf_jobs", phase="Succeeded") == COUNT
    assert operator.metric("rlhf_reconcile_errors_total") == 0


def test_a_multi_worker_stage_runs_as_an_indexed_job_behind_a_headless_service(cluster, api, operator):
    body = rlhfjob("wide")
    body["spec"]["stages"]["sft"].update(workers=2, distributed={"numProcesses": 2})
    api.create_rlhfjob(NS, body)
    job = api.wait_job(NS, "wide-sft")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == (
        "Indexed", 2, 2)
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "wide-sft"
    env = {var["name"]: var.get("value") for var in pod["containers"][0]["env"]}
    assert (env["MASTER_ADDR"], env["WORLD_SIZE"], env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == (
        "wide-sft-0.wide-sft", "2", "2", "2")
    service = api.core.read_namespaced_service("wide-sft", NS)
    assert service.spec.cluster_ip == "None"
    assert service.spec.selector == job["spec"]["template"]["metadata"]["labels"]
    claim = api.core.read_namespaced_persistent_volume_claim("wide-workspace", NS)
    assert claim.spec.access_modes == ["ReadWriteMany"]
    api.complete_job(NS, "wide-sft")
    assert "completionMode" not in api.wait_job(NS, "wide-reward")["spec"]  # one worker: a plain Job


def test_a_namespaced_operator_runs_only_the_rlhfjobs_of_its_namespaces(cluster, api, monkeypatch):
    with running_operator(cluster, monkeypatch, namespaces=(NS,)):
        api.create_rlhfjob("team-b", rlhfjob("elsewhere", namespace="team-b"))
        api.create_rlhfjob(NS, rlhfjob("here"))
        api.wait_job(NS, "here-sft")
        wait_idle(cluster)
        assert api.job("team-b", "elsewhere-sft") is None
        assert not api.rlhfjob("team-b", "elsewhere").get("status")
