"""GRPOTrainer's behaviour on the tiny GPT-2: the first pass is on-policy, later passes move, metrics mean what
TRL's do, reward functions of every kind are called as TRL calls them, and bad input is refused clearly."""

import asyncio
import functools
import math

import pytest
import torch
from datasets import Dataset
from grpo_helpers import PROMPTS, config, count_a, logs, make_trainer

from rlhf_trainer import GRPOConfig, GRPOTrainer
from rlhf_trainer.trainer.grpo_data import RepeatSampler
from rlhf_trainer.trainer.inputs import DatasetError


def test_repeat_sampler_makes_groups_and_reuses_each_block():
    assert list(RepeatSampler(range(3), mini_repeat_count=2, batch_size=2, repeat_count=2, shuffle=False)) == \
        [0, 0, 1, 1, 0, 0, 1, 1]
    shuffled = list(RepeatSampler(range(8), mini_repeat_count=2, batch_size=4, seed=0))
    assert sorted(set(shuffled)) == list(range(8)) and shuffled[0::2] == shuffled[1::2]
    assert shuffled == list(RepeatSampler(range(8), mini_repeat_count=2, batch_size=4, seed=0))


def test_trl_quickstart_script_runs_unchanged(tiny_model, tmp_path):
    # TRL's quickstart with a local model, a list of dicts, and bf16 off for this CPU.
    dataset = Dataset.from_list([{"prompt": p} for p in PROMPTS])

    def reward_num_unique_letters(completions, **kwargs):
        return [float(len(set(completion))) for completion in completions]

    training_args = GRPOConfig(output_dir=str(tmp_path / "Qwen2-0.5B-GRPO"), bf16=False, max_steps=2,
                               per_device_train_batch_size=8, max_completion_length=8, report_to="none")
    trainer = GRPOTrainer(model=tiny_model("tiny-gpt2"), reward_funcs=reward_num_unique_letters,
                          args=training_args, train_dataset=dataset)
    trainer.train()
    assert trainer.state.global_step == 2
    assert logs(trainer, "train_loss")


def test_first_step_is_on_policy_ratio_one_no_clipping_and_zero_kl(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, beta=0.1, max_steps=1, loss_type="grpo")
    trainer.train()
    record = trainer.state.log_history[0]
    assert record["kl"] == 0.0  # reference == policy at step 1 (dropout off)
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "clip_ratio/high_max"):
        assert record[key] == 0.0
    assert abs(record["loss"]) < 1e-6  # grpo at ratio 1 without KL: advantages sum to 0 in each group
    assert {"num_tokens", "completions/mean_length", "rewards/count_a/mean", "rewards/count_a/std", "reward",
            "reward_std", "frac_reward_zero_std", "entropy", "step_time"} <= set(record)


def test_no_reference_and_no_old_log_probs_with_the_defaults(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path)
    assert trainer.reference is None and not trainer.needs_old_logps  # beta 0, one step per generation
    trainer.train()
    assert "kl" not in trainer.state.log_history[0]


def test_later_iterations_move_the_ratio_from_fixed_old_log_probs(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, num_iterations=3, max_steps=3, epsilon=0.01,
                           learning_rate=5e-3)
    assert trainer.needs_old_logps
    generated = []
    original = trainer._generate_and_score
    trainer._generate_and_score = lambda *a: generated.append(1) or original(*a)
    trainer.train()
    region = logs(trainer, "clip_ratio/region_mean")
    assert len(generated) == 1  # one generation reused for the three passes
    assert region[0] == 0.0 and region[2] > 0.0  # ratio 1 on the first pass, clipped tokens once the policy moved
    assert logs(trainer, "num_tokens") == [logs(trainer, "num_tokens")[0]]  # generation metrics only when generated


def test_temperature_divides_the_logits_when_scoring(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, temperature=0.5)
    batch = {"prompt_ids": torch.tensor([[5, 6, 7]]), "prompt_mask": torch.ones(1, 3, dtype=torch.long),
             "completion_ids": torch.tensor([[8, 9]]), "completion_mask": torch.ones(1, 2, dtype=torch.long)}
    logps, entropies = trainer._score(trainer.model, batch, with_entropy=True)
    logits = trainer.model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits[0, 2:4] / 0.5
    expected = logits.log_softmax(-1)[[0, 1], [8, 9]]
    assert torch.allclose(logps[0], expected, atol=1e-5)
    p = logits.softmax(-1)
    assert torch.allclose(entropies[0], -(p * p.log()).sum(-1), atol=1e-4)


def test_left_padded_prompts_score_as_if_unpadded(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path)
    pad = trainer.pad_token_id
    batch = {"prompt_ids": torch.tensor([[5, 6, 7], [pad, pad, 7]]),
             "prompt_mask": torch.tensor([[1, 1, 1], [0, 0, 1]]),
             "completion_ids": torch.tensor([[8, 9], [8, 9]]), "completion_mask": torch.ones(2, 2, dtype=torch.long)}
    alone = {"prompt_ids": torch.tensor([[7]]), "prompt_mask": torch.ones(1, 1, dtype=torch.long),
             "completion_ids": torch.tensor([[8, 9]]), "completion_mask": torch.ones(1, 2, dtype=torch.long)}
    with torch.no_grad():
        padded = trainer._score(trainer.model, batch)[0][1]
        unpadded = trainer._score(trainer.model, alone)[0][0]
    assert torch.allclose(padded, unpadded, atol=1e-5)  # positions cumsum(mask) - 1: GPT-2's absolute positions


def test_reward_functions_of_every_kind_and_their_metric_names(tiny_model, tmp_path):
    seen = {}

    def with_column(prompts, completions, completion_ids, label, trainer_state, log_metric, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, label=label, state=trainer_state)
        log_metric("custom", 2.0)
        return [1.0 if i % 2 else None for i in range(len(prompts))]

    async def async_reward(completions, **kwargs):
        await asyncio.sleep(0)
        return [0.5] * len(completions)

    class Scorer:
        def __call__(self, completions, **kwargs):
            return [float(len(c)) for c in completions]

    def scaled(completions, factor, **kwargs):
        return [factor] * len(completions)

    dataset = [{"prompt": p, "label": i} for i, p in enumerate(PROMPTS)]
    reward_model = tiny_model("tiny-gpt2-classifier")
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, dataset=dataset, max_steps=1,
                           reward_funcs=[with_column, async_reward, Scorer(), functools.partial(scaled, factor=3.0),
                                         reward_model], reward_weights=[1.0, 1.0, 0.0, 1.0, 0.0])
    assert trainer.reward_func_names == ["with_column", "async_reward", "Scorer", "scaled",
                                         reward_model.rstrip("/").split("/")[-1]]
    trainer.train()
    record = trainer.state.log_history[0]
    assert seen["prompts"][:4] == [seen["prompts"][0]] * 4  # each prompt repeated num_generations times
    assert seen["label"][:4] == [seen["label"][0]] * 4 and seen["state"] is trainer.state
    assert isinstance(seen["ids"][0], list) and isinstance(seen["completions"][0], str)
    assert record["rewards/with_column/mean"] == 1.0  # None values are left out of the function's stats
    assert record["rewards/async_reward/mean"] == 0.5 and record["rewards/scaled/mean"] == 3.0
    assert record["reward"] == pytest.approx(0.5 + 3.0 + 0.5)  # half the rows get with_column's 1.0
    assert record["custom"] == 2.0
    assert math.isfinite(record[f"rewards/{trainer.reward_func_names[-1]}/mean"])


def test_evaluation_metrics_carry_the_eval_prefix(tiny_model, tmp_path):
    trainer = GRPOTrainer(model=tiny_model("tiny-gpt2"), reward_funcs=count_a, args=config(tmp_path),
                          train_dataset=[{"prompt": p} for p in PROMPTS],
                          eval_dataset=[{"prompt": p} for p in PROMPTS[:2]])
    metrics = trainer.evaluate()
    assert {"eval_reward", "eval_reward_std", "eval_rewards/count_a/mean", "eval_completions/mean_length",
            "eval_loss"} <= set(metrics)
    assert trainer.evaluate()["eval_reward"] == metrics["eval_reward"]  # evaluation samples with fixed seeds


def test_rollout_func_output_is_used_as_is(tiny_model, tmp_path):
    calls = []

    def rollout(prompts, trainer):
        calls.append(list(prompts))
        eos = trainer.processing_class.eos_token_id
        n = len(prompts)
        # tokens after an EOS are kept and trained on; env_mask hides the last token; 'tag' reaches rewards
        return {"prompt_ids": [[5, 6]] * n, "completion_ids": [[8, eos, 9, 10] if i % 2 else [8, 9] for i in range(n)],
                "logprobs": None, "env_mask": [[1, 1, 1, 0] if i % 2 else [1, 0] for i in range(n)],
                "tag": [float(i % 2) for i in range(n)]}

    def tag_reward(completions, tag, **kwargs):
        return tag

    trainer = GRPOTrainer(model=tiny_model("tiny-gpt2"), reward_funcs=tag_reward, args=config(tmp_path, max_steps=1),
                          train_dataset=[{"prompt": p} for p in PROMPTS], rollout_func=rollout)
    trainer.train()
    record = trainer.state.log_history[0]
    assert len(calls[0]) == 4 and calls[0] == [calls[0][0]] * 4
    assert record["completions/mean_length"] == 2.0  # (3 + 1 + 3 + 1) / 4: env_mask tokens only
    assert record["reward"] == 0.5


def test_dataset_without_prompt_names_its_columns(tiny_model, tmp_path):
    with pytest.raises(DatasetError, match=r"no 'prompt' column \(its columns: \['question', 'answer'\]\)"):
        make_trainer(tiny_model("tiny-gpt2"), tmp_path, dataset=[{"question": "q", "answer": "a"}])


def test_blank_prompt_names_the_row(tiny_model, tmp_path):
    with pytest.raises(DatasetError, match="row 1: 'prompt' is ''"):
        make_trainer(tiny_model("tiny-gpt2"), tmp_path, dataset=[{"prompt": "a"}, {"prompt": ""}])


def test_reward_function_with_the_wrong_number_of_values_is_named(tiny_model, tmp_path):
    def too_few(completions, **kwargs):
        return [1.0]

    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, reward_funcs=too_few)
    with pytest.raises(ValueError, match="reward function 'too_few' returned 1 values for 4 completions"):
        trainer.train()


def test_reward_function_that_raises_is_named(tiny_model, tmp_path):
    def broken(completions, **kwargs):
        raise KeyError("answer")

    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, reward_funcs=broken)
    with pytest.raises(RuntimeError, match="reward function 'broken' raised KeyError"):
        trainer.train()


def test_generation_batch_not_a_multiple_of_num_generations_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"not a multiple of num_generations \(4\)"):
        config(tmp_path, per_device_train_batch_size=6)


def test_truncated_completions_leave_the_loss_but_stay_in_the_reward_stats(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, max_completion_length=3, max_steps=1,
                           mask_truncated_completions=True, generation_kwargs={"min_new_tokens": 3})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    record = trainer.state.log_history[0]
    assert record["completions/clipped_ratio"] == 1.0 and record["completions/mean_terminated_length"] == 0.0
    assert "reward" in record and record["loss"] == 0.0  # every row truncated: nothing left to train on
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_conversational_prompts_get_the_chat_template_and_assistant_messages(tiny_model, tmp_path):
    seen = []

    def record(prompts, completions, **kwargs):
        seen.append((prompts[0], completions[0]))
        return [0.0] * len(completions)

    dataset = [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS]
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, reward_funcs=record, dataset=dataset, max_steps=1)
    assert trainer._prompt_token_ids([dataset[0]["prompt"]])[0] == trainer.processing_class.apply_chat_template(
        dataset[0]["prompt"], add_generation_prompt=True, tokenize=True)["input_ids"]
    trainer.train()
    prompt, completion = seen[0]
    assert prompt[0]["role"] == "user" and completion[0]["role"] == "assistant"
    assert isinstance(completion[0]["content"], str)


def test_settings_our_sampler_lacks_fall_back_to_generate(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, min_p=0.05, repetition_penalty=1.3, max_steps=1)
    calls = []
    original = trainer.model.generate
    trainer.model.generate = lambda *a, **k: calls.append(k) or original(*a, **k)
    trainer.train()
    assert calls and calls[0]["min_p"] == 0.05 and calls[0]["repetition_penalty"] == 1.3


def test_sync_ref_model_mixes_the_policy_into_the_reference(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, beta=0.1, sync_ref_model=True, ref_model_sync_steps=1,
                           ref_model_mixup_alpha=0.5, max_steps=1)
    reference = trainer.reference.module
    old = next(reference.parameters()).detach().clone()
    trainer.train()
    policy = next(trainer.model.parameters()).detach()
    assert torch.allclose(next(reference.parameters()), 0.5 * old + 0.5 * policy)


def test_high_entropy_mask_and_entropy_bonus_log_their_metrics(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, top_entropy_quantile=0.2, entropy_coef=0.01,
                           max_steps=1)
    trainer.train()
    record = trainer.state.log_history[0]
    assert record["entropy_coef"] == 0.01 and "policy_loss" in record


def test_reference_is_the_policy_as_constructed_even_when_modified_in_memory(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("tiny-gpt2"))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(1.5)  # no longer what config._name_or_path holds
    trainer = GRPOTrainer(model=model, reward_funcs=count_a, args=config(tmp_path, beta=0.1, max_steps=1),
                          train_dataset=[{"prompt": p} for p in PROMPTS])
    trainer.train()
    assert trainer.state.log_history[0]["kl"] == 0.0


def test_dropout_left_on_is_warned_about(tiny_model, tmp_path):
    with pytest.warns(UserWarning, match="disable_dropout=True"):
        make_trainer(tiny_model("tiny-gpt2"), tmp_path, disable_dropout=False)


def test_reward_functions_see_completions_without_special_tokens(tiny_model, tmp_path):
    seen = []

    def rollout(prompts, trainer):
        eos = trainer.processing_class.eos_token_id
        return {"prompt_ids": [[5, 6]] * len(prompts), "completion_ids": [[40, 41, eos]] * len(prompts),
                "logprobs": None}

    def record(completions, completion_ids, **kwargs):
        seen.append((completions[0], completion_ids[0]))
        return [0.0] * len(completions)

    trainer = GRPOTrainer(model=tiny_model("tiny-gpt2"), reward_funcs=record, args=config(tmp_path, max_steps=1),
                          train_dataset=[{"prompt": p} for p in PROMPTS], rollout_func=rollout)
    trainer.train()
    text, ids = seen[0]
    assert ids[-1] == trainer.processing_class.eos_token_id and "<|endoftext|>" not in text
    assert text == trainer.processing_class.decode([40, 41])


def test_dapo_micro_batches_of_one_window_share_the_whole_generation_batchs_token_count(tiny_model, tmp_path):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tmp_path, per_device_train_batch_size=2,
                           gradient_accumulation_steps=2, max_steps=1)
    seen = []
    original = trainer.compute_loss

    def recording(model, inputs, *a, **k):
        seen.append((inputs["window_normaliser"][0].item(), trainer._buffer))
        return original(model, inputs, *a, **k)

    trainer.compute_loss = recording
    trainer.train()
    (first, buffer), (second, _) = seen
    total = sum(part["loss_mask"].sum().item() for part in buffer)
    assert first == second == total  # 4 completions over two micro-batches, one normaliser
