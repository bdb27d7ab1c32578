#!/usr/bin/env bash
# Train the pix2pix generator of one fold (or reuse checkpoint=PATH), then write its synthetic shards.
#
#   ./scripts/synthesize.sh [data.root=PATH] [fold=0|null] [data.image_size=128] [epochs=3] [epochs_decay=3]
#                           [count=7000] [proportions=balanced|real] [out=DIR] [checkpoint=PATH] [key=value ...]
#
# Keys go to the step that owns them: count, proportions, out, shard_size, overwrite, stochastic,
# checkpoint and augment.* to synthesis; data.*, fold, seed, device, amp and run_dir to both;
# everything else (epochs, net.*, optim.*, monitor.*, resume, ...) to training.
# Training resumes its run directory, and synthesis its shard folder, so re-running finishes a killed job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
# shellcheck disable=SC1091
. .venv/bin/activate

train_args=(resume=true)
synth_args=()
checkpoint=""
for arg in "$@"; do
  case "$arg" in
    checkpoint=*) checkpoint=${arg#checkpoint=} ;;
    count=* | proportions=* | out=* | shard_size=* | overwrite=* | stochastic=* | augment.*) synth_args+=("$arg") ;;
    data.* | fold=* | seed=* | device=* | amp=* | run_dir=*) train_args+=("$arg"); synth_args+=("$arg") ;;
    *=*) train_args+=("$arg") ;;
    *) echo "synthesize.sh: expected key=value overrides, got '$arg'" >&2; exit 2 ;;
  esac
done

if [ -z "$checkpoint" ]; then
  python generative_model/train.py "${train_args[@]}"
else
  synth_args+=("checkpoint=$checkpoint")
fi
python generative_model/synthesize.py "${synth_args[@]}"
