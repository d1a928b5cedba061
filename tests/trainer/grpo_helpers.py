"""Small GRPO runs on the tiny models, shared by the GRPO tests."""

from rlhf_trainer import GRPOConfig, GRPOTrainer

PROMPTS = ["The movie", "I think", "A film", "This is", "The actor", "My friend", "The plot", "One scene"]


def config(tmp_path, **overrides) -> GRPOConfig:
    settings = dict(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no", disable_tqdm=True,
                    logging_steps=1, bf16=False, gradient_checkpointing=False, disable_dropout=True,
                    per_device_train_batch_size=4, num_generations=4, max_completion_length=6, max_steps=2,
                    learning_rate=1e-3, dataloader_pin_memory=False, per_device_eval_batch_size=4)
    return GRPOConfig(**{**settings, **overrides})


def count_a(completions, **kwargs):
    """How many times the letter 'a' appears: a reward any sampled text has a spread of."""
    return [float(c.count("a")) for c in completions]


def make_trainer(model_path, tmp_path, reward_funcs=count_a, dataset=None, **overrides):
    dataset = dataset if dataset is not None else [{"prompt": p} for p in PROMPTS]
    return GRPOTrainer(model=model_path, reward_funcs=reward_funcs, args=config(tmp_path, **overrides),
                       train_dataset=dataset)


def logs(trainer, key):
    return [record[key] for record in trainer.state.log_history if key in record]
