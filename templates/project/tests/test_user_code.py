"""Tests of the user code in ml/ (YOUR CODE HERE: when you replace the demo's schema, stages
or model, replace these with tests of yours)."""

from __future__ import annotations

import pandas as pd
import pandera.errors
import pytest

from ml.schema import ChurnDataset
from secmlops.demo.data_registry import generate_churn_dataset


@pytest.fixture(scope="module")
def demo_data() -> pd.DataFrame:
    return generate_churn_dataset("v1.0", rows=200)


def test_the_schema_accepts_the_demo_data(demo_data: pd.DataFrame) -> None:
    ChurnDataset.validate(demo_data, lazy=True)


def test_the_schema_refuses_an_unknown_column_and_a_bad_value(demo_data: pd.DataFrame) -> None:
    bad = demo_data.assign(extra=1)
    bad.loc[0, "contract"] = "lifetime"
    with pytest.raises(pandera.errors.SchemaErrors):
        ChurnDataset.validate(bad, lazy=True)
