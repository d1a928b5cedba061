"""The sft stage: SFTTrainer on the configured dataset, resumable, the model saved to ``<stage>/model``."""

from __future__ import annotations

from rlhf_trainer.stage import hf
from rlhf_trainer.stage.runner import StageContext
from rlhf_trainer.stage.sources import held_out_columns, model_kwargs, model_path, renamed, train_and_eval
from rlhf_trainer.trainer.sft import SFTTrainer


def dataset_columns(config) -> list[tuple]:
    """The datasets this stage reads and the columns it needs in each (``rlhf_trainer.stage.check``)."""
    columns = [c for c in (config.columns.text, config.columns.messages, config.columns.prompt,
                           config.columns.completion) if c is not None]
    return [("dataset", config.dataset, columns), *held_out_columns(config, columns)]


def run(ctx: StageContext) -> dict:
    config = ctx.config
    columns = config.columns
    train, held_out = train_and_eval(config.dataset, config.evaluation, config.seed)
    if columns.text is None:  # messages, or prompt + completion: the trainer reads them by these names
        mapping = {"messages": columns.messages, "prompt": columns.prompt, "completion": columns.completion}
        train = renamed(train, mapping, "the dataset")
        held_out = renamed(held_out, mapping, "the held-out dataset") if held_out is not None else None
    trainer = SFTTrainer(
        model_path(config.model, config.workspace),
        args=hf.training_arguments(ctx),
        train_dataset=train,
        eval_dataset=held_out,
        peft_config=hf.lora_config(config.peft, "CAUSAL_LM"),
        dataset_text_field=columns.text,
        max_seq_length=config.training.max_seq_length,
        packing=config.training.packing,
        completion_only_loss=config.training.completion_only_loss,
        model_init_kwargs=model_kwargs(config.model),
    )
    return hf.train(trainer, ctx, train, evaluate=held_out is not None)
