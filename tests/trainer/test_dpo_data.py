"""DPO data handling (docs/algorithms/dpo.md, "Data"): prompt extraction, EOS, the three tokenisations, dropping and
truncation, the 2B-row batch, and errors that name the row and column."""

import pytest

from rlhf_trainer.trainer.dpo_data import (
    PreferenceCollator,
    extract_prompt,
    prepare_preference_dataset,
    prepare_row,
    tokenize_pair,
)
from rlhf_trainer.trainer.inputs import DatasetError

EOS = "<|endoftext|>"


def prepare(rows, tokenizer, max_length=1024, truncation_mode="keep_start"):
    return prepare_preference_dataset(rows, "train_dataset", tokenizer=tokenizer, max_length=max_length,
                                      truncation_mode=truncation_mode)


def test_implicit_prompt_is_the_common_prefix_with_the_space_moved_to_the_completions():
    assert extract_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.", " green.")
    assert extract_prompt("Plot: good", "Plot: bad") == ("Plot:", " good", " bad")
    assert extract_prompt("abc", "abd") == ("ab", "c", "d")  # no space before the split: nothing moves


def test_implicit_conversational_prompt_is_the_common_messages():
    user = {"role": "user", "content": "Colour of the sky?"}
    chosen = [user, {"role": "assistant", "content": "Blue."}]
    rejected = [user, {"role": "assistant", "content": "Green."}]
    assert extract_prompt(chosen, rejected) == ([user], chosen[1:], rejected[1:])


def test_eos_is_appended_to_standard_text_once(tiny_tokenizer):
    row = prepare_row({"prompt": "The movie", "chosen": " was great", "rejected": " was bad" + EOS}, 0,
                      tokenizer=tiny_tokenizer, name="d")
    eos = tiny_tokenizer.eos_token_id
    assert row["chosen_ids"][-1] == eos and row["chosen_ids"][-2] != eos
    assert row["rejected_ids"][-1] == eos and row["rejected_ids"][-2] != eos
    assert row["chosen_ids"] == tiny_tokenizer(" was great" + EOS)["input_ids"]


def test_conversations_get_the_chat_template_and_no_extra_eos(tiny_tokenizer):
    prompt = [{"role": "user", "content": "Review?"}]
    chosen, rejected = [{"role": "assistant", "content": "Great film."}], [{"role": "assistant", "content": "Bad."}]
    row = prepare_row({"prompt": prompt, "chosen": chosen, "rejected": rejected}, 0, tokenizer=tiny_tokenizer,
                      name="d")
    with_generation_prompt = tiny_tokenizer.apply_chat_template(prompt, add_generation_prompt=True)["input_ids"]
    assert row["prompt_ids"] == list(with_generation_prompt)  # ends with "<|im_start|>assistant\n"
    full = tiny_tokenizer.apply_chat_template(prompt + chosen)["input_ids"]
    assert row["prompt_ids"] + row["chosen_ids"] == list(full)
    eos = tiny_tokenizer.eos_token_id
    assert row["chosen_ids"].count(eos) == 1  # the template's, nothing appended


def test_tools_and_template_kwargs_reach_the_chat_template(tiny_tokenizer):
    template = ("{% if tools %}TOOLS{% endif %}{% if shout %}SHOUT{% endif %}"
                "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    row = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": " yes"}],
           "rejected": [{"role": "assistant", "content": " no"}], "tools": '[{"name": "f"}]',
           "chat_template_kwargs": {"shout": True, "chat_template": template}}
    ids = prepare_row(row, 0, tokenizer=tiny_tokenizer, name="d")
    assert tiny_tokenizer.decode(ids["prompt_ids"]).startswith("TOOLSSHOUTHi")


def test_joint_tokenisation_moves_a_merged_boundary_token_into_the_completion(tiny_tokenizer):
    # "grea" + "t": alone the prompt ends in " g", "re", "a"; jointly " great" is one token
    ids = tokenize_pair("The movie was grea", "t" + EOS, "ve" + EOS, tiny_tokenizer)
    assert ids["prompt_ids"] == tiny_tokenizer("The movie was")["input_ids"]
    assert ids["prompt_ids"] + ids["chosen_ids"] == tiny_tokenizer("The movie was great" + EOS)["input_ids"]
    assert ids["chosen_ids"] != tiny_tokenizer("t" + EOS)["input_ids"]


def test_prompts_of_max_length_or_more_are_dropped(tiny_tokenizer, caplog):
    rows = [{"prompt": "The movie was great and the acting was wonderful", "chosen": " Yes.", "rejected": " No."},
            {"prompt": "The movie", "chosen": " was great.", "rejected": " was bad."}]
    long_prompt = len(tiny_tokenizer(rows[0]["prompt"])["input_ids"])
    dataset = prepare(rows, tiny_tokenizer, max_length=long_prompt)
    assert len(dataset) == 1 and dataset[0]["prompt_ids"] == tiny_tokenizer("The movie")["input_ids"]
    assert "rows [0]" in caplog.text
    assert len(prepare(rows, tiny_tokenizer, max_length=long_prompt + 1)) == 2


def test_every_prompt_too_long_is_an_error(tiny_tokenizer):
    with pytest.raises(DatasetError, match="raise max_length"):
        prepare([{"prompt": "The movie was great", "chosen": " Yes.", "rejected": " No."}], tiny_tokenizer,
                max_length=2)


@pytest.mark.parametrize(("rows", "column", "row"), [
    ([{"prompt": "a", "chosen": " x"}], "rejected", None),
    ([{"prompt": "a", "chosen": " x", "rejected": " y"}, {"prompt": "b", "chosen": "", "rejected": " y"}],
     "chosen", 1),
    ([{"prompt": "a", "chosen": " x", "rejected": " y"}, {"prompt": "b", "chosen": " x", "rejected": "  "}],
     "rejected", 1),
    ([{"prompt": "a", "chosen": [{"role": "assistant", "content": "x"}], "rejected": " y"}], "rejected", 0),
    ([{"prompt": None, "chosen": " x", "rejected": " y"}], "prompt", 0),
    ([{"prompt": "a", "chosen": " x", "rejected": " y", "images": []}], "images", None),
])
def test_bad_rows_are_named(tiny_tokenizer, rows, column, row):
    with pytest.raises(DatasetError) as error:
        prepare(rows, tiny_tokenizer)
    assert error.value.column == column and error.value.row == row
    assert repr(column) in str(error.value)


def test_a_completion_with_no_token_left_to_score_is_named(tiny_tokenizer):
    # empty prompt (no BOS): the completion's only token is the row's first, with nothing before it to predict it
    rows = [{"prompt": "a", "chosen": " x", "rejected": " y"}, {"prompt": "", "chosen": EOS, "rejected": " y"}]
    with pytest.raises(DatasetError, match="row 1: the 'chosen' completion has no token left") as error:
        prepare(rows, tiny_tokenizer)
    assert (error.value.row, error.value.column) == (1, "chosen")


def test_batch_is_chosen_rows_then_rejected_rows_each_truncated_on_its_own():
    rows = [{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10]},
            {"prompt_ids": [11], "chosen_ids": [12], "rejected_ids": [13, 14, 15, 16]}]
    batch = PreferenceCollator(pad_token_id=0, max_length=4)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [11, 12, 0, 0], [5, 6, 10, 0], [11, 13, 14, 15]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1]]
    assert batch["completion_lengths"].tolist() == [2, 1, 1, 3]  # after truncation: chosen 0 lost its 9


def test_keep_end_keeps_the_last_tokens():
    rows = [{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10]}]
    batch = PreferenceCollator(pad_token_id=0, max_length=3, truncation_mode="keep_end")(rows)
    assert batch["input_ids"].tolist() == [[7, 8, 9], [5, 6, 10]]
    assert batch["completion_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_packed_batch_holds_the_same_sequences_with_restarting_positions():
    rows = [{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10], "ref_chosen_logps": -1.0,
             "ref_rejected_logps": -2.0},
            {"prompt_ids": [11], "chosen_ids": [12], "rejected_ids": [13, 14, 15, 16], "ref_chosen_logps": -3.0,
             "ref_rejected_logps": -4.0}]
    padded = PreferenceCollator(pad_token_id=0, max_length=4)(rows)
    packed = PreferenceCollator(pad_token_id=0, max_length=4, packed=True, capacity=6)(rows)
    for sequence in range(4):
        where = packed["sequence_index"] == sequence
        real = padded["attention_mask"][sequence].bool()
        assert packed["input_ids"][where].tolist() == padded["input_ids"][sequence][real].tolist()
        assert packed["completion_mask"][where].tolist() == padded["completion_mask"][sequence][real].tolist()
        assert packed["position_ids"][where].tolist() == list(range(int(real.sum())))
    assert packed["input_ids"].shape[1] <= 6 and (packed["sequence_index"] >= 0).sum() == 13  # no padding inside
    assert packed["ref_chosen_logps"].tolist() == [-1.0, -3.0] and packed["ref_rejected_logps"].tolist() == [-2, -4]


def test_shared_prompt_batch_shows_each_sequence_its_own_tokens_in_order():
    rows = [{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10]},
            {"prompt_ids": [11], "chosen_ids": [12], "rejected_ids": [13, 14, 15, 16]}]
    padded = PreferenceCollator(pad_token_id=0, max_length=4)(rows)
    shared = PreferenceCollator(pad_token_id=0, max_length=4, share_prompts=True)(rows)
    attend, ids, positions = shared["attention_mask"][:, 0], shared["input_ids"], shared["position_ids"]
    assert (shared["sequence_index"] >= 0).sum() + (shared["sequence_index"] == -2).sum() == 2 + 2 + 1 + 1 + 1 + 3
    for sequence in range(4):
        row, last = (shared["sequence_index"] == sequence).nonzero()[-1].tolist()
        seen = attend[row, last].nonzero().flatten()  # what the sequence's last token attends to: its context
        expected = padded["input_ids"][sequence][padded["attention_mask"][sequence].bool()].tolist()
        assert ids[row, seen].tolist() == expected
        assert positions[row, seen].tolist() == list(range(len(expected)))
    # the first rejected token of pair 0 is predicted by the prompt's last token, not the chosen one before it
    row, first = (shared["sequence_index"] == 2).nonzero()[0].tolist()
    assert ids[row, shared["previous"][row, first]].item() == 6
    assert shared["completion_lengths"].tolist() == padded["completion_lengths"].tolist()


def test_pad_to_multiple_of():
    rows = [{"prompt_ids": [5], "chosen_ids": [7], "rejected_ids": [10, 11]}]
    assert PreferenceCollator(pad_token_id=0, pad_to_multiple_of=8)(rows)["input_ids"].shape == (2, 8)


def test_already_tokenized_datasets_are_kept(tiny_tokenizer):
    rows = [{"prompt_ids": [5], "chosen_ids": [7], "rejected_ids": [10, 11]}]
    assert prepare(rows, tiny_tokenizer)[0] == rows[0]
