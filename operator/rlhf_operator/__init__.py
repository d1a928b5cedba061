"""rlhf_operator: the control plane of rlhf-operator. Never imports torch."""

__version__ = "0.1.0"
