"""Text preprocessing and augmentation as searched settings, and predict applying them."""

import numpy as np
import pandas as pd
import yaml

import pretune

TEXT_SPACE = {
    "extend": False,
    "lowercase": {"choices": [False, True]},
    "stopwords": {"choices": [False, True]},
    "stem": {"choices": ["none", "porter", "snowball"]},
    "word_delete": {"choices": [0.0, 0.1, 0.2]},
    "word_swap": {"choices": [0.0, 0.1]},
}


def test_a_search_samples_the_text_options(tiny_learner_dir, sentiment_csv, tmp_path):
    out = tmp_path / "run"
    result = pretune.tune(model=tiny_learner_dir, train=str(sentiment_csv), out=out,
                          budget="5trials", space=TEXT_SPACE, strategy="random",
                          lr_range_test=False, priors=False, seed_check=0,
                          fixed={"epochs": 1, "batch_size": 8, "lr": 1e-3}, precision="fp32",
                          threads=1)
    trials = result.trials
    assert len(trials) == 5 and (trials["state"] == "COMPLETE").all()
    for name in TEXT_SPACE.keys() - {"extend"}:
        assert f"params_{name}" in trials.columns
    # Each option is sampled from its own choices; the stemmer and the word deletion each take
    # more than one value (the random sampler with the default seed: a fixed draw, no luck).
    for name, spec in TEXT_SPACE.items():
        if name != "extend":
            assert set(trials[f"params_{name}"]) <= set(spec["choices"]), name
    assert trials["params_stem"].nunique() > 1, list(trials["params_stem"])
    assert trials["params_word_delete"].nunique() > 1, list(trials["params_word_delete"])
    saved = yaml.safe_load((out / "best" / "pretune.yaml").read_text())["settings"]["data"]
    best = result.best_params
    assert saved["stem"] == best["stem"] and saved["lowercase"] == best["lowercase"]


def test_predict_applies_the_saved_preprocessing(tiny_learner_dir, sentiment_csv, tmp_path):
    from pretune.data.collate import Batches
    from pretune.data.text_prep import TextOptions, preprocess
    from pretune.data.tokenize import encode
    from pretune.models import load_model_dir
    from pretune.training.loop import predict_proba

    out = tmp_path / "model"
    pretune.train(model=tiny_learner_dir, train=str(sentiment_csv), out=out, epochs=1,
                  batch_size=8, lr=1e-3, precision="fp32", threads=1, lowercase=True,
                  stopwords=True, stem="porter")
    texts = ["The Acting was WONDERFUL and moving", "It was the most boring of films"]
    source = tmp_path / "test.csv"
    pd.DataFrame({"text": texts}).to_csv(source, index=False)
    got = pretune.predict(out, source)[["prob_negative", "prob_positive"]].to_numpy()

    model, tokenizer, meta = load_model_dir(out)
    max_length = meta["settings"]["data"]["max_length"]

    def probs(inputs):
        enc = encode(inputs, None, None, tokenizer, max_length)
        return predict_proba(model, Batches(enc, 8, pad_id=tokenizer.pad_token_id,
                                            shuffle=False))[0]

    prepared = preprocess(texts, TextOptions(lowercase=True, stopwords=True, stem="porter"))
    assert prepared[0] == "act wonder move"
    assert np.allclose(got, probs(prepared), atol=1e-5)
    assert not np.allclose(got, probs(texts), atol=1e-5)  # raw texts would give other outputs


def test_text_augmentation_changes_training_and_is_seeded(tiny_learner_dir, sentiment_csv):
    def run(**settings):
        r = pretune.train(model=tiny_learner_dir, train=str(sentiment_csv), epochs=2,
                          batch_size=8, lr=1e-3, precision="fp32", threads=1, **settings)
        return r.train_result.history[-1]["train_loss"]

    edited = dict(word_delete=0.3, word_swap=0.2, text_aug_prob=1.0)
    assert run(**edited) == run(**edited)
    assert run(**edited) != run()

