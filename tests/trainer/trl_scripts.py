"""Training scripts as TRL 1.16's own GRPO and DPO tests write them (the same options, datasets of the same shapes,
the same checks), offline: local tiny models and in-memory datasets instead of hub ids. Run with `trl` or
`rlhf_trainer` (the only difference: the import).

    python trl_scripts.py LIBRARY MODELS.json OUT_DIR

MODELS.json names local model folders: {"policy", "untied", "reward"}. Writes OUT_DIR/api.json (the configs'
fields with their defaults and the trainers' parameters) and, for every script, OUT_DIR/NAME.json: {"ok": true,
"logged": metric names, "changed": trainable parameters the run changed, "trainable": all of them} or {"ok":
false, "error": the exception}.
"""

import asyncio
import dataclasses
import importlib
import inspect
import json
import sys
import traceback
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

trl = POLICY = UNTIED = REWARD = OUT = None  # the library and inputs, set by main()
SCRIPTS = {}  # name -> a function returning the trainer to train (None: nothing to train)

PROMPTS = ["The sky is", "Water is", "A cat", "The sun", "My dog", "Trees are", "The sea", "Snow is"]
CHOSEN = [" blue.", " wet.", " purrs.", " shines.", " barks.", " green.", " is deep.", " cold."]
REJECTED = [" loud.", " red.", " flies.", " is square.", " sings opera.", " made of glass.", " dry.", " hot."]


def script(function):
    SCRIPTS[function.__name__] = function
    return function


# Datasets of the shapes TRL's tests load from trl-internal-testing/zen.
def prompts(kind="standard", split="train"):
    rows = PROMPTS[:6] if split == "train" else PROMPTS[6:]
    if kind == "conversational":
        rows = [[{"role": "user", "content": p}] for p in rows]
    return Dataset.from_dict({"prompt": rows})


def preferences(kind="standard", split="train"):
    span = slice(0, 6) if split == "train" else slice(6, 8)
    prompt, chosen, rejected = PROMPTS[span], CHOSEN[span], REJECTED[span]
    if kind == "standard":
        return Dataset.from_dict({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if kind == "standard_implicit":
        return Dataset.from_dict({"chosen": [p + c for p, c in zip(prompt, chosen, strict=True)],
                                  "rejected": [p + r for p, r in zip(prompt, rejected, strict=True)]})
    user = [[{"role": "user", "content": p}] for p in prompt]
    said = [[[{"role": "assistant", "content": c.strip()}] for c in column] for column in (chosen, rejected)]
    if kind == "conversational":
        return Dataset.from_dict({"prompt": user, "chosen": said[0], "rejected": said[1]})
    return Dataset.from_dict({"chosen": [u + a for u, a in zip(user, said[0], strict=True)],  # implicit prompt
                              "rejected": [u + a for u, a in zip(user, said[1], strict=True)]})


def grpo_args(**options):
    settings = dict(output_dir=str(OUT / "run"), learning_rate=0.1, per_device_train_batch_size=3,
                    num_generations=3, max_completion_length=8, max_steps=2, bf16=False, report_to="none",
                    save_strategy="no", disable_tqdm=True)
    return trl.GRPOConfig(**{**settings, **options})


def dpo_args(**options):
    settings = dict(output_dir=str(OUT / "run"), learning_rate=0.1, per_device_train_batch_size=2, max_steps=2,
                    bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
    return trl.DPOConfig(**{**settings, **options})


def grpo(args=None, data=None, rewards=None, **trainer):
    return trl.GRPOTrainer(model=trainer.pop("model", POLICY), reward_funcs=rewards if rewards is not None else REWARD,
                           args=args if args is not None else grpo_args(),
                           train_dataset=data if data is not None else prompts(), **trainer)


def dpo(args=None, data=None, **trainer):
    return trl.DPOTrainer(model=trainer.pop("model", POLICY), args=args if args is not None else dpo_args(),
                          train_dataset=data if data is not None else preferences(), **trainer)


def length(completions, **kwargs):
    return [float(len(_text(c))) for c in completions]


def distinct(completions, **kwargs):
    return [float(len(set(_text(c)))) for c in completions]


def _text(completion):
    return completion if isinstance(completion, str) else completion[0]["content"]


# GRPO, after tests/test_grpo_trainer.py
@script
def grpo_init_minimal():
    trl.GRPOTrainer(model=POLICY, reward_funcs=REWARD, train_dataset=prompts(),
                    args=trl.GRPOConfig(output_dir=str(OUT / "run"), bf16=False))


@script
def grpo_train():
    return grpo()


@script
def grpo_train_conversational():
    return grpo(data=prompts("conversational"))


for _loss in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"):
    def _train_loss(loss_type=_loss):
        level = "sequence" if loss_type == "luspo" else "token"
        return grpo(grpo_args(loss_type=loss_type, importance_sampling_level=level, max_completion_length=16,
                              gradient_accumulation_steps=2))
    SCRIPTS[f"grpo_loss_{_loss}"] = _train_loss


@script
def grpo_with_eval():
    return grpo(grpo_args(per_device_eval_batch_size=3, eval_strategy="steps", eval_steps=1),
                eval_dataset=prompts(split="test"))


@script
def grpo_num_generations_eval():
    return grpo(grpo_args(per_device_eval_batch_size=3, num_generations_eval=1, eval_strategy="steps",
                          eval_steps=1), eval_dataset=prompts(split="test"))


@script
def grpo_eval_on_start():
    return grpo(grpo_args(per_device_eval_batch_size=3, loss_type="grpo", eval_strategy="steps", eval_steps=2,
                          eval_on_start=True), eval_dataset=prompts(split="test"))


@script
def grpo_eval_dataset_dict():
    test = prompts(split="test")
    return grpo(grpo_args(per_device_eval_batch_size=3, eval_strategy="steps", eval_steps=2),
                eval_dataset={"a": test, "b": test})


@script
def grpo_iterable_dataset():
    return grpo(grpo_args(max_steps=2), data=prompts().to_iterable_dataset())


@script
def grpo_multiple_iterations():
    return grpo(grpo_args(num_iterations=2))


@script
def grpo_peft_config():
    return grpo(model=AutoModelForCausalLM.from_pretrained(POLICY), peft_config=LoraConfig())


@script
def grpo_peft_model():
    return grpo(model=get_peft_model(AutoModelForCausalLM.from_pretrained(POLICY), LoraConfig()))


@script
def grpo_peft_gradient_checkpointing():
    return grpo(grpo_args(gradient_checkpointing=True), model=AutoModelForCausalLM.from_pretrained(POLICY),
                peft_config=LoraConfig())


@script
def grpo_reward_model_object():
    return grpo(data=prompts("conversational"), rewards=AutoModelForSequenceClassification.from_pretrained(REWARD),
                reward_processing_classes=AutoTokenizer.from_pretrained(REWARD))


@script
def grpo_reward_func():
    return grpo(rewards=length)


@script
def grpo_reward_func_conversational():
    return grpo(data=prompts("conversational"), rewards=length)


@script
def grpo_multiple_reward_funcs():
    return grpo(rewards=[length, distinct])


@script
def grpo_reward_weights():
    return grpo(grpo_args(reward_weights=[0.7, 0.3]), rewards=[length, distinct])


@script
def grpo_reward_none_for_all():
    return grpo(rewards=[length, lambda completions, **kwargs: [None] * len(completions)])


@script
def grpo_async_reward():
    async def later(completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(_text(c)) % 3) for c in completions]
    return grpo(rewards=[length, distinct, later])


@script
def grpo_mixed_rewards():
    return grpo(rewards=[length, REWARD])


@script
def grpo_reward_reads_a_column():
    def closeness(completions, some_values, **kwargs):
        return [float(abs(len(c) - v)) for c, v in zip(completions, some_values, strict=True)]
    data = prompts()
    return grpo(data=data.add_column("some_values", list(range(len(data)))), rewards=closeness)


@script
def grpo_reward_reads_trainer_state():
    def stepwise(completions, trainer_state=None, **kwargs):
        assert trainer_state is not None and hasattr(trainer_state, "global_step")
        return [float(len(set(c))) for c in completions]
    return grpo(rewards=stepwise)


@script
def grpo_reward_logs_a_metric():
    def measured(completions, log_metric=None, **kwargs):
        log_metric("custom_accuracy", 0.75)
        return [float(len(c)) for c in completions]
    return grpo(rewards=measured)


@script
def grpo_reward_logs_extra_columns():
    def annotated(completions, log_extra=None, **kwargs):
        log_extra("test_column", [c[:5] for c in completions])
        return [float(len(c)) for c in completions]
    return grpo(grpo_args(log_completions=True), rewards=annotated)


for _name, _options in {
    "sync_ref_model": dict(beta=0.1, sync_ref_model=True, ref_model_sync_steps=1),
    "beta_non_zero": dict(beta=0.1),
    "pad_to_multiple_of": dict(pad_to_multiple_of=8),
    "off_policy_mask": dict(off_policy_mask_threshold=0.5),
    "bias_correction_kl": dict(beta=0.1, use_bias_correction_kl=True),
    "static_entropy": dict(entropy_coef=0.1),
    "adaptive_entropy": dict(entropy_coef=0.01, use_adaptive_entropy=True, entropy_target=15.0),
    "adaptive_entropy_accumulation": dict(gradient_accumulation_steps=2, entropy_coef=0.01, use_adaptive_entropy=True,
                                          entropy_target=15.0, entropy_coef_delta=0.005),
    "entropy_filter": dict(top_entropy_quantile=0.2),
    "sampling_options": dict(top_p=0.9, top_k=10, min_p=0.01, repetition_penalty=1.1),
    "generation_kwargs": dict(generation_kwargs={"do_sample": True, "top_k": 50, "length_penalty": -0.1}),
    "scale_rewards_batch": dict(scale_rewards="batch"),
    "scale_rewards_none": dict(scale_rewards="none"),
    "mask_truncated_completions": dict(mask_truncated_completions=True, loss_type="dapo"),
    "more_generations_than_batch": dict(num_generations=6, gradient_accumulation_steps=2),
    "delta_clipping": dict(delta=2.0),
    "dataloader_workers": dict(dataloader_num_workers=2),
    "sequence_importance_sampling": dict(num_iterations=2, importance_sampling_level="sequence"),
    "steps_per_generation": dict(gradient_accumulation_steps=3, steps_per_generation=4, num_generations=4,
                                 per_device_train_batch_size=6, num_iterations=2, shuffle_dataset=False),
}.items():
    SCRIPTS[f"grpo_{_name}"] = lambda options=_options: grpo(grpo_args(**options))


@script
def grpo_normalize_then_sum():
    return grpo(grpo_args(multi_objective_aggregation="normalize_then_sum"), rewards=[length, distinct])


@script
def grpo_cast_lm_head_to_fp32():
    return grpo(grpo_args(cast_lm_head_to_fp32=True), model=UNTIED)


@script
def grpo_chat_template_kwargs():
    return grpo(grpo_args(chat_template_kwargs={"enable_thinking": False}), data=prompts("conversational"))


@script
def grpo_use_vllm():
    return grpo(grpo_args(use_vllm=True))


@script
def grpo_tools():
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first integer.
            b: The second integer.
        """
        return a * b
    return grpo(data=prompts("conversational"), tools=[multiply])


@script
def grpo_reward_processing_classes_must_match():
    tokenizer = AutoTokenizer.from_pretrained(REWARD)
    return grpo(rewards=[REWARD, REWARD], reward_processing_classes=[tokenizer])


@script
def grpo_reward_processing_classes_list():
    tokenizer = AutoTokenizer.from_pretrained(REWARD)
    return grpo(rewards=[REWARD, REWARD], reward_processing_classes=[tokenizer, tokenizer])


# DPO, after tests/test_dpo_trainer.py
@script
def dpo_train():
    return dpo()


for _kind in ("conversational", "standard_implicit", "conversational_implicit"):
    SCRIPTS[f"dpo_format_{_kind}"] = lambda kind=_kind: dpo(data=preferences(kind))

for _loss in ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft"):
    SCRIPTS[f"dpo_loss_{_loss}"] = lambda loss_type=_loss: dpo(
        dpo_args(loss_type=loss_type, label_smoothing=1e-3 if loss_type == "exo_pair" else 0.0,
                 eval_strategy="steps", eval_steps=1), eval_dataset=preferences(split="test"))

for _name, _options in {
    "multi_loss_types": dict(loss_type=["sigmoid", "bco_pair", "sft"]),
    "use_weighting": dict(use_weighting=True),
    "ld_alpha": dict(ld_alpha=0.5),
    "sync_ref_model": dict(sync_ref_model=True, ref_model_sync_steps=1),
    "model_dtype": dict(model_init_kwargs={"dtype": torch.float16}),
    "gradient_checkpointing": dict(gradient_checkpointing=True),
    "truncation": dict(max_length=6, truncation_mode="keep_start"),
    **{f"f_divergence_{f}": dict(f_divergence_type=f)
       for f in ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")},
}.items():
    SCRIPTS[f"dpo_{_name}"] = lambda options=_options: dpo(dpo_args(**options))


@script
def dpo_explicit_ref_model():
    return dpo(ref_model=AutoModelForCausalLM.from_pretrained(POLICY))


@script
def dpo_peft_config():
    return dpo(dpo_args(learning_rate=1.0), model=AutoModelForCausalLM.from_pretrained(POLICY),
               peft_config=LoraConfig())


@script
def dpo_peft_model():
    return dpo(dpo_args(learning_rate=1.0),
               model=get_peft_model(AutoModelForCausalLM.from_pretrained(POLICY), LoraConfig()))


@script
def dpo_peft_gradient_checkpointing():
    return dpo(dpo_args(gradient_checkpointing=True), model=AutoModelForCausalLM.from_pretrained(POLICY),
               peft_config=LoraConfig())


@script
def dpo_iterable_dataset():
    return dpo(data=preferences().to_iterable_dataset())


@script
def dpo_chat_template_kwargs():
    """A per-row ``chat_template_kwargs`` column reaches the template: odd rows get capitalised roles."""
    tokenizer = AutoTokenizer.from_pretrained(POLICY)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ (m.role.upper() if role_capital else m.role) + ': ' + m.content + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT: ' if role_capital else 'assistant: ' }}{% endif %}")
    data = preferences("conversational")
    data = data.add_column("chat_template_kwargs", [{"role_capital": bool(i % 2)} for i in range(len(data))])
    trainer = dpo(data=data, processing_class=tokenizer)
    for i in range(2):
        expected = tokenizer(("USER" if i else "user") + ": " + PROMPTS[i])["input_ids"]
        assert trainer.train_dataset[i]["prompt_ids"][:len(expected)] == expected, trainer.train_dataset[i]
    return trainer


@script
def dpo_with_eval():
    return dpo(dpo_args(eval_strategy="steps", eval_steps=1), eval_dataset=preferences(split="test"))


@script
def dpo_multiple_eval_datasets():
    test = preferences(split="test")
    return dpo(dpo_args(eval_strategy="steps", eval_steps=1), eval_dataset={"data1": test, "data2": test})


@script
def dpo_eval_dataset_dict():
    return dpo(dpo_args(eval_strategy="steps", eval_steps=1),
               eval_dataset=DatasetDict({"data1": preferences(split="test")}))


@script
def dpo_precompute_ref_log_probs_eval():
    return dpo(dpo_args(precompute_ref_log_probs=True, eval_strategy="steps", eval_steps=1),
               eval_dataset=preferences(split="test"))


@script
def dpo_compute_metrics():
    return dpo(dpo_args(eval_strategy="steps", eval_steps=1), eval_dataset=preferences(split="test"),
               compute_metrics=lambda prediction: {"test": 0.0})


@script
def dpo_train_dataset_required():
    return trl.DPOTrainer(model=POLICY, args=dpo_args())


def describe_api() -> dict:
    """Each config's fields with their defaults, each trainer's parameters in order."""
    def default(f):
        if f.default_factory is not dataclasses.MISSING:
            return repr(f.default_factory())
        return repr(f.default) if f.default is not dataclasses.MISSING else None
    api = {name: {f.name: default(f) for f in dataclasses.fields(getattr(trl, name))}
           for name in ("GRPOConfig", "DPOConfig")}
    for name in ("GRPOTrainer", "DPOTrainer"):
        api[name] = [[p.name, None if p.default is inspect.Parameter.empty else repr(p.default)]
                     for p in inspect.signature(getattr(trl, name).__init__).parameters.values()]
    return api


def run(name: str) -> dict:
    torch.manual_seed(0)
    try:
        trainer = SCRIPTS[name]()
        if trainer is None:
            return {"ok": True, "logged": [], "changed": [], "trainable": []}
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.train()
        assert trainer.state.log_history[-1]["train_loss"] is not None
        after = dict(trainer.model.named_parameters())
        return {"ok": True, "logged": sorted({key for record in trainer.state.log_history for key in record}),
                "changed": sorted(n for n, p in before.items() if not torch.equal(p, after[n].detach())),
                "trainable": sorted(before)}
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


def main(library: str, models_file: str, out_dir: str) -> None:
    global trl, POLICY, UNTIED, REWARD, OUT
    trl = importlib.import_module(library)
    models = json.loads(Path(models_file).read_text())
    POLICY, UNTIED, REWARD, OUT = models["policy"], models["untied"], models["reward"], Path(out_dir)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "api.json").write_text(json.dumps(describe_api()))
    for name in SCRIPTS:
        (OUT / f"{name}.json").write_text(json.dumps(run(name)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
