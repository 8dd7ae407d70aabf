#!/usr/bin/env bash
# Calibrate on the default US metro data, then forecast 2011-2015 (about 10 minutes on 2 CPU cores).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
diffcomm calibrate hydra.run.dir="$here/run" "$@"
diffcomm forecast run="$here/run" years=2011-2015 hydra.run.dir="$here/forecast"
python "$here/collect.py" "$here"
