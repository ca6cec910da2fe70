import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Generated data goes to a per-session cache, never the user's."""
    monkeypatch.setenv("LK_STUDY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield


@pytest.fixture(scope="session")
def tune_smoke():
    """``tune_smoke(STUDY_FILE, STORAGE)``: ``lk-study tune STUDY_FILE --smoke`` in its own Ray
    temp dir (it neither joins nor disturbs another Ray instance on this machine)."""

    def run(study_file: str, storage: Path) -> None:
        ray_tmp = tempfile.mkdtemp(prefix="lkr", dir="/tmp")  # short: Ray's socket paths
        env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_DEDUP_LOGS": "0"}
        env.pop("RAY_ADDRESS", None)
        argv = ["tune", study_file, "--smoke", "--storage", str(storage)]
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "lk_study.cli", *argv],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    return run


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)


def pytest_configure(config):
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


# Test tiers (markers registered in pyproject.toml): each file's default tier; a test that
# carries a tier marker itself (e.g. @pytest.mark.integration, or a file's pytestmark) keeps
# it. Run one tier with `pytest -m math`; plain `pytest` (make test) runs them all.
#   math: kernels, attention, estimators against their exact forms (seconds, no training)
#   smoke: small training runs, tasks and data, configs, results tables, source checks
#   integration: starts Ray (Tune, Train, a cluster) or runs the CLI end to end
TIERS = ("math", "smoke", "integration")
FILE_TIERS = {
    "test_attention.py": "math",
    "test_bench_approx.py": "math",
    "test_fused_attention.py": "math",
    "test_kernels.py": "math",
    "test_analysis.py": "smoke",  # its notebook test is marked integration
    "test_architecture.py": "smoke",
    "test_bench.py": "smoke",
    "test_bench_train.py": "smoke",
    "test_chaos_data.py": "smoke",  # bad data files, stale or corrupt cache, error column
    "test_config.py": "smoke",
    "test_deviations.py": "smoke",
    "test_extending.py": "smoke",
    "test_glue_mlm.py": "smoke",
    "test_image_inputs.py": "smoke",
    "test_layering.py": "smoke",
    "test_listops.py": "smoke",
    "test_loss_curves.py": "smoke",
    "test_model.py": "smoke",
    "test_pathfinder.py": "smoke",
    "test_preflight.py": "smoke",  # checks that run before Ray starts
    "test_real_data.py": "smoke",  # its long run is marked integration
    "test_report.py": "smoke",
    "test_results.py": "smoke",  # the committed docs/results/ (reads, no training)
    "test_sparsity.py": "smoke",
    "test_spectra.py": "smoke",
    "test_synthetic_text.py": "smoke",
    "test_tasks.py": "smoke",
    "test_cluster.py": "integration",
    "test_chaos_storage.py": "integration",  # full / read-only disks, two drivers, damage
    "test_chaos_resume.py": "integration",
    "test_s3.py": "integration",  # a local moto S3 server
    "test_pareto.py": "smoke",  # its end-to-end study is marked integration
    "test_searchers.py": "integration",
    "test_study.py": "integration",
    "test_tracking.py": "integration",
}
DEFAULT_TIER = "smoke"  # a file not listed yet


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        tier = FILE_TIERS.get(item.path.name, DEFAULT_TIER)
        item.add_marker(getattr(pytest.mark, tier))
