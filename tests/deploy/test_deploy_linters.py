"""hadolint, yamllint, shellcheck and checkov over the Dockerfile, the YAML, the chart's renderings, the
manifests and the shell scripts."""

import json
import re

import pytest
import yaml
from deploy_helpers import REPO, VALUE_SETS, helm_template, run, tool


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = run(tool("hadolint"), "Dockerfile", check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_yamllint_passes_on_plain_yaml():
    """Every YAML file of the repository (chart templates excepted: see .yamllint.yaml)."""
    run(tool("yamllint"), "--strict", ".")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_yamllint_passes_on_what_the_chart_renders(name):
    rendered = helm_template(VALUE_SETS[name]).stdout
    assert rendered
    run(tool("yamllint"), "--strict", "--config-file", ".yamllint.yaml", "-", input=rendered)


def test_shellcheck_finds_nothing_in_the_shell_scripts():
    scripts = [".ci/run", *map(str, sorted(REPO.glob("scripts/*.sh"))), *map(str, sorted(REPO.glob("tests/**/*.sh")))]
    result = run(tool("shellcheck"), *scripts, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_checkov_finds_no_failed_check(tmp_path, manifests):
    """One checkov run (it is slow to start) over every chart rendering, the kustomize build and the Dockerfile.
    Without a Prisma Cloud key checkov reports no severities, so no failed check at all is allowed; the checks
    that do not apply are skipped, each with its reason, in .checkov.yaml."""
    for name, values in VALUE_SETS.items():
        (tmp_path / f"chart-{name}.yaml").write_text(helm_template(values).stdout)
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(manifests))
    (tmp_path / "Dockerfile").write_text((REPO / "Dockerfile").read_text())

    result = run(tool("checkov"), "--config-file", ".checkov.yaml", "--directory", str(tmp_path),
                 "--framework", "kubernetes", "dockerfile", "--output", "json", check=False)
    reports = {report["check_type"]: report for report in json.loads(result.stdout)}
    assert sorted(reports) == ["dockerfile", "kubernetes"]
    failed = []
    for report in reports.values():
        assert report["summary"]["parsing_errors"] == 0
        assert report["summary"]["passed"] > 0
        failed += [f"{c['check_id']} {c['check_name']}: {c['resource']} in {c['file_path']}"
                   for c in report["results"]["failed_checks"]]
    assert failed == []
    assert result.returncode == 0


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments), comments dropped and continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction == "FROM":
            current = stages.setdefault(arguments.split(" AS ")[-1], [])
        elif current is not None:
            current.append((instruction, arguments))
    return stages


def last(stage: list[tuple[str, str]], instruction: str) -> str:
    return [arguments for name, arguments in stage if name == instruction][-1]


def test_operator_image_runs_rlhf_operator_as_the_charts_user_without_torch():
    operator = dockerfile_stages()["operator"]
    assert json.loads(last(operator, "ENTRYPOINT")) == ["rlhf", "operator"]
    values = yaml.safe_load((REPO / "charts" / "rlhf-operator" / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert last(operator, "USER") == f"{uid}:{values['podSecurityContext']['runAsGroup']}"
    (install,) = [arguments for name, arguments in operator if name == "RUN" and "pip install" in arguments]
    assert "[operator]" in install and "trainer" not in install and "torch" not in install


def test_trainer_image_runs_the_stage_entrypoint_as_uid_1000_with_caches_on_the_workspace():
    trainer = dockerfile_stages()["trainer"]
    assert json.loads(last(trainer, "ENTRYPOINT")) == ["python", "-m", "rlhf_trainer.stage"]
    assert last(trainer, "USER") == "1000:1000"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for name, a in trainer if name == "ENV")))
    assert env["HF_HOME"].startswith("/workspace/")
    assert env["XDG_CACHE_HOME"].startswith("/workspace/")


def test_what_ships_is_what_was_tested_every_install_uses_the_one_constraints_file():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["torch"].count(".") == 2  # one exact torch for CI, `make` and both images
    installs = [arguments for stage in dockerfile_stages().values() for name, arguments in stage
                if name == "RUN" and "pip install" in arguments]
    assert installs and all("--constraint /tmp/constraints.txt" in install for install in installs)
    makefile = (REPO / "Makefile").read_text()
    assert makefile.count("pip install --quiet -c constraints.txt") == 2
    assert "constraints.txt" in (REPO / ".dockerignore").read_text()
