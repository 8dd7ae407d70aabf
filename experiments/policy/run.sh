#!/usr/bin/env bash
# Where should a fixed budget go on the calibrated US metros: to raise patents, or the catchment
# share? Needs experiments/us_metros/run (bash experiments/us_metros/run.sh). About 5 minutes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
run="$here/../us_metros/run"
common=(source=run "run=$run" policy.years=20 policy.budget=5000 optimize.steps=150 "$@")
diffcomm optimize "${common[@]}" policy=patents hydra.run.dir="$here/patents"
diffcomm optimize "${common[@]}" policy=catchment hydra.run.dir="$here/catchment"
python "$here/compare.py" "$here"
