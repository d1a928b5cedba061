import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_trainer import SFTTrainer
from rlhf_trainer.data import load_builtin
from rlhf_trainer.trainer.sft import SFTCollator, causal_lm_loss

TEXTS = [
    "The acting was wonderful from start to finish.",
    "The story is a joy to watch.",
    "The ending was brilliant and moving.",
    "This film made me smile the whole time.",
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello! How are you today?"},
    {"role": "assistant", "content": "I am fine, thank you."},
    {"role": "user", "content": "What is two plus two?"},
    {"role": "assistant", "content": "Four."},
]


def learned_tokens(batch, i: int) -> list[int]:
    labels = batch["labels"][i]
    return labels[labels != -100].tolist()


def test_sft_memorises_texts_and_greedy_generation_stops_at_eos(tiny_model, quick_args):
    trainer = SFTTrainer(
        tiny_model("tiny-gpt2"), train_dataset=[{"text": text} for text in TEXTS],
        eval_dataset=[{"text": text} for text in TEXTS],
        args=quick_args(num_train_epochs=80, per_device_train_batch_size=4, learning_rate=1e-2,
                        lr_scheduler_type="constant", logging_steps=10))
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] / 10
    assert trainer.evaluate()["eval_loss"] < losses[0] / 10
    tokenizer, model = trainer.processing_class, trainer.model.eval()
    for text in TEXTS:
        opening = tokenizer(text, return_tensors="pt").input_ids[:, :3]
        output = model.generate(opening, max_new_tokens=30, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert tokenizer.decode(output[0]) == text + tokenizer.eos_token


def test_seed_snippet_runs_verbatim_with_a_local_model(tiny_model, tmp_path, monkeypatch):
    path = tiny_model("tiny-opt", max_position_embeddings=512)  # the seed's model is an OPT with >= 512 positions
    dataset = Dataset.from_list(load_builtin("movie-reviews")[:16])
    before = AutoModelForCausalLM.from_pretrained(path).state_dict()
    monkeypatch.chdir(tmp_path)  # default TrainingArguments write to ./trainer_output

    trainer = SFTTrainer(
        path,
        train_dataset=dataset,
        dataset_text_field="text",
        max_seq_length=512,
    )
    trainer.train()

    assert trainer.state.global_step == 6  # 3 epochs of 16 rows in batches of 8: TrainingArguments' defaults
    after = trainer.model.state_dict()
    assert any(not after[name].equal(value) for name, value in before.items())


def test_gradient_accumulation_gives_the_same_update_as_one_big_batch(tiny_model, quick_args):
    rows = [{"text": text} for text in [TEXTS[0], "Hi.", TEXTS[3] + " " + TEXTS[1], "The music."]]
    updated = []
    for batch_size, accumulation in [(4, 1), (2, 2)]:
        trainer = SFTTrainer(tiny_model("tiny-llama"), train_dataset=rows, args=quick_args(
            max_steps=1, optim="sgd", learning_rate=1.0, per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation))
        trainer.train()
        updated.append(trainer.model.lm_head.weight.detach())
    torch.testing.assert_close(updated[0], updated[1], rtol=1e-4, atol=1e-6)


def test_neftune_noise_changes_training(tiny_model, quick_args):
    rows = [{"text": text} for text in TEXTS]
    losses = []
    for alpha in (None, 5.0):
        trainer = SFTTrainer(tiny_model("tiny-llama"), train_dataset=rows, args=quick_args(max_steps=1),
                             neftune_noise_alpha=alpha)
        losses.append(trainer.train().training_loss)
    assert losses[0] != losses[1]


@pytest.mark.parametrize(("name", "attention"), [("tiny-gpt2", "sdpa"), ("tiny-llama", "sdpa"), ("tiny-llama", "eager")])
def test_packed_documents_get_the_same_loss_as_alone(tiny_model, quick_args, name, attention):
    reviews = load_builtin("movie-reviews")[:12]
    packed = SFTTrainer(tiny_model(name), args=quick_args(), train_dataset=reviews, packing=True, max_seq_length=96,
                        model_init_kwargs={"attn_implementation": attention})
    assert packed.model.config._attn_implementation == attention
    single = SFTTrainer(tiny_model(name), args=quick_args(), train_dataset=reviews, max_seq_length=96)
    model, collate = packed.model.eval(), packed.data_collator
    documents = {tuple(ids) for ids in single.train_dataset["input_ids"]}
    assert len(packed.train_dataset) < len(reviews)

    seen, leaked = [], []
    for row in packed.train_dataset:
        batch = collate([row])
        starts = [*(batch["position_ids"][0] == 0).nonzero().flatten().tolist(), len(row["input_ids"])]
        for start, end in zip(starts, starts[1:], strict=False):
            ids = row["input_ids"][start:end]
            seen.append(tuple(ids))
            only_this = batch["labels"].clone()
            only_this[:, :start] = only_this[:, end:] = -100
            alone = collate([{"input_ids": ids, "completion_mask": [1] * len(ids)}])
            with torch.no_grad():
                in_pack, count = causal_lm_loss(model, {"input_ids": batch["input_ids"],
                                                        "position_ids": batch["position_ids"]}, only_this)
                by_itself, count_alone = causal_lm_loss(
                    model, {"input_ids": alone["input_ids"], "attention_mask": alone["attention_mask"]},
                    alone["labels"])
                unisolated, _ = causal_lm_loss(model, {"input_ids": batch["input_ids"]}, only_this)
            assert count == count_alone == len(ids) - 1
            torch.testing.assert_close(in_pack, by_itself, rtol=1e-5, atol=1e-4)
            if start > 0:
                leaked.append((unisolated - by_itself).abs().item())

    assert sorted(seen) == sorted(documents)  # every document packed whole, none lost or split
    assert min(leaked) > 1e-2  # without restarting positions the same documents do see each other


def test_packing_is_refused_for_a_model_whose_attention_ignores_position_ids(tiny_model, quick_args):
    with pytest.raises(ValueError, match="opt model's attention .* ignores restarting position ids"):
        SFTTrainer(tiny_model("tiny-opt"), args=quick_args(), train_dataset=[{"text": TEXTS[0]}], packing=True)


def test_prompt_completion_learns_only_the_completion_and_eos(tiny_model, quick_args):
    rows = [{"prompt": "Question: What is two plus two?", "completion": " Answer: four."},
            {"prompt": "Summarize the following review in one sentence.", "completion": " The story is a joy."}]
    trainer = SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=rows)
    tokenizer = trainer.processing_class
    batch = trainer.data_collator(list(trainer.train_dataset))

    for i, row in enumerate(rows):
        prompt_length = len(tokenizer(row["prompt"]).input_ids)
        completion_length = len(tokenizer(row["completion"]).input_ids) + 1  # + EOS
        learned = (batch["labels"][i] != -100).nonzero().flatten().tolist()
        assert learned == list(range(prompt_length, prompt_length + completion_length))
        assert tokenizer.decode(learned_tokens(batch, i)) == row["completion"] + tokenizer.eos_token


def test_completion_only_loss_off_learns_prompt_too(tiny_model, quick_args):
    row = {"prompt": "Question: What is two plus two?", "completion": " Answer: four."}
    path = tiny_model("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(path)  # a model object and tokenizer=, as TRL v0.7 users pass them
    trainer = SFTTrainer(AutoModelForCausalLM.from_pretrained(path), args=quick_args(), train_dataset=[row],
                         tokenizer=tokenizer, completion_only_loss=False)
    batch = trainer.data_collator(list(trainer.train_dataset))
    first, *rest = tokenizer(row["prompt"] + row["completion"]).input_ids  # the first token has no predecessor
    assert tokenizer.decode(learned_tokens(batch, 0)) == tokenizer.decode(rest) + tokenizer.eos_token


def test_conversation_learns_only_assistant_turns(tiny_model, quick_args):
    trainer = SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[{"messages": CHAT}])
    tokenizer = trainer.processing_class
    batch = trainer.data_collator(list(trainer.train_dataset))
    eos = tokenizer.eos_token
    assert tokenizer.decode(learned_tokens(batch, 0)) == f"I am fine, thank you.{eos}Four.{eos}"
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=True)["input_ids"]
    assert batch["input_ids"][0].tolist() == rendered


def test_conversational_prompt_completion_learns_only_the_completion(tiny_model, quick_args):
    row = {"prompt": CHAT[:2], "completion": [{"role": "assistant", "content": "I am fine, thank you."}]}
    trainer = SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[row])
    tokenizer = trainer.processing_class
    batch = trainer.data_collator(list(trainer.train_dataset))
    # what the template writes after the generation prompt: the reply, EOS, then its line break
    assert tokenizer.decode(learned_tokens(batch, 0)) == f"I am fine, thank you.{tokenizer.eos_token}\n"


def test_formatting_func_per_row_and_per_batch_give_the_same_examples(tiny_model, quick_args):
    rows = [{"question": "What is two plus two?", "answer": "four"}, {"question": "Hello?", "answer": "Hi."}]

    def per_row(row):
        return f"Question: {row['question']} Answer: {row['answer']}"

    def per_batch(batch):  # as in TRL v0.7's documentation
        output_texts = []
        for i in range(len(batch["question"])):
            output_texts.append(f"Question: {batch['question'][i]} Answer: {batch['answer'][i]}")
        return output_texts

    one = SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=rows, formatting_func=per_row)
    other = SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=rows, formatting_func=per_batch)
    tokenizer = one.processing_class
    assert one.train_dataset["input_ids"] == other.train_dataset["input_ids"]
    assert tokenizer.decode(one.train_dataset[0]["input_ids"]) == per_row(rows[0]) + tokenizer.eos_token


def test_lora_with_gradient_checkpointing_trains_only_the_adapters(tiny_model, quick_args):
    trainer = SFTTrainer(
        tiny_model("tiny-llama"), train_dataset=[{"text": text} for text in TEXTS],
        args=quick_args(max_steps=3, learning_rate=1e-2, activation_checkpointing=True),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert isinstance(trainer.model, PeftModel)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()

    assert trainer.model.base_model.model.model.layers[0].gradient_checkpointing
    changed = {name for name, p in trainer.model.named_parameters() if not p.equal(before[name])}
    assert changed and all("lora_B" in name or "lora_A" in name for name in changed)
    assert any("lora_B" in name for name in changed)


# Bad input: each error names what is wrong and where.

def test_missing_text_field_is_named(tiny_model, quick_args):
    with pytest.raises(ValueError, match=r"train_dataset has no column 'body' \(its columns: \['text'\]\)"):
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[{"text": "x"}],
                   dataset_text_field="body")


def test_dataset_without_a_usable_column_suggests_dataset_text_field(tiny_model, quick_args):
    with pytest.raises(ValueError, match=r"no column to train on in \['review'\]: pass dataset_text_field"):
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[{"review": "Great."}])


def test_empty_dataset_is_refused(tiny_model, quick_args):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[])


def test_empty_text_names_its_row(tiny_model, quick_args):
    rows = [{"text": TEXTS[0]}, {"text": TEXTS[1]}, {"text": None}]
    with pytest.raises(ValueError, match=r"train_dataset row 2: 'text' is None") as error:
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=rows)
    assert (error.value.column, error.value.row) == ("text", 2)


def test_tokenizer_without_pad_token_is_refused_with_the_fix(tiny_model, quick_args):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("tiny-gpt2"))
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match=r"no pad token.*add_special_tokens\(\{'pad_token'"):
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[{"text": "x"}], tokenizer=tokenizer)


def test_max_seq_length_beyond_the_model_positions_is_refused(tiny_model, quick_args):
    with pytest.raises(ValueError, match="max_seq_length=512 is more than the model's 256 positions"):
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[{"text": "x"}], max_seq_length=512)


def test_chat_template_without_generation_marks_is_explained(tiny_model, quick_args):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("tiny-gpt2"))
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", "")
    with pytest.raises(ValueError, match=r"row 0: no assistant tokens to learn.*\{% generation %\}"):
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=[{"messages": CHAT}],
                   tokenizer=tokenizer)


# Speed paths: each must give the plain path's numbers.

def loss_and_grads(model, batch, chunked):
    model.zero_grad()
    torch.manual_seed(0)  # the same dropout draws for both paths
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    loss, count = causal_lm_loss(model, inputs, batch["labels"], chunked=chunked)
    (loss / count).backward()
    return loss.detach(), count, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize(("name", "packing"), [("tiny-llama", True), ("tiny-gpt2", False), ("tiny-opt", False)])
def test_chunked_loss_equals_the_plain_loss_and_gradients(tiny_model, quick_args, name, packing):
    rows = [{"prompt": text[:12], "completion": text[12:]} for text in TEXTS]  # prompts are not learned
    trainer = SFTTrainer(tiny_model(name), args=quick_args(), train_dataset=rows, packing=packing, max_seq_length=24)
    assert trainer.chunked_loss  # on by default
    batch = trainer.data_collator(list(trainer.train_dataset))
    assert (batch["labels"] == -100).any()
    model = trainer.model.train()

    plain_loss, plain_count, plain_grads = loss_and_grads(model, batch, chunked=False)
    loss, count, grads = loss_and_grads(model, batch, chunked=True)

    assert count == plain_count
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-5)
    for parameter, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[parameter], rtol=1e-4, atol=1e-6)


def test_chunked_loss_is_not_used_where_the_model_transforms_its_logits(tmp_path, tiny_tokenizer, quick_args):
    from transformers import Gemma2Config

    config = Gemma2Config(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0,
                          pad_token_id=tiny_tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    rows = [{"text": text} for text in TEXTS]
    trainer = SFTTrainer(model, args=quick_args(), train_dataset=rows, tokenizer=tiny_tokenizer)
    assert not trainer.chunked_loss
    with pytest.raises(ValueError, match="gemma2 model's logits are not its LM head's output"):
        SFTTrainer(model, args=quick_args(), train_dataset=rows, tokenizer=tiny_tokenizer, chunked_loss=True)


def test_padding_free_batch_gets_the_loss_and_gradients_of_the_padded_batch(tiny_model, quick_args):
    rows = [{"text": text} for text in TEXTS]
    padded = SFTTrainer(tiny_model("tiny-llama"), args=quick_args(), train_dataset=rows)
    flat = SFTTrainer(tiny_model("tiny-llama"), args=quick_args(), train_dataset=rows, padding_free=True)
    assert not padded.padding_free  # sdpa: padding-free only when asked for
    padded_batch = padded.data_collator(list(padded.train_dataset))
    flat_batch = flat.data_collator(list(flat.train_dataset))
    assert flat_batch["input_ids"].shape == (1, padded_batch["attention_mask"].sum())  # no padding left
    lengths = padded_batch["attention_mask"].sum(1)
    with_boundaries = SFTCollator(0, flatten=True, boundaries=True)(list(flat.train_dataset))  # for flash-attention
    assert with_boundaries["cu_seq_lens_q"].tolist() == [0, *lengths.cumsum(0).tolist()]
    assert with_boundaries["max_length_q"] == lengths.max()

    loss, count, grads = loss_and_grads(flat.model.train(), flat_batch, chunked=True)
    expected_loss, expected_count, expected_grads = loss_and_grads(padded.model.train(), padded_batch, chunked=False)

    assert count == expected_count
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-4)
    for parameter, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[parameter], rtol=1e-4, atol=1e-5)


def test_pretokenized_input_ids_are_trained_as_given(tiny_model, quick_args):
    rows = [{"input_ids": [5, 6, 7, 8]}, {"input_ids": [9, 10, 11], "completion_mask": [0, 1, 1]}]
    trainer = SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(), train_dataset=rows)
    batch = trainer.data_collator(list(trainer.train_dataset))
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8]  # no EOS added: the ids are used as they are
    assert learned_tokens(batch, 0) == [6, 7, 8] and learned_tokens(batch, 1) == [10, 11]
    with pytest.raises(ValueError, match="row 0: completion_mask has 2 values for 3 input_ids"):
        SFTTrainer(tiny_model("tiny-gpt2"), args=quick_args(),
                   train_dataset=[{"input_ids": [1, 2, 3], "completion_mask": [1, 1]}])
