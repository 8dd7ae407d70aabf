#!/usr/bin/env bash
# K = 13 technology fields on the state x field panel: the calibration with its rolling origin
# (about 5 minutes on 2 CPU cores from cold; checkpoints in the run folder are resumed), then its
# tables and figures copied beside this README.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
diffcomm calibrate data=us_state_tech hydra.run.dir="$here/run" "$@"
for name in params.csv evaluation.csv report.md fit.png communities.png evaluation.png; do
    cp "$here/run/$name" "$here/$name"
done
