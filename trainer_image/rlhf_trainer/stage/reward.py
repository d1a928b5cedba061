"""The reward stage: RewardTrainer on preference pairs, resumable, the reward model saved to ``<stage>/model``."""

from __future__ import annotations

from rlhf_trainer.stage import hf
from rlhf_trainer.stage.runner import StageContext
from rlhf_trainer.stage.sources import held_out_columns, model_kwargs, model_path, renamed, train_and_eval
from rlhf_trainer.trainer.reward import RewardConfig, RewardTrainer


def dataset_columns(config) -> list[tuple]:
    """The datasets this stage reads and the columns it needs in each (``rlhf_trainer.stage.check``)."""
    columns = [c for c in (config.columns.prompt, config.columns.chosen, config.columns.rejected,
                           config.columns.margin) if c is not None]
    return [("dataset", config.dataset, columns), *held_out_columns(config, columns)]


def run(ctx: StageContext) -> dict:
    config = ctx.config
    columns = config.columns
    mapping = {"chosen": columns.chosen, "rejected": columns.rejected, "prompt": columns.prompt,
               "margin": columns.margin}
    train, held_out = train_and_eval(config.dataset, config.evaluation, config.seed)
    train = renamed(train, mapping, "the dataset")
    held_out = renamed(held_out, mapping, "the held-out dataset") if held_out is not None else None
    trainer = RewardTrainer(
        model_path(config.model, config.workspace),
        args=hf.training_arguments(ctx, RewardConfig, max_length=config.training.max_seq_length),
        train_dataset=train,
        eval_dataset=held_out,
        peft_config=hf.lora_config(config.peft, "SEQ_CLS"),
        model_init_kwargs=model_kwargs(config.model),
    )
    return hf.train(trainer, ctx, train, evaluate=held_out is not None)
