"""Loaders of observed data: the shipped data loads; every kind of bad file gets a clear error."""

import numpy as np
import pandas as pd
import pytest

from diffcomm import data as D
from diffcomm.config import DataConfig, DriverTerm

PATENT_HEADER = "cbsa_code,cbsa_name,year,patents\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


SHIPPED = DataConfig()


def test_default_patent_panel_loads_completely():
    panel = D.load_patents(SHIPPED.patents)
    assert panel.counts.shape == (11, 1002)
    assert list(panel.years) == list(range(2000, 2011))
    assert "00901" in panel.codes  # leading zeros kept
    assert not np.isnan(panel.counts).any()  # the shipped panel has every region-year
    san_francisco = panel.codes.index("41860")
    assert panel.names[san_francisco] == "San Francisco-Oakland-Fremont, CA"
    assert panel.counts[:3, san_francisco].tolist() == [3625, 3800, 4030]  # lines 8978-8980 of the file, in place


def test_default_covariates_keep_missing_cells_missing():
    covariates, notes = D.load_covariates(SHIPPED.covariates, ["univ_rd_total", "population"], on_duplicate="first")
    assert list(covariates.columns) == ["univ_rd_total", "population"]  # only the columns asked for
    assert covariates.univ_rd_total.isna().sum() > 500  # empty cells stay NaN, never 0
    assert any("37980" in n for n in notes)  # the repeated Philadelphia row is reported
    with pytest.raises(D.DataError, match="duplicate key \\(cbsa_code='37980'\\)"):
        D.load_covariates(SHIPPED.covariates, ["population"])  # strict by default


def test_state_tech_panel_has_domains():
    panel = D.load_state_tech("us_state_tech/panel.csv")
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
        (PATENT_HEADER + "10100,A,2000,3\n10100,A,-2001,3\n", ":3: column 'year': expected a calendar year from 1800 to 2100"),
        (PATENT_HEADER + "10100,A,2000,1e12\n",
         ":2: column 'patents': 1e\\+12 in one region-year is above the plausible maximum"),
        (PATENT_HEADER, "a header but no rows"),
        (PATENT_HEADER + "10100,A,2000,5\n10100,A,2001\n", ":3: 3 fields where the header has 4"),
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
    path = write(tmp_path, "edges.csv",
                 "period,source_cbsa,target_cbsa,transfers\n2000-2023,10100,10180,3\n2000-2023,10100,99999,1\n")
    with pytest.raises(D.DataError, match=":3: column 'target_cbsa': unknown region code '99999'"):
        D.load_edges(path, known_codes={"10100", "10180"}, period=None)


def test_non_numeric_covariate(tmp_path):
    path = write(tmp_path, "cov.csv", "cbsa_code,population\n10100,1000\n10180,lots\n")
    with pytest.raises(D.DataError, match=":3: column 'population': expected a number, got 'lots'"):
        D.load_covariates(path, ["population"])


def test_missing_covariate_needs_an_explicit_rule():
    covariates, _ = D.load_covariates(SHIPPED.covariates, ["univ_rd_total", "population"], on_duplicate="first")
    codes = tuple(covariates.index[:200])
    spec = D.load_specialization(SHIPPED.clusters)
    strict = {"educating": [DriverTerm("univ_rd_total", "log1p", per_capita=True)]}
    with pytest.raises(D.DataError, match="has no 'univ_rd_total'; set `missing`"):
        D.drivers_from_covariates(codes, covariates, spec, strict)
    explicit = {"educating": [DriverTerm("univ_rd_total", "log1p", per_capita=True, missing="zero")]}
    drivers, notes = D.drivers_from_covariates(codes, covariates, spec, explicit)
    assert any("missing 'univ_rd_total' filled with zero" in n for n in notes)
    assert np.isfinite(np.asarray(drivers.educating)).all()
    assert abs(float(np.mean(drivers.educating))) < 1e-6  # standardized


def test_dataset_for_the_default_data():
    dataset = D.load_dataset(DataConfig())
    assert dataset.num_regions == 1002
    assert dataset.patents.shape == (10, 1002) and dataset.years == tuple(range(2000, 2011))
    assert int(dataset.graph.source.shape[0]) > 10000
    assert 300 < float(dataset.linkage_mask.sum()) < 400
    for name in ("educating", "migrating", "connecting", "amenities"):
        value = np.asarray(getattr(dataset.drivers, name))
        assert np.isfinite(value).all() and abs(value.mean()) < 0.2
    assert any("no covariate row" in n for n in dataset.notes)
    assert any("37980" in n for n in dataset.notes)  # the repeated Philadelphia row, resolved and noted


def test_unknown_region_in_data_regions():
    config = DataConfig(regions=["10100", "00000"], drivers={"educating": [DriverTerm(column="share_bachelor_plus")]})
    with pytest.raises(D.DataError, match="unknown region code\\(s\\) \\['00000'\\]"):
        D.load_dataset(config)


def test_years_outside_the_file_are_refused_with_the_key():
    with pytest.raises(D.DataError, match="data.first_year=1995: .*patents.csv has patents for 2000-2010 only"):
        D.load_dataset(DataConfig(first_year=1995))


def test_blank_cells_missing_years_and_unused_rows_are_noted(tmp_path):
    rows = ["10420,Akron,2000,5", "10420,Akron,2001,", "10420,Akron,2003,7", "10420,Akron,2004,9",
            "10580,Albany,2000,3", "10580,Albany,2001,4", "10580,Albany,2003,2", "10580,Albany,2004,1",
            "10580,Albany,1999,2"]
    path = write(tmp_path, "patents.csv", PATENT_HEADER + "\n".join(rows) + "\n")
    dataset = D.load_dataset(DataConfig(patents=str(path), first_year=2000, last_year=2004, linkages=None, edges=None))
    notes = "\n".join(dataset.notes)
    assert "no patent counts at all for 2002: those years are masked" in notes
    assert "3 blank patent cells" in notes  # 10420 in 2001, and both regions in 2002
    assert "1 patent counts outside 2000-2004 are not used" in notes
    assert dataset.observed_patents()[0].tolist()[0] != dataset.observed_patents()[0].tolist()[0]  # NaN: masked
    assert float(dataset.patents_mask.sum()) == 5


def test_held_out_years_keep_the_shapes():
    dataset = D.load_dataset(DataConfig(regions=["10420", "10580", "41860"]))
    held = dataset.through(2007)
    assert held.patents.shape == dataset.patents.shape
    np.testing.assert_array_equal(np.asarray(held.window), [1] * 7 + [0] * 3)
    assert float(held.patents_mask[7:].sum()) == 0 and float(held.patents_mask[:7].sum()) == 21
    with pytest.raises(ValueError, match="last_year must lie in 2001..2010"):
        dataset.through(2012)


def test_linkage_counts_split_local_and_non_local():
    counts = D.load_linkage_counts(SHIPPED.linkages, period=SHIPPED.linkage_period)
    assert {"local", "non_local"} == set(counts.columns)
    assert len(counts) > 300
    row = counts.loc["41860"]  # San Francisco: its published transfer counts, split
    raw = D.read_table(D.resolve("us_msa_transfers/by_msa_period.csv"),
                       {"cbsa_code": "code", "period": "text", "intracity_transfers": "count", "intercity_out": "count",
                        "intercity_in": "count"})
    line = raw[(raw.cbsa_code == "41860") & (raw.period == "2000-2023")].iloc[0]
    assert row.local == line.intracity_transfers and row.non_local == line.intercity_out + line.intercity_in


def test_a_covariate_file_needs_only_the_columns_used(tmp_path):
    shipped = pd.read_csv(D.resolve(SHIPPED.covariates), dtype={"cbsa_code": str})
    needed = ["cbsa_code", *D.covariate_columns(SHIPPED)]
    path = tmp_path / "covariates.csv"
    shipped[needed].to_csv(path, index=False)
    smaller = D.load_dataset(DataConfig(covariates=str(path)))
    np.testing.assert_array_equal(np.asarray(smaller.drivers.educating), np.asarray(D.load_dataset(SHIPPED).drivers.educating))
    shipped[needed[:-1]].to_csv(path, index=False)  # without the last column a driver term names
    with pytest.raises(D.DataError, match="missing column\\(s\\) 'vc_musd_per_1m_2015_17'"):
        D.load_dataset(DataConfig(covariates=str(path)))


def test_a_data_file_found_from_here_is_stored_with_its_full_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.csv").write_text(PATENT_HEADER + "10420,A,2000,5\n10420,A,2001,6\n")
    config = DataConfig(patents="mine.csv")
    assert config.patents == str(tmp_path / "mine.csv")  # reloading from another folder finds the same file
    assert DataConfig().patents == "us_cbsa/patents.csv"  # shipped names stay relative to the package's data
