"""The frozen reference model of PPO, optionally sharing its first layers with the policy."""

from __future__ import annotations

import copy

from torch import nn

# Where the transformer blocks live in the common model families; "{layer}" is the block index.
LAYER_PATTERNS = (
    "transformer.h.{layer}",
    "model.decoder.layers.{layer}",
    "model.layers.{layer}",
    "gpt_neox.layers.{layer}",
    "transformer.layers.{layer}",
    "encoder.block.{layer}",
)


def create_reference_model(model: nn.Module, num_shared_layers: int | None = None, pattern: str | None = None
                           ) -> nn.Module:
    """A frozen eval-mode copy of ``model``.

    With ``num_shared_layers``, every parameter before block ``num_shared_layers`` (embeddings and the first
    blocks) is not copied but shared with the policy, and frozen there. ``pattern`` names the blocks, e.g.
    ``"transformer.h.{layer}"``; by default the common families' names are tried.
    """
    if getattr(model, "is_peft_model", False):
        raise ValueError(
            "create_reference_model does not copy PEFT models: give PPOTrainer ref_model=None and it takes the "
            "reference log-probs from the same model with its adapters disabled")
    if num_shared_layers is None:
        reference = copy.deepcopy(model)
    else:
        shared = _leading_parameters(model, num_shared_layers, pattern)
        for parameter in shared:
            parameter.requires_grad_(False)
        # deepcopy reuses whatever the memo maps an object to: the shared parameters are never copied.
        reference = copy.deepcopy(model, memo={id(parameter): parameter for parameter in shared})
    reference.requires_grad_(False)
    return reference.eval()


def _leading_parameters(model: nn.Module, num_shared_layers: int, pattern: str | None) -> list[nn.Parameter]:
    """The parameters registered before the first parameter of block ``num_shared_layers``."""
    if num_shared_layers < 0:
        raise ValueError(f"num_shared_layers must be >= 0, got {num_shared_layers}")
    named = list(model.named_parameters())
    for candidate in [pattern] if pattern else LAYER_PATTERNS:
        if "{layer}" not in candidate:
            raise ValueError(f"pattern must contain '{{layer}}', e.g. 'transformer.h.{{layer}}'; got {candidate!r}")
        first_unshared = candidate.format(layer=num_shared_layers) + "."
        for index, (name, _) in enumerate(named):
            if first_unshared in name:
                if index == 0:
                    raise ValueError(f"nothing precedes {first_unshared!r}: there is nothing to share")
                return [parameter for _, parameter in named[:index]]
    tried = pattern or ", ".join(LAYER_PATTERNS)
    raise ValueError(
        f"num_shared_layers={num_shared_layers}: no parameter belongs to block {num_shared_layers} under the "
        f"layer names tried ({tried}); the model may have fewer blocks, or pass pattern='<prefix>.{{layer}}'")
