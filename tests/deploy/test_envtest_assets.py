"""``KUBEBUILDER_ASSETS``: the tests' control plane from envtest's binaries. Run here from the binaries of the
session's control plane: envtest's set (etcd, kube-apiserver, kubectl), then with kube-controller-manager added."""

import os
import time
from pathlib import Path

import kubernetes
import pytest
from envtest import start_from_assets
from kube_cluster import ControlPlane

from rlhf_operator.crd import crd

ENVTEST = ("etcd", "kube-apiserver", "kubectl")


@pytest.fixture
def assets(control_plane, tmp_path) -> Path:
    binaries = Path(control_plane.kubectl).parent
    if not all((binaries / name).is_file() for name in (*ENVTEST, "kube-controller-manager")):
        pytest.skip(f"{binaries} is not a folder of control-plane binaries (KUBE_CLUSTER_TOOL not used)")
    folder = tmp_path / "assets"
    folder.mkdir()
    for name in ENVTEST:
        os.symlink(binaries / name, folder / name)
    return folder


def start(assets: Path, state: Path) -> ControlPlane:
    kubeconfig, stop, controllers = start_from_assets(assets, state)
    return ControlPlane(kubeconfig, str(assets / "kubectl"), stop, controllers)


def test_envtest_binaries_serve_the_crd_and_pod_tokens_without_controllers(assets, tmp_path):
    plane = start(assets, tmp_path / "state")
    try:
        assert not plane.controllers
        plane.install_crd(crd())
        assert "rlhfjobs" in plane.run_kubectl("api-resources", "--api-group", crd()["spec"]["group"]).stdout
        core = kubernetes.client.CoreV1Api(plane.client())
        core.create_namespaced_service_account("default", {"metadata": {"name": "trainer"}})
        token = core.create_namespaced_service_account_token("trainer", "default", {"spec": {"audiences": ["x"]}})
        assert token.status.token.count(".") == 2
    finally:
        plane.stop()
    assert not (tmp_path / "state").exists()


def test_with_the_controller_manager_added_the_controllers_run(assets, control_plane, tmp_path):
    os.symlink(Path(control_plane.kubectl).parent / "kube-controller-manager", assets / "kube-controller-manager")
    plane = start(assets, tmp_path / "state")
    try:
        assert plane.controllers
        core = kubernetes.client.CoreV1Api(plane.client())
        deadline = time.monotonic() + 60
        while not core.list_namespaced_service_account("default").items:  # the ServiceAccount controller's work
            assert time.monotonic() < deadline, "no ServiceAccount default/default within 60 s"
            time.sleep(0.2)
    finally:
        plane.stop()
