#!/usr/bin/env bash
# What the observed cross-local ties add. Three calibrations of the default data, each with the
# rolling-origin evaluation: with the tie graph at the default tie strength (experiments/us_metros,
# run first), without the graph (data.edges=null), with the graph and its strength tie_scale
# fitted too, with each tie's first-year strength from its 1976-1999 transfers, and with the
# non-local share reading the graph (nonlocal_tie_slope fitted). About 16 minutes on 2 CPU cores
# for the four runs here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
free="inflow_bias,connecting_weight,educating_weight,migrating_weight,specializing_weight,amenity_weight,buzz_scale"
free="$free,ubiquitification,patents_intercept,patents_dispersion,nonlocal_intercept,nonlocal_connectedness_slope"
free="$free,nonlocal_overlap_slope,nonlocal_concentration,attraction_scale,buzz_quality_scale,national_drift"
free="$free,national_shock_scale,national_persistence"
diffcomm calibrate evaluation.rolling_origin=true data.edges=null hydra.run.dir="$here/run_no_ties" "$@"
diffcomm calibrate evaluation.rolling_origin=true "fit.free=[$free,tie_scale]" hydra.run.dir="$here/run_tie_scale" "$@"
diffcomm calibrate evaluation.rolling_origin=true data.initial_tie_period=1976-1999 hydra.run.dir="$here/run_earlier_ties" "$@"
diffcomm calibrate evaluation.rolling_origin=true "fit.free=[$free,nonlocal_tie_slope]" hydra.run.dir="$here/run_tie_share" "$@"
python "$here/compare.py" "$here"
