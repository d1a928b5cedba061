"""The pieces the trainers share: dropout off, the reference model, per-token log-probs."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_trainer.trainer.reward import RewardConfig, RewardTrainer
from rlhf_trainer.trainer.utils import (
    Reference,
    disable_dropout_in_model,
    has_dropout,
    load_causal_lm,
    load_processing_class,
    selective_log_softmax,
)


def test_reward_model_scores_the_same_text_the_same_way_in_train_mode(tiny_model, tmp_path):
    # OPT applies dropout functionally (config.dropout as a float), which nn.Dropout.p = 0 alone misses.
    path = tiny_model("tiny-opt")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dropout=0.5, layerdrop=0.0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = [{"chosen": "a fine film.", "rejected": "a dull film."}]
    RewardTrainer(model=model, processing_class=tokenizer, train_dataset=pairs,
                  args=RewardConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    model.train()
    ids = tokenizer(["a fine film, really."], return_tensors="pt")
    first, second = model(**ids).logits, model(**ids).logits
    assert torch.equal(first, second)
    assert not has_dropout(model)


def test_disable_dropout_covers_modules_and_functional_rates(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model("tiny-llama"), attention_dropout=0.3)
    assert has_dropout(model)
    disable_dropout_in_model(model)
    assert not has_dropout(model)


def test_reference_is_a_frozen_copy_of_the_policy_as_constructed(tiny_model):
    policy = load_causal_lm(tiny_model("tiny-gpt2"))
    reference = Reference.of(policy)
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)  # training moves the policy, not the reference
    with reference.model() as ref:
        assert ref is not policy
        assert not any(p.requires_grad for p in ref.parameters())
        assert not torch.equal(next(ref.parameters()), next(policy.parameters()))


def test_reference_of_a_peft_policy_is_the_policy_with_adapters_off(tiny_model):
    base = load_causal_lm(tiny_model("tiny-gpt2"))
    ids = torch.tensor([[5, 6, 7, 8]])
    base_logits = base(ids).logits.detach()
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    reference = Reference.of(policy)
    assert not reference.is_separate_model
    with torch.no_grad(), reference.model() as ref:
        assert torch.allclose(ref(ids).logits, base_logits)
    assert not torch.allclose(policy(ids).logits, base_logits)  # the adapters are back on


def test_reference_of_a_trained_adapter_is_a_frozen_copy_of_it(tiny_model):
    base = load_causal_lm(tiny_model("tiny-gpt2"))
    policy = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    ids = torch.tensor([[5, 6, 7, 8]])
    trained_logits = policy(ids).logits.detach()
    reference = Reference.of(policy, trained_adapter=True)
    trainable = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in name for name in trainable)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if ".default." in name:
                parameter.add_(0.5)  # the policy's adapter trains on
    with torch.no_grad(), reference.model() as ref:
        assert torch.allclose(ref(ids).logits, trained_logits, atol=1e-6)
    assert policy.active_adapter == "default"
    assert [name for name, p in policy.named_parameters() if p.requires_grad] == trainable


def test_reference_refuses_the_policy_itself_as_ref_model(tiny_model):
    policy = load_causal_lm(tiny_model("tiny-gpt2"))
    with pytest.raises(ValueError, match="same object"):
        Reference.of(policy, ref_model=policy)


def test_models_load_in_float32_and_tokenizers_get_a_pad_token(tiny_model):
    path = tiny_model("tiny-gpt2")
    model = load_causal_lm(path)
    assert next(model.parameters()).dtype == torch.float32
    assert next(load_causal_lm(path, {"dtype": "bfloat16"}).parameters()).dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer = load_processing_class(model, tokenizer, padding_side="left")
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.padding_side == "left"
    with pytest.raises(ValueError, match="model_init_kwargs"):
        load_causal_lm(model, {"dtype": "float32"})


def test_selective_log_softmax_and_entropy_match_the_full_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, requires_grad=True)
    labels = torch.randint(0, 7, (3, 5))
    for temperature in (1.0, 0.7):
        full = (logits / temperature).log_softmax(-1)
        logps, entropies = selective_log_softmax(logits, labels, temperature, with_entropy=True)
        assert torch.allclose(logps, full.gather(-1, labels[..., None]).squeeze(-1), atol=1e-6)
        assert torch.allclose(entropies, -(full.exp() * full).sum(-1), atol=1e-6)
        assert not entropies.requires_grad
    logps, entropies = selective_log_softmax(logits, labels, with_entropy=True, entropy_grad=True)
    grad, = torch.autograd.grad(logps.sum(), logits, retain_graph=True)
    expected_grad, = torch.autograd.grad(logits.log_softmax(-1).gather(-1, labels[..., None]).sum(), logits)
    assert torch.allclose(grad, expected_grad, atol=1e-6)
    grad, = torch.autograd.grad(entropies.sum(), logits)
    full = logits.log_softmax(-1)
    expected_grad, = torch.autograd.grad(-(full.exp() * full).sum(), logits)
    assert torch.allclose(grad, expected_grad, atol=1e-6)
