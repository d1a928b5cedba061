"""Shared fixtures. Nothing here reaches a model hub: tiny models are built locally, once per session."""

import os

import pytest

# No test may reach the network; hub ids in code paths must fail fast rather than hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's waiting threads make them
# tens of times slower. Set before torch is imported (here and in every subprocess a test starts).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model("tiny-gpt2", **overrides)`` -> a local directory holding that builtin model + tokenizer.

    Built once per session per (name, overrides); treat the directory as read-only.
    """
    from rlhf_trainer.tiny import save_builtin

    built = {}

    def get(name: str, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in built:
            directory = tmp_path_factory.mktemp(name)
            built[key] = str(save_builtin(name, directory, **overrides))
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from rlhf_trainer.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def control_plane():
    """A real Kubernetes control plane (``kube_cluster``), with the RLHFJob CRD installed; skips without one."""
    from kube_cluster import SKIP_REASON, ControlPlane

    from rlhf_operator.crd import crd

    plane = ControlPlane.find_or_start()
    if plane is None:
        pytest.skip(SKIP_REASON)
    try:
        plane.install_crd(crd())
        yield plane
    finally:
        plane.stop()
