"""DPOTrainer as a user meets it: it learns the preference, evaluates on a held-out split, and a TRL 1.16 script
runs unchanged with rlhf_trainer imported instead of trl (test_dpo_parity_with_trl.py compares the numbers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dpo_helpers import conversational_pairs

from rlhf_trainer import DPOConfig, DPOTrainer
from rlhf_trainer.data import load_builtin

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_gpt2_learns_to_prefer_the_chosen_reviews(tiny_model, quick_args):
    args = quick_args(DPOConfig, bf16=False, gradient_checkpointing=False, per_device_train_batch_size=16,
                      per_device_eval_batch_size=50, learning_rate=2e-3, num_train_epochs=1, beta=0.1)
    trainer = DPOTrainer(tiny_model("tiny-gpt2"), args=args, train_dataset=load_builtin("movie-preferences")[:192],
                         eval_dataset=load_builtin("movie-preferences", "test"))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert before["eval_rewards/accuracies"] == 0.0  # the reference is the policy: every pair ties
    assert after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > 0.5 and after["eval_loss"] < 0.5 < before["eval_loss"]
    assert after["eval_rewards/chosen"] > after["eval_rewards/rejected"]
    train_logs = [log for log in trainer.state.log_history if "rewards/accuracies" in log]
    assert train_logs[-1]["rewards/accuracies"] > train_logs[0]["rewards/accuracies"]
    assert {"eval_logps/chosen", "eval_logits/rejected", "eval_entropy", "eval_mean_token_accuracy",
            "eval_num_tokens"} <= set(after)


SCRIPT = '''
import json, sys
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from rlhf_trainer import DPOConfig, DPOTrainer

model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
train_dataset = Dataset.from_list(json.load(open(sys.argv[2])))

training_args = DPOConfig(output_dir=sys.argv[3], bf16=False, max_steps=3, per_device_train_batch_size=4,
                          logging_steps=1, report_to="none", learning_rate=1e-3)
trainer = DPOTrainer(model=model, args=training_args, processing_class=tokenizer, train_dataset=train_dataset)
trainer.train()
json.dump([log for log in trainer.state.log_history if "loss" in log], open(sys.argv[4], "w"))
'''


def run_script(model, data, tmp_path) -> list[dict]:
    script, logs = tmp_path / "dpo.py", tmp_path / "logs.json"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "trainer_image"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-P", str(script), model, str(data), str(tmp_path / "out"), str(logs)],
                            env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(logs.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("conversational", [False, True])
def test_trl_quickstart_script_runs_unchanged(tiny_model, tmp_path, conversational):
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(conversational_pairs(12) if conversational else load_builtin("movie-preferences")[:12]))
    ours = run_script(tiny_model("tiny-gpt2"), data, tmp_path)
    assert len(ours) == 3 and ours[0]["loss"] == pytest.approx(0.6931, abs=1e-4)
    assert ours[-1]["rewards/margins"] > 0
