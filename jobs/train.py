"""One training run (no Tune) of a study file's base config, on a Ray cluster:

    ray job submit --working-dir . -- python jobs/train.py search_spaces/quickstart.yaml \
        --set kernel.name=gmm_prf --storage s3://bucket/runs [--smoke]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's lk_study

from lk_study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
