"""DPO's reference: a frozen copy of the policy as constructed, ref_model, PEFT (adapters off or a "ref" adapter),
precomputed log-probs, TR-DPO's sync; and exact resume from a checkpoint."""

import math

import pytest
import torch
from dpo_helpers import PAIRS, batch_loss, first_batch, make_trainer
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, TrainerCallback

from rlhf_trainer import DPOConfig, DPOTrainer
from rlhf_trainer.data import load_builtin
from rlhf_trainer.tiny import build_model

LORA = dict(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="CAUSAL_LM")


def test_reference_is_a_frozen_copy_of_the_policy_as_constructed_not_a_reload(tiny_model, quick_args):
    path = tiny_model("tiny-gpt2")
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(3.0)  # changed in memory: a reload of config._name_or_path would differ
    trainer = make_trainer(model, quick_args)
    reference = trainer.reference.module
    assert reference is not trainer.model and not any(p.requires_grad for p in reference.parameters())
    torch.testing.assert_close(reference.transformer.wte.weight, model.transformer.wte.weight)
    loss, metrics = batch_loss(trainer)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and metrics["rewards/margins"] == 0.0

    trainer.train()  # the reference stays as constructed while the policy moves
    assert not torch.equal(trainer.model.transformer.wte.weight, reference.transformer.wte.weight)


def test_precomputed_reference_gives_the_live_loss_whatever_the_batch_and_padding(tiny_model, quick_args):
    path = tiny_model("tiny-gpt2")
    reference = build_model("gpt2", seed=7)
    live = make_trainer(path, quick_args, ref_model=reference, padding_free=False)
    # other batch size, packed instead of padded: neither may change a sum
    pre = make_trainer(path, quick_args, ref_model=build_model("gpt2", seed=7), precompute_ref_log_probs=True,
                       precompute_ref_batch_size=3, padding_free=True)
    assert pre.reference is None and pre.ref_model is None  # freed after the pass
    assert pre.train_dataset.column_names[-2:] == ["ref_chosen_logps", "ref_rejected_logps"]
    live_loss, live_metrics = batch_loss(live)
    pre_loss, pre_metrics = batch_loss(pre)
    assert pre_loss.item() == pytest.approx(live_loss.item(), rel=1e-5)
    assert pre_metrics["rewards/chosen"] == pytest.approx(live_metrics["rewards/chosen"], rel=1e-4)
    assert live_metrics["rewards/chosen"] != pytest.approx(0.0, abs=1e-3)


def test_precompute_without_ref_model_uses_the_initial_policy(tiny_model, quick_args):
    trainer = make_trainer(tiny_model("tiny-gpt2"), quick_args, precompute_ref_log_probs=True,
                           eval_strategy="no")
    loss, _ = batch_loss(trainer)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    held_out = trainer.evaluate(PAIRS[:2])  # before training the policy is still the reference
    assert held_out["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    trainer.train()
    with pytest.raises(ValueError, match="the reference is gone"):
        trainer.evaluate(PAIRS[2:])


def test_lora_reference_is_the_policy_with_adapters_off_no_second_model(tiny_model, quick_args):
    trainer = make_trainer(tiny_model("tiny-gpt2"), quick_args, peft_config=LoraConfig(**LORA),
                           learning_rate=1e-2, max_steps=3)
    assert trainer.reference.module is None and trainer.ref_model is None
    base = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora" not in n}
    trainer.train()
    assert all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if "lora" not in n)
    _, metrics = batch_loss(trainer)
    assert metrics["rewards/margins"] > 0  # adapters trained; the reference (adapters off) is the base model
    with trainer.model.disable_adapter():
        batch = first_batch(trainer)
        trainer._metrics["train"].clear()
        loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)  # adapters off on both sides: policy == reference


def test_a_trained_adapter_gets_a_frozen_ref_adapter_copy(tiny_model, quick_args):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model("tiny-gpt2")), LoraConfig(**LORA))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # an adapter that already changes the model
    trainer = make_trainer(model, quick_args)
    assert "ref" in trainer.model.peft_config and trainer.reference.adapter == "ref"
    loss, metrics = batch_loss(trainer)  # the reference is the adapter as given, not the bare base model
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and metrics["rewards/margins"] == 0.0
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)


def test_sync_ref_model_mixes_the_policy_into_the_reference(tiny_model, quick_args):
    trainer = make_trainer(tiny_model("tiny-gpt2"), quick_args, sync_ref_model=True, ref_model_sync_steps=2,
                           ref_model_mixup_alpha=0.25, max_steps=2)
    before = trainer.reference.module.transformer.wte.weight.clone()
    trainer.train()
    policy = trainer.model.transformer.wte.weight
    torch.testing.assert_close(trainer.reference.module.transformer.wte.weight, 0.25 * policy + 0.75 * before)
    with pytest.raises(ValueError, match="sync_ref_model=True needs a reference model of its own"):
        make_trainer(tiny_model("tiny-gpt2"), quick_args, sync_ref_model=True, peft_config=LoraConfig(**LORA))


class StopAt(TrainerCallback):
    """What the stage runner does on a stop request: save a checkpoint and stop at the end of a step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = control.should_training_stop = True


def test_resume_from_a_checkpoint_continues_exactly(tiny_model, tmp_path):
    path, pairs = tiny_model("tiny-gpt2"), load_builtin("movie-preferences")[:48]

    def trainer(output, callbacks=None):
        args = DPOConfig(output_dir=str(tmp_path / output), bf16=False, per_device_train_batch_size=4,
                         max_steps=6, learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True,
                         logging_steps=1, dataloader_pin_memory=False, lr_scheduler_type="linear", warmup_steps=1)
        return DPOTrainer(path, args=args, train_dataset=pairs, callbacks=callbacks)

    straight = trainer("straight")
    straight.train()
    trainer("resumed", [StopAt(3)]).train()
    resumed = trainer("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_evaluate_prepares_raw_datasets_and_named_splits(tiny_model, quick_args):
    trainer = make_trainer(tiny_model("tiny-gpt2"), quick_args, precompute_ref_log_probs=True)
    metrics = trainer.evaluate({"first": PAIRS[:2], "rest": PAIRS[2:]})
    assert metrics["eval_first_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics["eval_rest_loss"] == pytest.approx(math.log(2), abs=1e-6)
