"""Many RLHFJobs at once, multi-worker stages, and watching only some namespaces."""

import time

from harness import rlhfjob, running_operator, wait_for, wait_idle

from rlhf_operator.api import GROUP, PLURAL, VERSION

COUNT = 50


def test_fifty_rlhfjobs_at_once_all_succeed(cluster, api, ns, operator):
    for i in range(COUNT):
        api.create_rlhfjob(ns, rlhfjob(f"many-{i}"))

    def play_job_controller() -> bool:
        """Complete every Job not yet complete; True once every RLHFJob succeeded."""
        for job in cluster.stored("batch/v1/jobs", ns):
            if not any(c["type"] == "Complete" for c in (job.get("status") or {}).get("conditions", [])):
                api.complete_job(ns, job["metadata"]["name"], job["spec"]["completions"])
        items = api.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        return len(items) == COUNT and all((j.get("status") or {}).get("phase") == "Succeeded" for j in items)

    wait_for(lambda: play_job_controller() or time.sleep(0.2), timeout=90, what=f"{COUNT} RLHFJobs to succeed")
    assert len(api.batch.list_namespaced_job(ns).items) == 3 * COUNT
    assert operator.metric("rlhf_jobs", phase="Succeeded") == COUNT
    assert operator.metric("rlhf_reconcile_errors_total") == 0


def test_a_multi_worker_stage_runs_as_an_indexed_job_behind_a_headless_service(cluster, api, ns, operator):
    body = rlhfjob("wide")
    body["spec"]["stages"]["sft"].update(workers=2, distributed={"numProcesses": 2})
    api.create_rlhfjob(ns, body)
    job = api.wait_job(ns, "wide-sft")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == (
        "Indexed", 2, 2)
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "wide-sft"
    env = {var["name"]: var.get("value") for var in pod["containers"][0]["env"]}
    assert (env["MASTER_ADDR"], env["WORLD_SIZE"], env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == (
        "wide-sft-0.wide-sft", "2", "2", "2")
    service = api.core.read_namespaced_service("wide-sft", ns)
    assert service.spec.cluster_ip == "None"
    assert service.spec.selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    claim = api.core.read_namespaced_persistent_volume_claim("wide-workspace", ns)
    assert claim.spec.access_modes == ["ReadWriteMany"]
    api.complete_job(ns, "wide-sft")
    assert api.wait_job(ns, "wide-reward")["spec"]["completionMode"] == "NonIndexed"  # one worker: a plain Job


def test_a_namespaced_operator_runs_only_the_rlhfjobs_of_its_namespaces(cluster, api, ns, monkeypatch):
    other = f"{ns}-b"
    api.core.create_namespace({"metadata": {"name": other}})
    with running_operator(cluster, monkeypatch, namespaces=(ns,)):
        api.create_rlhfjob(other, rlhfjob("elsewhere"))
        api.create_rlhfjob(ns, rlhfjob("here"))
        api.wait_job(ns, "here-sft")
        wait_idle(cluster)
        assert api.job(other, "elsewhere-sft") is None
        assert not api.rlhfjob(other, "elsewhere").get("status")
    api.delete_rlhfjob(other, "elsewhere")
    api.core.delete_namespace(other)
