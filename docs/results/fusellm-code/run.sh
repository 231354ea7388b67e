#!/usr/bin/env bash
# FuseLLM code experiment, full CPU run (resumable: rerun this file after a kill).
cd /work/exp
export LMFUSE_HOME=/tmp/lmhome OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/work/exp/src
uptime
/work/main/.venv/bin/python scripts/fusellm_experiment.py --scale cpu --work runs/fusellm-code-cpu \
  --out docs/results/fusellm-code --train-chars 200000 --parts 2 --jobs 2 --quiet
uptime
