"""Loaders of observed data: the shipped data loads; every kind of bad file gets a clear error."""

import numpy as np
import pandas as pd
import pytest

from diffcomm import data as D
from diffcomm.config import DataConfig, DriverTermConfig

PATENT_HEADER = "cbsa_code,cbsa_name,year,patents\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_patent_panel_loads_completely():
    panel = D.load_patents()
    assert panel.counts.shape == (11, 1002)
    assert list(panel.years) == list(range(2000, 2011))
    assert "00901" in panel.codes  # leading zeros kept
    assert not np.isnan(panel.counts).any() and (panel.counts >= 0).all()


def test_default_covariates_keep_missing_cells_missing():
    notes = []
    covariates = D.load_covariates(on_duplicate="first", notes=notes)
    assert covariates.univ_rd_total.isna().sum() > 500  # empty cells stay NaN, never 0
    assert any("37980" in n for n in notes)  # the repeated Philadelphia row is reported
    with pytest.raises(D.DataError, match="duplicate key \\(cbsa_code='37980'\\)"):
        D.load_covariates()  # strict by default


def test_state_tech_panel_has_domains():
    panel = D.load_state_tech()
    assert len(panel.domains) == 13 and len(panel.states) >= 50
    assert panel.inventors.shape == (len(panel.periods), len(panel.states), 13)
    share = panel.foreign_origin_share[~np.isnan(panel.foreign_origin_share)]
    assert ((share >= 0) & (share <= 1)).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("cbsa_code,cbsa_name,yeer,patents\n10100,A,2000,5\n", "missing column\\(s\\) 'year' \\(found 'yeer': misspelt\\?\\)"),
        (PATENT_HEADER + "10100,A,2000,5\n10100,A,2000,6\n", "duplicate key \\(cbsa_code='10100', year=2000\\) on lines 2 and 3"),
        (PATENT_HEADER + "10100,A,2000,5\n10100,A,2001,-4\n", ":3: column 'patents': expected a non-negative count, got '-4'"),
        (PATENT_HEADER + "10100,A,2000,2.5\n", ":2: column 'patents': expected an integer count, got '2.5'"),
        (PATENT_HEADER + "10100,A,2000,many\n", ":2: column 'patents': expected a number, got 'many'"),
        (PATENT_HEADER + "901,A,2000,3\n", ":2: column 'cbsa_code': expected a 5-digit region code"),
        (PATENT_HEADER + "10100,A,20x0,3\n", ":2: column 'year': expected a number, got '20x0'"),
        (PATENT_HEADER, "a header but no rows"),
        ("", "the file is empty"),
    ],
)
def test_bad_patent_files_are_refused_with_file_row_and_column(tmp_path, text, message):
    path = write(tmp_path, "patents.csv", text)
    with pytest.raises(D.DataError, match=message) as error:
        D.load_patents(path)
    assert str(path) in str(error.value)


def test_missing_patent_cells_stay_missing(tmp_path):
    path = write(tmp_path, "patents.csv", PATENT_HEADER + "10100,A,2000,5\n10100,A,2002,7\n10180,B,2000,\n10180,B,2001,1\n")
    panel = D.load_patents(path)
    assert list(panel.years) == [2000, 2001, 2002]
    counts = dict(zip(panel.codes, panel.counts.T))
    assert np.isnan(counts["10100"][1]) and np.isnan(counts["10180"][0]) and np.isnan(counts["10180"][2])


def test_unknown_region_code_in_edges(tmp_path):
    path = write(tmp_path, "edges.csv", "period,source_cbsa,target_cbsa,transfers\n2000-2023,10100,10180,3\n2000-2023,10100,99999,1\n")
    with pytest.raises(D.DataError, match=":3: column 'target_cbsa': unknown region code '99999'"):
        D.load_edges(path, known_codes={"10100", "10180"})


def test_non_numeric_covariate(tmp_path):
    path = write(tmp_path, "cov.csv", "cbsa_code,population\n10100,1000\n10180,lots\n")
    with pytest.raises(D.DataError, match=":3: column 'population': expected a number, got 'lots'"):
        D.load_covariates(path, {"cbsa_code": "code", "population": "number"})


def test_missing_covariate_needs_an_explicit_rule():
    covariates = D.load_covariates(on_duplicate="first")
    codes = tuple(covariates.index[:200])
    spec = D.load_specialization()
    strict = D.DriverMapping(terms={"educating": [D.DriverTerm("univ_rd_total", "log1p", per_capita=True)]})
    with pytest.raises(D.DataError, match="has no 'univ_rd_total'; set `missing`"):
        D.drivers_from_covariates(codes, covariates, spec, strict)
    explicit = D.DriverMapping(terms={"educating": [D.DriverTerm("univ_rd_total", "log1p", per_capita=True, missing="zero")]})
    drivers, notes = D.drivers_from_covariates(codes, covariates, spec, explicit)
    assert any("missing 'univ_rd_total' filled with zero" in n for n in notes)
    assert np.isfinite(np.asarray(drivers.educating)).all()
    assert abs(float(np.mean(drivers.educating))) < 1e-6  # standardized


def test_dataset_for_the_default_data():
    from diffcomm.commands import load_dataset
    from diffcomm.config import CalibrateConfig, to_typed
    from hydra import compose, initialize_config_dir

    from diffcomm.config import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = to_typed(compose(config_name="calibrate"), CalibrateConfig)
    dataset = load_dataset(cfg.data)
    assert dataset.num_regions == 1002
    assert dataset.observed.patents.shape == (10, 1002)
    assert int(dataset.graph.source.shape[0]) > 10000
    assert 300 < float(dataset.observed.linkage_mask.sum()) < 400
    for name in ("educating", "migrating", "connecting", "amenities"):
        value = np.asarray(getattr(dataset.drivers, name))
        assert np.isfinite(value).all() and abs(value.mean()) < 0.2
    assert any("no covariate row" in n for n in dataset.notes)


def test_unknown_region_in_data_regions():
    from diffcomm.commands import load_dataset

    config = DataConfig(regions=["10100", "00000"], drivers={"educating": [DriverTermConfig(column="share_bachelor_plus")]},
                        covariate_duplicates="first")
    with pytest.raises(D.DataError, match="unknown region code\\(s\\) \\['00000'\\]"):
        load_dataset(config)


def test_linkage_counts_split_local_and_non_local():
    counts = D.load_linkage_counts()
    assert {"local", "non_local"} == set(counts.columns)
    assert (counts.to_numpy() >= 0).all() and len(counts) > 300
    assert isinstance(counts, pd.DataFrame)
