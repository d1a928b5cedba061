"""The dpo stage: DPOTrainer on the configured preference pairs, resumable; preference accuracy held out, and the
judge of the policy's continuations of held-out prompts before and after; the policy saved to ``<stage>/model``."""

from __future__ import annotations

from rlhf_contract.stages.dpo import DPOStageConfig
from rlhf_trainer.stage import hf
from rlhf_trainer.stage.judging import judge_continuations
from rlhf_trainer.stage.runner import StageContext
from rlhf_trainer.stage.sources import (
    StageInputError,
    load_dataset,
    load_tokenizer,
    model_kwargs,
    model_path,
    renamed,
    train_and_eval,
)
from rlhf_trainer.trainer.dpo import DPOTrainer
from rlhf_trainer.trainer.dpo_config import DPOConfig


def _pair_columns(config: DPOStageConfig) -> dict[str, str | None]:
    columns = config.columns
    return {"prompt": columns.prompt, "chosen": columns.chosen, "rejected": columns.rejected}


def dataset_columns(config: DPOStageConfig) -> list[tuple]:
    """The datasets this stage reads and the columns it needs in each (``rlhf_trainer.stage.check``)."""
    columns = [c for c in _pair_columns(config).values() if c is not None]
    found = [("dataset", config.dataset, columns)]
    evaluation = config.evaluation
    if evaluation is not None and evaluation.held_out is not None and evaluation.held_out.split is not None:
        held_out = config.dataset.model_copy(update={"split": evaluation.held_out.split})
        found.append(("evaluation.heldOut.split", held_out, columns))
    if evaluation is not None and evaluation.held_out_prompts is not None:
        found.append(("evaluation.heldOutPrompts", evaluation.held_out_prompts, [evaluation.prompt_column]))
    return found


def run(ctx: StageContext) -> dict:
    config: DPOStageConfig = ctx.config
    evaluation = config.evaluation
    train, held_out = train_and_eval(config.dataset, evaluation.held_out if evaluation else None, config.seed)
    train = renamed(train, _pair_columns(config), "the dataset")
    held_out = renamed(held_out, _pair_columns(config), "the held-out pairs") if held_out is not None else None
    tokenizer = load_tokenizer(config.policy, config.workspace)
    trainer = DPOTrainer(model_path(config.policy, config.workspace), args=arguments(ctx), train_dataset=train,
                         eval_dataset=held_out, processing_class=tokenizer,
                         peft_config=hf.lora_config(config.peft, "CAUSAL_LM"))
    judged = evaluation is not None and evaluation.judge is not None
    if judged:
        prompts = load_dataset(evaluation.held_out_prompts)
        if evaluation.prompt_column not in prompts.column_names:
            raise StageInputError(f"evaluation.heldOutPrompts has no column {evaluation.prompt_column!r} (its "
                                  f"columns: {prompts.column_names}); set evaluation.promptColumn")
        prompts = list(prompts[evaluation.prompt_column])

        def judge() -> dict[str, float]:
            model = trainer.accelerator.unwrap_model(trainer.model)
            return {evaluation.judge: judge_continuations(model, tokenizer, prompts, evaluation.judge,
                                                          evaluation.samples, evaluation.max_new_tokens)}

        before = hf.measured_before(ctx, judge)
    outcome = hf.train(trainer, ctx, train, evaluate=held_out is not None)
    if judged:
        after = judge()
        outcome["metrics"].update({f"{name}Before": before[name] for name in before})
        outcome["metrics"].update({f"{name}After": after[name] for name in after})
    return outcome


def arguments(ctx: StageContext) -> DPOConfig:
    """DPOConfig from the stage config: its knobs and the stage's own settings."""
    config: DPOStageConfig = ctx.config
    knobs = hf.trl_knobs(config.config)
    knobs["max_steps"] = knobs["max_steps"] or -1  # unset: numTrainEpochs decides
    with hf.config_errors("config"):
        return DPOConfig(**knobs, **hf.stage_arguments(ctx), model_init_kwargs=model_kwargs(config.policy))
