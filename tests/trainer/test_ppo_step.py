"""PPOTrainer.step: the traps of docs/algorithms/ppo.md and every PPOConfig knob, on tiny local models."""

import copy
import math

import numpy as np
import pytest
import torch
from ppo_helpers import (
    load_policy,
    make_trainer,
    queries,
    rollout,
)

from rlhf_trainer import PPOConfig, PPOTrainer
from rlhf_trainer.core import PPODecorators, masked_var

STATS_KEYS = [
    "objective/kl", "objective/kl_dist", "objective/logprobs", "objective/ref_logprobs", "objective/kl_coef",
    "objective/entropy", "ppo/mean_non_score_reward", "ppo/mean_scores", "ppo/std_scores",
    "tokens/queries_len_mean", "tokens/queries_len_std", "tokens/queries_dist", "tokens/responses_len_mean",
    "tokens/responses_len_std", "tokens/responses_dist", "ppo/loss/policy", "ppo/loss/value",
    "ppo/loss/total", "ppo/policy/entropy", "ppo/policy/approxkl", "ppo/policy/policykl",
    "ppo/policy/clipfrac", "ppo/policy/advantages", "ppo/policy/advantages_mean", "ppo/policy/ratio",
    "ppo/returns/mean", "ppo/returns/var", "ppo/val/vpred", "ppo/val/error", "ppo/val/clipfrac",
    "ppo/val/mean", "ppo/val/var", "ppo/val/var_explained", "ppo/learning_rate", "time/ppo/forward_pass",
    "time/ppo/compute_rewards", "time/ppo/compute_advantages", "time/ppo/optimize_step",
    "time/ppo/calc_stats", "time/ppo/total",
]


def scores_of(n, value=1.0):
    return [torch.tensor(value) for _ in range(n)]


def test_seed_snippet_runs_verbatim(tiny_model):
    gpt2_dir = tiny_model("tiny-gpt2")
    # --- the seed's snippet, with a local directory in place of 'gpt2' ---
    import torch
    from transformers import AutoTokenizer

    from rlhf_trainer import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer, create_reference_model
    from rlhf_trainer.core import respond_to_batch

    model = AutoModelForCausalLMWithValueHead.from_pretrained(gpt2_dir)
    model_ref = create_reference_model(model)
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    query_txt = "This morning I went to the "
    query_tensor = tokenizer.encode(query_txt, return_tensors="pt")
    response_tensor = respond_to_batch(model, query_tensor)
    ppo_config = PPOConfig(batch_size=1)
    ppo_trainer = PPOTrainer(ppo_config, model, model_ref, tokenizer)
    reward = [torch.tensor(1.0)]
    train_stats = ppo_trainer.step([query_tensor[0]], [response_tensor[0]], reward)
    # --- end of the seed ---
    assert set(STATS_KEYS) <= set(train_stats)
    assert response_tensor.shape == (1, 20)
    assert train_stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1
    assert train_stats["ppo/mean_scores"] == 1.0


def test_first_minibatch_ratio_is_one_with_dropout_configured_on(tiny_model, tiny_tokenizer):
    path = tiny_model("tiny-gpt2", resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    trainer = make_trainer(path, tiny_tokenizer, batch_size=4, mini_batch_size=4, ppo_epochs=1,
                           model_kwargs={"summary_dropout_prob": 0.5})
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    stats = trainer.step(qs, rs, scores_of(4))
    np.testing.assert_allclose(stats["ppo/policy/ratio"], 1.0, atol=1e-5)
    assert stats["ppo/policy/approxkl"] == pytest.approx(0.0, abs=1e-10)
    assert stats["ppo/val/clipfrac"] == 0.0  # values unchanged too: the value head's dropout is off


def test_first_minibatch_ratio_is_one_for_opt_and_its_functional_dropout(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-opt", dropout=0.5, attention_dropout=0.5, layerdrop=0.5),
                           tiny_tokenizer, batch_size=4, mini_batch_size=4, ppo_epochs=1)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    np.testing.assert_allclose(trainer.step(qs, rs, scores_of(4))["ppo/policy/ratio"], 1.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["kl", "abs", "mse", "full"])
def test_kl_is_zero_when_policy_equals_reference(tiny_model, tiny_tokenizer, mode):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, kl_penalty=mode, ppo_epochs=1)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    stats = trainer.step(qs, rs, scores_of(4))
    assert stats["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    np.testing.assert_allclose(stats["objective/kl_dist"], 0.0, atol=1e-5)
    assert stats["ppo/mean_non_score_reward"] == pytest.approx(0.0, abs=1e-6)


def test_logprobs_under_left_padding_match_each_sequence_alone(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    qs = [torch.tensor([5, 6, 7, 8, 9, 10, 11]), torch.tensor([12, 13]), torch.tensor([14, 15, 16]),
          torch.tensor([17])]
    rs = [torch.tensor([20, 21, 22]), torch.tensor([23]), torch.tensor([24, 25, 26, 27, 28]), torch.tensor([29, 30])]
    batch = trainer._prepare_model_inputs(qs, rs, None)
    lp = trainer._rollout(batch).logprobs
    model = trainer.model.eval()
    for i, (q, r) in enumerate(zip(qs, rs, strict=True)):
        logits = model(torch.cat([q, r])[None])[0][0, len(q) - 1:-1]
        alone = logits.log_softmax(-1).gather(-1, r[:, None]).squeeze(-1)
        torch.testing.assert_close(lp[i, :len(r)], alone, atol=1e-5, rtol=1e-5)
        assert torch.all(lp[i, len(r):] == 0)


def test_logprobs_use_the_generation_temperature(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, batch_size=2, mini_batch_size=2)
    qs = queries(tiny_tokenizer, 2)
    rs = trainer.generate(qs, return_prompt=False, max_new_tokens=4, min_new_tokens=4, do_sample=True,
                          top_k=0, temperature=0.5)
    assert trainer.generation_temperature == 0.5
    lp = trainer._rollout(trainer._prepare_model_inputs(qs, rs, None)).logprobs
    q, r = qs[0], rs[0]
    logits = trainer.model.eval()(torch.cat([q, r])[None])[0][0, len(q) - 1:-1] / 0.5
    torch.testing.assert_close(lp[0], logits.log_softmax(-1).gather(-1, r[:, None]).squeeze(-1))


def test_rewards_advantages_and_losses_match_float64_by_hand(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, gamma=0.9, lam=0.8, init_kl_coef=0.5)
    kl = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    values = torch.tensor([[0.3, 0.1, -0.4], [0.2, 0.0, 0.0]])
    scores = torch.tensor([1.0, -2.0])
    rewards, non_score = trainer._compute_rewards(scores, kl, mask)
    expected = [[-0.05, 0.1, -0.15 + 1.0], [-0.2, -0.25 - 2.0, 0.0]]
    torch.testing.assert_close(rewards, torch.tensor(expected))
    advantages, returns = trainer._compute_advantages(values, rewards, mask)
    by_hand = []
    for row in range(2):
        n = int(mask[row].sum())
        adv, last = [0.0] * n, 0.0
        for t in reversed(range(n)):
            next_value = values[row, t + 1].item() if t + 1 < n else 0.0
            last = rewards[row, t].item() + 0.9 * next_value - values[row, t].item() + 0.9 * 0.8 * last
            adv[t] = last
        by_hand.append(adv)
    flat = [a for row in by_hand for a in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((a - mean) ** 2 for a in flat) / (len(flat) - 1))
    whitened = [(a - mean) / math.sqrt(std**2 + 1e-8) for a in flat]
    assert advantages[mask.bool()].tolist() == pytest.approx(whitened, abs=1e-5)
    assert returns[0].tolist() == pytest.approx([a + v for a, v in zip(by_hand[0], values[0].tolist(), strict=True)])


def test_whiten_rewards_keeps_their_mean(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, whiten_rewards=True, gamma=1.0, lam=1.0)
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    _, returns = trainer._compute_advantages(torch.zeros(2, 3), rewards, mask)
    white = (rewards - 3.0) / masked_var(rewards, mask).sqrt() + 3.0
    # gamma = lam = 1, values 0: returns are reward-to-go of the whitened rewards
    torch.testing.assert_close(returns[0, 0], white[0].sum(), atol=1e-4, rtol=1e-4)


def test_adaptive_kl_coefficient_updates_with_the_batch_kl(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, init_kl_coef=0.2, target=6, horizon=100)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    stats = trainer.step(qs, rs, scores_of(4))
    error = float(np.clip(stats["objective/kl"] / 6 - 1, -0.2, 0.2))
    assert trainer.kl_ctl.value == pytest.approx(0.2 * (1 + error * 4 / 100))
    fixed = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, adap_kl_ctrl=False, init_kl_coef=0.3)
    fixed.step(qs, rs, scores_of(4))
    assert fixed.kl_ctl.value == 0.3


def test_stats_have_the_documented_meanings(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, ppo_epochs=2)
    with torch.no_grad():  # make the reference differ from the policy
        for p in trainer.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    rs[1] = rs[1][:3]
    stats = trainer.step(qs, rs, [torch.tensor(s) for s in (1.0, 2.0, 3.0, 6.0)])
    lp, ref = stats["objective/logprobs"], stats["objective/ref_logprobs"]
    assert len(lp) == 6 + 3 + 6 + 6  # response tokens only
    per_token_kl = lp - ref
    sums = [per_token_kl[:6].sum(), per_token_kl[6:9].sum(), per_token_kl[9:15].sum(), per_token_kl[15:].sum()]
    np.testing.assert_allclose(stats["objective/kl_dist"], sums, rtol=1e-4, atol=1e-5)
    assert stats["objective/kl"] == pytest.approx(np.mean(sums), abs=1e-5)
    assert stats["objective/entropy"] == pytest.approx(-np.mean([lp[:6].sum(), lp[6:9].sum(), lp[9:15].sum(),
                                                                  lp[15:].sum()]), rel=1e-5)
    assert stats["ppo/mean_non_score_reward"] == pytest.approx(-0.2 * per_token_kl.mean(), rel=1e-4, abs=1e-6)
    assert stats["ppo/mean_scores"] == pytest.approx(3.0)
    assert stats["ppo/std_scores"] == pytest.approx(np.std([1, 2, 3, 6], ddof=1))
    assert stats["tokens/responses_dist"].tolist() == [6, 3, 6, 6]
    assert stats["tokens/queries_len_mean"] == pytest.approx(np.mean([len(q) for q in qs]))
    assert len(stats["ppo/policy/ratio"]) == 2 * 21  # every trained token of both epochs
    assert stats["ppo/val/var_explained"] == pytest.approx(1 - stats["ppo/val/error"] / stats["ppo/returns/var"])
    assert stats["ppo/loss/total"] == pytest.approx(stats["ppo/loss/policy"] + 0.1 * stats["ppo/loss/value"],
                                                    rel=1e-4, abs=1e-6)


def test_response_masks_exclude_tokens(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    masks = [torch.tensor([1, 1, 0, 0, 1, 1]) for _ in range(4)]
    stats = trainer.step(qs, rs, scores_of(4), response_masks=masks)
    assert len(stats["objective/logprobs"]) == 16 and len(stats["ppo/policy/advantages"]) == 16


def test_score_scaling_normalisation_and_clipping(tiny_model, tiny_tokenizer):
    qs_rs = None
    for kwargs, expected_mean in [({"score_clip": 0.5}, 0.5),
                                  ({"use_score_scaling": True, "use_score_norm": True}, 0.0)]:
        trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, ppo_epochs=1, **kwargs)
        qs_rs = qs_rs or rollout(trainer, tiny_tokenizer, 4)
        stats = trainer.step(*qs_rs, [torch.tensor(s) for s in (3.0, 5.0, 7.0, 9.0)])
        assert stats["ppo/mean_scores"] == pytest.approx(expected_mean, abs=1e-5)
    # scaling alone divides by the running std (the first batch's: std of 3, 5, 7, 9 = 2.58)
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, ppo_epochs=1, use_score_scaling=True)
    stats = trainer.step(*qs_rs, [torch.tensor(s) for s in (3.0, 5.0, 7.0, 9.0)])
    assert stats["ppo/mean_scores"] == pytest.approx(6.0 / np.std([3, 5, 7, 9], ddof=1), rel=1e-4)


def parameters_of(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_ratio_threshold_skips_the_update(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, ratio_threshold=0.5, ppo_epochs=1)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    before = parameters_of(trainer)
    with pytest.warns(UserWarning, match="ratio_threshold"):
        trainer.step(qs, rs, scores_of(4))
    assert all(torch.equal(a, b) for a, b in zip(before, parameters_of(trainer), strict=True))
    assert not trainer.optimizer.state  # Adam never stepped


def count_optimizer_steps(trainer):
    counter = []
    trainer.optimizer.optimizer.register_step_post_hook(lambda *args: counter.append(1))
    return counter


def test_gradient_accumulation_steps_once_per_backward_batch(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, batch_size=8, mini_batch_size=2,
                           gradient_accumulation_steps=2, ppo_epochs=3)
    steps = count_optimizer_steps(trainer)
    qs, rs = rollout(trainer, tiny_tokenizer, 8)
    trainer.step(qs, rs, scores_of(8))
    assert len(steps) == 3 * 8 // 4


def test_early_stopping_ends_the_epochs(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, early_stopping=True, target_kl=1e-9,
                           ppo_epochs=4, learning_rate=1e-2)
    steps = count_optimizer_steps(trainer)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    stats = trainer.step(qs, rs, [torch.tensor(s) for s in (1.0, -1.0, 2.0, 0.0)])
    assert len(steps) == 2  # one epoch of two mini batches, then the policy KL is over 1.5 * target_kl
    assert len(stats["ppo/policy/ratio"]) == 4 * 6


def test_optimize_device_cache_frees_memory_between_phases(tiny_model, tiny_tokenizer, monkeypatch):
    import rlhf_trainer.trainer.ppo as ppo_module

    freed = []
    monkeypatch.setattr(ppo_module, "free_accelerator_memory", lambda: freed.append(1))
    monkeypatch.setattr(PPODecorators, "optimize_device_cache", False)
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, ppo_epochs=1, optimize_device_cache=True)
    assert PPODecorators.optimize_device_cache  # as in TRL: a subclass's decorated methods follow the config
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    trainer.step(qs, rs, scores_of(4))
    assert len(freed) == 2  # after the rollout pass and after the optimisation
    trainer.config.optimize_device_cache = False
    trainer.step(qs, rs, scores_of(4))
    assert len(freed) == 2


def test_max_grad_norm_bounds_the_update(tiny_model, tiny_tokenizer):
    model = load_policy(tiny_model("tiny-gpt2"))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    config = PPOConfig(batch_size=4, mini_batch_size=4, ppo_epochs=1, max_grad_norm=1e-3)
    trainer = PPOTrainer(config, model, None, tiny_tokenizer, optimizer=optimizer)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    before = parameters_of(trainer)
    trainer.step(qs, rs, [torch.tensor(s) for s in (1.0, -1.0, 2.0, 0.0)])
    change = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(before, parameters_of(trainer), strict=True)))
    assert 0 < change.item() <= 1e-3 * 1.0001


def test_lr_scheduler_steps_once_per_ppo_step(tiny_model, tiny_tokenizer):
    model = load_policy(tiny_model("tiny-gpt2"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    trainer = PPOTrainer(PPOConfig(batch_size=4, mini_batch_size=2, ppo_epochs=1), model, None, tiny_tokenizer,
                         optimizer=optimizer, lr_scheduler=scheduler)
    qs, rs = rollout(trainer, tiny_tokenizer, 4)
    rates = [trainer.step(qs, rs, scores_of(4))["ppo/learning_rate"] for _ in range(3)]
    assert rates == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_negative_kl_warns(tiny_model, tiny_tokenizer):
    model = load_policy(tiny_model("tiny-gpt2"))
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        reference.pretrained_model.transformer.ln_f.weight.mul_(20.0)  # a very sure reference
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1), model, reference,
                         tiny_tokenizer)
    qs = queries(tiny_tokenizer, 2)
    # the responses the sure reference would pick: likely for it, unremarkable for the policy
    rs = [reference.generate(q[None], max_new_tokens=6, do_sample=False)[0, len(q):] for q in qs]
    with pytest.warns(UserWarning, match="negative KL"):
        stats = trainer.step(qs, rs, scores_of(2))
    assert stats["objective/kl"] < -1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda q, r, s: (q[:3], r, s), "queries has 3 elements but config.batch_size is 4"),
        (lambda q, r, s: (q, r, [torch.ones(2, 1)] * 4), r"scores\[0\] must be a 0-d or 1-element tensor"),
        (lambda q, r, s: (q, r, [1.0] * 4), r"scores\[0\] must be a 0-d or 1-element tensor"),
        (lambda q, r, s: (q, [r[0], torch.tensor([], dtype=torch.long), *r[2:]], s), r"responses\[1\] is empty"),
        (lambda q, r, s: (q, [x[None] for x in r], s), r"responses\[0\] must be a 1-D tensor"),
        (lambda q, r, s: (q, r, torch.ones(4)), "scores must be a list"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_model, tiny_tokenizer, change, message):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    qs = queries(tiny_tokenizer, 4)
    rs = [torch.tensor([5, 6, 7])] * 4
    with pytest.raises((ValueError, TypeError), match=message):
        trainer.step(*change(qs, rs, scores_of(4)))


def test_bad_response_masks_raise(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer)
    qs, rs = queries(tiny_tokenizer, 4), [torch.tensor([5, 6, 7])] * 4
    with pytest.raises(ValueError, match=r"response_masks\[0\] has shape"):
        trainer.step(qs, rs, scores_of(4), response_masks=[torch.ones(2)] * 4)
    with pytest.raises(ValueError, match=r"response_masks\[2\] selects no token"):
        trainer.step(qs, rs, scores_of(4), response_masks=[torch.ones(3)] * 2 + [torch.zeros(3)] * 2)


def test_model_must_have_a_value_head(tiny_model, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    with pytest.raises(TypeError, match="AutoModelForCausalLMWithValueHead"):
        PPOTrainer(PPOConfig(batch_size=1), AutoModelForCausalLM.from_pretrained(tiny_model("tiny-gpt2")))


def test_shared_layers_through_the_trainer(tiny_model, tiny_tokenizer):
    model = load_policy(tiny_model("tiny-gpt2"))
    trainer = PPOTrainer(PPOConfig(batch_size=2, mini_batch_size=2, ppo_epochs=1), model, None, tiny_tokenizer,
                         num_shared_layers=1)
    wte = "pretrained_model.transformer.wte.weight"
    assert dict(trainer.ref_model.named_parameters())[wte].data_ptr() == dict(model.named_parameters())[wte].data_ptr()
    qs, rs = rollout(trainer, tiny_tokenizer, 2)
    stats = trainer.step(qs, rs, scores_of(2))
    assert math.isfinite(stats["ppo/loss/total"])



def test_generation_config_temperature_is_remembered_too(tiny_model, tiny_tokenizer):
    trainer = make_trainer(tiny_model("tiny-gpt2"), tiny_tokenizer, batch_size=2, mini_batch_size=2)
    trainer.model.pretrained_model.generation_config.temperature = 0.7
    trainer.generate(queries(tiny_tokenizer, 2), max_new_tokens=2, do_sample=True, top_k=0)
    assert trainer.generation_temperature == 0.7
    trainer.generate(queries(tiny_tokenizer, 2), max_new_tokens=2, do_sample=True, top_k=0, temperature=1.0)
    assert trainer.generation_temperature == 1.0
