"""GRPOTrainer: Group Relative Policy Optimization with TRL 1.16's API, on transformers' Trainer.

    trainer = GRPOTrainer(model="Qwen/Qwen2-0.5B-Instruct", reward_funcs=reward_len, train_dataset=dataset,
                          args=GRPOConfig(output_dir="out"))
    trainer.train()

One optimizer step, as docs/algorithms/grpo.md lays it out: the RepeatSampler hands every process its slice of a
generation batch (whole groups of ``num_generations`` copies of a prompt); once per block the trainer samples
completions, scores them (old log-probs only when a later pass needs them, reference log-probs only when
``beta != 0``), calls the reward functions, turns rewards into group-relative advantages over the whole batch (every
process's completions), shuffles and splits the batch into ``steps_per_generation`` micro-batches, and each micro-step
computes the loss of its loss type. Metrics keep TRL's names and meanings.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from rlhf_trainer.trainer.grpo_advantages import compute_advantages, nanmean, nanstd
from rlhf_trainer.trainer.grpo_config import GRPOConfig  # noqa: F401  (imported from here too, as TRL allows)
from rlhf_trainer.trainer.grpo_data import RepeatSampler, is_conversational, pad, prepare_prompt_dataset
from rlhf_trainer.trainer.grpo_loss import (
    CLIPPED_LOSSES,
    LossSettings,
    clip_indicators,
    dapo_normaliser,
    entropy_threshold,
    grpo_loss,
    high_entropy_mask,
    masked_mean,
)
from rlhf_trainer.trainer.grpo_rewards import RewardModel, compute_rewards, load_reward_functions, reward_name
from rlhf_trainer.trainer.inputs import prepare_datasets
from rlhf_trainer.trainer.rollout import TransformersRollout, sampling_kwargs
from rlhf_trainer.trainer.utils import (
    Reference,
    cast_lm_head_to_fp32,
    disable_dropout_in_model,
    has_dropout,
    is_peft_model,
    load_causal_lm,
    load_processing_class,
    load_trained_model,
    selective_log_softmax,
)

ROLLOUT_KEYS = ("prompt_ids", "completion_ids", "logprobs", "env_mask")


def identity(rows):
    return rows


def _json_dict(value):
    return json.loads(value) if isinstance(value, str) else value


class GRPOTrainer(Trainer):
    """Trains ``model`` to raise ``reward_funcs``' rewards with GRPO (DeepSeekMath, arXiv:2402.03300).

    ``model``: a hub id or path (loaded with ``args.model_init_kwargs``, float32 unless a dtype is given), a
    ``PreTrainedModel`` or a ``PeftModel``. ``reward_funcs``: a callable, a reward model (id, path or model), or a
    list of them. ``peft_config`` trains adapters only; the reference is then the model with adapters off.
    ``rollout_func(prompts, trainer) -> dict`` replaces generation (see docs/algorithms/grpo.md).
    ``rollout_engine`` (ours, not TRL's) swaps the sampler behind the `RolloutEngine` interface.
    """

    _tag_names = ["grpo"]

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, reward_processing_classes=None, callbacks=None,
                 optimizers=(None, None), quantization_config=None, peft_config=None, tools=None, rollout_func=None,
                 environment_factory=None, *, rollout_engine=None):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = GRPOConfig(f"{str(name).split('/')[-1]}-GRPO")
        if not isinstance(args, GRPOConfig):
            raise TypeError(f"args must be a GRPOConfig, not {type(args).__name__}")
        for name, value in (("tools", tools), ("environment_factory", environment_factory)):
            if value is not None:
                raise ValueError(f"{name}: agent training with tool calls and environments is not available in this "
                                 "trainer; score completions with reward_funcs, or generate them with rollout_func")
        if reward_funcs is None:
            raise ValueError("reward_funcs: no reward source given; pass a reward function, a reward model (hub id, "
                             "path or model) or a list of them")
        set_seed(args.seed)  # before adapters (and any new weights) are initialised
        model_init_kwargs = dict(_json_dict(args.model_init_kwargs) or {})
        if isinstance(model, str) and args.trust_remote_code:
            model_init_kwargs.setdefault("trust_remote_code", True)
        model = load_trained_model(model, args.model_init_kwargs, args.trust_remote_code, quantization_config)
        processing_class = load_processing_class(model, processing_class, padding_side="left")
        self.tokenizer_ = getattr(processing_class, "tokenizer", processing_class)
        passed_peft = is_peft_model(model)
        if peft_config is not None:
            if passed_peft:
                raise ValueError("model is already a PeftModel: pass peft_config=None, or the base model")
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if args.disable_dropout:
            disable_dropout_in_model(model)
        elif has_dropout(model):
            warnings.warn("the model has dropout on: old and reference log-probs are computed in train mode, so "
                          "the ratio and KL are noisy from the first pass (TRL's default); GRPOConfig("
                          "disable_dropout=True) turns it off", stacklevel=2)
        if args.gradient_checkpointing and args.gradient_checkpointing_kwargs is None:
            args.gradient_checkpointing_kwargs = {"use_reentrant": False}  # frozen inputs (adapters) still backprop

        self.reward_funcs = load_reward_functions(reward_funcs, reward_processing_classes, model_init_kwargs,
                                                  args.trust_remote_code)
        self.reward_func_names = [reward_name(f) for f in self.reward_funcs]
        weights = args.reward_weights if args.reward_weights is not None else [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(weights)} values for {len(self.reward_funcs)} reward "
                             "functions: give one weight per function")
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)

        self.reference = None
        if args.beta != 0.0:
            reloaded = None
            if args.reproduce_trl and not is_peft_model(model):  # TRL loads the reference from the policy's path
                reloaded = load_causal_lm(model.config._name_or_path, model_init_kwargs or None)
            self.reference = Reference.of(model, ref_model=reloaded, trained_adapter=passed_peft)
        if args.cast_lm_head_to_fp32:
            cast_lm_head_to_fp32(model)
            if self.reference is not None and self.reference.is_separate_model:
                cast_lm_head_to_fp32(self.reference.module)
        if args.sync_ref_model and (self.reference is None or not self.reference.is_separate_model):
            raise ValueError("sync_ref_model=True needs a reference model of its own: it is off when beta == 0 and "
                             "the adapters-off base under PEFT; set sync_ref_model=False")

        train_dataset, eval_dataset = prepare_datasets(prepare_prompt_dataset, train_dataset, eval_dataset)
        super().__init__(model=model, args=args, data_collator=identity, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers)
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the accumulation itself (dapo spans the window)
        self.model_accepts_loss_kwargs = False
        if self.reference is not None and self.reference.is_separate_model:
            self.reference.module.to(self.accelerator.device)
        for function in self.reward_funcs:
            if isinstance(function, RewardModel):
                function.model.to(self.accelerator.device)
        if args.sync_ref_model:
            self.add_callback(_SyncReference(self))

        self.rollout_func = rollout_func
        eos = {self.tokenizer_.eos_token_id} if self.tokenizer_.eos_token_id is not None else set()
        config_eos = getattr(getattr(self.accelerator.unwrap_model(self.model), "generation_config", None),
                             "eos_token_id", None)
        eos |= set([config_eos] if isinstance(config_eos, int) else config_eos or [])
        self.eos_token_ids = sorted(eos)
        self.pad_token_id = self.tokenizer_.pad_token_id
        self.rollout_engine = rollout_engine or TransformersRollout(
            lambda: self.accelerator.unwrap_model(self.model),
            sampling_kwargs(args, self.eos_token_ids, self.pad_token_id),
            self.pad_token_id, self.eos_token_ids)
        self.loss_settings = LossSettings(
            loss_type=args.loss_type, epsilon_low=args.epsilon,
            epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon, delta=args.delta,
            importance_sampling_level=args.importance_sampling_level, beta=args.beta,
            use_bias_correction_kl=args.use_bias_correction_kl, sapo_temperature_pos=args.sapo_temperature_pos,
            sapo_temperature_neg=args.sapo_temperature_neg, max_completion_length=args.max_completion_length,
            off_policy_mask_threshold=args.off_policy_mask_threshold, vespo_k_pos=args.vespo_k_pos,
            vespo_lambda_pos=args.vespo_lambda_pos, vespo_k_neg=args.vespo_k_neg,
            vespo_lambda_neg=args.vespo_lambda_neg)
        self.generate_every = args.steps_per_generation * args.num_iterations
        self.needs_old_logps = args.gradient_accumulation_steps % self.generate_every != 0
        self.entropy_coef = args.entropy_coef
        # on from the start when set, so it stays on (adaptive control may later move the coefficient to 0)
        self._entropy_bonus_on = args.entropy_coef != 0.0 or args.use_adaptive_entropy
        self._last_window_entropy = float("inf")
        self._entropy_window = None
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._completions_log: list[dict] = []
        self._step, self._buffer, self._eval_batch, self._last_eval_metrics = None, None, 0, {}

    # ---- data ----

    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["prompt"]

    def _get_train_sampler(self, train_dataset=None):
        args = self.args
        return RepeatSampler(train_dataset if train_dataset is not None else self.train_dataset,
                             mini_repeat_count=args.num_generations,
                             batch_size=args.generation_batch_size // args.num_generations,
                             repeat_count=args.num_iterations * args.steps_per_generation,
                             shuffle=args.shuffle_dataset, seed=args.seed)

    def _get_eval_sampler(self, eval_dataset):
        return RepeatSampler(eval_dataset, mini_repeat_count=self.num_generations_eval, shuffle=False)

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("GRPOTrainer: training needs a train_dataset with a 'prompt' column")
        # One dataloader batch is this process's share of a whole generation batch.
        return self._get_dataloader(dataset=self.train_dataset, description="Training",
                                    batch_size=self._train_batch_size * self.args.steps_per_generation,
                                    sampler_fn=self._get_train_sampler, is_training=True)

    @property
    def num_generations_eval(self) -> int:
        return self.args.num_generations_eval or self.args.num_generations

    # ---- the step ----

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._step, self._buffer = None, None  # re-derived from the (possibly resumed) global step
        if resume_from_checkpoint:
            self._load_generation_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # A checkpoint inside a generation block (num_iterations > 1, or steps_per_generation > GA) also holds the
    # block's buffered batch, so a resumed run trains on the very batch the straight run would have.
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        state = {"step": self._step, "buffer": self._buffer, "entropy_coef": self.entropy_coef,
                 "last_window_entropy": self._last_window_entropy}
        os.makedirs(folder, exist_ok=True)
        torch.save(state, os.path.join(folder, f"grpo_state_{self.accelerator.process_index}.pt"))

    def _load_generation_state(self, checkpoint) -> None:
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        path = os.path.join(str(checkpoint), f"grpo_state_{self.accelerator.process_index}.pt") if checkpoint else ""
        if not os.path.exists(path):
            return
        state = torch.load(path, map_location=self.accelerator.device, weights_only=False)
        self._step, self._buffer = state["step"], state["buffer"]
        self.entropy_coef, self._last_window_entropy = state["entropy_coef"], state["last_window_entropy"]

    def evaluate(self, *args, **kwargs):
        global_eval = self.args.per_device_eval_batch_size * self.accelerator.num_processes
        if global_eval % self.num_generations_eval:
            raise ValueError(f"the eval batch ({self.args.per_device_eval_batch_size} x "
                             f"{self.accelerator.num_processes} processes) must be a multiple of the generations per "
                             f"eval prompt ({self.num_generations_eval}): set per_device_eval_batch_size")
        self._eval_batch = 0  # every evaluation samples with the same seeds: before/after numbers are paired
        self._last_eval_metrics = {}
        metrics = super().evaluate(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[2] if len(args) > 2 else "eval")
        # the generation metrics (eval_reward, ...) were logged; return them too, as the held-out numbers
        return {**metrics, **{f"{prefix}_{key}": value for key, value in self._last_eval_metrics.items()}}

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._metrics["train"]["step_time"].append(time.perf_counter() - start)
        return loss

    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            self._eval_batch += 1
            return self._generate_and_score(generation_batch, "eval", self._eval_batch)
        if self._step is None:
            self._step = self.state.global_step * self.args.gradient_accumulation_steps
        if self._step % self.generate_every == 0 or self._buffer is None:
            generation = self._step // self.generate_every
            batch = self._generate_and_score(generation_batch, "train", generation)
            # TRL shuffles with the global RNG, which anything else drawing from it moves; ours has its own seed
            seed = None if self.args.reproduce_trl else self._seed("shuffle", generation)
            self._buffer = split_rows(shuffle_rows(batch, seed), self.args.steps_per_generation)
        inputs = self._buffer[self._step % self.args.steps_per_generation]
        self._step += 1
        return inputs

    def _seed(self, kind: str, index: int) -> int:
        kinds = {"train": 0, "eval": 1, "shuffle": 2}
        return (self.args.seed * 1_000_003 + index * 7_919 + self.accelerator.process_index * 104_729
                + kinds[kind] * 15_485_863) % 2**63

    def _generate_and_score(self, rows: list[dict], mode: str, index: int) -> dict:
        device = self.accelerator.device
        prompts = [row["prompt"] for row in rows]
        rollout, extras = self._rollout(prompts, mode, index)
        multiple = self.args.pad_to_multiple_of if isinstance(self.args.pad_to_multiple_of, int) else None
        prompt_ids, prompt_mask = pad(rollout["prompt_ids"], self.pad_token_id, "left", multiple)
        completion_lists = [list(c) for c in rollout["completion_ids"]]
        completion_ids, completion_mask = pad(completion_lists, self.pad_token_id, "right", multiple)
        ends = {*self.eos_token_ids, self.pad_token_id}
        truncated = torch.tensor([not c or c[-1] not in ends for c in completion_lists])
        env_mask = None
        if rollout.get("env_mask") is not None:
            env_mask, _ = pad(rollout["env_mask"], 0, "right", multiple)
        # the lengths logged are what was generated (model tokens), before truncated completions are masked
        generated = (completion_mask if env_mask is None else completion_mask * env_mask).sum(1).to(device)
        if self.args.mask_truncated_completions:
            completion_mask = completion_mask * (~truncated)[:, None].long()
        loss_mask = completion_mask if env_mask is None else completion_mask * env_mask
        batch = {"prompt_ids": prompt_ids.to(device), "prompt_mask": prompt_mask.to(device),
                 "completion_ids": completion_ids.to(device), "completion_mask": completion_mask.to(device),
                 "loss_mask": loss_mask.float().to(device)}
        if rollout.get("logprobs") is not None:
            batch["sampling_logps"] = _pad_floats(rollout["logprobs"], completion_ids.shape[1], device)

        with torch.no_grad():
            if self.needs_old_logps and mode == "train":
                batch["old_logps"] = self._score_batches(self.model, batch)
            if self.reference is not None:
                with self.reference.model() as reference:
                    batch["ref_logps"] = self._score_batches(reference, batch)

        completions = self._decode(prompts, completion_lists)
        kwargs = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"}
        for key, value in extras.items():
            kwargs[key] = value if isinstance(value, list) else [value] * len(prompts)
        kwargs.update(trainer_state=self.state, log_extra=self._log_extra, log_metric=self._log_metric(mode))
        local_rewards = compute_rewards(self.reward_funcs, self.reward_func_names, prompts, completions,
                                        completion_lists, kwargs).to(device)
        rewards = self.accelerator.gather(local_rewards).cpu()
        generations = self.args.num_generations if mode == "train" else self.num_generations_eval
        result = compute_advantages(rewards, self.reward_weights, generations, self.args.scale_rewards,
                                    self.args.multi_objective_aggregation, exact_ties=not self.args.reproduce_trl)
        local = slice(self.accelerator.process_index * len(prompts), (self.accelerator.process_index + 1) * len(prompts))
        batch["advantages"] = result.advantages[local].to(device)

        counted = loss_mask.sum(1).to(device)
        window_tokens = self.accelerator.gather(counted.sum()[None]).sum().item()
        batch["window_normaliser"] = torch.full((len(prompts),), float(window_tokens), device=device)
        self._log_generation(mode, rewards, result, prompt_mask, generated, truncated)
        if self.args.log_completions and self.accelerator.is_main_process:
            self._completions_log = [{"prompt": p, "completion": c, "reward": r, "advantage": a}
                                     for p, c, r, a in zip(prompts, completions, result.rewards[local].tolist(),
                                                           batch["advantages"].tolist(), strict=True)]
        return batch

    def _rollout(self, prompts: list, mode: str, index: int) -> tuple[dict, dict]:
        if self.rollout_func is not None:
            output = dict(self.rollout_func(prompts, self))
            missing = [key for key in ("prompt_ids", "completion_ids", "logprobs") if key not in output]
            if missing:
                raise ValueError(f"rollout_func returned no {missing}: it must return a dict with 'prompt_ids', "
                                 "'completion_ids' and 'logprobs' (a list per prompt, or None for logprobs)")
            for key in ("prompt_ids", "completion_ids"):
                if len(output[key]) != len(prompts):
                    raise ValueError(f"rollout_func returned {len(output[key])} {key} for {len(prompts)} prompts: "
                                     "give one per prompt")
            return output, {k: v for k, v in output.items() if k not in ROLLOUT_KEYS}
        prompt_ids = self._prompt_token_ids(prompts)
        completion_ids = self.rollout_engine.generate(prompt_ids, self._seed(mode, index))
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}, {}

    def _prompt_token_ids(self, prompts: list) -> list[list[int]]:
        """The token ids of each prompt (conversations through the chat template), in one tokenizer call."""
        if prompts and is_conversational(prompts[0]):
            kwargs = _json_dict(self.args.chat_template_kwargs) or {}
            prompts = [self.tokenizer_.apply_chat_template(p, add_generation_prompt=True, tokenize=False, **kwargs)
                       for p in prompts]
        return self.tokenizer_(prompts, add_special_tokens=False)["input_ids"] if prompts else []

    def _decode(self, prompts: list, completion_ids: list[list[int]]) -> list:
        texts = self.tokenizer_.batch_decode(completion_ids, skip_special_tokens=True)
        if prompts and is_conversational(prompts[0]):
            return [[{"role": "assistant", "content": text}] for text in texts]
        return texts

    # ---- scoring and the loss ----

    def _score(self, model, batch: dict, with_entropy: bool = False):
        """Per-token log-probs [B, C] of the completion tokens under ``log_softmax(logits / temperature)``, and
        entropies (differentiable when the entropy bonus is on); positions ``cumsum(mask) - 1`` so left padding
        never shifts a prompt."""
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        width = batch["completion_ids"].shape[1]
        if self.args.reproduce_trl:
            positions = None
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                       logits_to_keep=width + 1).logits[:, :-1]
        return selective_log_softmax(logits, batch["completion_ids"], self.args.temperature,
                                     with_entropy=with_entropy, entropy_grad=self._entropy_bonus_on)

    def _score_batches(self, model, batch: dict) -> torch.Tensor:
        """`_score`'s log-probs of a whole generation batch, a training micro-batch's rows at a time."""
        size = self.args.per_device_train_batch_size
        rows = batch["prompt_ids"].shape[0]
        parts = [self._score(model, {k: v[i:i + size] for k, v in batch.items() if k.endswith(("_ids", "_mask"))})
                 for i in range(0, rows, size)]
        return torch.cat([logps for logps, _ in parts])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("GRPOTrainer.compute_loss does not return outputs")
        mode = "train" if self.model.training else "eval"
        logps, entropies = self._score(model, inputs, with_entropy=True)
        mask = inputs["loss_mask"]
        entropy_mask = None
        if self.args.top_entropy_quantile < 1.0:
            threshold = entropy_threshold(self._gather_valid(entropies, mask), self.args.top_entropy_quantile)
            entropy_mask = high_entropy_mask(entropies, mask, threshold)
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        processes = self.accelerator.num_processes
        window_tokens = inputs["window_normaliser"][0].item()
        if mode == "train":
            normaliser = dapo_normaliser(window_tokens, processes, self.args.gradient_accumulation_steps,
                                         self.args.steps_per_generation)
        else:
            normaliser = max(window_tokens / processes, 1.0)
        behaviour = inputs.get("sampling_logps", inputs.get("old_logps"))
        out = grpo_loss(self.loss_settings, logps, inputs.get("old_logps"), inputs["advantages"], mask,
                        ref_logps=inputs.get("ref_logps"), entropy_mask=entropy_mask, behaviour_logps=behaviour,
                        accumulation=accumulation, window_normaliser=normaliser)
        loss = out.loss
        if self._entropy_bonus_on:
            loss = self._entropy_bonus(loss, entropies, mask if entropy_mask is None else mask * entropy_mask,
                                       accumulation, mode)
        self._log_loss(mode, out, entropies, inputs)
        return loss

    def _entropy_bonus(self, loss, entropies, mask, accumulation, mode):
        """``loss - coef · mean entropy / GA``; adaptive control (Skywork-OR1) applies the coefficient only while
        the last window's entropy is at or below the target and moves it one step per optimizer step."""
        policy_loss = loss.detach()
        coef = self.entropy_coef
        if self.args.use_adaptive_entropy and self._last_window_entropy > self.args.entropy_target:
            coef = 0.0
        loss = loss - coef * masked_mean(entropies, mask) / accumulation
        metrics = self._metrics[mode]
        metrics["policy_loss"].append(self.accelerator.gather(policy_loss[None]).mean().item())
        if self.args.use_adaptive_entropy and mode == "train":
            stats = torch.stack([(entropies * mask).sum(), mask.sum()]).detach()
            self._entropy_window = stats if self._entropy_window is None else self._entropy_window + stats
            if self.accelerator.sync_gradients:
                total = self.accelerator.reduce(self._entropy_window, reduction="sum")
                entropy = (total[0] / total[1].clamp(min=1.0)).item()
                args = self.args
                if entropy <= args.entropy_target:
                    self.entropy_coef = min(self.entropy_coef + args.entropy_coef_delta, args.entropy_coef_max)
                else:
                    self.entropy_coef = max(self.entropy_coef - args.entropy_coef_delta, args.entropy_coef_min)
                self._last_window_entropy, self._entropy_window = entropy, None
        if mode == "train" and self.accelerator.sync_gradients:
            metrics["entropy_coef"].append(self.entropy_coef)
        return loss

    def _gather_valid(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The masked values of every process, flattened."""
        local = values.detach()[mask.bool()]
        padded = self.accelerator.pad_across_processes(local, pad_index=float("nan"))
        gathered = self.accelerator.gather(padded)
        return gathered[~gathered.isnan()]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ---- metrics ----

    def _token_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        stats = self.accelerator.gather(torch.stack([(values * mask).sum(), mask.sum()])[None]).sum(0)
        return (stats[0] / stats[1].clamp(min=1.0)).item()

    def _log_loss(self, mode: str, out, entropies: torch.Tensor, inputs: dict) -> None:
        metrics, mask = self._metrics[mode], inputs["loss_mask"]
        metrics["entropy"].append(self._token_mean(entropies.detach(), inputs["completion_mask"].float()))
        if out.kl is not None:
            metrics["kl"].append(self._token_mean(out.kl.detach(), mask))
        ratio = out.ratio.detach()
        advantages = inputs["advantages"]
        settings = self.loss_settings
        # A sequence-level ratio ([B, 1]) is one value per sequence: its clip metrics count sequences, not tokens.
        per_sequence = ratio.shape[1] == 1
        if per_sequence:
            mask = torch.ones_like(ratio)
        if settings.loss_type in CLIPPED_LOSSES:
            low, high = clip_indicators(ratio, out.clipped_ratio.detach(), advantages, settings.epsilon_low,
                                        settings.epsilon_high)
            metrics["clip_ratio/low_mean"].append(self._token_mean(low, mask))
            metrics["clip_ratio/high_mean"].append(self._token_mean(high, mask))
            metrics["clip_ratio/region_mean"].append(self._token_mean(torch.maximum(low, high), mask))
            # per sequence; a sequence with no token in the loss has none (NaN, left out)
            low_seq, high_seq = ((x * mask).sum(1) / mask.sum(1) for x in (low, high))
            metrics["clip_ratio/low_min"].append(_nan_extreme(self.accelerator.gather(low_seq), torch.min))
            metrics["clip_ratio/high_max"].append(_nan_extreme(self.accelerator.gather(high_seq), torch.max))
        elif settings.loss_type == "cispo":
            clipped = ((ratio > settings.epsilon_high) & (advantages[:, None] > 0)).float()
            metrics["cispo_clip_ratio"].append(self._token_mean(clipped.expand_as(mask), mask))
        elif settings.loss_type == "vespo":  # one weight per sequence
            metrics["vespo/phi_seq_mean"].append(self._token_mean(out.vespo_weights, torch.ones_like(out.vespo_weights)))

    def _log_generation(self, mode, rewards, result, prompt_mask, generated, truncated) -> None:
        metrics, gather = self._metrics[mode], self.accelerator.gather
        device, exact = self.accelerator.device, not self.args.reproduce_trl
        lengths = gather(generated.float()).cpu()
        all_truncated = gather(truncated.to(device)).cpu()
        if mode == "train":
            tokens = gather((prompt_mask.sum().to(device) + generated.sum())[None]).sum().item()
            self.state.num_input_tokens_seen += int(tokens)
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]  # in evaluation: the training count so far
        metrics["completions/mean_length"].append(lengths.mean().item())
        metrics["completions/min_length"].append(lengths.min().item())
        metrics["completions/max_length"].append(lengths.max().item())
        terminated = lengths[~all_truncated]
        metrics["completions/clipped_ratio"].append(all_truncated.float().mean().item())
        metrics["completions/mean_terminated_length"].append(terminated.mean().item() if len(terminated) else 0.0)
        metrics["completions/min_terminated_length"].append(terminated.min().item() if len(terminated) else 0.0)
        metrics["completions/max_terminated_length"].append(terminated.max().item() if len(terminated) else 0.0)
        for k, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(nanmean(rewards[:, k], exact_ties=exact).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards[:, k], exact_ties=exact).item())
        metrics["reward"].append(nanmean(result.rewards, exact_ties=exact).item())
        metrics["reward_std"].append(nanstd(result.rewards, exact_ties=exact).item())
        metrics["frac_reward_zero_std"].append(result.frac_zero_std)

    def _log_metric(self, mode: str):
        def log_metric(name: str, value: float) -> None:
            self._metrics[mode][name].append(float(value))
        return log_metric

    def _log_extra(self, column: str, values: list) -> None:
        for row, value in zip(self._completions_log, values, strict=False):
            row[column] = value

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        averaged = {}
        for key, values in self._metrics[mode].items():
            finite = [v for v in values if v == v]  # NaN-ignoring mean since the last log
            averaged[key] = sum(finite) / len(finite) if finite else float("nan")
        if mode == "eval":
            self._last_eval_metrics = averaged
            averaged = {f"eval_{key}": value for key, value in averaged.items()}
        super().log({**logs, **averaged}, start_time)
        self._metrics[mode].clear()
        if self.args.log_completions and self._completions_log and mode == "train":
            shown = self._completions_log
            if self.args.log_unique_prompts:
                shown = _first_per_prompt(shown)
            shown = shown[:self.args.num_completions_to_print or len(shown)]
            for row in shown:
                print(" | ".join(f"{k}: {v!r}" for k, v in row.items()))


def _first_per_prompt(rows: list[dict]) -> list[dict]:
    firsts = {}
    for row in rows:
        firsts.setdefault(repr(row["prompt"]), row)
    return list(firsts.values())


def _nan_extreme(values: torch.Tensor, extreme) -> float:
    """``extreme`` (torch.min or torch.max) of the non-NaN values; NaN if there are none."""
    values = values[~values.isnan()]
    return extreme(values).item() if values.numel() else float("nan")


def _pad_floats(values: list, width: int, device) -> torch.Tensor:
    out = torch.zeros((len(values), width), dtype=torch.float32)
    for i, v in enumerate(values):
        out[i, :len(v)] = torch.as_tensor(v, dtype=torch.float32)
    return out.to(device)


def shuffle_rows(batch: dict, seed: int | None) -> dict:
    """The batch's rows in a random order (the same for every tensor), reproducible from ``seed`` (None: drawn
    from torch's global RNG)."""
    rows = next(iter(batch.values())).shape[0]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    order = torch.randperm(rows, generator=generator).to(next(iter(batch.values())).device)
    return {key: value[order] for key, value in batch.items()}


def split_rows(batch: dict, parts: int) -> list[dict]:
    """``parts`` micro-batches of equal size, in order."""
    rows = next(iter(batch.values())).shape[0]
    size = rows // parts
    return [{key: value[i * size:(i + 1) * size] for key, value in batch.items()} for i in range(parts)]


class _SyncReference(TrainerCallback):
    """TR-DPO's reference update every ``ref_model_sync_steps`` steps: π_ref = α π_θ + (1 - α) π_ref."""

    def __init__(self, trainer: GRPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.ref_model_sync_steps:
            return
        alpha = args.ref_model_mixup_alpha
        policy = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with torch.no_grad():
            for ref, own in zip(self.trainer.reference.module.parameters(), policy.parameters(), strict=True):
                ref.mul_(1 - alpha).add_(own.detach(), alpha=alpha)

