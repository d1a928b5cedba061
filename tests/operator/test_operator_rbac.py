"""The operator with only the RBAC the manifests grant (manifests/rbac, the chart's default): it logs in as the
ServiceAccount, and the real API server authorizes every call it makes while a job runs to its end, leader
election's included."""

import kubernetes
import yaml
from harness import ROOT, log_in, rlhfjob, run_stage, running_operator, wait_for

RBAC = ROOT / "manifests" / "rbac"


def service_account_rbac(ns: str) -> list[dict]:
    """The ServiceAccount, ClusterRole and ClusterRoleBinding of manifests/rbac, the account in ``ns`` and the
    cluster-wide objects named after it (so that tests never share them), then the Lease's Role and RoleBinding
    in ``ns``."""
    objects = [yaml.safe_load((RBAC / f"{name}.yaml").read_text())
               for name in ("serviceaccount", "clusterrole", "clusterrolebinding")]
    account, role, binding = objects
    account["metadata"]["namespace"] = ns
    role["metadata"]["name"] = binding["metadata"]["name"] = binding["roleRef"]["name"] = f"rlhf-operator-{ns}"
    binding["subjects"][0]["namespace"] = ns
    lease_role, lease_binding = yaml.safe_load_all((RBAC / "leader-election.yaml").read_text())
    lease_role["metadata"]["namespace"] = lease_binding["metadata"]["namespace"] = ns
    lease_binding["subjects"][0]["namespace"] = ns
    return [*objects, lease_role, lease_binding]


def test_the_operator_runs_a_job_with_only_the_rbac_the_manifests_grant(control_plane, cluster, api, ns,
                                                                         monkeypatch, tmp_path):
    objects = service_account_rbac(ns)
    control_plane.apply(yaml.safe_dump_all(objects))
    token = api.core.create_namespaced_service_account_token(
        "rlhf-operator", ns, {"spec": {"expirationSeconds": 3600}}).status.token
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    log_in(monkeypatch, kubeconfig)
    monkeypatch.setenv("RLHF_LEADER_ELECT", "true")
    monkeypatch.setenv("RLHF_LEADER_ELECT_RESOURCE_NAMESPACE", ns)
    leases = kubernetes.client.CoordinationV1Api(cluster.client)
    try:
        with running_operator(cluster, monkeypatch) as operator:
            api.create_rlhfjob(ns, rlhfjob("least"))
            run_stage(api, ns, api.wait_job(ns, "least-sft")["metadata"]["name"])
            run_stage(api, ns, api.wait_job(ns, "least-reward")["metadata"]["name"])
            api.wait_job(ns, "least-ppo")
            pod = api.pod(ns, "least-ppo")  # the operator reviews the pod's token and reads its pod and Job
            record = {"stage": "ppo", "kind": "ppo", "step": 5, "totalSteps": 100,
                      "metrics": {"env/reward_mean": 0.5}}
            assert operator.push(record, cluster.issue_pod_token(ns, pod)) == (200, {"accepted": True})
            wait_for(lambda: api.status(ns, "least").get("ppo", {}).get("step") == 5, what="the pushed progress")
            api.complete_job(ns, "least-ppo")
            api.wait_phase(ns, "least", "Succeeded")
            assert "Succeeded" in api.event_reasons(ns, "least")
            assert operator.metric("rlhf_reconcile_errors_total") == 0
            assert operator.metric("rlhf_operator_leader") == 1
            assert leases.read_namespaced_lease("rlhf-operator", ns).spec.holder_identity
        assert leases.read_namespaced_lease("rlhf-operator", ns).spec.holder_identity is None  # released
    finally:
        control_plane.run_kubectl("delete", "--wait=false", "-f", "-", input=yaml.safe_dump_all(objects[1:3]))
