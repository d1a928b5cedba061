"""Fixtures of the deployment checks: the chart rendered with default values, the kustomize build."""

import shutil

import pytest
import yaml
from deploy_helpers import CRD_FILE, MANIFESTS, kustomize, render


@pytest.fixture(scope="session")
def default_chart() -> list[dict]:
    return render()


@pytest.fixture(scope="session")
def manifests(tmp_path_factory) -> list[dict]:
    """`kubectl kustomize manifests/`. Until the generated CRD file lands (from the CRD's branch), a copy of
    manifests/ without crd/ is built, so that everything else is still checked."""
    directory = MANIFESTS
    if not CRD_FILE.exists():
        directory = tmp_path_factory.mktemp("kustomize") / "manifests"
        shutil.copytree(MANIFESTS, directory, ignore=shutil.ignore_patterns("examples", "crd"))
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        kustomization["resources"].remove("crd")
        (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return kustomize(directory)
