#!/usr/bin/env bash
# Run the shipped experiments, report each with its stated collapse criterion,
# and copy the figures docs/experiments.md shows into docs/figures/.
#   configs/experiments/run.sh [NAME ...]     (default: all five; `make experiments`)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/experiments}
FIG=docs/figures
mkdir -p "$OUT" "$FIG"

experiment() {  # name, criterion, then extra report arguments
  local name=$1 crit=$2; shift 2
  local run="$OUT/$name"
  rm -rf "$run"
  local t0=$SECONDS
  "$BIN/collapse-sim" run "configs/experiments/$name.yaml" --out "$run" --quiet >/dev/null
  echo "$name: run $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
  "$BIN/collapse-sim" report "$run" --collapse-on "$crit" "$@" --out "$run/report" >/dev/null
}

copy() {  # run name, figure in its report, name under docs/figures
  cp "$OUT/$1/${4:-report}/$2" "$FIG/$3"
}

names=("$@")
has() { [ ${#names[@]} -eq 0 ] || [[ " ${names[*]} " == *" $1 "* ]]; }

if has founding_claim; then
  experiment founding_claim 'tv_true>=1.25*gen0'
  "$BIN/collapse-sim" report "$OUT/founding_claim" --collapse-on 'tv_true>=1.25*gen0' --x ratio --out "$OUT/founding_claim/ratio" >/dev/null
  copy founding_claim tv_true.png founding_claim_tv_generation.png
  copy founding_claim tv_true.png founding_claim_tv_ratio.png ratio
  copy founding_claim time_to_collapse_generate.sequences.png founding_claim_time_to_collapse.png
fi
if has fresh_data_control; then
  experiment fresh_data_control 'tv_true>=0.1'
  copy fresh_data_control tv_true.png fresh_data_control_tv.png
fi
if has quality_vs_quantity; then
  experiment quality_vs_quantity 'tv_true>=0.25'
  copy quality_vs_quantity tv_true.png quality_vs_quantity_tv.png
  copy quality_vs_quantity entropy.png quality_vs_quantity_entropy.png
fi
if has truncation; then
  experiment truncation 'tv_true>=0.25' --collapse-on 'support<=0.5*gen0'
  copy truncation tv_true.png truncation_tv.png
  copy truncation survival_1.png truncation_survival.png
fi
if has neural_vs_ngram; then
  experiment neural_vs_ngram 'tv_true>=0.1'
  copy neural_vs_ngram tv_true.png neural_vs_ngram_tv.png
  copy neural_vs_ngram heldout_nll.png neural_vs_ngram_nll.png
fi
