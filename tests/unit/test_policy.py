from pathlib import Path

import pytest

from secmlops.errors import InputError
from secmlops.policy import load_gate_policy

PROJECT = Path(__file__).resolve().parents[2]


def test_shipped_policy_file_loads() -> None:
    policy = load_gate_policy(PROJECT / "secmlops-policy.yaml")
    assert policy.scan.fail_on == ("CRITICAL", "HIGH")
    assert policy.scan.unsafe_allow_curated_db is True  # the embedded demo's documented choice
    assert policy.approval.allowed("production") == ("demo-approver",)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_gate_policy(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("scan:\n  fail_on: []\n", "scan"),
        ("scan:\n  fail_on: [HIGH]\n  typo_knob: true\n", "scan.typo_knob"),
        ("min_smoke_accuracy: lots\n", "min_smoke_accuracy"),
        ("scan: [unclosed\n", "YAML"),
    ],
)
def test_bad_policy_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as excinfo:
        load_gate_policy(path)
    assert str(path) in excinfo.value.message
    assert field in excinfo.value.message


def test_production_auto_approval_in_policy_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("approval:\n  unsafe_auto_approve_stages: [production]\n")
    with pytest.raises(InputError, match="production"):
        load_gate_policy(path)


def test_flows_take_no_policy_parameter() -> None:
    """Gate policy comes from the worker's policy file, never from a flow-run parameter."""
    from flows.operations import promote, rollback, verify
    from flows.training import secure_training

    for flow in (secure_training, promote, rollback, verify):
        assert not any("polic" in name for name in flow.parameters.properties), flow.name
