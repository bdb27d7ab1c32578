#!/usr/bin/env bash
# The whole 2D protocol for one model over every fold of a split, resumable at every stage:
#   per fold: generator on the fold's training patients + synthetic shards (scripts/synthesize.sh; skipped
#   with synthetic=false) -> classifier pretrain on the shards -> fine-tune on real training patients ->
#   select on validation patients -> test once on the fold's test patients;
#   then the cross-validation report and an ONNX export of the fold chosen on validation macro-F1.
#
#   ./scripts/cross_validate.sh [model=capsnet|resnet50] [synthetic=true|false] [data.root=PATH]
#       [data.split=grouped|cvind] [data.k=7] [data.image_size=128] [seed=0] [folds=0,1,...] [out=DIR]
#       [gan.KEY=VALUE ...  (to scripts/synthesize.sh, e.g. gan.train.epochs=3 gan.count=7000)]
#       [KEY=VALUE ...      (to capsule_classifier/train.py, e.g. train.epochs=40 monitor.visdom=false)] [--debug]
#
# A bad setting or input stops it with the failing step's one-line error and that step's exit status (2);
# --debug shows the traceback instead.
#
# Re-running the same command after a crash or SIGKILL skips finished stages and continues the
# unfinished one from its last checkpoint. (Edit this file by replacing it, never in place: bash reads a
# running script as it goes.) Generators and shards live beside the classifiers, so
# capsnet and resnet50 runs with the same data, split, size and seed share them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
. .venv/bin/activate

model=capsnet synthetic=true seed=0 out="" folds="" size=128 split=grouped root=""
data_args=() gan_args=() clf_args=()
for arg in "$@"; do
  case "$arg" in
    model=*) model=${arg#model=} ;;
    synthetic=*) synthetic=${arg#synthetic=} ;;
    out=*) out=${arg#out=} ;;
    folds=*) folds=${arg#folds=} ;;
    seed=*) seed=${arg#seed=} ;;
    data.*=*)
      case "$arg" in
        data.image_size=*) size=${arg#data.image_size=} ;;
        data.split=*) split=${arg#data.split=} ;;
        data.root=*) root=${arg#data.root=} ;;
      esac
      data_args+=("$arg") ;;
    gan.*=*) gan_args+=("${arg#gan.}") ;;
    *=*) clf_args+=("$arg") ;;
    --debug) export BRAIN_TUMOUR_DEBUG=1 ;;  # every step shows the traceback of an expected error
    *) echo "cross_validate.sh: expected key=value overrides or --debug, got '$arg'" >&2; exit 2 ;;
  esac
done
case "$synthetic" in true | false) ;; *) echo "cross_validate.sh: synthetic must be true or false" >&2; exit 2 ;; esac
data_tag=$( [ -z "$root" ] && echo sample || basename "${root%/}" | tr -c 'A-Za-z0-9_.\n-' '_' )
tag=$( [ "$synthetic" = true ] && echo synthetic || echo scratch )
# The fold count and the classifier's run directories come from capsule_classifier/train.py's own config
# (asked with out=@out@, replaced below, since the default out= depends on the fold count).
layout() {  # layout TAG: "k <n>" then "<fold> <run_dir>" per fold
  python -m capsule_classifier.layout "model=$model" "seed=$seed" "${data_args[@]}" "${clf_args[@]}" "tag=$1" "out=@out@"
}
plan=$(layout "$tag") || exit 2
k=$(sed -n 's/^k //p' <<< "$plan")
split_tag="$split-k$k"
out=${out:-runs/protocol/$data_tag/$split_tag/${size}px/seed$seed}
clf_out="$out/classifier"
fold_dirs() { sed -n "s|^[0-9]* @out@|$clf_out|p"; }
mapfile -t run_dirs < <(fold_dirs <<< "$plan")                         # this call's fold runs
scratch_dirs=("${run_dirs[@]}")                                          # real-only runs of the same out=
[ "$synthetic" = true ] && mapfile -t scratch_dirs < <(layout scratch | fold_dirs)
runs_dir=$(dirname "${run_dirs[0]}") scratch_runs=$(dirname "${scratch_dirs[0]}")
report_dir="$out/report/$model-$tag"
[ -n "$folds" ] || folds=$(seq -s, 0 $((k - 1)))
IFS=, read -r -a fold_list <<< "$folds"

per_fold=1; [ "$synthetic" = true ] && per_fold=2
stages=$(( ${#fold_list[@]} * per_fold + 2 ))
done_stages=0 ran_stages=0 started=$(date +%s)  # ran_stages: stages run (not skipped) by this call
hms() { printf '%02d:%02d:%02d' $(($1 / 3600)) $(($1 % 3600 / 60)) $(($1 % 60)); }
progress() {  # progress FOLD-LABEL STAGE STATUS
  local now elapsed eta="--:--:--"
  now=$(date +%s) elapsed=$((now - started))
  [ "$ran_stages" -gt 0 ] && eta=$(hms $((elapsed * (stages - done_stages) / ran_stages)))
  printf '[cross_validate] %s | %-22s | %-8s | stage %d/%d | elapsed %s | ETA %s\n' \
    "$1" "$2" "$3" "$((done_stages + 1))" "$stages" "$(hms "$elapsed")" "$eta" >&2
}

echo "[cross_validate] model=$model synthetic=$synthetic split=$split_tag size=${size}px seed=$seed -> $out" >&2
for fold in "${fold_list[@]}"; do
  label="fold $((fold + 1))/$k"
  shards="$out/shards/fold$fold"
  if [ "$synthetic" = true ]; then
    if [ -f "$shards/manifest.json" ]; then
      progress "$label" "generator+synthesis" "done"
    else
      progress "$label" "generator+synthesis" "running"
      bash scripts/synthesize.sh "${data_args[@]}" "fold=$fold" "seed=$seed" "run_dir=$out/generator/fold$fold" \
        "out=$shards" "monitor.visdom=false" "${gan_args[@]}"
      ran_stages=$((ran_stages + 1))
    fi
    done_stages=$((done_stages + 1))
    pretrain="pretrain.shards=$shards"
  else
    pretrain="pretrain.shards=null"
  fi
  run_dir=${run_dirs[$fold]}
  if [ -f "$run_dir/summary.json" ]; then
    progress "$label" "classifier" "done"
  else
    progress "$label" "classifier" "running"
    python capsule_classifier/train.py "model=$model" "fold=$fold" "seed=$seed" "${data_args[@]}" "$pretrain" \
      "out=$clf_out" "${clf_args[@]}"
    ran_stages=$((ran_stages + 1))
  fi
  done_stages=$((done_stages + 1))
done

progress "all folds" "report" "running"
report_runs=("$runs_dir")
# A synthetic run's report also compares it fold by fold with the real-only run in the same out=, if any.
[ "$synthetic" = true ] && [ -d "$scratch_runs" ] && report_runs+=("$scratch_runs")
python capsule_classifier/report.py "${report_runs[@]}" --out "$report_dir"
done_stages=$((done_stages + 1)) ran_stages=$((ran_stages + 1))

best=$(python - "${fold_list[@]}" <<PY
import json, sys
from pathlib import Path
run_dirs = """$(printf '%s\n' "${run_dirs[@]}")""".split()
folds = {f: run_dirs[int(f)] for f in sys.argv[1:]}
score = {f: json.loads((Path(d) / "summary.json").read_text())["val"]["macro_f1"] for f, d in folds.items()}
print(max(folds, key=lambda f: (score[f], -int(f))))
PY
)
progress "fold $((best + 1))/$k" "export (best val F1)" "running"
python capsule_classifier/export.py "${run_dirs[$best]}/model.pt" --out "$report_dir/model.onnx"
done_stages=$((done_stages + 1))
# Class consistency of each fold's shards, judged by the same fold's real-data-only classifier when it exists
# (a synthetic=false run with the same out=): the share of synthetic slices it assigns to their intended class.
if [ "$synthetic" = true ]; then
  for fold in "${fold_list[@]}"; do
    scratch=${scratch_dirs[$fold]}
    [ -f "$scratch/summary.json" ] || continue
    [ -f "$scratch/model.onnx" ] || python capsule_classifier/export.py "$scratch/model.pt" --out "$scratch/model.onnx" >/dev/null
    python -m generative_model.consistency "$out/shards/fold$fold" "$scratch/model.onnx" >/dev/null
    echo "[cross_validate] fold $((fold + 1))/$k class consistency: $out/shards/fold$fold/consistency.json" >&2
  done
fi
echo "[cross_validate] finished all $stages stages in $(hms $(($(date +%s) - started)))" >&2
echo "[cross_validate] report: $report_dir/report.md  model: $report_dir/model.onnx" >&2
