"""DPOConfig keeps TRL 1.16's names and defaults and refuses settings that cannot work, saying what to change."""

import dataclasses

import pytest
from transformers import TrainingArguments

from rlhf_trainer import DPOConfig


def config(tmp_path, **kwargs):
    return DPOConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def test_trl_defaults(tmp_path):
    args = config(tmp_path, use_cpu=True)  # bf16 defaults to True: on a CPU-only machine transformers wants use_cpu
    assert isinstance(args, TrainingArguments)
    expected = dict(learning_rate=1e-6, beta=0.1, loss_type=["sigmoid"], loss_weights=None, label_smoothing=0.0,
                    max_length=1024, truncation_mode="keep_start", precompute_ref_log_probs=False,
                    precompute_ref_batch_size=None, disable_dropout=True, use_weighting=False, ld_alpha=None,
                    f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5, discopop_tau=0.05,
                    sync_ref_model=False, ref_model_mixup_alpha=0.6, ref_model_sync_steps=512,
                    pad_to_multiple_of=None, logging_steps=10, gradient_checkpointing=True, bf16=True,
                    model_init_kwargs=None, dataset_num_proc=None, trust_remote_code=False,
                    router_aux_loss_coef=None, activation_offloading=False, pad_token=None)
    assert {key: getattr(args, key) for key in expected} == expected


def test_every_field_has_help(tmp_path):
    own = {f.name for f in dataclasses.fields(DPOConfig)} - {f.name for f in dataclasses.fields(TrainingArguments)}
    assert {"beta", "loss_type", "precompute_ref_log_probs", "ld_alpha", "sync_ref_model"} <= own
    for f in dataclasses.fields(DPOConfig):
        if f.name in own:
            assert f.metadata.get("help"), f.name


def test_fp16_turns_bf16_default_off(tmp_path):
    assert config(tmp_path, bf16=False).bf16 is False
    assert DPOConfig.__dataclass_fields__["bf16"].default is None  # resolved in __post_init__: True unless fp16


def test_a_loss_type_string_becomes_a_list(tmp_path):
    assert config(tmp_path, bf16=False, loss_type="ipo").loss_type == ["ipo"]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "give one weight per loss type"),
    (dict(loss_type="dpo"), "each must be one of"),
    (dict(loss_type="exo_pair"), "needs label_smoothing > 0"),
    (dict(loss_type="aot", use_weighting=True), "use_weighting=True cannot be used with 'aot'"),
    (dict(loss_type="aot_unpaired", use_weighting=True), "Drop use_weighting or the aot loss"),
    (dict(loss_type="bco_pair", f_divergence_type="js_divergence"), "does not apply to the loss types"),
    (dict(f_divergence_type="kl"), "use one of reverse_kl"),
    (dict(ld_alpha=1.5), "must lie in \\[0, 1\\]"),
    (dict(truncation_mode="middle"), "use 'keep_start'"),
])
def test_refusals_say_what_to_fix(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, bf16=False, **kwargs)


@pytest.mark.parametrize("loss", ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"])
def test_f_divergences_go_with_the_difference_losses(tmp_path, loss):
    config(tmp_path, bf16=False, loss_type=loss, label_smoothing=0.1, f_divergence_type="alpha_divergence")


def test_robust_warns_outside_its_range(tmp_path):
    with pytest.warns(UserWarning, match="should lie in \\[0, 0.5\\)"):
        config(tmp_path, bf16=False, loss_type="robust", label_smoothing=0.5)


def test_keep_end_is_deprecated(tmp_path):
    with pytest.warns(FutureWarning, match="keep_end"):
        config(tmp_path, bf16=False, truncation_mode="keep_end")
