#!/usr/bin/env bash
# Where should a fixed budget go on the calibrated US metros: to raise patents, or the catchment
# share? Needs experiments/us_metros/run (bash experiments/us_metros/run.sh). About 5 minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
run="$here/../us_metros/run"
common=(source=run "run=$run" policy.years=20 policy.budget=5000 optimize.steps=150 "$@")
diffcomm optimize "${common[@]}" policy=patents hydra.run.dir="$here/patents"
# the catchment budget also under parameter uncertainty: the allocation best on average over 16
# draws of the calibration's Laplace approximation, judged against the estimate's optimum on 64 others
diffcomm optimize "${common[@]}" policy=catchment policy.uncertainty=laplace policy.draws=16 \
    hydra.run.dir="$here/catchment"
python "$here/compare.py" "$here"
