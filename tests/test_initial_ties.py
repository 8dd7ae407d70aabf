"""The ties' strength in the first year from an earlier period of transfers (`data.initial_tie_period`)."""

import numpy as np
import pandas as pd
import pytest

from diffcomm.config import DataConfig
from diffcomm.data import load_dataset, resolve
from diffcomm.errors import DataError
from diffcomm.inputs import INITIAL_TIE
from diffcomm.params import Params
from diffcomm.simulate import initial_state_from_data

REGIONS = ["41860", "41940", "42660", "14460", "35620", "31100", "16980", "19820"]


def test_earlier_transfers_set_each_ties_first_strength():
    plain = load_dataset(DataConfig(regions=REGIONS))
    earlier = load_dataset(DataConfig(regions=REGIONS, initial_tie_period="1976-1999"))
    assert plain.initial_ties is None
    ties = np.asarray(earlier.initial_ties)
    np.testing.assert_allclose(ties.mean(), INITIAL_TIE, rtol=1e-6)
    # the same graph; a tie's first strength follows its 1976-1999 transfers, 0 where it had none
    np.testing.assert_array_equal(earlier.graph.source, plain.graph.source)
    edges = pd.read_csv(resolve("us_msa_transfers/intercity_edges.csv"), dtype={"source_cbsa": str, "target_cbsa": str})
    then = edges[edges.period == "1976-1999"].set_index(["source_cbsa", "target_cbsa"]).transfers
    codes = np.asarray(earlier.codes)
    pairs = zip(codes[np.asarray(earlier.graph.source)], codes[np.asarray(earlier.graph.target)])
    transfers = np.array([then.get(pair, 0) for pair in pairs], dtype=float)
    assert (ties[transfers == 0] == 0).all() and (ties[transfers > 0] > 0).all()
    order = np.argsort(transfers)
    assert np.all(np.diff(ties[order]) >= 0)
    state = initial_state_from_data(Params.from_natural(1), earlier)
    np.testing.assert_allclose(state.world.ties, ties, rtol=1e-6)
    assert np.allclose(initial_state_from_data(Params.from_natural(1), plain).world.ties, INITIAL_TIE)


def test_a_period_without_edges_is_refused():
    with pytest.raises(DataError, match="data.initial_tie_period='1801-1802'.*no edges for that period"):
        load_dataset(DataConfig(regions=REGIONS, initial_tie_period="1801-1802"))
