"""The ppo stage: TRL v0.7's loop (generate, score, ``PPOTrainer.step``) with checkpoints, guardrails and a
before/after evaluation on held-out prompts; the policy saved to ``<stage>/model``."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import NoReturn

import numpy as np
import torch
from transformers import AutoConfig

from rlhf_contract.stages.ppo import PPOStageConfig
from rlhf_contract.workspace import mark_complete, unmark_complete
from rlhf_trainer.core import LengthSampler, set_seed
from rlhf_trainer.models import AutoModelForCausalLMWithValueHead, AutoModelForSeq2SeqLMWithValueHead
from rlhf_trainer.stage.guardrails import ended_by, guardrail
from rlhf_trainer.stage.hf import lora_config, report_to
from rlhf_trainer.stage.judging import EVALUATION_SEED, JUDGES
from rlhf_trainer.stage.runner import StageContext, StageStopped
from rlhf_trainer.stage.scoring import make_scorer
from rlhf_trainer.stage.sources import (
    StageInputError,
    load_dataset,
    load_tokenizer,
    model_kwargs,
    model_path,
    revision,
)
from rlhf_trainer.trainer.ppo import PPOTrainer, StepInterrupted, capture_rng_state, restore_rng_state
from rlhf_trainer.trainer.ppo_config import PPOConfig

RUNNER_STATE = "runner_state.json"
SUMMARY_STEPS = 5  # the result compares the mean score of the first and the last this many steps
EVALUATION_SAMPLES = 8  # responses per held-out prompt: enough for a stable mean


@dataclass
class LoopState:
    """What the loop carries from step to step (and across a resume)."""

    step: int = 0
    scores: list[float] = field(default_factory=list)  # mean score of each step
    kls: list[float] = field(default_factory=list)  # objective/kl of each step
    before: dict | None = None  # the evaluation before PPO


def dataset_columns(config: PPOStageConfig) -> list[tuple]:
    """The datasets this stage reads and the columns it needs in each (``rlhf_trainer.stage.check``)."""
    found = [("dataset", config.dataset, [config.query.column])]
    if config.evaluation is not None:
        found.append(("evaluation.heldOutPrompts", config.evaluation.held_out_prompts, [config.query.column]))
    return found


def run(ctx: StageContext) -> dict:
    config: PPOStageConfig = ctx.config
    tokenizer = load_tokenizer(config.policy, config.workspace)
    set_seed(config.seed)  # a fresh value head (and adapters) are initialised as the policy loads
    policy = load_policy(config)
    ppo_config = PPOConfig(**config.config.model_dump(), steps=config.steps, seed=config.seed, **tracking(ctx))
    trainer = PPOTrainer(ppo_config, policy, None, tokenizer, num_shared_layers=config.num_shared_layers)
    device = trainer.accelerator.device
    scorer = make_scorer(config.reward, config.workspace, device)
    dataset = load_dataset(config.dataset)
    queries = query_tensors(dataset, config, tokenizer, "dataset")
    revisions = {"policy": revision(policy.pretrained_model), "reward": getattr(scorer, "revision", None),
                 "dataset": revision(dataset)}
    held_out = (query_tensors(load_dataset(config.evaluation.held_out_prompts), config, tokenizer,
                              "evaluation.heldOutPrompts") if config.evaluation else None)
    generation = generation_kwargs(config, tokenizer)
    length_sampler = (LengthSampler(config.generation.min_new_tokens, config.generation.max_new_tokens + 1)
                      if config.generation.min_new_tokens else None)

    state = LoopState()
    if (checkpoint := ctx.dir.latest_checkpoint()) is not None:
        trainer.load_checkpoint(checkpoint)
        state = LoopState(**json.loads((checkpoint / RUNNER_STATE).read_text()))
    if held_out is not None and state.before is None:
        state.before = evaluate(trainer, held_out, scorer, config, generation)

    trainer.should_stop = ctx.should_stop  # a step stops between its optimisation epochs when asked to
    reason = None
    while state.step < config.steps and reason is None:
        if trainer.pending_step is None:
            rng = capture_rng_state()
            batch = [queries[i] for i in batch_indices(config, state.step, len(queries), trainer.accelerator)]
            responses = trainer.generate(batch, return_prompt=False, length_sampler=length_sampler, **generation)
            query_text = tokenizer.batch_decode(batch, skip_special_tokens=True)
            response_text = tokenizer.batch_decode(responses, skip_special_tokens=True)
            scores = scorer(query_text, response_text)
            if ctx.should_stop():  # lose only this generation: a resumed run samples it again, the same way
                restore_rng_state(rng)
                stop(trainer, ctx, state)
            step = partial(trainer.step, batch, responses, [torch.tensor(s) for s in scores])
            samples = {"query": query_text, "response": response_text}
        else:  # a stop interrupted this step between its optimisation epochs: finish it
            scores, step, samples = trainer.pending_step.raw_scores.tolist(), trainer.resume_step, {}
        try:
            stats = step()
        except StepInterrupted:
            stop(trainer, ctx, state)
        trainer.log_stats(stats, samples, scores)
        state.step += 1
        state.scores.append(stats["env/reward_mean"])
        state.kls.append(float(stats["objective/kl"]))
        ctx.report(state.step, config.steps, {k: v for k, v in stats.items() if np.ndim(v) == 0})
        reason = guardrail(config.guardrails, state.scores, state.kls)
        stopping = ctx.should_stop()
        if reason or stopping or state.step % config.checkpointing.save_steps == 0:
            save_checkpoint(trainer, ctx, state)
        if stopping and reason is None and state.step < config.steps:
            raise StageStopped

    after = evaluate(trainer, held_out, scorer, config, generation) if held_out is not None else None
    save_policy(trainer, ctx, config)
    return {**outcome(config, state, reason, after), "revisions": revisions}


def stop(trainer: PPOTrainer, ctx: StageContext, state: LoopState) -> NoReturn:
    """Checkpoint where the loop is (with the step in progress, if a stop interrupted one) and stop."""
    save_checkpoint(trainer, ctx, state)
    raise StageStopped


def tracking(ctx: StageContext) -> dict:
    """PPOConfig's tracker settings from the stage's reportTo (accelerate trackers: tensorboard or wandb)."""
    trackers = [t for t in report_to(ctx.config) if t in ("tensorboard", "wandb")]
    if not trackers:
        return {}
    return {"log_with": trackers[0],
            "project_kwargs": {"project_dir": str(ctx.dir.root), "logging_dir": str(ctx.dir.root / "tensorboard")}}


def load_policy(config: PPOStageConfig):
    path = model_path(config.policy, config.workspace)
    seq2seq = AutoConfig.from_pretrained(path, trust_remote_code=config.policy.trust_remote_code).is_encoder_decoder
    model_class = AutoModelForSeq2SeqLMWithValueHead if seq2seq else AutoModelForCausalLMWithValueHead
    peft = lora_config(config.peft, "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")
    return model_class.from_pretrained(path, peft_config=peft, **model_kwargs(config.policy))


def query_tensors(dataset, config: PPOStageConfig, tokenizer, field_path: str) -> list[torch.Tensor]:
    """Each row's prompt as token ids, cut to the configured length (a random one in [minTokens, maxTokens])."""
    column = config.query.column
    if column not in dataset.column_names:
        raise StageInputError(f"{field_path} has no column {column!r} (its columns: {dataset.column_names}); "
                              "set query.column")
    rng = np.random.default_rng(config.seed)
    queries = []
    for row, text in enumerate(dataset[column]):
        ids = tokenizer(text)["input_ids"] if isinstance(text, str) else []
        if not ids:
            raise StageInputError(f"{field_path} row {row}: {column!r} is {text!r}; every prompt needs text")
        if config.query.max_tokens is not None:
            low = config.query.min_tokens or config.query.max_tokens
            ids = ids[:int(rng.integers(low, config.query.max_tokens + 1))]
        queries.append(torch.tensor(ids))
    return queries


def generation_kwargs(config: PPOStageConfig, tokenizer) -> dict:
    generation = config.generation
    return {"max_new_tokens": generation.max_new_tokens, "do_sample": generation.do_sample,
            "temperature": generation.temperature, "top_k": generation.top_k, "top_p": generation.top_p,
            "pad_token_id": tokenizer.pad_token_id}


def batch_indices(config: PPOStageConfig, step: int, size: int, accelerator) -> list[int]:
    """This process's prompts for ``step``: a function of seed and step only, so a resumed run draws the same."""
    per_process = config.config.batch_size
    total = per_process * accelerator.num_processes
    rng = np.random.default_rng([config.seed, step])
    chosen = rng.choice(size, size=total, replace=size < total)
    start = accelerator.process_index * per_process
    return chosen[start:start + per_process].tolist()


@torch.no_grad()
def evaluate(trainer: PPOTrainer, queries: list[torch.Tensor], scorer, config: PPOStageConfig,
             generation: dict) -> dict:
    """Mean reward (and judge score) of the policy's responses to held-out prompts, sampled with a fixed seed."""
    tokenizer = trainer.tokenizer
    queries = [query for query in queries for _ in range(EVALUATION_SAMPLES)]
    kwargs = {**generation, "max_new_tokens": config.generation.max_new_tokens}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVALUATION_SEED)
        responses = trainer.generate(queries, return_prompt=False, **kwargs)
    query_text = tokenizer.batch_decode(queries, skip_special_tokens=True)
    response_text = tokenizer.batch_decode(responses, skip_special_tokens=True)
    result = {"reward": statistics.fmean(scorer(query_text, response_text)),
              "samples": [q + r for q, r in zip(query_text, response_text, strict=True)][::EVALUATION_SAMPLES]}
    if config.evaluation.judge != "none":
        judged = JUDGES[config.evaluation.judge]([q + r for q, r in zip(query_text, response_text, strict=True)])
        result[config.evaluation.judge] = statistics.fmean(judged)
    return result


def save_checkpoint(trainer: PPOTrainer, ctx: StageContext, state: LoopState) -> None:
    checkpoint = ctx.dir.checkpoint(state.step)
    if trainer.accelerator.is_main_process:  # saved again at the same step (a stop): incomplete until rewritten
        unmark_complete(checkpoint)
    trainer.save_checkpoint(checkpoint)
    if trainer.accelerator.is_main_process:
        (checkpoint / RUNNER_STATE).write_text(json.dumps(asdict(state)))
        mark_complete(checkpoint)
        keep = ctx.config.checkpointing.save_total_limit
        older = sorted((p for p in ctx.dir.checkpoints.glob("checkpoint-*") if p != checkpoint),
                       key=lambda p: int(p.name.rpartition("-")[2]))
        for stale in older[:max(0, len(older) - keep + 1)]:
            _remove(stale)
    trainer.accelerator.wait_for_everyone()


def _remove(path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def save_policy(trainer: PPOTrainer, ctx: StageContext, config: PPOStageConfig) -> None:
    """The policy with its value head (LoRA merged in unless ``peft.merge`` is false) and the tokenizer."""
    if config.peft is not None and config.peft.merge:
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.pretrained_model = model.pretrained_model.merge_and_unload()
        model.is_peft_model = False
    trainer.save_pretrained(str(ctx.dir.model))


def outcome(config: PPOStageConfig, state: LoopState, reason: str | None, after: dict | None) -> dict:
    """The ppo part of result.json."""
    first = state.scores[:SUMMARY_STEPS]
    last = state.scores[-SUMMARY_STEPS:]
    result = {
        "steps": state.step, "totalSteps": config.steps,
        "metrics": {"meanScoreFirstSteps": statistics.fmean(first), "meanScoreLastSteps": statistics.fmean(last),
                    "kl": state.kls[-1]},
        "scores": state.scores,
    }
    if reason is not None:
        result.update(ended_by(config.guardrails, reason, state.step))
    if after is not None:
        result["evaluation"] = {"before": state.before, "after": after}
        for key in ("reward", "vader"):
            if key in after:
                result["metrics"][f"{key}Before"] = state.before[key]
                result["metrics"][f"{key}After"] = after[key]
    return result
