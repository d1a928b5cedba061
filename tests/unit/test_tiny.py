import pytest
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from rlhf_trainer.tiny import BUILTIN_MODELS, build_tokenizer, save_tiny


def test_tokenizer_is_deterministic_with_distinct_pad(tiny_tokenizer):
    again = build_tokenizer()
    assert again.get_vocab() == tiny_tokenizer.get_vocab()
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id
    text = "The acting was wonderful from start to finish."
    assert tiny_tokenizer.decode(tiny_tokenizer(text)["input_ids"]) == text


def test_chat_template_marks_assistant_tokens(tiny_tokenizer):
    out = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tiny_tokenizer.decode(marked) == "Hello there<|endoftext|>"


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_models_load_through_from_pretrained(tiny_model, name):
    path = tiny_model(name)
    auto = {"causal-lm": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
            "seq-cls": AutoModelForSequenceClassification}[BUILTIN_MODELS[name][1]]
    model = auto.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_same_seed_same_weights(tmp_path):
    a = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "a", "opt"))
    b = AutoModelForCausalLM.from_pretrained(save_tiny(tmp_path / "b", "opt"))
    assert a.config.word_embed_proj_dim != a.config.hidden_size
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert p.equal(q), name
