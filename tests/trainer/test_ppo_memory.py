"""Adapters-only PPO holds far less than PPO with a full reference copy and full fine-tuning."""

import torch
from peft import LoraConfig
from ppo_helpers import make_trainer, rollout


def held_bytes(trainer) -> int:
    """Bytes of every distinct tensor storage the trainer keeps between steps: the policy's and the reference's
    parameters, gradients, and the optimizer's state."""
    tensors = [*trainer.model.parameters(), *(trainer.ref_model.parameters() if trainer.ref_model else [])]
    tensors += [p.grad for p in trainer.model.parameters() if p.grad is not None]
    tensors += [value for state in trainer.optimizer.state.values() for value in state.values()
                if isinstance(value, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_adapters_only_ppo_holds_under_0_6_of_full_copy_ppo(tiny_model, tiny_tokenizer):
    lora = LoraConfig(r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    held = {}
    for name, model_kwargs in (("full", {}), ("adapters", {"peft_config": lora})):
        trainer = make_trainer(tiny_model("tiny-llama"), tiny_tokenizer, model_kwargs=model_kwargs)
        queries, responses = rollout(trainer, tiny_tokenizer, 4)
        trainer.step(queries, responses, [torch.tensor(1.0)] * 4)
        held[name] = held_bytes(trainer)
        assert (trainer.ref_model is None) == (name == "adapters")  # the reference is the base with adapters off

    assert held["adapters"] < 0.6 * held["full"]
