from pretune.search.rundir import BEST_DIR, META_FILE, clean_leftovers


def _model_dir(path, trial):
    path.mkdir()
    (path / "model.safetensors").write_text("weights")
    (path / META_FILE).write_text(f"trial: {trial}\n")
    return path


def test_a_kill_between_the_renames_of_a_save_loses_no_best_model(tmp_path):
    # save_model moved best/ aside and was killed before moving the new one in.
    _model_dir(tmp_path / f"{BEST_DIR}.old-11", trial=1)
    _model_dir(tmp_path / f"{BEST_DIR}.tmp-11", trial=2)
    clean_leftovers(tmp_path)
    assert (tmp_path / BEST_DIR / META_FILE).read_text() == "trial: 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_DIR]


def test_a_half_written_new_model_falls_back_to_the_previous_one(tmp_path):
    _model_dir(tmp_path / f"{BEST_DIR}.old-11", trial=1)
    half = tmp_path / f"{BEST_DIR}.tmp-11"
    half.mkdir()
    (half / "model.safetensors").write_text("half")  # no pretune.yaml: not finished
    clean_leftovers(tmp_path)
    assert (tmp_path / BEST_DIR / META_FILE).read_text() == "trial: 1\n"
    assert not half.exists()


def test_leftovers_beside_an_intact_best_are_removed(tmp_path):
    _model_dir(tmp_path / BEST_DIR, trial=3)
    _model_dir(tmp_path / f"{BEST_DIR}.tmp-11", trial=4)
    clean_leftovers(tmp_path)
    assert (tmp_path / BEST_DIR / META_FILE).read_text() == "trial: 3\n"
    assert not (tmp_path / f"{BEST_DIR}.tmp-11").exists()
