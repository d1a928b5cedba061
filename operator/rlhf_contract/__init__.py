"""rlhf_contract: what the operator and the trainer pods agree on, and nothing else (torch-free).

    rlhf_contract.stages     the stage kinds and their stage configs (the job author's fields; the CRD's source)
    rlhf_contract.sources    where models and datasets come from
    rlhf_contract.settings   settings the stage kinds share
    rlhf_contract.workspace  the workspace layout: <workspace>/<stage>/{model, metrics.jsonl, checkpoints, result.json}
    rlhf_contract.progress   progress records and the stage result
    rlhf_contract.runtime    paths, environment variables and exit codes of trainer pods

The operator (``rlhf_operator``) and the trainer (``rlhf_trainer``) both import it; it imports neither.
"""
