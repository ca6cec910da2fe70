"""The strict study loader: bad keys fail with file, line, key and the valid keys."""

from pathlib import Path

import pytest

from lk_study.cli import main
from lk_study.config import Config, ConfigError, with_overrides
from lk_study.study import load_study_file

QUICKSTART = "search_spaces/quickstart.yaml"


def write(tmp_path, text):
    p = tmp_path / "study.yaml"
    p.write_text(text)
    return p


def test_quickstart_loads_with_conditional_features():
    study = load_study_file(QUICKSTART)
    assert list(study.search)[:2] == ["kernel.name", "kernel.num_features"]
    assert study.search["kernel.num_features"].when == (("kernel.name", ("prf", "gmm_prf")),)
    assert study.budget.num_samples >= 8
    assert set(study.search["kernel.name"].values) == {"softmax", "prf", "gmm_prf"}


def test_misspelt_config_key_names_file_line_key_and_valid_keys(tmp_path):
    p = write(tmp_path, "name: s\nconfig:\n  kernel:\n    name: prf\n    num_featurs: 8\n")
    with pytest.raises(ConfigError) as e:
        load_study_file(p)
    msg = str(e.value)
    assert f"{p}:5" in msg and "config.kernel.num_featurs" in msg
    assert "did you mean 'num_features'" in msg and "num_components" in msg


def test_misspelt_search_key_and_top_level_key(tmp_path):
    p = write(tmp_path, "name: s\nsearch:\n  kernel.nmae: {choice: [prf]}\n")
    with pytest.raises(
        ConfigError, match=r"study.yaml:3: unknown key 'search.kernel.nmae'.*kernel.name"
    ):
        load_study_file(p)
    p = write(tmp_path, "name: s\nbudjet: {num_samples: 2}\n")
    with pytest.raises(
        ConfigError, match=r"study.yaml:2: unknown key 'budjet'.*did you mean 'budget'"
    ):
        load_study_file(p)


def test_bad_values_are_rejected_before_ray(tmp_path):
    p = write(tmp_path, "name: s\nsearch:\n  kernel.name: {choice: [prf, gmmprf]}\n")
    with pytest.raises(
        ConfigError, match=r"study.yaml:3: .*unknown kernel 'gmmprf'; valid: softmax"
    ):
        load_study_file(p)
    p = write(tmp_path, "name: s\nconfig:\n  train: {lr: fast}\n")
    bad_float = r"study.yaml:3: config.train.lr = 'fast' is not a valid float"
    with pytest.raises(ConfigError, match=bad_float):
        load_study_file(p)
    p = write(tmp_path, "name: s\nconfig:\n  model: {d_model: 30, num_heads: 4}\n")
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        load_study_file(p)
    p = write(tmp_path, "name: s\nname: t\n")
    with pytest.raises(ConfigError, match="study.yaml:2: duplicate key 'name'"):
        load_study_file(p)


def test_set_fixes_a_searched_key_and_keeps_conditions():
    study = load_study_file(QUICKSTART, {"kernel.name": "gmm_prf", "train.max_steps": 7})
    assert "kernel.name" not in study.search and "kernel.num_features" in study.search
    assert study.config.kernel.name == "gmm_prf" and study.config.train.max_steps == 7
    study = load_study_file(QUICKSTART, {"kernel.name": "softmax"})
    assert "kernel.num_features" not in study.search  # condition false -> dimension dropped
    with pytest.raises(
        ConfigError, match="--set: unknown key 'train.lrr'.*did you mean 'train.lr'"
    ):
        load_study_file(QUICKSTART, {"train.lrr": 1})


def test_overrides_validate_types():
    cfg = with_overrides(Config(), {"train.lr": "1e-3", "kernel.num_features": 32})
    assert cfg.train.lr == 1e-3 and cfg.kernel.num_features == 32
    with pytest.raises(ConfigError, match="kernel.num_features = 'many'"):
        with_overrides(Config(), {"kernel.num_features": "many"})


def test_cli_reports_bad_key_without_traceback(tmp_path, capsys):
    p = write(tmp_path, "name: s\nconfig:\n  trian: {lr: 1.0}\n")
    assert main(["tune", str(p)]) == 2
    err = capsys.readouterr().err
    assert "study.yaml:3: unknown key 'config.trian'" in err and "train" in err


def test_dry_run_prints_space(capsys):
    assert main(["tune", QUICKSTART, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kernel.num_features: choice [8, 32] when kernel.name in ['prf', 'gmm_prf']" in out


@pytest.mark.parametrize("path", sorted(Path("search_spaces").glob("*.yaml")), ids=str)
@pytest.mark.parametrize("smoke", [False, True])
def test_every_study_file_compiles(path, smoke, capsys):
    assert main(["tune", str(path), "--dry-run", *(["--smoke"] if smoke else [])]) == 0
    assert "trials" in capsys.readouterr().out


def test_grid_points_respect_conditions_and_cross_seeds(tmp_path):
    p = write(
        tmp_path,
        "name: g\nsearcher: grid\nseeds: [0, 1]\nsearch:\n"
        "  kernel.name: {grid: [softmax, prf]}\n"
        "  kernel.num_features: {grid: [8, 16], when: {kernel.name: [prf]}}\n",
    )
    study = load_study_file(p)
    points = study.points()
    assert study.num_trials() == len(points) == 6  # (softmax + 2 prf) x 2 seeds
    assert {"kernel.name": "softmax", "train.seed": 1} in points
    assert {"kernel.name": "prf", "kernel.num_features": 16, "train.seed": 0} in points


def test_random_searcher_draws_within_bounds(tmp_path):
    p = write(
        tmp_path,
        "name: r\nsearcher: random\nbudget: {num_samples: 20}\nsearch:\n"
        "  train.lr: {loguniform: [1.0e-4, 1.0e-2]}\n  kernel.name: {choice: [prf, elu]}\n",
    )
    points = load_study_file(p).points()
    assert len(points) == 20 and all(1e-4 <= pt["train.lr"] <= 1e-2 for pt in points)
    assert {pt["kernel.name"] for pt in points} == {"prf", "elu"}
    assert points == load_study_file(p).points()  # seeded


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "searcher: grid\nsearch:\n  train.lr: {uniform: [0.1, 0.2]}\n",
            r"study.yaml:4: searcher: grid needs finite lists",
        ),
        ("searcher: grid\nsearch:\n  kernel.name: {grid: []}\n", r"study.yaml:4: .*non-empty list"),
        (
            "search:\n  kernel.name: {grid: []}\n",
            r"study.yaml:3: search.kernel.name.grid .*non-empty",
        ),
        (
            "search:\n  kernel.name: {choice: [prf, elu]}\n"
            "  kernel.num_features: {grid: [8, 16], when: {kernel.name: [prf]}}\n",
            r"study.yaml:4: search.kernel.num_features is a grid.*refers to 'kernel.name', which "
            "Optuna searches",
        ),
        (
            "seeds: [0, 1]\nsearch:\n  train.seed: {int: [0, 9]}\n",
            r"study.yaml:4: train.seed is searched and also set by seeds",
        ),
        (
            "searcher: grid\noptuna: {storage: 'sqlite:///o.db'}\n",
            r"study.yaml:3: the optuna section applies to searcher: optuna, not grid",
        ),
        (
            "optuna: {storage: o.db}\n",
            r"study.yaml:2: optuna.storage: 'o.db' is not a database URL",
        ),
        ("optuna: {storge: x}\n", r"study.yaml:2: unknown key 'optuna.storge'.*'storage'"),
        ("optuna: sqlite:///o.db\n", r"study.yaml:2: optuna must be a mapping"),
        ("searcher: bayes\n", r"study.yaml:2: searcher 'bayes' is not one of optuna, grid"),
        (
            "searcher: grid\nsearch:\n"
            "  kernel.num_features: {grid: [8], when: {kernel.nam: [prf]}}\n",
            r"study.yaml:4: .*refers to 'kernel.nam'",
        ),
    ],
)
def test_malformed_searches_are_rejected(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_study_file(write(tmp_path, "name: s\n" + text))


def test_variants_switch_tasks_and_cross_the_grid(tmp_path):
    from lk_study.config import Config, with_overrides

    study = load_study_file("search_spaces/lra_kernels.yaml", smoke=True)
    points = study.points()
    assert len(points) == study.num_trials() == 6
    cfgs = [with_overrides(study.config, pt) for pt in points]
    assert {c.task.name for c in cfgs} == {"listops", "image", "pathfinder"}
    assert {c.kernel.name for c in cfgs} == {"softmax", "gmm_prf"}
    pathfinder = next(c for c in cfgs if c.task.name == "pathfinder")
    assert pathfinder.task.resolution == 16 and pathfinder.model.d_model == 32
    full = load_study_file("search_spaces/lra_kernels.yaml")
    assert full.num_trials() == 5 * 9 * 3
    bad = write(
        tmp_path, "name: v\nsearcher: grid\nvariants:\n  - {task.name: text, task.maxlen: 9}\n"
    )
    with pytest.raises(ConfigError, match=r"study.yaml:3: variants\[0\].*task.maxlen"):
        load_study_file(bad)
    assert Config().task.name == "sparsity"


GRID_X_OPTUNA = """name: gx
seeds: [0, 1]
optuna: {storage: "sqlite:///optuna.db"}
search:
  kernel.name: {grid: [softmax, prf]}
  kernel.num_features: {choice: [8, 16], when: {kernel.name: [prf]}}
  train.lr: {loguniform: [1.0e-4, 1.0e-2]}
budget: {num_samples: 5}
"""


def test_grid_crossed_with_optuna_counts_points_times_samples(tmp_path, capsys):
    p = write(tmp_path, GRID_X_OPTUNA)
    study = load_study_file(p)
    points = study.points()
    assert points == [
        {"kernel.name": k, "train.seed": s} for k in ("softmax", "prf") for s in (0, 1)
    ]
    assert study.num_trials() == 4 * 5
    assert list(study.optuna_space(points[0])) == ["train.lr"]  # condition decided by the point
    prf = study.optuna_space(points[2])
    assert (
        list(prf) == ["kernel.num_features", "train.lr"] and prf["kernel.num_features"].when == ()
    )
    assert study.optuna.storage == "sqlite:///optuna.db"
    assert main(["tune", str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "20 trials (searcher optuna, seeds [0, 1])" in out
    assert "grid x Optuna: 4 points, each its own Optuna study of 5 trials" in out
    assert "optuna storage: sqlite:///optuna.db" in out
    # --set reaches the optuna section; fixing the grid key leaves one point per seed
    study = load_study_file(p, {"optuna.storage": "sqlite:////tmp/o.db", "kernel.name": "prf"})
    assert study.optuna.storage == "sqlite:////tmp/o.db" and study.num_trials() == 2 * 5
    # without TPE dimensions left at a point, that point runs once
    study = load_study_file(p, {"train.lr": 1e-3})
    assert study.num_trials() == 2 * 1 + 2 * 5
    assert main(["tune", str(p), "--dry-run", "--set", "train.lr=1e-3"]) == 0
    assert "2 run once, with nothing left for Optuna to search" in capsys.readouterr().out


def test_plain_optuna_is_one_point():
    study = load_study_file(QUICKSTART)
    assert study.points() == [{}] and study.num_trials() == study.budget.num_samples
    assert study.optuna_space({}) == study.search


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: ../../escape\n", r"study.yaml:1: name '../../escape' must be a plain name"),
        ("name: a/b\n", "must be a plain name"),
        ("name: s\nconfig:\n  train: {lr: .inf}\n", r"study.yaml:3: config.train.lr = inf must"),
        ("name: s\nconfig:\n  train: {lr: .nan}\n", "must be a finite number"),
        (
            "name: s\nconfig:\n  scaling: {resources_per_worker: {CPU: -1}}\n",
            r"study.yaml:3: .*CPU = -1.0 must be >= 0",
        ),
        (
            "name: s\nsearch:\n  kernel.name: {choice: [prf, gmm_prf]}\n"
            "  kernel.num_components: {choice: [1, 2], when: {kernel.name: [gmm_prff]}}\n",
            r"study.yaml:4: kernel.name: unknown kernel 'gmm_prff'",
        ),
        (
            "name: s\nsmoke:\n  train.max_stpes: 3\n",
            r"\(smoke section\).*did you mean 'train.max_steps'",
        ),
    ],
)
def test_study_files_no_run_can_honour_are_rejected_before_ray(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_study_file(write(tmp_path, text))


def test_a_non_utf8_study_file_names_the_file(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_bytes(b"name: s\xff\n")
    with pytest.raises(ConfigError, match=r"study.yaml: not UTF-8 text"):
        load_study_file(path)
