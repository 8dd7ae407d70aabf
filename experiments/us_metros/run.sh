#!/usr/bin/env bash
# Calibrate on the default US metro data with the rolling-origin evaluation (origins 2005, 2006,
# 2007 against four baselines), then forecast 2011-2015 (about 4 minutes on 2 CPU cores).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
diffcomm calibrate evaluation.rolling_origin=true hydra.run.dir="$here/run" "$@"
diffcomm forecast run="$here/run" years=2011-2015 hydra.run.dir="$here/forecast"
python "$here/collect.py" "$here"
