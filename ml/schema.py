"""The demo dataset's schema: copy this file to describe your own data.

Point the pipeline at a schema with ``"ml/schema.py:ChurnDataset"`` (a file) or
``"ml.schema:ChurnDataset"`` (a module). Every column is declared with its dtype,
range or allowed values; ``strict`` refuses unknown columns, ``coerce = False`` refuses data
whose types are wrong instead of quietly converting it, and fields are not nullable.

Example::

    import pandas as pd
    ChurnDataset.validate(pd.read_csv("data/churn.csv"), lazy=True)
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

CONTRACT_TYPES = ["month-to-month", "one-year", "two-year"]
INTERNET_SERVICES = ["dsl", "fiber-optic", "none"]
MAX_TENURE_MONTHS = 72


class ChurnDataset(pa.DataFrameModel):
    """Telecom customer churn: one row per customer, ``churned`` is the binary label."""

    customer_id: Series[str] = pa.Field(unique=True, str_matches=r"^C\d{6}$")
    tenure_months: Series[int] = pa.Field(ge=0, le=MAX_TENURE_MONTHS)
    monthly_charges: Series[float] = pa.Field(ge=0.0, le=500.0)
    total_charges: Series[float] = pa.Field(ge=0.0)
    contract: Series[str] = pa.Field(isin=CONTRACT_TYPES)
    internet_service: Series[str] = pa.Field(isin=INTERNET_SERVICES)
    support_calls: Series[int] = pa.Field(ge=0, le=100)
    paperless_billing: Series[bool]
    churned: Series[int] = pa.Field(isin=[0, 1])

    class Config:
        strict = True
        coerce = False
        name = "ChurnDataset"

    @pa.dataframe_check(name="total_charges_plausible")
    def total_charges_plausible(cls, df: pd.DataFrame) -> Series[bool]:  # noqa: N805
        """What a customer paid in total fits their monthly bill and tenure (±25 %)."""
        months = df["tenure_months"].clip(lower=1)
        expected = df["monthly_charges"] * months
        ok: Series[bool] = (df["total_charges"] >= 0.75 * expected) & (
            df["total_charges"] <= 1.25 * expected
        )
        return ok
