"""PPOTrainer around the step: generate, the dataloader, log_stats, checkpoints."""

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from ppo_helpers import make_trainer, queries, rollout
from safetensors.torch import load_file

from rlhf_trainer import PPOConfig, PPOTrainer
from rlhf_trainer.core import LengthSampler, set_seed
from rlhf_trainer.trainer.ppo import StepInterrupted


class _CountTo:
    """Stands in for a model's generate: appends 10, 11, 12, ... and then EOS (0) and padding (1)."""

    def __init__(self, lengths):
        self.lengths = iter(lengths)

    def __call__(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for _ in range(len(input_ids)):
            n = next(self.lengths)  # new tokens before EOS; None = no EOS at all
            row = list(range(10, 10 + (n if n is not None else max_new_tokens)))
            row = (row + [0] if n is not None else row) + [1] * max_new_tokens
            rows.append(row[:max_new_tokens])
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)


def test_generate_list_strips_left_padding_and_keeps_eos(tiny_model, tiny_tokenizer, monkeypatch):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    trainer.fast_generation = False  # generate() is replaced below
    model = trainer.accelerator.unwrap_model(trainer.model)
    monkeypatch.setattr(model, "generate", _CountTo([2, None, 0]))
    qs = [torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([9, 9])]
    out = trainer.generate(qs, max_new_tokens=5)
    assert [o.tolist() for o in out] == [[5, 6, 7, 10, 11, 0], [8, 10, 11, 12, 13, 14], [9, 9, 0]]
    monkeypatch.setattr(model, "generate", _CountTo([1, 3, 0]))
    assert [o.tolist() for o in trainer.generate(qs, max_new_tokens=5, return_prompt=False)] == [
        [10, 0], [10, 11, 12, 0], [0]]


def test_generate_batches_and_samples_lengths(tiny_model, tiny_tokenizer, monkeypatch):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    trainer.fast_generation = False  # generate() is spied on below
    model = trainer.accelerator.unwrap_model(trainer.model)
    calls = []
    real = model.generate

    def spy(**kwargs):
        calls.append((len(kwargs["input_ids"]), kwargs["max_new_tokens"]))
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    set_seed(0)
    out = trainer.generate(queries(tiny_tokenizer, 5), batch_size=2, length_sampler=LengthSampler(2, 5),
                           return_prompt=False, do_sample=True, top_k=0)
    assert [size for size, _ in calls] == [2, 2, 1]
    assert all(2 <= n < 5 for _, n in calls)
    assert all(len(o) <= n for o, n in zip(out, [calls[0][1]] * 2 + [calls[1][1]] * 2 + [calls[2][1]], strict=True))


def test_generate_matches_unpadded_greedy_generation(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    qs = queries(tiny_tokenizer, 3)  # different lengths: the batch is left-padded
    batched = trainer.generate(qs, max_new_tokens=6, do_sample=False)
    for query, response in zip(qs, batched, strict=True):
        alone = trainer.generate(query, max_new_tokens=6, do_sample=False)
        assert alone.shape[0] == 1 and torch.equal(alone[0], response)


def test_generate_seq2seq_returns_only_generated_tokens(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-t5"), tiny_tokenizer, seq2seq=True)
    out = trainer.generate(queries(tiny_tokenizer, 2), max_new_tokens=4, min_new_tokens=4, do_sample=True, top_k=0)
    assert [len(o) for o in out] == [4, 4]
    stats = trainer.step(queries(tiny_tokenizer, 4), out + out, [torch.tensor(1.0)] * 4)
    assert stats["tokens/responses_len_mean"] == 4


def test_dataloader_yields_batches_of_lists(tiny_model, tiny_tokenizer):
    rows = {"query": [f"q{i}" for i in range(10)], "input_ids": [list(range(i + 1)) for i in range(10)],
            "review": ["x"] * 10}
    model_path = tiny_model("tiny-gpt2")
    from ppo_helpers import load_policy

    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2), load_policy(model_path), None, tiny_tokenizer,
                         dataset=Dataset.from_dict(rows).with_format("torch", columns=["input_ids"],
                                                                      output_all_columns=True))
    batches = list(trainer.dataloader)
    assert len(batches) == 2  # 10 rows, batches of 4, the partial one dropped
    assert set(batches[0]) == {"query", "input_ids"}  # 'review' is not used by the model
    assert len(batches[0]["input_ids"]) == 4 and all(isinstance(t, torch.Tensor) for t in batches[0]["input_ids"])


def test_log_stats_adds_reward_statistics(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    stats = {"objective/kl": 0.5}
    trainer.log_stats(stats, {"query": ["a", "b"], "response": ["c", "d"]}, [torch.tensor(1.0), torch.tensor(3.0)])
    assert stats["env/reward_mean"] == 2.0
    assert stats["env/reward_std"] == pytest.approx(2**0.5)
    assert stats["env/reward_dist"].tolist() == [1.0, 3.0]


def test_log_stats_writes_to_tensorboard(tiny_model, tiny_tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, log_with="tensorboard",
                           project_kwargs={"project_dir": str(tmp_path)})
    trainer.log_stats({"objective/kl": 0.5}, {}, torch.tensor([1.0, 2.0]))
    trainer.accelerator.end_training()
    assert list(tmp_path.rglob("events.out.tfevents*"))


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_resuming_from_a_checkpoint_continues_exactly(tiny_model, tiny_tokenizer, tmp_path, peft):
    """Stop after two steps, restore into a fresh trainer: the third step equals the uninterrupted run's."""
    path = tiny_model("tiny-gpt2")
    model_kwargs = {"peft_config": LoraConfig(task_type="CAUSAL_LM", r=4)} if peft else {}
    settings = {"learning_rate": 1e-3, "use_score_scaling": True}

    def make():
        return make_trainer(path, tiny_tokenizer, model_kwargs=model_kwargs, **settings)

    first = make()
    batches = [rollout(first, tiny_tokenizer, 4) for _ in range(3)]
    scores = [[torch.tensor(float(i)) for i in range(4)]] * 3
    for qs, rs in batches[:2]:
        first.step(qs, rs, scores[0])
    first.save_checkpoint(tmp_path / "checkpoint")
    if peft:  # only adapters and value head are saved for a PEFT policy
        saved = load_file(tmp_path / "checkpoint" / "trainable.safetensors")
        assert saved and all("lora_" in name or name.startswith("v_head.") for name in saved)
    uninterrupted = first.step(*batches[2], scores[2])

    resumed = make()
    resumed.load_checkpoint(tmp_path / "checkpoint")
    assert resumed.kl_ctl.value == pytest.approx(first.kl_ctl.value, rel=1e-3) and resumed.current_step == 2
    again = resumed.step(*batches[2], scores[2])
    for key in ("ppo/loss/policy", "ppo/loss/value", "objective/kl", "ppo/mean_scores", "objective/kl_coef"):
        assert again[key] == pytest.approx(uninterrupted[key], rel=1e-4, abs=1e-6), key


def test_a_step_stopped_between_its_epochs_resumes_exactly_from_its_checkpoint(tiny_model, tiny_tokenizer, tmp_path):
    """A stop asked for in the middle of a step's optimisation epochs: the step's state goes into the checkpoint,
    and a fresh trainer finishes the step and trains on exactly as if nothing had stopped."""
    path = tiny_model("tiny-gpt2")
    settings = {"learning_rate": 1e-3, "ppo_epochs": 3, "use_score_scaling": True}
    scores = [torch.tensor(float(i)) for i in range(4)]
    sampler = make_trainer(path, tiny_tokenizer, **settings)
    batches = [rollout(sampler, tiny_tokenizer, 4) for _ in range(3)]
    set_seed(0)  # the same fresh value head; each trainer then seeds the RNG its epochs shuffle with
    straight = make_trainer(path, tiny_tokenizer, **settings)
    expected = [straight.step(qs, rs, scores) for qs, rs in batches]

    set_seed(0)
    stopped = make_trainer(path, tiny_tokenizer, **settings)
    stopped.step(*batches[0], scores)
    asked = iter([False, True])  # asked after epoch 1 (go on) and after epoch 2 (stop)
    stopped.should_stop = lambda: next(asked)
    with pytest.raises(StepInterrupted, match="after epoch 2 of 3"):
        stopped.step(*batches[1], scores)
    assert stopped.pending_step.epochs_done == 2
    stopped.save_checkpoint(tmp_path / "checkpoint")

    resumed = make_trainer(path, tiny_tokenizer, **settings)
    resumed.load_checkpoint(tmp_path / "checkpoint")
    finished = resumed.resume_step()
    again = resumed.step(*batches[2], scores)
    for got, want in ((finished, expected[1]), (again, expected[2])):
        for key in ("ppo/loss/policy", "ppo/loss/value", "objective/kl", "ppo/mean_scores", "objective/kl_coef"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    assert resumed.pending_step is None and resumed.current_step == 3
