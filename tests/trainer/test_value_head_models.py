"""Value-head models and the reference model (docs/algorithms/ppo.md, "Models")."""

import warnings

import pytest
import torch
from peft import LoraConfig
from safetensors import safe_open

from rlhf_trainer import (
    AutoModelForCausalLMWithValueHead,
    AutoModelForSeq2SeqLMWithValueHead,
    create_reference_model,
)

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "task_type": "CAUSAL_LM"}


def load(path, cls=AutoModelForCausalLMWithValueHead, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls.from_pretrained(path, **kwargs)


def unique_parameter_bytes(*models):
    seen = {}
    for model in models:
        for p in model.parameters():
            seen[p.data_ptr()] = p.numel() * p.element_size()
    return sum(seen.values())


@pytest.mark.parametrize(("name", "hidden"), [("tiny-gpt2", 64), ("tiny-llama", 64), ("tiny-opt", 32)])
def test_causal_forward_returns_fp32_logits_and_a_value_per_position(tiny_model, name, hidden):
    model = load(tiny_model(name)).eval()
    assert model.v_head.summary.in_features == hidden  # OPT: word_embed_proj_dim, not hidden_size
    logits, loss, values = model(torch.tensor([[5, 6, 7], [8, 9, 10]]))
    assert logits.dtype == torch.float32 and logits.shape[:2] == (2, 3)
    assert loss is None and values.shape == (2, 3)


def test_seq2seq_values_come_from_the_decoder(tiny_model):
    model = load(tiny_model("tiny-t5"), AutoModelForSeq2SeqLMWithValueHead).eval()
    logits, _, values = model(input_ids=torch.tensor([[5, 6, 7]]), decoder_input_ids=torch.tensor([[1, 9]]))
    assert logits.shape[:2] == (1, 2) and values.shape == (1, 2)


def test_loading_without_a_value_head_warns(tiny_model):
    with pytest.warns(UserWarning, match="no value head weights"):
        AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model("tiny-gpt2"))


def test_save_and_load_round_trip_the_value_head(tiny_model, tmp_path):
    model = load(tiny_model("tiny-gpt2"), summary_dropout_prob=0.0).eval()
    torch.nn.init.normal_(model.v_head.summary.weight)
    ids = torch.tensor([[5, 6, 7, 8]])
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "v_head.safetensors", framework="pt") as f:
        assert sorted(f.keys()) == ["v_head.summary.bias", "v_head.summary.weight"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a saved head loads silently
        reloaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path).eval()
    assert torch.equal(reloaded(ids)[2], model(ids)[2])
    assert torch.equal(reloaded(ids)[0], model(ids)[0])


def test_normal_value_head_init(tiny_model):
    model = load(tiny_model("tiny-gpt2"), v_head_init_strategy="normal", v_head_initializer_range=0.2)
    assert torch.count_nonzero(model.v_head.summary.bias) == 0
    assert 0.1 < model.v_head.summary.weight.std().item() < 0.3
    with pytest.raises(ValueError, match="v_head_init_strategy"):
        load(tiny_model("tiny-gpt2"), v_head_init_strategy="xavier")


def test_generate_passes_through(tiny_model):
    model = load(tiny_model("tiny-gpt2")).eval()
    ids = torch.tensor([[5, 6, 7]])
    ours = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(ours, model.pretrained_model.generate(ids, max_new_tokens=5, do_sample=False))
    assert ours.shape == (1, 8)


def test_peft_trains_and_saves_only_adapters_and_value_head(tiny_model, tmp_path):
    model = load(tiny_model("tiny-gpt2"), peft_config=LoraConfig(**LORA))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or name.startswith("v_head.") for name in trainable)
    torch.nn.init.normal_(model.v_head.summary.weight)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # make the adapter do something
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json",
                                                   "v_head.safetensors"}
    assert not (tmp_path / "model.safetensors").exists()
    reloaded = load(tmp_path).eval()
    assert reloaded.is_peft_model
    assert sorted(n for n, p in reloaded.named_parameters() if p.requires_grad) == sorted(trainable)
    ids = torch.tensor([[5, 6, 7, 8]])
    model.eval()
    assert torch.allclose(reloaded(ids)[0], model(ids)[0]) and torch.allclose(reloaded(ids)[2], model(ids)[2])


def test_quantization_is_refused_on_cpu(tiny_model):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        AutoModelForCausalLMWithValueHead.from_pretrained(tiny_model("tiny-gpt2"), quantization_config={"x": 1})


def test_reference_model_is_a_frozen_independent_copy(tiny_model):
    model = load(tiny_model("tiny-gpt2"))
    reference = create_reference_model(model)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(next(model.parameters()), next(reference.parameters()))


def test_shared_layers_share_storage_with_the_policy(tiny_model):
    model = load(tiny_model("tiny-gpt2"))
    full_copy = unique_parameter_bytes(model)
    reference = create_reference_model(model, num_shared_layers=1)
    shared = dict(model.named_parameters())
    ref_params = dict(reference.named_parameters())
    for name in ("pretrained_model.transformer.wte.weight", "pretrained_model.transformer.h.0.mlp.c_fc.weight"):
        assert ref_params[name].data_ptr() == shared[name].data_ptr()
        assert not shared[name].requires_grad  # frozen in the policy too
    layer1 = "pretrained_model.transformer.h.1.mlp.c_fc.weight"
    assert ref_params[layer1].data_ptr() != shared[layer1].data_ptr() and shared[layer1].requires_grad
    assert unique_parameter_bytes(model, reference) < 2 * full_copy


def test_shared_layers_with_an_explicit_pattern_and_bad_values(tiny_model):
    model = load(tiny_model("tiny-llama"))
    reference = create_reference_model(model, num_shared_layers=1, pattern="model.layers.{layer}")
    name = "pretrained_model.model.layers.0.mlp.up_proj.weight"
    assert dict(reference.named_parameters())[name].data_ptr() == dict(model.named_parameters())[name].data_ptr()
    with pytest.raises(ValueError, match="no parameter belongs to block 7"):
        create_reference_model(load(tiny_model("tiny-llama")), num_shared_layers=7)
    with pytest.raises(ValueError, match="ref_model=None"):
        create_reference_model(load(tiny_model("tiny-gpt2"), peft_config=LoraConfig(**LORA)))
