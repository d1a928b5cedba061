"""Shared pieces of the DPO trainer tests."""

import torch
import torch.nn.functional as F

from rlhf_trainer import DPOConfig, DPOTrainer
from rlhf_trainer.data import load_builtin

PAIRS = [
    {"prompt": "The acting", "chosen": " was wonderful.", "rejected": " was dull."},
    {"prompt": "The story", "chosen": " is a joy to watch.", "rejected": " is a mess."},
    {"prompt": "The ending", "chosen": " was brilliant.", "rejected": " was boring and far too long."},
    {"prompt": "The music", "chosen": " is lovely.", "rejected": " is loud and dull and far too long."},
]


def make_trainer(model, quick_args, train=PAIRS, **config):
    """A DPOTrainer in fp32, no gradient checkpointing unless asked, batch of all PAIRS."""
    ref_model = config.pop("ref_model", None)
    peft_config = config.pop("peft_config", None)
    settings = dict(bf16=False, gradient_checkpointing=False, per_device_train_batch_size=len(PAIRS),
                    per_device_eval_batch_size=len(PAIRS), learning_rate=1e-3, max_steps=1)
    return DPOTrainer(model, ref_model=ref_model, args=quick_args(DPOConfig, **{**settings, **config}),
                      train_dataset=train, peft_config=peft_config)


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def batch_loss(trainer, batch=None):
    """The loss of a batch (default: the first training batch) and the metrics it recorded."""
    trainer._metrics["train"].clear()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch if batch is not None else first_batch(trainer))
    return loss, {key: values[-1] for key, values in trainer._metrics["train"].items()}


def completion_logps(model, tokenizer, prompt: str, completion: str) -> torch.Tensor:
    """By hand: the summed log-probs of ``completion``'s tokens after ``prompt`` (each scored by the position
    before it), from one plain forward pass of prompt + completion."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([tokenizer(prompt + completion)["input_ids"]])
    log_probs = F.log_softmax(model(input_ids=ids).logits.float(), -1)
    return sum(log_probs[0, t - 1, ids[0, t]] for t in range(len(prompt_ids), ids.shape[1]))


def conversational_pairs(count: int) -> list[dict]:
    """The first ``count`` built-in movie preferences as chat messages."""
    return [{"prompt": [{"role": "user", "content": f"Review: {row['prompt']}"}],
             "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
             "rejected": [{"role": "assistant", "content": row["rejected"].strip()}]}
            for row in load_builtin("movie-preferences")[:count]]
