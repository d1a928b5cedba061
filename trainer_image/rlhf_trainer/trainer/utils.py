"""What the trainers share: loading a model and its tokenizer as TRL 1.x does, switching dropout off, the frozen
reference a policy is compared with, and per-token log-probs of completions.

The TRL-1.x-style trainers (GRPO, DPO) load ``model`` from a hub id, a path or take a model object; the reference
is a frozen copy of the policy as constructed, or, under PEFT, the same model with its adapters switched off (or a
frozen copy of a trained adapter, ``"ref"``), never a second full model.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import warnings
from contextlib import contextmanager

import torch
from torch import nn

REF_ADAPTER = "ref"


def disable_dropout_in_model(model: nn.Module) -> None:
    """Switch every dropout off: ``nn.Dropout`` modules and float ``*drop*`` attributes (functional dropout, e.g.
    OPT's ``dropout``/``layerdrop`` and Llama's ``attention_dropout``), so a model's outputs are the same call to
    call in train mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in vars(module).items():
            if "drop" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def has_dropout(model: nn.Module) -> bool:
    """Whether any dropout of the model is on (see ``disable_dropout_in_model``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if any("drop" in name and isinstance(value, float) and value > 0 for name, value in vars(module).items()):
            return True
    return False


def load_causal_lm(model, model_init_kwargs: dict | None = None, auto_class=None) -> nn.Module:
    """``model`` itself, or the model a hub id or path names, loaded with the architecture its config names
    (``model_init_kwargs`` passed on; float32 unless they give a ``dtype``)."""
    if not isinstance(model, str | os.PathLike):
        if model_init_kwargs:
            raise ValueError("model_init_kwargs apply only when model is a hub id or path, not a model object")
        return model
    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class
    kwargs = dict(model_init_kwargs or {})
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    return auto_class.from_pretrained(str(model), dtype=dtype if dtype is not None else torch.float32, **kwargs)


def load_trained_model(model, model_init_kwargs: dict | str | None, trust_remote_code: bool = False,
                       quantization_config=None) -> nn.Module:
    """The model a trainer trains: ``model`` itself, or loaded from a hub id or path with ``model_init_kwargs``
    (a dict or its JSON) and the trainer's ``quantization_config``."""
    if not isinstance(model, str | os.PathLike):
        if model_init_kwargs is not None:
            warnings.warn("model_init_kwargs are ignored: the model is already loaded", UserWarning, stacklevel=3)
        if quantization_config is not None:
            raise ValueError("quantization_config applies only when model is a hub id or path, not a loaded model")
        return model
    kwargs = model_init_kwargs or {}
    kwargs = dict(json.loads(kwargs) if isinstance(kwargs, str) else kwargs)
    if quantization_config is not None:
        if "quantization_config" in kwargs:
            raise ValueError("quantization_config is given both to the trainer and in model_init_kwargs: keep one")
        kwargs["quantization_config"] = quantization_config
    if trust_remote_code:
        kwargs.setdefault("trust_remote_code", True)
    return load_causal_lm(model, kwargs)


def cast_lm_head_to_fp32(model: nn.Module) -> None:
    """Run ``model``'s output layer in float32, its input cast up (ScaleRL's recipe): logits in fp32 whatever the
    rest of the model computes in. Refused when the layer is tied to the input embeddings (casting one casts
    both)."""
    base = model.get_base_model() if is_peft_model(model) else model
    if getattr(base.config, "tie_word_embeddings", False):
        raise ValueError("cast_lm_head_to_fp32=True needs an output layer of its own, but this model ties it to the "
                         "input embeddings (tie_word_embeddings=True)")
    head = base.get_output_embeddings()
    head.float()
    head.register_forward_pre_hook(lambda module, args: (args[0].float(), *args[1:]))


def load_processing_class(model: nn.Module, processing_class=None, padding_side: str | None = None):
    """The tokenizer given, else the model's own (from ``config._name_or_path``); a missing pad token becomes EOS,
    and ``padding_side`` is set when given."""
    if processing_class is None:
        name = getattr(model.config, "_name_or_path", None)
        if not name:
            raise ValueError("pass processing_class=...: the model was not loaded from a name or path to load one from")
        from transformers import AutoTokenizer

        processing_class = AutoTokenizer.from_pretrained(name)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)  # a processor wraps its tokenizer
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    return processing_class


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``PeftModel``; never imports peft (a PeftModel exists only once peft is imported,
    and importing it costs tens of MiB a trainer without adapters should not pay)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


class Reference:
    """The frozen model a policy's log-probs are compared with.

    ``Reference.of(policy)`` makes it: a frozen eval-mode copy of the policy as it is now; for a PEFT policy no copy
    but the same model with its adapters switched off, or, when the policy's adapter is already trained
    (``trained_adapter=True``), a frozen copy of that adapter as adapter ``"ref"``. ``ref_model`` uses that model.
    ``with reference.model() as m:`` gives the module to run a (no-grad) reference forward pass with.
    """

    def __init__(self, module: nn.Module | None, policy: nn.Module | None = None, adapter: str | None = None):
        self.module, self.policy, self.adapter = module, policy, adapter

    @classmethod
    def of(cls, policy: nn.Module, ref_model: nn.Module | None = None, trained_adapter: bool = False) -> Reference:
        if ref_model is not None:
            if ref_model is policy:
                raise ValueError("ref_model must not be the same object as model: pass a copy, or None for a "
                                 "frozen copy of the model")
            return cls(_frozen(ref_model))
        if not is_peft_model(policy):
            return cls(_frozen(copy.deepcopy(policy)))
        if not trained_adapter:
            return cls(None, policy)
        active = policy.active_adapter
        policy.add_adapter(REF_ADAPTER, policy.peft_config[active])
        trained = {name: p for name, p in policy.named_parameters() if f".{active}." in name}
        with torch.no_grad():
            for name, parameter in policy.named_parameters():
                if f".{REF_ADAPTER}." in name:
                    parameter.copy_(trained[name.replace(f".{REF_ADAPTER}.", f".{active}.")])
                    parameter.requires_grad_(False)
        policy.set_adapter(active)  # adding an adapter does not activate it; keep the trained one trainable
        return cls(None, policy, REF_ADAPTER)

    @property
    def is_separate_model(self) -> bool:
        """Whether the reference is a model of its own (to place on devices), not the policy's adapters off."""
        return self.module is not None

    @contextmanager
    def model(self):
        if self.module is not None:
            yield self.module
        elif self.adapter is None:
            with self.policy.disable_adapter():
                yield self.policy
        else:
            active = self.policy.active_adapter
            self.policy.set_adapter(self.adapter, inference_mode=True)
            try:
                yield self.policy
            finally:
                self.policy.set_adapter(active)


def _frozen(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    return model.eval()


def selective_log_softmax(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                          with_entropy: bool = False, entropy_grad: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_softmax(logits / temperature)`` at ``labels``, [..., V] -> [...], in fp32, and with ``with_entropy``
    the entropy per position (differentiable with ``entropy_grad``, else detached). One row block at a time, so no
    second [..., V] tensor is built; the entropy reuses the block's logsumexp (``lse - sum(p * x)``: one more
    exponential per logit, where a separate log-softmax would take two)."""
    rows, vocab = logits.reshape(-1, logits.shape[-1]), logits.shape[-1]
    flat = labels.reshape(-1)
    logps = torch.empty(flat.shape, dtype=torch.float32, device=logits.device)
    entropies = torch.empty(flat.shape, dtype=torch.float32, device=logits.device) if with_entropy else None
    step = max(1, 2**22 // vocab)  # ~16 MiB of fp32 logits at a time
    for start in range(0, len(rows), step):
        block = rows[start:start + step].float()
        if temperature != 1.0:
            block = block / temperature
        lse = block.logsumexp(-1)
        logps[start:start + step] = block.gather(-1, flat[start:start + step, None]).squeeze(-1) - lse
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                x, x_lse = (block, lse) if entropy_grad else (block.detach(), lse.detach())
                entropies[start:start + step] = x_lse - ((x - x_lse[:, None]).exp() * x).sum(-1)
    return logps.view(labels.shape), None if entropies is None else entropies.view(labels.shape)
