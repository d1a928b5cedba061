"""Glue between a stage config and transformers' Trainer, shared by the runners of the Trainer-based stages (sft,
reward, grpo): arguments, the callback that reports and stops, training with resume, saving the model."""

from __future__ import annotations

import importlib.util
import json
import os
from contextlib import contextmanager

import torch
from transformers import TrainerCallback, TrainingArguments

from rlhf_contract.assignment import StageAssignment
from rlhf_contract.settings import LoRA
from rlhf_contract.workspace import mark_complete, unmark_complete, write_json_atomic
from rlhf_trainer.stage.runner import StageContext, StageStopped, processes
from rlhf_trainer.stage.sources import StageInputError, revision

HELD_OUT_BEFORE = "held_out_before.json"


def report_to(config: StageAssignment) -> list[str]:
    """The trackers to log to: as configured, else TensorBoard when it is installed."""
    if config.report_to is not None:
        return config.report_to
    return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []


def stage_arguments(ctx: StageContext) -> dict:
    """The Trainer arguments every stage sets the same way: checkpoints in ``<stage>/checkpoints``, the seed,
    precision, devices, trackers and parallelism."""
    config = ctx.config
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(ctx.dir.root / "tensorboard"))
    precision = config.distributed.mixed_precision
    return dict(
        output_dir=str(ctx.dir.checkpoints),
        save_strategy="steps",
        save_steps=config.checkpointing.save_steps,
        save_total_limit=config.checkpointing.save_total_limit,
        seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        report_to=report_to(config),
        disable_tqdm=True,
        dataloader_pin_memory=torch.cuda.is_available(),
        **strategy_arguments(config),
    )


def training_arguments(ctx: StageContext, args_class=TrainingArguments, **extra) -> TrainingArguments:
    """TrainingArguments for a supervised stage: its training settings, and ``stage_arguments``."""
    config, training = ctx.config, ctx.config.training
    evaluation = config.evaluation
    return args_class(
        learning_rate=training.learning_rate,
        num_train_epochs=training.num_train_epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        warmup_steps=training.warmup_ratio,  # transformers 5: a float below 1 is a ratio of the steps
        lr_scheduler_type=training.lr_scheduler_type,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        gradient_checkpointing=training.gradient_checkpointing,
        logging_steps=training.logging_steps,
        eval_strategy="steps" if evaluation is not None and evaluation.steps else "no",
        eval_steps=evaluation.steps if evaluation is not None else None,
        **stage_arguments(ctx),
        **extra,
    )


@contextmanager
def config_errors(what: str):
    """Errors building the trainer's config from the stage config are the stage config's: invalid input (exit 4)."""
    try:
        yield
    except ValueError as exc:
        raise StageInputError(f"{what}: {exc}") from exc


def strategy_arguments(config: StageAssignment) -> dict:
    """Trainer settings of the configured parallelism (DDP needs none)."""
    strategy = config.distributed.strategy
    if strategy == "fsdp":
        return {"fsdp": "full_shard auto_wrap"}
    if strategy.startswith("deepspeed"):
        if importlib.util.find_spec("deepspeed") is None:
            raise ImportError(f"distributed.strategy {strategy} needs DeepSpeed: use a trainer image with the "
                              "deepspeed extra (pip install deepspeed)")
        return {"deepspeed": {
            "zero_optimization": {"stage": int(strategy[-1])},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        }}
    return {}


def lora_config(lora: LoRA | None, task_type: str):
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type, r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules, bias=lora.bias, modules_to_save=lora.modules_to_save)


class StageCallback(TrainerCallback):
    """Reports every log to the stage's reporter, marks checkpoints complete once saved, and turns a stop
    request (SIGTERM, Ctrl-C) into a checkpoint and an orderly end of training."""

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.stopped = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.ctx.report(state.global_step, state.max_steps, logs)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            mark_complete(self.ctx.dir.checkpoint(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.ctx.should_stop():
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:  # a checkpoint of this step may exist: incomplete until rewritten
                unmark_complete(self.ctx.dir.checkpoint(state.global_step))


def train(trainer, ctx: StageContext, dataset, evaluate: bool) -> dict:
    """Train (from the latest complete checkpoint, if any), evaluate, save; the kind's part of result.json."""
    callback = StageCallback(ctx)
    trainer.add_callback(callback)
    checkpoint = ctx.dir.latest_checkpoint()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if callback.stopped:
        raise StageStopped
    state = trainer.state
    metrics = {"train_loss": output.training_loss}
    if evaluate:
        metrics.update({k: v for k, v in trainer.evaluate().items() if not k.endswith(("_runtime", "_per_second"))})
    save_model(trainer, ctx, ctx.config.peft)
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {"steps": state.global_step, "totalSteps": state.max_steps, "metrics": metrics,
            "revisions": {"model": revision(model), "dataset": revision(dataset)}}


def trl_knobs(settings) -> dict:
    """A TRL 1.x config's keywords from the stage's settings (``TRLTrainingSettings``): transformers 5 takes a
    warm-up fraction as a float ``warmup_steps`` below 1."""
    knobs = settings.model_dump()
    knobs["warmup_steps"] = knobs.pop("warmup_ratio")
    return knobs


def measured_before(ctx: StageContext, measure) -> dict:
    """``measure()`` of the model before training: taken once and kept in ``<stage>/held_out_before.json``, so a
    run that resumes reports the same "before" without measuring again."""
    path = ctx.dir.root / HELD_OUT_BEFORE
    if path.is_file():
        return json.loads(path.read_text())
    before = measure()
    if processes().is_main_process:
        write_json_atomic(path, before)
    return before


def save_model(trainer, ctx: StageContext, lora: LoRA | None) -> None:
    """The trained model and its tokenizer into ``<stage>/model``; LoRA adapters merged in unless asked not to."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora is not None and lora.merge:
        model = model.merge_and_unload()
    if trainer.args.should_save:
        model.save_pretrained(ctx.dir.model)
        trainer.processing_class.save_pretrained(ctx.dir.model)

