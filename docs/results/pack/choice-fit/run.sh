#!/usr/bin/env bash
# choice-fit-task on the development MC suite, 1-shot (resumable: rerun after a kill).
cd /work/mc
export LMFUSE_HOME=/tmp/lmhome OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=/work/mc/src
uptime
/work/main/.venv/bin/lmfuse eval --pack default --task mc:arc_easy,mc:piqa,mc:sciq --shots 1 --limit 150 --seed 2 \
  --weighting choice-fit-task,demo-fit-task,packllm-opt,uniform,top1 --out /work/runs/choice-fit --resume
uptime
