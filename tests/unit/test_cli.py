import copy
from pathlib import Path

import pytest
import yaml

from rlhf_operator.cli import load_plan, main
from rlhf_operator.crd import crd_yaml

EXAMPLES_DIR = Path(__file__).parents[2] / "manifests" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
DEMO = yaml.safe_load((EXAMPLES_DIR / "sentiment-tiny.yaml").read_text())


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, document, name="job.yaml"):
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return str(path)


def demo(**stage_changes):
    document = copy.deepcopy(DEMO)
    for dotted, value in stage_changes.items():
        *parents, last = dotted.split("__")
        target = document
        for key in parents:
            target = target[key]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return document


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates_and_prints_its_plan(capsys, example, tmp_path):
    code, out, err = run(capsys, "validate", str(example), "--workspace", str(tmp_path))
    assert (code, err) == (0, "")
    job = yaml.safe_load(example.read_text())
    assert out.startswith(f"{job['metadata']['name']}: ")
    for stage in job["spec"]["stages"]:
        assert f"{tmp_path}/{stage}" in out


def test_the_demo_plans_sft_then_reward_then_ppo_rewarded_by_its_reward_stage(tmp_path):
    _, plan = load_plan(str(EXAMPLES_DIR / "sentiment-tiny.yaml"), str(tmp_path))
    assert [s.name for s in plan.stages] == ["sft", "reward", "ppo"]
    ppo = plan.stage("ppo").config
    assert ppo.reward.path == f"{tmp_path}/reward/model"
    assert ppo.policy.path == f"{tmp_path}/sft/model"
    assert (ppo.evaluation.judge, ppo.evaluation.held_out_prompts.split) == ("vader", "test")


def test_ppojob_scores_with_the_positive_logit_of_the_imdb_classifier(tmp_path):
    _, plan = load_plan(str(EXAMPLES_DIR / "ppojob.yaml"), str(tmp_path))
    reward = plan.stage("ppo").config.reward
    assert (reward.name, reward.label) == ("lvwerra/distilbert-imdb", "POSITIVE")


def test_validate_prints_inputs_outputs_and_settings(capsys, tmp_path):
    code, out, _ = run(capsys, "validate", write(tmp_path, demo()), "--workspace", "/ws")
    assert code == 0
    assert "sentiment-tiny: 3 stage(s), sft -> reward -> ppo" in out
    assert "[3/3] ppo (Job sentiment-tiny-ppo)" in out
    assert "reward:                    /ws/reward/model" in out
    assert "dataset:  builtin movie-reviews (split train)" in out
    assert "training.maxSteps=600" in out


def test_the_default_workspace_is_under_rlhf_workspace_in_the_current_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "validate", write(tmp_path, demo()))
    assert code == 0
    assert f"workspace: {tmp_path}/rlhf-workspace/sentiment-tiny" in out


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("apiVersion: rlhf.dev/v1alpha1\nkind: RLHFJob\nmetadata:\n  name: x\n spec: {\n",
         "job.yaml:5:2: invalid YAML: expected <block end>, but found '<block mapping start>'"),
        (demo(spec__stages__ppo__confg=DEMO["spec"]["stages"]["ppo"]["config"]),
         "spec.stages.ppo.confg: unknown field; did you mean 'config'?"),
        (demo(spec__stages__sft__training__learning_rate=0.1),
         "spec.stages.sft.training.learning_rate: unknown field; did you mean 'learningRate'? (fields are camelCase)"),
        (demo(spec__stages__ppo__colour="red"),
         "spec.stages.ppo.colour: unknown field (known fields: "),
        (demo(spec__stages__ppo__steps="forty"),
         "spec.stages.ppo.steps: Input should be a valid integer, unable to parse string as an integer (got 'forty')"),
        (demo(spec__stages__sft__dataset=None), "spec.stages.sft.dataset: required field is missing"),
        (demo(metadata=None), ":1:1: metadata: required field is missing"),
        (demo(kind="Deployment"), "kind: Input should be 'RLHFJob' (got 'Deployment')"),
        (demo(spec__stages__ppo__reward={"name": "x", "callable": "m:f"}),
         "spec.stages.ppo.reward: set exactly one of name, path, builtin, fromStage, callable (got name and callable)"),
        (demo(spec__stages__reward=None),
         "spec.stages.ppo.reward.fromStage: stage 'reward' does not run before 'ppo' (this job has no reward stage)"),
        (demo(spec__stages__reward=None, spec__stages__ppo__reward=None),
         "spec.stages.ppo.reward: not set, and no reward stage runs before ppo; set it or add a reward stage"),
        (demo(spec__stages={}), "spec.stages: no stages; add at least one of sft, reward, dpo, ppo, grpo"),
        ("- just\n- a list\n", "job.yaml: expected an RLHFJob (a mapping with apiVersion, kind, metadata and spec)"),
        (yaml.safe_dump(DEMO) + "---\n" + yaml.safe_dump(DEMO), "job.yaml: expected one RLHFJob, found 2 YAML documents"),
    ],
    ids=["yaml", "misspelled", "snake-case", "unknown", "wrong-type", "missing", "no-metadata", "wrong-kind",
         "two-reward-sources", "from-later-stage", "no-reward-source", "no-stages", "not-a-mapping", "two-documents"],
)
def test_bad_input_gets_one_clear_message_and_a_non_zero_exit(capsys, tmp_path, document, message):
    code, out, err = run(capsys, "validate", write(tmp_path, document))
    assert code == 1
    assert out == ""
    assert err.startswith(f"rlhf: {tmp_path}/job.yaml")
    assert message in err
    assert "Traceback" not in err


def test_errors_point_at_the_line_of_the_field(capsys, tmp_path):
    text = yaml.safe_dump(demo(spec__stages__ppo__steps="forty"), sort_keys=False)
    line = next(n for n, content in enumerate(text.splitlines(), 1) if "steps: forty" in content)
    _, _, err = run(capsys, "validate", write(tmp_path, text))
    assert f"job.yaml:{line}:" in err


def test_every_problem_in_a_file_is_reported(capsys, tmp_path):
    document = demo(spec__stages__ppo__steps=0, spec__stages__sft__training__maxSteps="many")
    _, _, err = run(capsys, "validate", write(tmp_path, document))
    assert "spec.stages.ppo.steps: Input should be greater than or equal to 1 (got 0)" in err
    assert "spec.stages.sft.training.maxSteps: Input should be a valid integer" in err
    assert all(line.startswith("rlhf: ") for line in err.splitlines())


def test_a_missing_file_is_one_message(capsys, tmp_path):
    code, _, err = run(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err == f"rlhf: {tmp_path}/nope.yaml: cannot read it: No such file or directory\n"


def test_crd_prints_the_generated_crd(capsys):
    code, out, _ = run(capsys, "crd")
    assert code == 0
    assert out == crd_yaml()
