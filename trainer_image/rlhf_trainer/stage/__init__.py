"""The stage runner: ``python -m rlhf_trainer.stage /etc/rlhf/stage.json``. ``config`` is torch-free."""
