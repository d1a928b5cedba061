"""The DPO demo (manifests/examples/sentiment-dpo-tiny.yaml) end to end on three seeds: SFT, then DPO on the builtin
preference pairs. An independent judge (VADER) must find the policy's own continuations of held-out openings
clearly more positive on every seed, and the held-out pairs must be ranked right."""

import pytest
from seeded_demos import run_seeds

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_seeds("sentiment-dpo-tiny.yaml", "dpo", SEEDS, tmp_path_factory.mktemp)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_judge_finds_the_policys_writing_clearly_more_positive(results, seed):
    metrics = results[seed]["metrics"]
    print(f"seed {seed}: VADER {metrics['vaderBefore']:.3f} -> {metrics['vaderAfter']:.3f}, held-out accuracy "
          f"{metrics['eval_rewards/accuracies']:.2f}")
    # measured: 0.50 -> 0.85, 0.51 -> 0.81, 0.47 -> 0.86 on seeds 0, 1, 2; held-out accuracy 1.00 on each
    assert metrics["vaderAfter"] >= metrics["vaderBefore"] + 0.2, metrics
    assert metrics["eval_rewards/accuracies"] >= 0.9, metrics
    assert metrics["eval_rewards/margins"] > 0, metrics
