"""The operator's settings: the flags and environment variables of docs/operator-runtime.md (no I/O but env)."""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import ValidationError

from rlhf_operator import __version__
from rlhf_operator.api import PodTemplate

DEFAULT_TRAINER_IMAGE = f"ghcr.io/rlhf-operator/trainer:{__version__}"
DEFAULT_STORAGE_SIZE = "20Gi"
DEFAULT_PORT = 8080
LOG_LEVELS = ("debug", "info", "warning", "error")
_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class SettingsError(ValueError):
    """A flag or environment variable with a value the operator cannot use."""


@dataclass(frozen=True)
class LeaderElection:
    """Where the Lease is and how it is held (kube-controller-manager's --leader-elect-* flags, in seconds)."""

    namespace: str
    name: str = "rlhf-operator"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4()}")

    def problems(self) -> list[str]:
        """What makes these timings unsafe (client-go's checks): empty when they are fine."""
        found = []
        if not self.lease_duration > self.renew_deadline:
            found.append("the lease duration must be longer than the renew deadline")
        if not self.renew_deadline > 1.2 * self.retry_period:
            found.append("the renew deadline must be longer than 1.2 retry periods")
        if self.retry_period <= 0:
            found.append("the retry period must be positive")
        return found


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs and what it gives the stage pods it creates."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: all."""
    port: int = DEFAULT_PORT
    """Port of the HTTP server: progress pushes, metrics, probes."""
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of stages whose RLHFJob sets no spec.image."""
    log_level: str = "info"
    service_url: str = f"http://rlhf-operator.default.svc:{DEFAULT_PORT}"
    """Base URL trainer pods push progress to (``<base>/v1/status``)."""
    default_storage_class: str | None = None
    """Storage class of workspace claims whose spec names none; None: the cluster's default."""
    default_storage_size: str = DEFAULT_STORAGE_SIZE
    """Size of workspace claims whose spec names none."""
    default_pod_template: PodTemplate = field(default_factory=PodTemplate)
    """spec.template fields merged under every job's own."""
    progress_timeout_seconds: float = 600.0
    """How long a running stage may go without a progress report before ProgressReported turns False."""
    leader_election: LeaderElection | None = None
    """None: this replica acts alone (run exactly one)."""

    @property
    def status_url(self) -> str:
        return self.service_url.rstrip("/") + "/v1/status"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides) -> OperatorSettings:
        """Settings from the RLHF_* variables; ``overrides`` (flags given on the command line) win."""
        values: dict = {}
        if namespaces := env.get("RLHF_WATCH_NAMESPACES", "").strip():
            values["namespaces"] = tuple(ns.strip() for ns in namespaces.split(",") if ns.strip())
        if port := env.get("RLHF_PORT"):
            values["port"] = _port(port, "RLHF_PORT")
        for name, key in (("trainer_image", "RLHF_TRAINER_IMAGE"), ("log_level", "RLHF_LOG_LEVEL"),
                          ("service_url", "RLHF_SERVICE_URL"), ("default_storage_class", "RLHF_DEFAULT_STORAGE_CLASS"),
                          ("default_storage_size", "RLHF_DEFAULT_STORAGE_SIZE")):
            if env.get(key):
                values[name] = env[key]
        if timeout := env.get("RLHF_PROGRESS_TIMEOUT_SECONDS"):
            try:
                values["progress_timeout_seconds"] = float(timeout)
            except ValueError:
                raise SettingsError(f"RLHF_PROGRESS_TIMEOUT_SECONDS={timeout!r}: not a number of seconds") from None
        if template := env.get("RLHF_DEFAULT_POD_TEMPLATE"):
            values["default_pod_template"] = _pod_template(template)
        values["leader_election"] = _leader_election(env, {key: overrides.pop(key) for key in ELECTION_FLAGS
                                                           if key in overrides})
        values.update({key: value for key, value in overrides.items() if value not in (None, ())})
        if "service_url" not in values:
            values["service_url"] = f"http://rlhf-operator.{_own_namespace()}.svc:{values.get('port', DEFAULT_PORT)}"
        settings = cls(**values)
        if settings.log_level not in LOG_LEVELS:
            raise SettingsError(f"log level {settings.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        if not 0 < settings.port < 65536:
            raise SettingsError(f"port {settings.port}: use a port number from 1 to 65535")
        return settings


_ELECTION_ENV = {  # override -> (LeaderElection field, environment variable)
    "lease_name": ("name", "RLHF_LEADER_ELECT_RESOURCE_NAME"),
    "lease_namespace": ("namespace", "RLHF_LEADER_ELECT_RESOURCE_NAMESPACE"),
    "lease_duration": ("lease_duration", "RLHF_LEADER_ELECT_LEASE_DURATION"),
    "renew_deadline": ("renew_deadline", "RLHF_LEADER_ELECT_RENEW_DEADLINE"),
    "retry_period": ("retry_period", "RLHF_LEADER_ELECT_RETRY_PERIOD"),
}
ELECTION_FLAGS = ("leader_elect", *_ELECTION_ENV)
"""Keyword overrides of `OperatorSettings.from_env` that set `leader_election`."""


def _leader_election(env: Mapping[str, str], overrides: dict) -> LeaderElection | None:
    """RLHF_LEADER_ELECT and its companions, flags winning; None when leader election is off."""
    enabled = overrides.get("leader_elect")
    if enabled is None:
        enabled = env.get("RLHF_LEADER_ELECT", "").strip().lower() in ("1", "true", "yes")
    if not enabled:
        return None
    values: dict = {}
    for key, (name, variable) in _ELECTION_ENV.items():
        text = overrides.get(key) if overrides.get(key) is not None else env.get(variable) or None
        if text is None:
            continue
        if name in ("name", "namespace"):
            values[name] = str(text)
            continue
        try:
            values[name] = float(str(text).removesuffix("s"))
        except ValueError:
            raise SettingsError(f"{variable}={text!r}: not a number of seconds") from None
    values.setdefault("namespace", _own_namespace())
    election = LeaderElection(**values)
    if problems := election.problems():
        raise SettingsError(f"leader election: {'; '.join(problems)} (lease duration {election.lease_duration}s, "
                            f"renew deadline {election.renew_deadline}s, retry period {election.retry_period}s)")
    return election


def _port(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: not a port number") from None


def _pod_template(text: str) -> PodTemplate:
    try:
        return PodTemplate.model_validate(json.loads(text), by_name=False)
    except json.JSONDecodeError as e:
        raise SettingsError(f"RLHF_DEFAULT_POD_TEMPLATE: not JSON ({e})") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in e.errors())
        raise SettingsError(f"RLHF_DEFAULT_POD_TEMPLATE is not a spec.template: {problems}") from None


def _own_namespace() -> str:
    """The operator's namespace in a pod; ``default`` elsewhere."""
    try:
        with open(_SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"
