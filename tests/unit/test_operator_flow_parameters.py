"""The operator flows' Custom run form: every parameter described, stages an enum."""

from __future__ import annotations

from pathlib import Path

import pytest

from secmlops.controls.approval import check_stage
from secmlops.errors import InputError

PROJECT = Path(__file__).resolve().parents[2]


def test_operator_flow_parameters_are_described_with_a_stage_enum() -> None:
    from flows.operations import promote, rollback, verify

    for flow in (promote, rollback, verify):
        properties = flow.parameters.model_dump()["properties"]
        undescribed = [name for name, p in properties.items() if not p.get("description")]
        assert undescribed == [], flow.name
        assert properties["stage"]["enum"] == ["staging", "production"], flow.name
        assert properties["model"]["default"] == "churn-classifier", flow.name
    assert "version" in promote.parameters.required


def test_deployment_schema_from_source_has_the_descriptions() -> None:
    """`prefect deploy` reads the schema from source, not from the imported flow."""
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    schema = parameter_schema_from_entrypoint(f"{PROJECT}/flows/operations.py:promote").model_dump()
    assert schema["properties"]["stage"]["enum"] == ["staging", "production"]
    assert all(p.get("description") for p in schema["properties"].values())


def test_unknown_stage_names_no_cli_flag() -> None:
    with pytest.raises(InputError) as info:
        check_stage("prod")
    assert info.value.where == "stage"
