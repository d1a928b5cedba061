"""The grpo stage: GRPOTrainer on the configured prompts and rewards, resumable, with the held-out rewards before and
after and guardrails; the policy saved to ``<stage>/model``."""

from __future__ import annotations

import statistics

from accelerate import PartialState
from transformers import TrainerCallback

from rlhf_contract.stages.grpo import GRPOStageConfig
from rlhf_contract.workspace import read_metrics
from rlhf_trainer.stage import hf
from rlhf_trainer.stage.guardrails import ended_by, guardrail
from rlhf_trainer.stage.runner import StageContext
from rlhf_trainer.stage.scoring import reward_function
from rlhf_trainer.stage.sources import load_dataset, load_tokenizer, model_kwargs, model_path, renamed
from rlhf_trainer.trainer.grpo import GRPOTrainer
from rlhf_trainer.trainer.grpo_config import GRPOConfig

SUMMARY_STEPS = 5  # the result compares the mean reward of the first and the last this many logged steps


def dataset_columns(config: GRPOStageConfig) -> list[tuple]:
    """The datasets this stage reads and the columns it needs in each (``rlhf_trainer.stage.check``)."""
    found = [("dataset", config.dataset, [config.prompt_column])]
    if config.evaluation is not None:
        found.append(("evaluation.heldOutPrompts", config.evaluation.held_out_prompts, [config.prompt_column]))
    return found


def run(ctx: StageContext) -> dict:
    config: GRPOStageConfig = ctx.config
    train = renamed(load_dataset(config.dataset), {"prompt": config.prompt_column}, "the dataset")
    held_out = None
    if config.evaluation is not None:
        held_out = renamed(load_dataset(config.evaluation.held_out_prompts), {"prompt": config.prompt_column},
                           "evaluation.heldOutPrompts")
        if config.evaluation.max_prompts is not None:
            held_out = held_out.select(range(min(config.evaluation.max_prompts, len(held_out))))
    device = PartialState().device
    rewards = [reward_function(source, f"rewards[{i}]", config.workspace, device)
               for i, source in enumerate(config.rewards)]
    trainer = GRPOTrainer(
        model_path(config.policy, config.workspace), rewards, arguments(ctx), train_dataset=train,
        eval_dataset=held_out, processing_class=load_tokenizer(config.policy, config.workspace),
        peft_config=hf.lora_config(config.peft, "CAUSAL_LM"))
    watch = GuardrailWatch(config, read_metrics(ctx.dir.metrics))
    trainer.add_callback(watch)

    before = hf.measured_before(ctx, trainer.evaluate) if held_out is not None else None
    outcome = hf.train(trainer, ctx, train, evaluate=False)
    metrics = outcome["metrics"]
    logged = [r["metrics"]["reward"] for r in read_metrics(ctx.dir.metrics) if "reward" in r.get("metrics", {})]
    if logged:
        metrics.update(rewardFirstSteps=statistics.fmean(logged[:SUMMARY_STEPS]),
                       rewardLastSteps=statistics.fmean(logged[-SUMMARY_STEPS:]))
    if before is not None:
        after = trainer.evaluate()
        metrics.update(before_after(trainer.reward_func_names, before, after))
    if watch.reason is not None:
        outcome.update(ended_by(config.guardrails, watch.reason, outcome["steps"]))
    return outcome


def arguments(ctx: StageContext) -> GRPOConfig:
    """GRPOConfig from the stage config: its knobs, its sampling, the rewards' weights, and the stage's own."""
    config: GRPOStageConfig = ctx.config
    evaluation = config.evaluation
    samples = evaluation.samples if evaluation is not None else config.config.num_generations
    with hf.config_errors("config"):
        return GRPOConfig(
            **hf.trl_knobs(config.config), **config.generation.model_dump(), **hf.stage_arguments(ctx),
            max_steps=config.steps, reward_weights=[source.weight for source in config.rewards],
            model_init_kwargs=model_kwargs(config.policy), num_generations_eval=samples,
            per_device_eval_batch_size=samples * 8)  # eight held-out prompts per evaluation batch


def before_after(names: list[str], before: dict, after: dict) -> dict[str, float]:
    """``rewardBefore``/``rewardAfter`` (the weighted sum) and ``<function>Before``/``After`` of each reward."""
    found = {"rewardBefore": before["eval_reward"], "rewardAfter": after["eval_reward"]}
    for name in names:
        key = f"eval_rewards/{name}/mean"
        if key in before and key in after:
            found[f"{name}Before"], found[f"{name}After"] = before[key], after[key]
    return found


class GuardrailWatch(TrainerCallback):
    """Ends training when a guardrail fires, on the logged mean reward and KL (the history in metrics.jsonl
    included, so a resumed stage remembers); the trainer then saves a checkpoint."""

    def __init__(self, config: GRPOStageConfig, history: list[dict]):
        self.guardrails = config.guardrails
        self.rewards = [r["metrics"]["reward"] for r in history if "reward" in r.get("metrics", {})]
        self.kls = [r["metrics"]["kl"] for r in history if "kl" in r.get("metrics", {})]
        self.reason: str | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.guardrails is None or not logs or "reward" not in logs:
            return
        self.rewards.append(logs["reward"])
        if "kl" in logs:
            self.kls.append(logs["kl"])
        if self.reason is None and (reason := guardrail(self.guardrails, self.rewards, self.kls)):
            self.reason = reason
            control.should_training_stop = True
            control.should_save = True
