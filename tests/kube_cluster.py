"""A real Kubernetes control plane for the tests, found or started once per test session.

In order: ``RLHF_TEST_KUBECONFIG`` (an existing cluster's kubeconfig; the tests create namespaces and the CRD in
it), ``KUBE_CLUSTER_TOOL`` (a folder holding the ``cluster`` script that starts etcd, kube-apiserver and
kube-controller-manager on 127.0.0.1; ``.ci/run`` points it at the shared copy), or ``KUBEBUILDER_ASSETS`` (the
envtest convention: a folder with ``etcd``, ``kube-apiserver`` and ``kubectl``, as ``setup-envtest`` installs;
add ``kube-controller-manager`` to it for the tests that need the Job controller, which skip without it). None
set: the tests that need a control plane skip, saying so.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import kubernetes
import yaml

SKIP_REASON = ("no Kubernetes control plane: set KUBE_CLUSTER_TOOL (the folder of `cluster`), KUBEBUILDER_ASSETS "
               "or RLHF_TEST_KUBECONFIG")
NO_CONTROLLERS = ("this control plane runs no kube-controller-manager (KUBEBUILDER_ASSETS without it): "
                  "no Job controller, ServiceAccounts or garbage collector")


class ControlPlane:
    """A running control plane: its kubeconfig, and kubectl (the cluster's own, else the one on PATH)."""

    def __init__(self, kubeconfig: Path, kubectl: str, stop: Callable[[], None] | None = None,
                 controllers: bool = True):
        self.kubeconfig, self.kubectl, self._stop, self.controllers = kubeconfig, kubectl, stop, controllers

    @classmethod
    def find_or_start(cls) -> ControlPlane | None:
        if existing := os.environ.get("RLHF_TEST_KUBECONFIG"):
            return cls(Path(existing), "kubectl")
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        if tool := os.environ.get("KUBE_CLUSTER_TOOL"):
            script = ["bash", str(Path(tool, "cluster"))]
            # Kept between runs so the binaries are unpacked once; --fresh empties etcd for every session.
            state = Path(os.environ.get("KUBE_CLUSTER_DIR", tempfile.gettempdir()), f"rlhf-kube-{worker}")
            subprocess.run([*script, "up", str(state), "--fresh"], check=True, stdout=subprocess.DEVNULL,
                           timeout=300)
            return cls(state / "kubeconfig", str(state / "bin" / "kubectl"),
                       lambda: subprocess.run([*script, "down", str(state)], check=True, timeout=120,
                                              stdout=subprocess.DEVNULL))
        if assets := os.environ.get("KUBEBUILDER_ASSETS"):
            from envtest import start_from_assets

            state = Path(tempfile.mkdtemp(prefix=f"rlhf-envtest-{worker}-"))
            kubeconfig, stop, controllers = start_from_assets(Path(assets), state)
            return cls(kubeconfig, str(Path(assets, "kubectl")), stop, controllers)
        return None

    def stop(self) -> None:
        if self._stop:
            self._stop()

    def run_kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([self.kubectl, "--kubeconfig", str(self.kubeconfig), *args], input=input, text=True,
                              capture_output=True, timeout=120)
        if check and done.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def apply(self, documents: str) -> None:
        self.run_kubectl("apply", "--server-side", "-f", "-", input=documents)

    def install_crd(self, crd: dict) -> None:
        """Apply the CRD and wait until the server serves it."""
        self.apply(yaml.safe_dump(crd))
        extensions = kubernetes.client.ApiextensionsV1Api(self.client())
        deadline = time.monotonic() + 60
        while not any(c.type == "Established" and c.status == "True"
                      for c in extensions.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions
                      or []):
            assert time.monotonic() < deadline, "the CRD was not Established within 60 s"
            time.sleep(0.1)

    def client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
