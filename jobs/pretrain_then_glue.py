"""The paper's GLUE pipeline on a Ray cluster: masked-LM pre-training on WikiText-103, one
run per kernel (search_spaces/wikitext_mlm.yaml), then GLUE fine-tuning of each pre-trained
model over the grid (search_spaces/glue_grid.yaml, which finds its checkpoints by kernel):

    ray job submit --working-dir . -- python jobs/pretrain_then_glue.py \
        --storage s3://bucket/studies [--smoke]

Both studies resume when the job is resubmitted; options go to both (`lk-study tune`).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the working dir's lk_study

from lk_study.cli import main  # noqa: E402

STUDIES = ["search_spaces/wikitext_mlm.yaml", "search_spaces/glue_grid.yaml"]

if __name__ == "__main__":
    for study in STUDIES:
        code = main(["tune", str(ROOT / study), *sys.argv[1:]])
        if code:
            sys.exit(code)
