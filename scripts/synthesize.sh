#!/usr/bin/env bash
# Train the anatomy-conditioned pix2pix generator of one fold (or reuse checkpoint=PATH), then write its
# synthetic shards (tumours transplanted into other training patients' slices); with judge=PATH/model.onnx
# (the fold's real-data classifier) also assess them into the run's quality.json.
#
#   ./scripts/synthesize.sh [data.root=PATH] [fold=0|null] [data.image_size=128] [train.epochs=3]
#                           [train.epochs_decay=3] [count=7000] [proportions=balanced|real] [out=DIR]
#                           [checkpoint=PATH] [judge=PATH] [key=value ...] [--debug]
#
# Each key goes to the step whose config defines it (python -m generative_model.route): train.*, net.*,
# loss.*, condition.*, monitor.* and resume to training; count, proportions, out, batch_size (the synthesis
# batch), checkpoint, judge, transplant.* ... to synthesis; keys both define (data.*, fold, seed, device, amp, run_dir) to
# both. A key neither defines is refused; old key names (epochs=, optim.lr=, ...) warn and are renamed.
# Training resumes its run directory, and synthesis its shard folder, so re-running finishes a killed job.
# A bad setting or input stops it with the failing step's one-line error and exit status 2 (--debug: traceback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
. .venv/bin/activate

args=()
for arg in "$@"; do  # --debug: every step shows the traceback of an expected error
  if [ "$arg" = --debug ]; then export BRAIN_TUMOUR_DEBUG=1; else args+=("$arg"); fi
done
routes=$(python -m generative_model.route "${args[@]}")  # a refused key: its one-line error, exit status 2
train_args=(resume=true)
synth_args=()
checkpoint=false
while IFS=$'\t' read -r step arg; do
  case "$step" in
    train) train_args+=("$arg") ;;
    synthesize) synth_args+=("$arg") ;;
  esac
  case "$arg" in checkpoint=*) checkpoint=true ;; esac
done <<<"$routes"

if [ "$checkpoint" = false ]; then
  python generative_model/train.py "${train_args[@]}"
fi
python generative_model/synthesize.py "${synth_args[@]}"
