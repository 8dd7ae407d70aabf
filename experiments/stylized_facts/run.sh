#!/usr/bin/env bash
# The seeds' stylized facts from the model as calibrated on the US metros: calibrate with the
# defaults (about 2 minutes on 2 CPU cores; skipped when the run folder holds a calibration),
# then read each fact (about 15 s). Pass another calibration's run folder as the first argument.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
run="${1:-$here/run}"
if [ ! -f "$run/calibration.json" ]; then
    diffcomm calibrate hydra.run.dir="$run"
fi
python "$here/facts.py" "$run"
