import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
# The operator and the `rlhf` command run without torch; the trainer's config modules are shared with them.
TORCH_FREE = ["rlhf_contract.stages", "rlhf_contract.progress", "rlhf_contract.workspace", "rlhf_contract.runtime", "rlhf_operator.api", "rlhf_operator.plan", "rlhf_operator.cli",
              "rlhf_operator.crd", "rlhf_operator.resources", "rlhf_operator.status", "rlhf_operator.handlers"]


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that imports this checkout's packages."""
    path = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer_image"), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path})


def test_config_and_operator_modules_do_not_import_torch():
    result = python(
        f"import importlib, sys\nfor name in {TORCH_FREE!r}:\n    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules)\n"
        "assert not heavy, heavy")
    assert result.returncode == 0, result.stderr


def test_validate_runs_without_torch(tmp_path):
    result = python(
        "import sys\nfrom rlhf_operator.cli import main\n"
        "assert main(['validate', sys.argv[1], '--workspace', sys.argv[2]]) == 0\n"
        "assert 'torch' not in sys.modules",
        str(ROOT / "manifests" / "examples" / "sentiment-tiny.yaml"), str(tmp_path))
    assert result.returncode == 0, result.stderr
