"""The Helm chart: lint, render with several value sets, validate every object, check what users rely on."""

import json

import pytest
import yaml
from deploy_helpers import (
    CHART,
    GPU_TEMPLATE,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    container_env,
    helm_template,
    only,
    parse,
    rbac_grants,
    render,
    run,
    schema_errors,
    tool,
)


def grants(*groups_resources: tuple[str, str], verbs: str) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for group, resource in groups_resources for verb in verbs.split()}


# docs/operator-runtime.md, "What the operator needs from the API (least privilege)".
NAMESPACED_GRANTS = (
    grants(("rlhf.dev", "rlhfjobs"), verbs="get list watch")
    | grants(("rlhf.dev", "rlhfjobs/status"), verbs="get patch")
    | grants(("batch", "jobs"), verbs="get list watch create patch delete")
    | grants(("", "persistentvolumeclaims"), ("", "configmaps"), ("", "services"),
             verbs="get list watch create patch delete")
    | grants(("", "pods"), verbs="get list watch")
    | grants(("", "events"), ("events.k8s.io", "events"), verbs="create patch")
    | grants(("", "events"), verbs="list")
)
CLUSTER_SCOPED_GRANTS = grants(("authentication.k8s.io", "tokenreviews"), verbs="create") | grants(
    ("apiextensions.k8s.io", "customresourcedefinitions"), verbs="get list watch"
)
NAMESPACE_DISCOVERY_GRANTS = grants(("", "namespaces"), verbs="list watch")
LEADER_ELECTION_ROLE = f"{RELEASE}-leader-election"


def namespaced_roles(objects: list[dict], kind: str) -> dict[str, dict]:
    """The Roles (or RoleBindings) of watched namespaces, by namespace: all but leader election's."""
    return {o["metadata"]["namespace"]: o for o in objects
            if o["kind"] == kind and o["metadata"]["name"] != LEADER_ELECTION_ROLE}

@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(VALUE_SETS[request.param])


def test_helm_lint_strict_passes():
    run(tool("helm"), "lint", "--strict", str(CHART))


def test_every_rendered_object_matches_the_kubernetes_schema(rendered):
    name, objects = rendered
    assert schema_errors(objects) == [], f"value set {name!r}"


def test_templates_never_render_the_crd():
    """The CRD ships in crds/ (installed once, never templated), so `helm template` without CRDs has none."""
    result = helm_template()
    assert result.returncode == 0, result.stderr
    assert "CustomResourceDefinition" not in [o["kind"] for o in parse(result.stdout)]


def test_operator_runs_two_replicas_with_leader_election_or_one_recreated_without(rendered):
    name, objects = rendered
    deployment = only(objects, "Deployment")
    env = container_env(deployment)
    if name == "single-replica":
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert "RLHF_LEADER_ELECT" not in env
        assert not [o for o in objects if o["metadata"]["name"] == LEADER_ELECTION_ROLE]
        return
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # rolling: a standby leads while the old pods go
    assert {key: env[key] for key in env if key.startswith("RLHF_LEADER_ELECT")} == {
        "RLHF_LEADER_ELECT": "true", "RLHF_LEADER_ELECT_RESOURCE_NAME": RELEASE,
        "RLHF_LEADER_ELECT_RESOURCE_NAMESPACE": NAMESPACE, "RLHF_LEADER_ELECT_LEASE_DURATION": "15",
        "RLHF_LEADER_ELECT_RENEW_DEADLINE": "10", "RLHF_LEADER_ELECT_RETRY_PERIOD": "2"}


def test_leader_election_may_create_leases_and_read_and_update_only_its_own(default_chart):
    (role,) = [o for o in default_chart if o["kind"] == "Role"]
    (binding,) = [o for o in default_chart if o["kind"] == "RoleBinding"]
    assert (role["metadata"]["name"], role["metadata"]["namespace"]) == (LEADER_ELECTION_ROLE, NAMESPACE)
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [RELEASE],
         "verbs": ["get", "update"]}]
    assert binding["roleRef"]["name"] == LEADER_ELECTION_ROLE
    assert binding["subjects"][0]["name"] == only(default_chart, "ServiceAccount")["metadata"]["name"]


def test_more_than_one_replica_without_leader_election_is_refused():
    result = helm_template({"leaderElection": {"enabled": False}})
    assert result.returncode != 0
    assert "replicas > 1 needs leaderElection.enabled" in result.stderr


def test_operator_pod_is_hardened(default_chart):
    pod = only(default_chart, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # A writable /tmp on an emptyDir, since the root filesystem is read-only.
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_probes_hit_healthz_and_readyz_on_port_8080(default_chart):
    (container,) = only(default_chart, "Deployment")["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_service_url_points_at_the_service_in_the_release_namespace():
    objects = render(release="rlhf", namespace="ml-platform")
    service = only(objects, "Service")
    deployment = only(objects, "Deployment")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, "http")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    env = container_env(deployment)
    assert env["RLHF_SERVICE_URL"] == f"http://{service['metadata']['name']}.ml-platform.svc:8080"
    assert env["RLHF_PORT"] == "8080"


def test_default_values_give_the_runtime_defaults(default_chart):
    deployment = only(default_chart, "Deployment")
    env = container_env(deployment)
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/rlhf-operator/operator:{app_version}"
    assert env == {
        "RLHF_PORT": "8080",
        "RLHF_TRAINER_IMAGE": f"ghcr.io/rlhf-operator/trainer:{app_version}",
        "RLHF_LOG_LEVEL": "info",
        "RLHF_SERVICE_URL": f"http://{RELEASE}.{NAMESPACE}.svc:8080",
        "RLHF_DEFAULT_STORAGE_SIZE": "20Gi",
        "RLHF_DEFAULT_POD_TEMPLATE": "{}",
        **{key: value for key, value in env.items() if key.startswith("RLHF_LEADER_ELECT")},
    }  # no RLHF_WATCH_NAMESPACES: all namespaces; no RLHF_DEFAULT_STORAGE_CLASS: the cluster's default


def test_custom_values_reach_the_operator():
    objects = render(VALUE_SETS["custom"])
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = container_env(deployment)
    assert container["image"] == "registry.example.com/rlhf/operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert env["RLHF_TRAINER_IMAGE"] == "registry.example.com/rlhf/trainer:1.2.3-cu128"
    assert env["RLHF_DEFAULT_STORAGE_CLASS"] == "fast-ssd"
    assert env["RLHF_DEFAULT_STORAGE_SIZE"] == "200Gi"
    assert json.loads(env["RLHF_DEFAULT_POD_TEMPLATE"]) == GPU_TEMPLATE
    assert env["RLHF_LOG_LEVEL"] == "debug"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "ml"}


def test_cluster_wide_rbac_grants_exactly_the_documented_verbs(default_chart):
    role = only(default_chart, "ClusterRole")
    assert rbac_grants(role["rules"]) == NAMESPACED_GRANTS | CLUSTER_SCOPED_GRANTS | NAMESPACE_DISCOVERY_GRANTS
    assert not namespaced_roles(default_chart, "Role") and not namespaced_roles(default_chart, "RoleBinding")
    binding = only(default_chart, "ClusterRoleBinding")
    account = only(default_chart, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert only(default_chart, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == \
        account["metadata"]["name"]


def test_no_rule_uses_wildcards_or_extra_fields(rendered):
    for obj in rendered[1]:
        for rule in obj.get("rules", []):
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], obj["metadata"]["name"]
            allowed = {"apiGroups", "resources", "verbs"} | ({"resourceNames"} if rule["resources"] == ["leases"] else set())
            assert set(rule) <= allowed and set(rule) >= allowed - {"resourceNames"}, obj["metadata"]["name"]


def test_namespaced_mode_grants_roles_in_each_namespace_and_no_cluster_wide_write():
    objects = render(VALUE_SETS["namespaced"])
    roles, bindings = namespaced_roles(objects, "Role"), namespaced_roles(objects, "RoleBinding")
    assert sorted(roles) == sorted(bindings) == ["team-a", "team-b"]
    account = only(objects, "ServiceAccount")
    for namespace, role in roles.items():
        assert rbac_grants(role["rules"]) == NAMESPACED_GRANTS
        binding = bindings[namespace]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                        "namespace": NAMESPACE}]
    # Cluster-wide: only what has no namespace (token reviews, CRD discovery); no namespace listing.
    assert rbac_grants(only(objects, "ClusterRole")["rules"]) == CLUSTER_SCOPED_GRANTS
    assert container_env(only(objects, "Deployment"))["RLHF_WATCH_NAMESPACES"] == "team-a,team-b"


def test_service_monitor_is_off_by_default_and_scrapes_metrics_when_on(default_chart):
    assert not [o for o in default_chart if o["kind"] == "ServiceMonitor"]
    objects = render(VALUE_SETS["service-monitor"])
    monitor = only(objects, "ServiceMonitor")
    service = only(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"logLevel": "verbose"}, "logLevel must be one of the following"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0: Does not match pattern"),
        ({"storage": {"defaultSize": "lots"}}, "storage.defaultSize: Does not match pattern"),
        ({"imagee": {"tag": "1.0"}}, "Additional property imagee is not allowed"),
        ({"defaultPodTemplate": {"toleration": []}}, "defaultPodTemplate: Additional property toleration"),
        ({"image": {"tag": 1.2}}, "image.tag: Invalid type. Expected: string"),
        ({"metrics": {"serviceMonitor": {"enabled": "yes"}}}, "metrics.serviceMonitor.enabled: Invalid type"),
        ({"replicas": 0}, "replicas: Must be greater than or equal to 1"),
        ({"leaderElection": {"leaseDuration": "15s"}}, "leaderElection.leaseDuration: Invalid type"),
    ],
)
def test_bad_values_fail_with_the_schema_error(values, message):
    result = helm_template(values)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def notes(values: dict, tmp_path) -> str:
    """NOTES.txt as `helm install` prints it. Helm renders NOTES only when installing, which needs a cluster,
    so a copy of the chart renders the same file into a ConfigMap."""
    chart = tmp_path / "chart"
    run("cp", "-r", str(CHART), str(chart))
    (chart / "NOTES.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data: {notes: {{ tpl (.Files.Get "NOTES.txt") . | toJson }}}\n'
    )
    result = run(tool("helm"), "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                 "--show-only", "templates/notes-test.yaml", "--values", "-", input=yaml.safe_dump(values))
    return yaml.safe_load(result.stdout)["data"]["notes"]


def test_notes_tell_the_user_what_to_apply_next(tmp_path):
    text = notes({}, tmp_path)
    assert f"kubectl --namespace {NAMESPACE} rollout status deployment/{RELEASE}" in text
    assert "kubectl apply -f manifests/examples/sentiment-tiny.yaml" in text
    assert "kubectl get rlhfjobs --watch" in text


def test_notes_in_namespaced_mode_apply_into_a_watched_namespace(tmp_path):
    text = notes({"watchNamespaces": ["team-a", "team-b"]}, tmp_path)
    assert "team-a, team-b" in text
    assert "kubectl apply --namespace team-a -f manifests/examples/sentiment-tiny.yaml" in text
    assert "kubectl get rlhfjobs --namespace team-a --watch" in text
