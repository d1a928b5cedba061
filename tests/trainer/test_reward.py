import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, EvalPrediction

from rlhf_trainer import RewardConfig, RewardTrainer
from rlhf_trainer.data import load_builtin
from rlhf_trainer.tiny import build_model
from rlhf_trainer.trainer.reward import pair_rewards, preference_loss, reward_metrics

PAIRS = [
    {"prompt": "The acting", "chosen": " was wonderful.", "rejected": " was dull."},
    {"prompt": "The story", "chosen": " is a joy to watch.", "rejected": " is a mess."},
    {"prompt": "The ending", "chosen": " was brilliant.", "rejected": " was boring and far too long."},
]


def rewards_of(model, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**tokenizer(text, return_tensors="pt")).logits[:, 0] for text in texts])


def test_reward_model_learns_the_preference_on_held_out_pairs(tiny_model, quick_args):
    trainer = RewardTrainer(
        tiny_model("tiny-gpt2-classifier"),
        args=quick_args(RewardConfig, num_train_epochs=1, per_device_train_batch_size=16, learning_rate=3e-3,
                        per_device_eval_batch_size=50),
        train_dataset=load_builtin("movie-preferences")[:240],
        eval_dataset=load_builtin("movie-preferences", split="test"))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()

    assert after["eval_accuracy"] >= 0.95
    assert after["eval_margin"] > 1.0 > abs(before["eval_margin"])
    assert after["eval_loss"] < before["eval_loss"] / 2


def test_seed_snippet_runs_verbatim_with_pretokenized_pairs(tiny_model, tmp_path, monkeypatch):
    path = tiny_model("tiny-gpt2-classifier")
    model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = []
    for pair in load_builtin("movie-preferences")[:24]:
        chosen, rejected = (tokenizer(pair["prompt"] + pair[side]) for side in ("chosen", "rejected"))
        rows.append({"input_ids_chosen": chosen["input_ids"], "attention_mask_chosen": chosen["attention_mask"],
                     "input_ids_rejected": rejected["input_ids"],
                     "attention_mask_rejected": rejected["attention_mask"]})
    dataset = Dataset.from_list(rows)
    score_before = model.score.weight.detach().clone()
    monkeypatch.chdir(tmp_path)  # the default RewardConfig writes to ./trainer_output

    trainer = RewardTrainer(
        model=model,
        tokenizer=tokenizer,
        train_dataset=dataset,
    )
    trainer.train()

    assert trainer.state.global_step == 9  # 3 epochs of 24 pairs in batches of 8: TrainingArguments' defaults
    assert not model.score.weight.equal(score_before)


def test_preference_loss_matches_the_formula():
    chosen, rejected, margin = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.0])

    def logsigmoid(x):
        return -math.log1p(math.exp(-x))

    plain = -(logsigmoid(1.0) + logsigmoid(-1.0)) / 2
    with_margin = -(logsigmoid(0.5) + logsigmoid(-1.0)) / 2
    centred = with_margin + 0.1 * (3.0**2 + 1.0**2) / 2
    assert preference_loss(chosen, rejected).item() == pytest.approx(plain)
    assert preference_loss(chosen, rejected, margin).item() == pytest.approx(with_margin)
    assert preference_loss(chosen, rejected, margin, center_rewards_coefficient=0.1).item() == pytest.approx(centred)


def test_accuracy_and_margin_metrics():
    rewards = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.5], [1.0, 1.0]])
    metrics = reward_metrics(EvalPrediction(predictions=rewards, label_ids=np.zeros(4)))
    assert metrics == {"accuracy": pytest.approx(0.5), "margin": pytest.approx((1 - 1 + 0.5 + 0) / 4)}


def test_pair_loss_comes_from_one_forward_with_margin_and_centring(tiny_model, quick_args):
    pairs = [{**pair, "margin": margin} for pair, margin in zip(PAIRS, [0.0, 1.0, 2.5], strict=True)]
    trainer = RewardTrainer(tiny_model("tiny-gpt2-classifier"), train_dataset=pairs,
                            args=quick_args(RewardConfig, center_rewards_coefficient=0.01))
    model, tokenizer = trainer.model, trainer.processing_class
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    batch = trainer.data_collator(list(trainer.train_dataset))
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)

    assert len(calls) == 1
    chosen = rewards_of(model, tokenizer, [pair["prompt"] + pair["chosen"] for pair in PAIRS])
    rejected = rewards_of(model, tokenizer, [pair["prompt"] + pair["rejected"] for pair in PAIRS])
    expected = preference_loss(chosen, rejected, torch.tensor([0.0, 1.0, 2.5]), center_rewards_coefficient=0.01)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_dropout_is_off_while_training(tiny_model, quick_args):
    path = tiny_model("tiny-gpt2-classifier", resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    trainer = RewardTrainer(path, args=quick_args(RewardConfig), train_dataset=PAIRS)
    model, tokenizer = trainer.model.train(), trainer.processing_class
    inputs = tokenizer(PAIRS[0]["chosen"], return_tensors="pt")
    assert model(**inputs).logits.equal(model(**inputs).logits)


def test_prompt_is_put_before_both_answers_and_long_pairs_are_cut(tiny_model, quick_args):
    trainer = RewardTrainer(tiny_model("tiny-gpt2-classifier"), args=quick_args(RewardConfig, max_length=6),
                            train_dataset=PAIRS)
    tokenizer, row = trainer.processing_class, trainer.train_dataset[2]
    assert row["input_ids_chosen"] == tokenizer("The ending was brilliant.").input_ids
    assert row["input_ids_rejected"] == tokenizer("The ending was boring and far too long.").input_ids[:6]


def test_lora_reward_model_trains_adapters_and_score_head_only(tiny_model, quick_args):
    trainer = RewardTrainer(
        tiny_model("tiny-gpt2-classifier"), train_dataset=PAIRS,
        args=quick_args(RewardConfig, max_steps=3, learning_rate=1e-2),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="SEQ_CLS"))
    assert isinstance(trainer.model, PeftModel)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()

    changed = {name for name, p in trainer.model.named_parameters() if not p.equal(before[name])}
    assert any("lora_B" in name for name in changed) and any("score" in name for name in changed)
    assert all("lora_" in name or "score" in name for name in changed)


def test_the_new_score_head_and_adapters_are_initialised_from_the_seed(tiny_model, quick_args):
    """A causal LM loaded as a reward model gets a fresh score head: args.seed decides it, so a rerun is the same."""
    def initial_weights(seed: int, before: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(before)  # whatever the global generator held before must not matter
        trainer = RewardTrainer(
            tiny_model("tiny-gpt2"), train_dataset=PAIRS, args=quick_args(RewardConfig, max_steps=1, seed=seed),
            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], task_type="SEQ_CLS"))
        return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}

    first, again, other = initial_weights(1, before=10), initial_weights(1, before=11), initial_weights(2, before=10)
    assert any("score" in name for name in first) and any("lora_A" in name for name in first)
    assert all(first[name].equal(again[name]) for name in first)
    assert not all(first[name].equal(other[name]) for name in first)


def test_lora_without_sequence_classification_task_is_refused(tiny_model, quick_args):
    with pytest.raises(ValueError, match="task_type='SEQ_CLS'"):
        RewardTrainer(tiny_model("tiny-gpt2-classifier"), args=quick_args(RewardConfig), train_dataset=PAIRS,
                      peft_config=LoraConfig(r=4, target_modules=["c_attn"], task_type="CAUSAL_LM"))


# Bad input: each error names what is wrong and where.

@pytest.mark.parametrize(("rows", "message", "column", "row"), [
    ([{"prompt": "p", "chosen": "a"}], r"train_dataset has no column 'rejected'", "rejected", None),
    ([{"chosen": "a", "rejected": "b"}, {"chosen": None, "rejected": "b"}], r"train_dataset row 1: 'chosen' is None",
     "chosen", 1),
    ([{"chosen": "a", "rejected": "b"}] * 3 + [{"chosen": "a", "rejected": " "}],
     r"train_dataset row 3: 'rejected' is ' '", "rejected", 3),
    ([], "train_dataset is empty", None, None),
    ([{"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}],
     r"train_dataset row 0: prompt, chosen and rejected must be text, not list", "chosen", 0),
])
def test_bad_preference_rows_name_column_and_row(tiny_model, quick_args, rows, message, column, row):
    with pytest.raises(ValueError, match=message) as error:
        RewardTrainer(tiny_model("tiny-gpt2-classifier"), args=quick_args(RewardConfig), train_dataset=rows)
    assert (error.value.column, error.value.row) == (column, row)


def test_reward_tokenizer_without_pad_token_is_refused_with_the_fix(tiny_model, quick_args):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("tiny-gpt2-classifier"))
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match=r"no pad token.*resize_token_embeddings"):
        RewardTrainer(tiny_model("tiny-gpt2-classifier"), args=quick_args(RewardConfig), train_dataset=PAIRS,
                      tokenizer=tokenizer)


def test_max_length_beyond_the_model_positions_is_refused(tiny_model, quick_args):
    with pytest.raises(ValueError, match="max_length=1000 is more than the model's 256 positions"):
        RewardTrainer(tiny_model("tiny-gpt2-classifier"), args=quick_args(RewardConfig, max_length=1000),
                      train_dataset=PAIRS)


def test_model_with_several_labels_is_refused(tiny_tokenizer, quick_args):
    model = build_model("gpt2", "seq-cls", tokenizer=tiny_tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="load it with num_labels=1 .this one has num_labels=2"):
        RewardTrainer(model, args=quick_args(RewardConfig), train_dataset=PAIRS, tokenizer=tiny_tokenizer)


# The packed (padding-free) path must give the padded path's numbers.

def rewards_loss_and_grads(trainer, batch):
    model = trainer.model
    model.zero_grad()
    chosen, rejected = pair_rewards(model, batch)
    loss = preference_loss(chosen, rejected, batch.get("margin"), center_rewards_coefficient=0.01)
    loss.backward()
    return torch.stack([chosen, rejected]).detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["tiny-gpt2-classifier", "tiny-llama-classifier"])
def test_packed_pairs_get_the_rewards_loss_and_gradients_of_the_padded_batch(tiny_model, quick_args, name):
    pairs = [{**pair, "margin": float(i)} for i, pair in enumerate(PAIRS)]
    packed = RewardTrainer(tiny_model(name), args=quick_args(RewardConfig), train_dataset=pairs)
    padded = RewardTrainer(tiny_model(name), args=quick_args(RewardConfig, padding_free=False), train_dataset=pairs)
    assert packed.padding_free and not padded.padding_free  # packed by default where it gives the same rewards
    rows = list(packed.train_dataset)
    packed_batch, padded_batch = packed.data_collator(rows), padded.data_collator(rows)
    assert packed_batch["input_ids"].numel() < padded_batch["input_ids"].numel()  # less padding to compute

    rewards, loss, grads = rewards_loss_and_grads(packed, packed_batch)
    expected_rewards, expected_loss, expected_grads = rewards_loss_and_grads(padded, padded_batch)

    torch.testing.assert_close(rewards, expected_rewards, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for parameter, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[parameter], rtol=1e-4, atol=1e-6)


def test_packing_pools_at_the_last_token_that_is_not_padding(tiny_model, quick_args):
    trainer = RewardTrainer(tiny_model("tiny-llama-classifier"), args=quick_args(RewardConfig), train_dataset=PAIRS)
    pad = trainer.processing_class.pad_token_id
    row = {"input_ids_chosen": [5, 6, 7, pad], "attention_mask_chosen": [1, 1, 1, 1],
           "input_ids_rejected": [8, 9, 10, 11, 12], "attention_mask_rejected": [1, 1, 1, 0, 0]}
    batch = trainer.data_collator([row])
    assert batch["input_ids"].flatten()[batch["last_token"]].tolist() == [7, 10]


def test_packing_is_off_for_a_model_whose_attention_ignores_position_ids(tiny_tokenizer, quick_args):
    model = build_model("opt", "seq-cls", tokenizer=tiny_tokenizer)
    trainer = RewardTrainer(model, args=quick_args(RewardConfig), train_dataset=PAIRS, tokenizer=tiny_tokenizer)
    assert not trainer.padding_free
    with pytest.raises(ValueError, match="opt model does not give the padded batch's rewards on packed texts"):
        RewardTrainer(model, args=quick_args(RewardConfig, padding_free=True), train_dataset=PAIRS,
                      tokenizer=tiny_tokenizer)
