"""Preflight: what a study checks before Ray starts (storage, resume target, references to
other studies, constraints across keys), and the pieces of the pretrain -> fine-tune chain."""

from pathlib import Path

import pandas as pd
import pytest
import ray
import torch

from lk_study import analysis, storage
from lk_study.cli import main
from lk_study.config import Config, ConfigError, with_overrides
from lk_study.study import load_study_file, study_from_dict
from lk_study.train import localise
from lk_study.tune import asha_budget

SMALL = """
name: small
searcher: grid
config:
  task: {name: sparsity, size: 100, seq_len: 16, num_signal: 3, num_types: 3}
  kernel: {name: gmm_prf, num_features: 8}
search:
  kernel.num_components: {grid: [1, 2]}
"""


def run(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_resume_needs_something_to_resume(tmp_path, capsys):
    study = tmp_path / "small.yaml"
    study.write_text(SMALL)
    code, err = run(["tune", str(study), "--storage", str(tmp_path / "s"), "--resume"], capsys)
    assert code == 2 and f"nothing to resume at {tmp_path}/s/small" in err
    code, err = run(["resume", str(tmp_path / "s" / "small")], capsys)
    assert code == 2 and "not a study folder" in err
    assert not ray.is_initialized()


def test_unwritable_storage_is_refused_before_ray(tmp_path, capsys):
    study = tmp_path / "small.yaml"
    study.write_text(SMALL)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run(["tune", str(study), "--storage", str(blocker / "sub")], capsys)
    assert code == 2 and f"storage {blocker}/sub/small is not writable" in err
    assert not ray.is_initialized()


def test_missing_pretraining_study_is_named_before_ray(tmp_path, capsys):
    code, err = run(
        ["tune", "search_spaces/glue_grid.yaml", "--smoke", "--storage", str(tmp_path)], capsys
    )
    assert code == 2
    assert f"model.init_from: study:wikitext_mlm-smoke: {tmp_path}/wikitext_mlm-smoke" in err
    assert "holds no study" in err and "jobs/pretrain_then_glue.py" in err
    assert not ray.is_initialized()


def test_constraints_across_keys_fail_at_compile_time():
    data = {
        "name": "bad",
        "searcher": "grid",
        "config": {"kernel": {"name": "gmm_rks", "num_features": 8}},
        "search": {"kernel.num_components": {"grid": [2, 8]}},
    }
    with pytest.raises(ConfigError, match=r"kernel.num_components=8 is invalid: num_components"):
        study_from_dict(data, "bad.yaml")
    data["searcher"] = "optuna"  # optuna: every finite combination is built too
    data["search"] = {"kernel.num_components": {"choice": [2, 8]}}
    with pytest.raises(ConfigError, match=r"kernel.num_components=8 is invalid"):
        study_from_dict(data, "bad.yaml")
    data["search"] = {"kernel.num_components": {"choice": [1, 4]}}
    assert study_from_dict(data, "bad.yaml").num_trials() == 8


def test_pretrained_trial_matches_encoder_shape_and_picks_the_best():
    base = {"model.d_model": 32, "model.num_layers": 1, "model.num_heads": 2, "model.d_ff": 64}
    rows = [
        {"trial_id": "a", "kernel.name": "softmax", "kernel.num_features": 16, "v": 0.5},
        {"trial_id": "b", "kernel.name": "gmm_prf", "kernel.num_features": 16, "v": 0.9},
        {"trial_id": "c", "kernel.name": "gmm_prf", "kernel.num_features": 16, "v": 0.4},
        {"trial_id": "d", "kernel.name": "gmm_prf", "kernel.num_features": 32, "v": 0.1},
    ]
    trials = pd.DataFrame(
        [
            {**base, **r, "kernel.num_components": 1, "kernel.covariance": "diag"}
            | {"status": "TERMINATED", "best.v": r["v"]}
            for r in rows
        ]
    )
    study = analysis.StudyResults(
        "mem://pre", trials, pd.DataFrame(), {"metric": "v", "mode": "min"}
    )
    want = {**base, "kernel.name": "gmm_prf", "kernel.num_features": 16}
    want |= {"kernel.num_components": 1, "kernel.covariance": "diag"}
    assert analysis.pretrained_trial(study, want) == "c"  # mode min: the lower of b and c
    # softmax ignores num_features: any value matches
    assert analysis.pretrained_trial(study, {**want, "kernel.name": "softmax"}) == "a"
    with pytest.raises(
        analysis.NoResults, match=r"no finished trial with .*kernel.num_features=64"
    ):
        analysis.pretrained_trial(study, {**want, "kernel.num_features": 64})
    with pytest.raises(analysis.NoResults, match=r"model.d_model=64"):
        analysis.pretrained_trial(study, {**want, "model.d_model": 64})


def test_localise_copies_uri_checkpoints_and_files(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"model": {}}, ckpt / "state.pt")
    (ckpt / "tokenizer.json").write_text("{}")
    cfg = with_overrides(
        Config(),
        {
            "task.name": "glue/rte",
            "task.tokenizer": f"file://{ckpt}/tokenizer.json",
            "model.init_from": f"file://{ckpt}",
        },
    )
    local = localise(cfg)
    assert "://" not in local.model.init_from and "://" not in local.task.tokenizer
    copied = sorted(p.name for p in Path(local.model.init_from).iterdir())
    assert copied == ["state.pt", "tokenizer.json"]
    assert open(local.task.tokenizer).read() == "{}"
    plain = with_overrides(cfg, {"model.init_from": str(ckpt), "task.tokenizer": ""})
    assert localise(plain) == plain


def test_glue_tasks_keep_the_task_section_other_tasks_reset():
    cfg = with_overrides(
        Config(), {"task.name": "glue/cola", "task.tokenizer": "t.json", "task.max_len": 64}
    )
    rte = with_overrides(cfg, {"task.name": "glue/rte"}).task
    assert (rte.name, rte.tokenizer, rte.max_len) == ("glue/rte", "t.json", 64)
    listops = with_overrides(cfg, {"task.name": "listops"}).task
    assert listops.max_len == type(listops)().max_len


def test_asha_counts_epochs_when_the_budget_is_in_epochs():
    data = {"name": "e", "config": {"train": {"max_steps": 500}}, "search": {}}
    assert asha_budget(study_from_dict(data)) == ("step", 500)
    data["config"]["train"]["epochs"] = 2
    data["search"] = {"train.epochs": {"choice": [1, 3]}}
    assert asha_budget(study_from_dict(data)) == ("epoch", 3)


def test_dry_run_of_the_glue_grid_names_its_references(capsys):
    assert main(["tune", "search_spaces/glue_grid.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "glue_grid' from search_spaces/glue_grid.yaml: 1134 trials (searcher grid)" in out
    ref = "model.init_from: study:wikitext_mlm (the matching trial's checkpoint, found at start)"
    assert ref in out
    assert "train.epochs: grid [2.0, 3.0, 4.0]" in out


def test_an_objective_no_task_reports_is_refused_with_its_line(tmp_path):
    path = tmp_path / "obj.yaml"
    path.write_text(SMALL + "objective: {metric: val_f1, mode: max}\n")
    with pytest.raises(
        ConfigError, match=rf"{path}:\d+: objective.metric 'val_f1' is not reported"
    ):
        load_study_file(path)
    path.write_text(SMALL + "objective: {metric: train_loss, mode: min}\n")
    assert load_study_file(path).objective.metric == "train_loss"  # training metrics count
    glue = {"name": "g", "config": {"task": {"name": "glue/mnli"}}, "search": {}}
    glue["objective"] = {"metric": "val_score"}
    assert study_from_dict(glue).objective.metric == "val_score"
    glue["objective"] = {"metric": "val_accuracy"}  # MNLI reports matched / mismatched only
    with pytest.raises(ConfigError, match=r"val_matched_accuracy"):
        study_from_dict(glue)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_trials_this_machine_cannot_hold_are_refused_before_anything_is_written(tmp_path, capsys):
    study = tmp_path / "gpu.yaml"
    study.write_text(
        SMALL.replace(
            "gmm_prf, num_features: 8}", "gmm_prf, num_features: 8}\n  scaling: {use_gpu: true}"
        )
    )
    code, err = run(["tune", str(study), "--storage", str(tmp_path / "s")], capsys)
    assert code == 2 and f"{study}:" in err and "scaling.use_gpu: one trial needs" in err
    assert not (tmp_path / "s").exists() and not ray.is_initialized()


def test_a_folder_from_a_failed_start_starts_afresh_a_damaged_study_is_refused(tmp_path):
    uri = str(tmp_path / "small")
    storage.write_json(uri, storage.STUDY_FILE, {"name": "small", "config": {"old": 1}})
    assert storage.check_state(uri, {"name": "small", "config": {}}) is False  # replaced
    (tmp_path / "small" / "trial_driver_abc_1").mkdir()
    with pytest.raises(storage.StudyStateError, match="holds 1 trial folders but no experiment"):
        storage.check_state(uri, {"name": "small", "config": {}})
