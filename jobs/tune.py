"""Run a study on a Ray cluster:

    ray job submit --working-dir . -- python jobs/tune.py search_spaces/quickstart.yaml \
        --storage s3://bucket/studies [--set key=value ...] [--smoke]

Inside a job, ``ray.init()`` attaches to the cluster; the study itself is ``lk-study tune``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's lk_study

from lk_study.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
