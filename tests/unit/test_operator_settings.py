"""`rlhf operator`: its flags and RLHF_* variables become the operator's settings (docs/operator-runtime.md)."""

import pytest

from rlhf_operator.cli import main
from rlhf_operator.settings import DEFAULT_TRAINER_IMAGE, OperatorSettings, SettingsError


def test_defaults_watch_all_namespaces_on_port_8080_with_the_released_trainer_image():
    settings = OperatorSettings.from_env({})
    assert (settings.namespaces, settings.port, settings.trainer_image, settings.log_level) == (
        (), 8080, DEFAULT_TRAINER_IMAGE, "info")
    assert settings.status_url == "http://rlhf-operator.default.svc:8080/v1/status"
    assert (settings.default_storage_class, settings.default_storage_size) == (None, "20Gi")


def test_the_environment_sets_every_setting():
    settings = OperatorSettings.from_env({
        "RLHF_WATCH_NAMESPACES": "team-a, team-b", "RLHF_PORT": "9090", "RLHF_TRAINER_IMAGE": "trainer:2",
        "RLHF_LOG_LEVEL": "debug", "RLHF_SERVICE_URL": "http://rlhf.ops.svc:8080/",
        "RLHF_DEFAULT_STORAGE_CLASS": "fast", "RLHF_DEFAULT_STORAGE_SIZE": "100Gi",
        "RLHF_DEFAULT_POD_TEMPLATE": '{"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}'})
    assert settings.namespaces == ("team-a", "team-b")
    assert (settings.port, settings.trainer_image, settings.log_level) == (9090, "trainer:2", "debug")
    assert settings.status_url == "http://rlhf.ops.svc:8080/v1/status"
    assert (settings.default_storage_class, settings.default_storage_size) == ("fast", "100Gi")
    assert settings.default_pod_template.model_dump(by_alias=True, exclude_none=True)["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists"}]


def test_flags_win_over_the_environment():
    settings = OperatorSettings.from_env({"RLHF_PORT": "9090", "RLHF_WATCH_NAMESPACES": "a"},
                                         port=7070, namespaces=("b", "c"))
    assert (settings.port, settings.namespaces) == (7070, ("b", "c"))


@pytest.mark.parametrize(("env", "message"), [
    ({"RLHF_PORT": "http"}, "RLHF_PORT='http': not a port number"),
    ({"RLHF_LOG_LEVEL": "loud"}, "log level 'loud': use one of debug, info, warning, error"),
    ({"RLHF_DEFAULT_POD_TEMPLATE": "{tolerations"}, "RLHF_DEFAULT_POD_TEMPLATE: not JSON"),
    ({"RLHF_DEFAULT_POD_TEMPLATE": '{"nodeSelectr": {}}'}, "RLHF_DEFAULT_POD_TEMPLATE is not a spec.template: "
                                                           "nodeSelectr: Extra inputs are not permitted"),
])
def test_a_bad_setting_is_an_error_naming_the_variable(env, message):
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        OperatorSettings.from_env(env)


def test_the_command_reports_a_bad_setting_and_exits_1(monkeypatch, capsys):
    monkeypatch.setenv("RLHF_DEFAULT_POD_TEMPLATE", "[]")
    assert main(["operator", "--port", "9000"]) == 1
    assert capsys.readouterr().err.startswith("rlhf: RLHF_DEFAULT_POD_TEMPLATE is not a spec.template")


def test_leader_election_is_off_unless_asked_for_and_flags_win_over_the_environment():
    assert OperatorSettings.from_env({}).leader_election is None
    env = {"RLHF_LEADER_ELECT": "true", "RLHF_LEADER_ELECT_LEASE_DURATION": "30s",
           "RLHF_LEADER_ELECT_RESOURCE_NAMESPACE": "ops"}
    election = OperatorSettings.from_env(env, renew_deadline="20", lease_name="ours").leader_election
    assert (election.namespace, election.name) == ("ops", "ours")
    assert (election.lease_duration, election.renew_deadline, election.retry_period) == (30.0, 20.0, 2.0)
    assert OperatorSettings.from_env(env, leader_elect=None).leader_election is not None
    other = OperatorSettings.from_env(env).leader_election
    assert other.identity != election.identity  # each process its own


@pytest.mark.parametrize(("timings", "problem"), [
    ({"RLHF_LEADER_ELECT_RENEW_DEADLINE": "15"}, "lease duration must be longer than the renew deadline"),
    ({"RLHF_LEADER_ELECT_RETRY_PERIOD": "9"}, "renew deadline must be longer than 1.2 retry periods"),
    ({"RLHF_LEADER_ELECT_RETRY_PERIOD": "soon"}, "RLHF_LEADER_ELECT_RETRY_PERIOD='soon': not a number of seconds"),
])
def test_unsafe_leader_election_timings_are_refused(timings, problem):
    with pytest.raises(SettingsError, match=problem):
        OperatorSettings.from_env({"RLHF_LEADER_ELECT": "1", **timings})
