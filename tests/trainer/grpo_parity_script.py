"""GRPO configurations on fixed rollouts, run with `trl` or `rlhf_trainer` (the only difference: the import).

    python grpo_parity_script.py LIBRARY MODEL_DIR CASES.json OUT_DIR

For every case (name -> GRPOConfig keywords, plus "conversational"): the same model, prompts, rewards and
completions (a ``rollout_func`` that draws them from a generator seeded by the call's number), 3 prompts x 4
generations, every step logged. Writes OUT_DIR/NAME/logs.json (the training log records) and step-N.pt (the
weights after each optimizer step), or OUT_DIR/NAME/error.txt when the library refuses the case.
"""

import importlib
import json
import sys
import traceback
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback

library, model_dir, cases_file, out_dir = sys.argv[1:5]
grpo = importlib.import_module(library)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
PROMPTS = ["The movie", "I think", "A film", "This is", "The actor", "My friend", "The plot", "One scene",
           "After that", "We saw", "Nobody knew", "It was"]
COMMON = dict(per_device_train_batch_size=12, num_generations=4, max_completion_length=8, learning_rate=1e-3,
              shuffle_dataset=False, logging_steps=1, max_steps=3, bf16=False, gradient_checkpointing=False,
              disable_dropout=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
              dataloader_pin_memory=False)


def letter_a(completions, **kwargs):
    return [float(_text(c).count("a")) for c in completions]


def short(completions, **kwargs):
    return [-len(_text(c)) / 10 for c in completions]


def _text(completion) -> str:
    return completion if isinstance(completion, str) else completion[0]["content"]


def fixed_rollouts(max_length: int):
    calls = []
    ordinary = [i for i in range(len(tokenizer)) if i not in tokenizer.all_special_ids]

    def rollout(prompts, trainer):
        generator = torch.Generator().manual_seed(len(calls))
        calls.append(len(prompts))
        prompt_ids, completion_ids = [], []
        for prompt in prompts:
            if not isinstance(prompt, str):
                prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            prompt_ids.append(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            length = int(torch.randint(1, max_length + 1, (1,), generator=generator))
            ids = [ordinary[int(i)] for i in torch.randint(len(ordinary), (length,), generator=generator)]
            if length < max_length and torch.rand((), generator=generator) < 0.7:
                ids[-1] = tokenizer.eos_token_id  # ended; the others run to max_length or stop without an EOS
            completion_ids.append(ids)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
                "logprobs": [[-2.0] * len(ids) for ids in completion_ids]}

    return rollout


class SaveWeights(TrainerCallback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_step_end(self, args, state, control, model=None, **kwargs):
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   self.folder / f"step-{state.global_step}.pt")


def run(name: str, case: dict) -> None:
    folder = Path(out_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    case = dict(case)
    conversational = case.pop("conversational", False)
    rewards = [letter_a, short] if case.get("reward_weights") else [letter_a]
    prompts = [[{"role": "user", "content": p}] if conversational else p for p in PROMPTS]
    try:
        if library != "trl":
            case["reproduce_trl"] = True  # TRL's numbers, without this library's documented corrections
        args = grpo.GRPOConfig(output_dir=str(folder / "out"), **{**COMMON, **case})
        trainer = grpo.GRPOTrainer(model=model_dir, reward_funcs=rewards, args=args, processing_class=tokenizer,
                                   train_dataset=Dataset.from_dict({"prompt": prompts}),
                                   rollout_func=fixed_rollouts(args.max_completion_length),
                                   callbacks=[SaveWeights(folder)])
        trainer.train()
    except Exception:
        (folder / "error.txt").write_text(traceback.format_exc())
        return
    logs = [record for record in trainer.state.log_history if "loss" in record]
    (folder / "logs.json").write_text(json.dumps(logs))


torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
for name, case in json.loads(Path(cases_file).read_text()).items():
    run(name, case)
