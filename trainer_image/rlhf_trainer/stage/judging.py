"""An independent judge of a policy's own writing: its continuations of held-out prompts, sampled with a fixed seed
(so that before and after are paired), scored by the judge (VADER's sentiment), averaged."""

from __future__ import annotations

import statistics

import torch

from rlhf_trainer.rewards import vader_compound

EVALUATION_SEED = 1234
JUDGES = {"vader": vader_compound}


@torch.no_grad()
def judge_continuations(model, tokenizer, prompts: list[str], judge: str, samples: int,
                        max_new_tokens: int) -> float:
    """The judge's mean score of ``samples`` continuations of each prompt (prompt + continuation is judged)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVALUATION_SEED)
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device).repeat(samples, 1)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    model.train(was_training)
    return statistics.fmean(JUDGES[judge](texts))
