"""DPO configurations on fixed preference pairs, run with `trl` or `rlhf_trainer` (the only difference: the import).

    python dpo_parity_script.py LIBRARY MODEL_DIR PAIRS.json CASES.json OUT_DIR

PAIRS.json holds {"standard": rows, "conversational": rows}. For every case (name -> DPOConfig keywords, plus
"conversational"): the same model and pairs, batches of 4, every step logged, then one evaluation on the first 8
pairs. Writes OUT_DIR/NAME/logs.json (the training and evaluation log records) and step-N.pt (the weights after
each optimizer step), or OUT_DIR/NAME/error.txt when the library refuses the case.
"""

import importlib
import json
import sys
import traceback
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainerCallback

library, model_dir, pairs_file, cases_file, out_dir = sys.argv[1:6]
dpo = importlib.import_module(library)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
PAIRS = json.loads(Path(pairs_file).read_text())
COMMON = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=1e-3, logging_steps=1,
              max_steps=3, bf16=False, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
              dataloader_pin_memory=False)


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
    pairs = PAIRS["conversational" if case.pop("conversational", False) else "standard"]
    try:
        args = dpo.DPOConfig(output_dir=str(folder / "out"), **{**COMMON, **case})
        trainer = dpo.DPOTrainer(model=model_dir, args=args, processing_class=tokenizer,
                                 train_dataset=Dataset.from_list(pairs), eval_dataset=Dataset.from_list(pairs[:8]),
                                 callbacks=[SaveWeights(folder)])
        trainer.train()
        trainer.evaluate()
    except Exception:
        (folder / "error.txt").write_text(traceback.format_exc())
        return
    logs = [record for record in trainer.state.log_history if "loss" in record or "eval_loss" in record]
    (folder / "logs.json").write_text(json.dumps(logs))


torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
for name, case in json.loads(Path(cases_file).read_text()).items():
    run(name, case)
