"""Observed data: validated loaders (`tables`), covariates -> drivers (`drivers`), and the
calibration data set (`dataset`)."""

from ..errors import DataError
from .dataset import INITIAL_STATE_COLUMNS, Dataset, build_dataset, covariate_columns, load_dataset
from .drivers import drivers_from_covariates
from .tables import (
    DATA_DIR,
    DomainPanel,
    PatentPanel,
    load_covariates,
    load_edges,
    load_linkage_counts,
    load_patents,
    load_specialization,
    load_state_tech,
    read_table,
    resolve,
)

__all__ = [
    "DATA_DIR", "INITIAL_STATE_COLUMNS", "DataError", "Dataset", "DomainPanel", "PatentPanel", "build_dataset",
    "covariate_columns",
    "drivers_from_covariates", "load_covariates", "load_dataset", "load_edges", "load_linkage_counts",
    "load_patents", "load_specialization", "load_state_tech", "read_table", "resolve",
]
