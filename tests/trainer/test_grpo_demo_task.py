"""The digit-reversal demo task: deterministic, test prompts never in the training split, checkers that score what
a person would."""

from rlhf_trainer.data import BUILTIN_DATASETS, load_builtin
from rlhf_trainer.rewards import reversal_digits, reversal_exact


def test_splits_are_deterministic_and_disjoint():
    assert {"digit-reversal", "digit-reversal-sft"} <= set(BUILTIN_DATASETS)
    train, test = load_builtin("digit-reversal"), load_builtin("digit-reversal", "test")
    assert train == load_builtin("digit-reversal") and (len(train), len(test)) == (9500, 500)
    assert not {row["prompt"] for row in train} & {row["prompt"] for row in test}
    row = train[0]
    assert row["prompt"] == f"Reverse {row['answer'][::-1]} ="
    sft = load_builtin("digit-reversal-sft")
    assert {r["prompt"] for r in sft} == {r["prompt"] for r in train}
    assert all(r["completion"] == " " + r["prompt"][8:12][::-1] for r in sft)


def test_checkers_score_exact_answers_and_partial_credit():
    completions = [" 9274", "9274", " 9274 and more", " 9204", " 92745", ""]
    answers = ["9274"] * len(completions)
    assert reversal_exact(None, completions, answers) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert reversal_digits(None, completions, answers) == [1.0, 1.0, 1.0, 0.75, 0.8, 0.0]
    chat = [[{"role": "assistant", "content": " 9274"}]]
    assert reversal_exact(None, chat, ["9274"]) == [1.0]
