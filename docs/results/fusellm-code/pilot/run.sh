#!/usr/bin/env bash
# Pilot of scripts/fusellm_experiment.py on the real members (resumable: rerun this file after a kill).
cd /work/wt-experiment
export LMFUSE_HOME=/tmp/lmhome OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/work/wt-experiment/src
uptime
/work/main/.venv/bin/python scripts/fusellm_experiment.py --scale cpu --work /tmp/fusellm-pilot/work \
  --out /tmp/fusellm-pilot/out --train-chars 8000 --heldout-file-chars 600 --lambdas 0.9 --seeds 1,2 \
  --set train.grad_accum=2 --set train.save_every=2 --quiet
uptime
