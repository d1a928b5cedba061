"""Stage-runner tests: stage configs planned from small RLHFJob specs, run as ``python -m rlhf_trainer.stage``."""

from pathlib import Path

import pytest

from rlhf_operator.api import RLHFJobSpec
from rlhf_operator.plan import make_plan


@pytest.fixture
def plan_stages(tmp_path):
    """``plan_stages(spec) -> {stage name: config file}`` for a spec planned on a fresh workspace."""
    plans = []

    def plan(spec: dict) -> dict[str, Path]:
        plans.append(spec)
        workspace = tmp_path / f"workspace-{len(plans)}"
        planned = make_plan(RLHFJobSpec.model_validate(spec), "test-job", str(workspace))
        files = {}
        for stage in planned.stages:
            files[stage.name] = workspace / ".rlhf" / f"{stage.name}.json"
            files[stage.name].parent.mkdir(parents=True, exist_ok=True)
            files[stage.name].write_text(stage.config.to_json())
        return files

    return plan
