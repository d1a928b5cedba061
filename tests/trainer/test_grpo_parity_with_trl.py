"""GRPOTrainer against TRL 1.16's on fixed inputs: for each loss type and option, every number TRL logs and the
weights after every step agree within 1e-4. The same script runs both libraries (``grpo_parity_script.py``)."""

from pathlib import Path

import pytest
import trl_reference

SCRIPT = Path(__file__).with_name("grpo_parity_script.py")
CASES = {
    "grpo-beta": dict(loss_type="grpo", beta=0.04),
    "dr_grpo-unscaled-temperature": dict(loss_type="dr_grpo", scale_rewards="none", temperature=0.7),
    "bnpo-conversational": dict(loss_type="bnpo", conversational=True),
    "cispo-two-iterations": dict(loss_type="cispo", num_iterations=2),
    "sapo-two-iterations": dict(loss_type="sapo", num_iterations=2),
    "dapo-accumulation": dict(gradient_accumulation_steps=2),
    "normalize_then_sum-entropy": dict(multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5],
                                       top_entropy_quantile=0.2, entropy_coef=0.01),
    "grpo-sequence-batch-delta": dict(loss_type="grpo", importance_sampling_level="sequence", scale_rewards="batch",
                                      num_iterations=2, epsilon=0.1, delta=1.5),
    "luspo-sequence": dict(loss_type="luspo", importance_sampling_level="sequence", num_iterations=2),
    "dapo-masked-truncated": dict(epsilon_high=0.35, num_iterations=2, beta=0.02, mask_truncated_completions=True),
    "vespo-two-iterations": dict(loss_type="vespo", num_iterations=2),
    "vespo-sequence-custom-shape": dict(loss_type="vespo", num_iterations=2, importance_sampling_level="sequence",
                                        vespo_k_pos=1.5, vespo_lambda_neg=2.5, beta=0.02),
    "off-policy-mask": dict(num_iterations=2, off_policy_mask_threshold=0.05),
    "adaptive-entropy": dict(use_adaptive_entropy=True, entropy_coef=0.01, entropy_target=10.0,
                             gradient_accumulation_steps=2),
    "kl-without-bias-correction": dict(beta=0.1, use_bias_correction_kl=False, num_iterations=2),
    "steps_per_generation": dict(steps_per_generation=2, loss_type="bnpo", scale_rewards=False),
    "pad_to_multiple_of": dict(pad_to_multiple_of=8, beta=0.02),
}
CASES_STEPS = 3  # max_steps of every case


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    return trl_reference.run_both(SCRIPT, [tiny_model("tiny-gpt2")], CASES, tmp_path_factory.mktemp("grpo-parity"))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_logs_and_weights_equal_trl(runs, case):
    trl_reference.assert_same_run(runs, case, CASES_STEPS)
