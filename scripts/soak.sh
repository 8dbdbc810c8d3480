#!/usr/bin/env bash
# Soak the deterministic simulations with more seeds than the suite runs:
#   scripts/soak.sh --seeds 50000      # per mode and per simulation
#   scripts/soak.sh --seed 5009840     # one seed (ESC_SIM_TRACE=1 prints every step)
# A failure prints its seed; rerun it with --seed.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --seeds=*) SEEDS="${1#*=}"; shift ;;
    --seed) export ESC_SIM_SEED="$2"; shift 2 ;;
    --seed=*) export ESC_SIM_SEED="${1#*=}"; shift ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (use --seeds N or --seed S)" >&2; exit 2 ;;
  esac
done
case "$SEEDS" in ''|*[!0-9]*) echo "soak.sh: --seeds needs a number, got '$SEEDS'" >&2; exit 2 ;; esac
export ESC_SIM_SEEDS="$SEEDS"
cargo test --release -q -p esc-authority --test pair_simulation -- --nocapture
cargo test --release -q -p esc-repl --test simulation -- --nocapture
