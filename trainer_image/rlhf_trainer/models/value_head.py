"""Language models with a scalar value head, as PPO needs them (docs/algorithms/ppo.md, "Models")."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

V_HEAD_FILE = "v_head.safetensors"
V_HEAD_PREFIX = "v_head."
_QUANTIZATION_KWARGS = ("quantization_config", "load_in_8bit", "load_in_4bit")


class ValueHead(nn.Module):
    """Dropout then Linear(hidden, 1): one value per position of the last hidden state."""

    def __init__(self, config, summary_dropout_prob: float = 0.1):
        super().__init__()
        # OPT projects its last hidden state down to word_embed_proj_dim before the LM head.
        hidden_size = getattr(config, "word_embed_proj_dim", None) or config.hidden_size
        self.dropout = nn.Dropout(summary_dropout_prob)
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(hidden_states).to(self.summary.weight.dtype)
        return self.summary(hidden_states).squeeze(-1)


class PreTrainedModelWrapper(nn.Module):
    """A transformers (or PEFT) model plus a value head; loads and saves both like a transformers model."""

    transformers_parent_class: type | None = None
    supported_args = ("summary_dropout_prob", "v_head_init_strategy", "v_head_initializer_range")

    def __init__(self, pretrained_model: nn.Module, summary_dropout_prob: float = 0.1,
                 v_head_init_strategy: str | None = None, v_head_initializer_range: float = 0.2):
        super().__init__()
        self.pretrained_model = pretrained_model
        self.config = pretrained_model.config
        self.is_encoder_decoder = bool(getattr(self.config, "is_encoder_decoder", False))
        self.is_peft_model = _is_peft_model(pretrained_model)
        self.v_head = ValueHead(self.config, summary_dropout_prob)
        if v_head_init_strategy == "normal":
            nn.init.normal_(self.v_head.summary.weight, std=v_head_initializer_range)
            nn.init.zeros_(self.v_head.summary.bias)
        elif v_head_init_strategy is not None:
            raise ValueError(f"v_head_init_strategy must be None or 'normal', got {v_head_init_strategy!r}")
        self.v_head.to(next(pretrained_model.parameters()).device)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, peft_config=None, **kwargs):
        """Load a model (hub id, local directory, or a model object) and its value head, if one was saved.

        ``peft_config`` wraps the model with fresh adapters; a directory saved from a PEFT policy loads its
        adapters back. Keyword arguments named in ``supported_args`` configure the value head; the rest go to
        transformers' ``from_pretrained``.
        """
        head_kwargs = {key: kwargs.pop(key) for key in cls.supported_args if key in kwargs}
        if any(key in kwargs for key in _QUANTIZATION_KWARGS):
            _check_quantization_possible()
        source = pretrained_model_name_or_path
        if isinstance(source, str | os.PathLike):
            source = str(source)
            model = _load_pretrained(cls.transformers_parent_class, source, model_args, kwargs, peft_config)
        elif isinstance(source, nn.Module):
            model, source = source, None
            if peft_config is not None:
                model = _add_adapters(model, peft_config)
        else:
            raise TypeError(
                f"pretrained_model_name_or_path must be a hub id, a directory or a model, got {type(source).__name__}")
        wrapper = cls(model, **head_kwargs)
        if source is not None:
            state = _load_v_head_state(source)
            if state is None:
                warnings.warn(
                    f"{source} has no value head weights ({V_HEAD_FILE} or '{V_HEAD_PREFIX}*' keys); "
                    "initialising a fresh value head", stacklevel=2)
            else:
                wrapper.v_head.load_state_dict(state)
        return wrapper

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Save the model (only the adapters for a PEFT model) and the value head next to it."""
        kwargs.pop("state_dict", None)
        self.pretrained_model.save_pretrained(save_directory, **kwargs)
        state = {f"{V_HEAD_PREFIX}{name}": tensor.detach().contiguous().cpu()
                 for name, tensor in self.v_head.state_dict().items()}
        save_file(state, os.path.join(save_directory, V_HEAD_FILE), metadata={"format": "pt"})

    def generate(self, *args, **kwargs):
        """The underlying model's ``generate``."""
        return self.pretrained_model.generate(*args, **kwargs)

    def _base_forward(self, input_ids, past_key_values, attention_mask, kwargs):
        if past_key_values is not None:
            kwargs["past_key_values"] = past_key_values
        kwargs["output_hidden_states"] = True  # the value head reads the last hidden state
        return self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _value_head_output(self, base_output, last_hidden_state, return_past_key_values):
        values = self.v_head(last_hidden_state)
        outputs = (base_output.logits.float(), base_output.loss, values)
        return (*outputs, base_output.past_key_values) if return_past_key_values else outputs


class AutoModelForCausalLMWithValueHead(PreTrainedModelWrapper):
    """A causal LM with a value head; ``forward`` returns ``(lm_logits fp32, loss, values[B, T])``."""

    transformers_parent_class = AutoModelForCausalLM

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, return_past_key_values=False,
                **kwargs):
        output = self._base_forward(input_ids, past_key_values, attention_mask, kwargs)
        return self._value_head_output(output, output.hidden_states[-1], return_past_key_values)


class AutoModelForSeq2SeqLMWithValueHead(PreTrainedModelWrapper):
    """An encoder-decoder LM with a value head on the decoder; ``forward`` returns ``(lm_logits, loss, values)``."""

    transformers_parent_class = AutoModelForSeq2SeqLM

    def forward(self, input_ids=None, past_key_values=None, attention_mask=None, return_past_key_values=False,
                **kwargs):
        output = self._base_forward(input_ids, past_key_values, attention_mask, kwargs)
        return self._value_head_output(output, output.decoder_hidden_states[-1], return_past_key_values)


def _is_peft_model(model: nn.Module) -> bool:
    if importlib.util.find_spec("peft") is None:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _check_quantization_possible() -> None:
    if not torch.cuda.is_available():
        raise ValueError(
            "quantization_config needs a CUDA GPU with bitsandbytes, and this machine has no CUDA device; "
            "load the model without quantization_config to train on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("quantization_config needs bitsandbytes: pip install bitsandbytes")


def _load_pretrained(auto_class, source: str, model_args, kwargs, peft_config):
    """The transformers model at ``source``; a saved PEFT directory comes back with its adapters, trainable."""
    adapter_config = Path(source) / "adapter_config.json"
    if not adapter_config.is_file():
        model = auto_class.from_pretrained(source, *model_args, **kwargs)
        return model if peft_config is None else _add_adapters(model, peft_config)
    if peft_config is not None:
        raise ValueError(f"{source} already holds PEFT adapters; load it without peft_config")
    from peft import PeftModel

    base_path = json.loads(adapter_config.read_text())["base_model_name_or_path"]
    base = auto_class.from_pretrained(base_path, *model_args, **kwargs)
    return PeftModel.from_pretrained(base, source, is_trainable=True)


def _add_adapters(model: nn.Module, peft_config):
    from peft import get_peft_model

    if _is_peft_model(model):
        raise ValueError("the model already has PEFT adapters; pass peft_config=None")
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"peft_config needs a transformers PreTrainedModel, got {type(model).__name__}")
    if getattr(model, "hf_quantizer", None) is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    return get_peft_model(model, peft_config)


def _load_v_head_state(source: str) -> dict[str, torch.Tensor] | None:
    """The value head's weights saved with ``source`` (our v_head file, or v_head keys in the model's own files)."""
    directory = Path(source)
    if not directory.is_dir():
        return _download_v_head_state(source)
    candidates = [directory / V_HEAD_FILE, directory / "model.safetensors"]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        candidates += sorted({directory / file for key, file in weight_map.items() if key.startswith(V_HEAD_PREFIX)})
    for path in candidates:
        if path.is_file():
            with safe_open(path, framework="pt") as handle:
                state = {key.removeprefix(V_HEAD_PREFIX): handle.get_tensor(key)
                         for key in handle.keys() if key.startswith(V_HEAD_PREFIX)}  # noqa: SIM118
            if state:
                return state
    return None


def _download_v_head_state(repo_id: str) -> dict[str, torch.Tensor] | None:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, V_HEAD_FILE)
    except Exception:  # no such file in the repository, or offline: a fresh head it is
        return None
    return _load_v_head_state(str(Path(path).parent))
