"""DPOTrainer's computation on real batches: the algorithm page's steps and known traps (docs/algorithms/dpo.md)."""

import math

import pytest
import torch
from dpo_helpers import PAIRS, batch_loss, completion_logps, first_batch, make_trainer
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_trainer.tiny import build_model
from rlhf_trainer.trainer.dpo import CompletionLayout
from rlhf_trainer.trainer.inputs import DatasetError
from rlhf_trainer.trainer.utils import has_dropout

EOS = "<|endoftext|>"


def test_first_step_with_the_policy_as_reference_is_log_2_and_zero_rewards(tiny_model, quick_args):
    trainer = make_trainer(tiny_model("tiny-gpt2"), quick_args)
    loss, metrics = batch_loss(trainer)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-6)
    assert metrics["rewards/accuracies"] == 0.0  # ties are not wins: strict >


def test_logps_are_sums_over_completion_tokens_scored_from_the_previous_position(tiny_model, quick_args):
    path = tiny_model("tiny-gpt2")
    trainer = make_trainer(path, quick_args, train=PAIRS[:1], per_device_train_batch_size=1)
    _, metrics = batch_loss(trainer)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pair = PAIRS[0]
    chosen = completion_logps(model, tokenizer, pair["prompt"], pair["chosen"] + EOS)
    rejected = completion_logps(model, tokenizer, pair["prompt"], pair["rejected"] + EOS)
    assert metrics["logps/chosen"] == pytest.approx(chosen.item(), rel=1e-5)
    assert metrics["logps/rejected"] == pytest.approx(rejected.item(), rel=1e-5)
    tokens = len(tokenizer(pair["chosen"] + EOS)["input_ids"])
    assert abs(metrics["logps/chosen"]) > 3 * tokens  # a sum over tokens (each about -log 1024), not a mean


def test_beta_scales_the_log_ratio_inside_the_sigmoid_and_in_the_rewards(tiny_model, tiny_tokenizer, quick_args):
    path = tiny_model("tiny-gpt2")
    reference = build_model("gpt2", tokenizer=tiny_tokenizer, seed=1)
    trainer = make_trainer(path, quick_args, train=PAIRS[:1], per_device_train_batch_size=1, beta=0.5,
                           ref_model=reference)
    loss, metrics = batch_loss(trainer)
    policy, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    pair = PAIRS[0]
    rho = {side: (completion_logps(policy, tokenizer, pair["prompt"], pair[side] + EOS)
                  - completion_logps(reference, tokenizer, pair["prompt"], pair[side] + EOS)).item()
           for side in ("chosen", "rejected")}
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * rho["chosen"], rel=1e-4)
    assert metrics["rewards/rejected"] == pytest.approx(0.5 * rho["rejected"], rel=1e-4)
    expected = math.log1p(math.exp(-0.5 * (rho["chosen"] - rho["rejected"])))
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_metrics_follow_their_definitions(tiny_model, quick_args):
    path = tiny_model("tiny-gpt2")
    trainer = make_trainer(path, quick_args, chunked_lm_head=False, padding_free=False)
    batch = first_batch(trainer)
    _, metrics = batch_loss(trainer, batch)
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    scored = batch["completion_mask"][:, 1:].bool()
    half = len(PAIRS)
    chosen, rejected = scored.clone(), scored.clone()
    chosen[half:], rejected[:half] = False, False
    targets = batch["input_ids"][:, 1:]
    log_p = logits.log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    assert metrics["entropy"] == pytest.approx(entropy[scored].mean().item(), rel=1e-5)
    assert metrics["logits/chosen"] == pytest.approx(logits.mean(-1)[chosen].mean().item(), rel=1e-5)
    assert metrics["logits/rejected"] == pytest.approx(logits.mean(-1)[rejected].mean().item(), rel=1e-5)
    top1 = (logits.argmax(-1) == targets)[chosen].float().mean().item()
    assert metrics["mean_token_accuracy"] == pytest.approx(top1)
    assert metrics["num_tokens"] == batch["attention_mask"].sum().item()  # prompts counted twice


@pytest.mark.parametrize(("padding_free", "share", "chunked"),
                         [(True, False, False), (True, True, False), (False, False, True), (True, True, True)])
def test_fast_paths_give_the_plain_loss_metrics_and_gradients(tiny_model, quick_args, padding_free, share, chunked):
    path = tiny_model("tiny-llama")
    reference = build_model("llama", seed=3)  # a reference other than the policy: non-zero log ratios
    results = []
    for fast in (False, True):
        trainer = make_trainer(path, quick_args, ref_model=reference, padding_free=padding_free and fast,
                               share_prompts=share and fast, chunked_lm_head=chunked and fast,
                               loss_type=["sigmoid", "sft", "ipo"], ld_alpha=0.5, use_weighting=True, max_length=12)
        assert (trainer.padding_free, trainer.share_prompts, trainer.chunked_lm_head) == (
            padding_free and fast, share and fast, chunked and fast)
        trainer.model.zero_grad()
        loss, metrics = batch_loss(trainer)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
        results.append((loss.item(), metrics, grads))
    (plain_loss, plain_metrics, plain_grads), (fast_loss, fast_metrics, fast_grads) = results
    assert fast_loss == pytest.approx(plain_loss, rel=1e-5)
    assert fast_metrics == pytest.approx(plain_metrics, rel=1e-4, abs=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_padding_free_is_off_where_the_model_mixes_packed_sequences(tiny_model, quick_args):
    model = AutoModelForCausalLM.from_pretrained(tiny_model("tiny-opt"))  # OPT's attention ignores position ids
    trainer = make_trainer(model, quick_args)
    assert trainer.padding_free is False
    with pytest.raises(ValueError, match="padding_free=True, but"):
        make_trainer(AutoModelForCausalLM.from_pretrained(tiny_model("tiny-opt")), quick_args, padding_free=True)
    # the reference gets the same batches: a reference that would mix packed sequences turns packing off too
    mixed = make_trainer(tiny_model("tiny-gpt2"), quick_args, ref_model=build_model("opt"))
    assert mixed.padding_free is False and mixed.share_prompts is False


def test_ld_alpha_weights_tokens_past_the_shorter_completion():
    # one pair: chosen has 3 scored tokens, rejected 1 -> chosen tokens 2 and 3 get alpha
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 9], [5, 6, 10, 0, 0]]),
             "completion_mask": torch.tensor([[0, 1, 1, 1, 1], [0, 0, 1, 0, 0]])}
    layout = CompletionLayout.of(batch)
    assert layout.sequence.tolist() == [0, 0, 0, 0, 1]
    assert layout.ld_weights(0.25).tolist() == [1.0, 0.25, 0.25, 0.25, 1.0]
    assert layout.sums(torch.ones(5), layout.ld_weights(0.25)).tolist() == [1.75, 1.0]
    assert layout.lengths.tolist() == [4, 1] and layout.scored_lengths.tolist() == [4, 1]


def test_gradient_accumulation_gives_the_full_batch_step_and_per_micro_batch_token_metrics(tiny_model, quick_args):
    path = tiny_model("tiny-gpt2")
    weights, logs = [], []
    for batch, accumulation in ((4, 1), (2, 2)):
        trainer = make_trainer(path, quick_args, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accumulation, ref_model=build_model("gpt2", seed=5),
                               max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0, seed=0,
                               data_seed=0)
        trainer.train()
        weights.append(trainer.model.transformer.wte.weight.detach().clone())
        logs.append(trainer.state.log_history[0])
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)
    assert logs[0]["loss"] == pytest.approx(logs[1]["loss"], rel=1e-5)
    # pair-mean metrics agree; token-weighted ones are a mean of the two micro-batches' token means
    assert logs[0]["rewards/margins"] == pytest.approx(logs[1]["rewards/margins"], rel=1e-4, abs=1e-6)
    assert logs[0]["logits/chosen"] != pytest.approx(logs[1]["logits/chosen"], rel=1e-7)


def test_dropout_is_off_in_policy_and_reference(tiny_model, quick_args):
    path = tiny_model("tiny-gpt2")
    assert has_dropout(AutoModelForCausalLM.from_pretrained(path))  # GPT-2's config has dropout 0.1
    trainer = make_trainer(path, quick_args)
    assert not has_dropout(trainer.model) and not has_dropout(trainer.reference.module)
    _, metrics = batch_loss(trainer)
    assert metrics["rewards/margins"] == 0.0

    noisy = make_trainer(path, quick_args, disable_dropout=False)
    noisy.reference.module.train()  # a reference in train mode with dropout on, as a careless setup would have
    _, metrics = batch_loss(noisy)
    assert metrics["rewards/margins"] != 0.0


def test_missing_columns_are_named(tiny_model, quick_args):
    with pytest.raises(DatasetError, match="no column 'rejected'"):
        make_trainer(tiny_model("tiny-gpt2"), quick_args, train=[{"prompt": "a", "chosen": " b"}])


def test_ref_model_must_not_be_the_model(tiny_model, quick_args):
    model = AutoModelForCausalLM.from_pretrained(tiny_model("tiny-gpt2"))
    with pytest.raises(ValueError, match="must not be the same object"):
        make_trainer(model, quick_args, ref_model=model)
