"""DPOTrainer against TRL 1.16's on fixed preference pairs: for each loss type and option, every number TRL logs
(training and evaluation) and the weights after every step agree within 1e-4. The same script runs both libraries
(``dpo_parity_script.py``)."""

import json
from pathlib import Path

import pytest
import trl_reference
from dpo_helpers import conversational_pairs

from rlhf_trainer.data import load_builtin
from rlhf_trainer.trainer.dpo_config import LOSS_TYPES

SCRIPT = Path(__file__).with_name("dpo_parity_script.py")
LOSS_SETTINGS = {"exo_pair": dict(label_smoothing=1e-3), "robust": dict(label_smoothing=0.1)}
CASES = {
    **{name: dict(loss_type=name, **LOSS_SETTINGS.get(name, {})) for name in LOSS_TYPES},
    "mpo-weighted": dict(loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]),
    **{divergence: dict(f_divergence_type=divergence) for divergence in ("forward_kl", "js_divergence",
                                                                         "alpha_divergence")},
    "ld_alpha": dict(ld_alpha=0.5),
    "use_weighting": dict(use_weighting=True),
    "label_smoothing": dict(label_smoothing=0.1),
    "sync_ref_model": dict(sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5),
    "precompute_ref_log_probs": dict(precompute_ref_log_probs=True),
    "conversational": dict(conversational=True),
    "max_length": dict(max_length=24),
    "gradient_accumulation": dict(gradient_accumulation_steps=2),
}
CASES_STEPS = 3  # max_steps of every case


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dpo-parity")
    pairs = folder / "pairs.json"
    pairs.write_text(json.dumps({"standard": load_builtin("movie-preferences")[:12],
                                 "conversational": conversational_pairs(12)}))
    return trl_reference.run_both(SCRIPT, [tiny_model("tiny-gpt2"), str(pairs)], CASES, folder)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_logs_and_weights_equal_trl(runs, case):
    trl_reference.assert_same_run(runs, case, CASES_STEPS)
