"""load_pretrained: local directories, hub ids, pickle refusal, labels, dropout."""

from __future__ import annotations

import torch
from transformers import DistilBertConfig, GPT2Config

from pretune.config import ModelConfig
from pretune.errors import ModelError
from pretune.models.load import load_pretrained, override_dropout

from conftest import build_tiny_model_dir, minilm_dir
from .helpers import checkpoint, logits


def test_loads_a_local_directory_with_the_label_names(tiny_model_dir):
    model, tokenizer = load_pretrained(ModelConfig(model=tiny_model_dir), 3, ["neg", "neu", "pos"])

    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert model.classifier.out_features == 3
    assert logits(model, tokenizer).shape == (2, 3)
    # The body is the checkpoint's; only the head (of another size) is new.
    saved = checkpoint(tiny_model_dir)
    state = model.state_dict()
    assert torch.equal(state["bert.encoder.layer.1.output.dense.weight"],
                       saved["bert.encoder.layer.1.output.dense.weight"])


def test_a_head_of_the_same_size_keeps_the_checkpoint_weights(tiny_model_dir):
    model, _ = load_pretrained(ModelConfig(model=tiny_model_dir), 2, ["no", "yes"])
    assert torch.equal(model.classifier.weight, checkpoint(tiny_model_dir)["classifier.weight"])


def test_the_load_report_about_a_new_head_is_not_printed(tiny_model_dir, capfd):
    load_pretrained(ModelConfig(model=tiny_model_dir), 5, list("abcde"))
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err
    assert "not sharded" not in err


def _model_error(name: str) -> str:
    try:
        load_pretrained(ModelConfig(model=name), 2, ["a", "b"])
    except ModelError as e:
        message = str(e)
        assert "\n" not in message
        return message
    raise AssertionError(f"{name} loaded")


def test_a_missing_local_path_is_an_error(tmp_path):
    for name in [str(tmp_path / "nope"), "./no-such-model-dir", "../no/such", "~/no-such-pretune-x",
                 "some/deep/path"]:
        message = _model_error(name)
        assert message.startswith(f"model path {name} does not exist.")
        assert "Hugging Face model id or an existing local directory" in message


def test_a_file_or_a_directory_without_config_is_an_error(tiny_model_dir, tmp_path):
    assert "is a file" in _model_error(f"{tiny_model_dir}/config.json")
    assert "config.json" in _model_error(str(tmp_path))


def test_a_hub_id_that_cannot_be_loaded_names_it_and_suggests_a_directory():
    # The tests run with HF_HUB_OFFLINE=1 (conftest), so the hub is not reached.
    message = _model_error("pretune-test-org/no-such-model")
    assert "'pretune-test-org/no-such-model'" in message
    assert "local directory" in message


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    path = build_tiny_model_dir(tmp_path / "old", safetensors=False)

    message = _model_error(str(path))
    assert "has only pickle weights (pytorch_model.bin), which can run code" in message
    assert "--allow-pickle" in message

    model, _ = load_pretrained(ModelConfig(model=str(path), allow_pickle=True), 2, ["a", "b"])
    saved = torch.load(path / "pytorch_model.bin", weights_only=True)
    state = model.state_dict()
    for key in ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.output.dense.weight",
                "classifier.weight"]:
        assert torch.equal(state[key], saved[key])


def test_allow_pickle_still_prefers_safetensors(tiny_model_dir, tmp_path):
    import shutil

    path = tmp_path / "both"
    shutil.copytree(tiny_model_dir, path)
    torch.save({"classifier.weight": torch.ones(2, 32)}, path / "pytorch_model.bin")
    model, _ = load_pretrained(ModelConfig(model=str(path), allow_pickle=True), 2, ["a", "b"])
    assert torch.equal(model.classifier.weight, checkpoint(path)["classifier.weight"])


def test_dropout_overrides_the_model_config_before_loading(tiny_model_dir):
    model, _ = load_pretrained(ModelConfig(model=tiny_model_dir, dropout=0.3), 2, ["a", "b"])

    assert model.config.hidden_dropout_prob == 0.3
    assert model.config.attention_probs_dropout_prob == 0.3
    assert model.config.classifier_dropout == 0.3
    assert model.dropout.p == 0.3
    assert model.bert.encoder.layer[0].output.dropout.p == 0.3
    # None keeps the checkpoint's value.
    model, _ = load_pretrained(ModelConfig(model=tiny_model_dir), 2, ["a", "b"])
    assert model.config.hidden_dropout_prob == 0.1


def test_dropout_override_finds_the_fields_of_other_architectures():
    gpt2 = GPT2Config()
    assert set(override_dropout(gpt2, 0.25)) >= {"resid_pdrop", "embd_pdrop", "attn_pdrop"}
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.25

    distil = DistilBertConfig()
    assert set(override_dropout(distil, 0.0)) >= {"dropout", "attention_dropout", "seq_classif_dropout"}
    assert distil.dropout == distil.seq_classif_dropout == 0.0


def test_the_packaged_minilm_loads():
    model, tokenizer = load_pretrained(ModelConfig(model=minilm_dir()), 2, ["negative", "positive"])
    assert len(model.bert.encoder.layer) == 6
    assert logits(model, tokenizer).shape == (2, 2)


def test_a_tokenizer_without_padding_token_gets_one(tiny_model_dir):
    from pretune.models.load import ensure_pad_token

    model, tokenizer = load_pretrained(ModelConfig(model=tiny_model_dir), 2, ["a", "b"])
    tokenizer.pad_token = None  # as GPT-2's and Llama's tokenizers come
    model.config.pad_token_id = None
    ensure_pad_token(model, tokenizer)
    assert tokenizer.pad_token == tokenizer.unk_token  # no EOS in a BERT vocabulary
    assert model.config.pad_token_id == tokenizer.unk_token_id
    assert tokenizer(["a", "a b c"], padding=True)["input_ids"][0][-1] == tokenizer.unk_token_id


def test_the_default_model_is_recorded_by_its_id_and_loads_the_packaged_copy():
    from pretune.config import PACKAGED_MODEL_ID, RunConfig
    from pretune.models.load import resolve_source
    from pretune.search.rundir import _same

    assert RunConfig().model.model == PACKAGED_MODEL_ID
    source, is_local = resolve_source(PACKAGED_MODEL_ID)
    assert (source, is_local) == (minilm_dir(), True)
    # A run directory that recorded the packaged path continues with the id.
    assert _same(minilm_dir(), PACKAGED_MODEL_ID) and not _same("/elsewhere", PACKAGED_MODEL_ID)
