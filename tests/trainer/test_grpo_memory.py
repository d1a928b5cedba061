"""Adapters-only GRPO: the reference is the base with adapters off (no copy), only the adapters train, and the
trainer holds far less than full fine-tuning with a reference copy."""

import torch
from grpo_helpers import make_trainer
from peft import LoraConfig


def held_bytes(trainer) -> int:
    """Bytes of every distinct tensor storage kept between steps: policy (and reference copy) parameters,
    gradients and optimizer state."""
    reference = trainer.reference.module if trainer.reference.is_separate_model else None
    tensors = [*trainer.model.parameters(), *(reference.parameters() if reference is not None else [])]
    tensors += [p.grad for p in trainer.model.parameters() if p.grad is not None]
    tensors += [value for state in trainer.optimizer.state.values() for value in state.values()
                if isinstance(value, torch.Tensor)]
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def test_adapters_only_grpo_holds_under_0_6_of_full_fine_tuning(tiny_model, tmp_path):
    lora = LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    held = {}
    for name, peft_config in (("full", None), ("adapters", lora)):
        trainer = make_trainer(tiny_model("tiny-llama"), tmp_path / name, beta=0.1, max_steps=2,
                               gradient_checkpointing=True)
        if peft_config is not None:
            from rlhf_trainer import GRPOTrainer

            trainer = GRPOTrainer(model=tiny_model("tiny-llama"), reward_funcs=trainer.reward_funcs,
                                  args=trainer.args, train_dataset=trainer.train_dataset, peft_config=peft_config)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
        held[name] = held_bytes(trainer)
        assert trainer.reference.is_separate_model == (name == "full")
        if name == "adapters":
            assert changed and all("lora_" in n for n in changed)  # the base stays frozen
            assert trainer.state.log_history[0]["kl"] == 0.0  # adapters start at zero: base == policy
    assert held["adapters"] < 0.6 * held["full"]
