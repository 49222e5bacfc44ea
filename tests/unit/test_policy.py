import datetime as dt
import os
from pathlib import Path

import pytest

from secmlops.errors import ControlRefused, InputError
from secmlops.gate import GatePolicy
from secmlops.policy import (
    PolicyRefusal,
    demo_signature_path,
    load_gate_policy,
    read_policy,
    set_expiry,
)

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _demo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded demo in a state home of its own (it signs the policy there)."""
    for var in [k for k in os.environ if k.startswith("SECMLOPS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SECMLOPS_HOME", str(tmp_path / "home"))


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


def test_shipped_policy_is_the_demo_and_signed_by_it(tmp_path: Path) -> None:
    policy = load_gate_policy(PROJECT / "secmlops-policy.yaml")
    assert policy.environment == "demo" and policy.expires is None
    assert policy.source is not None and policy.source.owner == "embedded demo"
    assert policy.source.signature == str(
        demo_signature_path(PROJECT / "secmlops-policy.yaml", tmp_path / "home")
    )
    assert not (PROJECT / "secmlops-policy.yaml.sig").exists()
    # Loaded again: the same signature, no new one.
    again = load_gate_policy(PROJECT / "secmlops-policy.yaml")
    assert again.source is not None and again.source.signed_at == policy.source.signed_at
    assert again.source.demo_signed


def test_policy_file_must_say_its_environment(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("min_smoke_accuracy: 0.7\n")
    with pytest.raises(InputError, match="environment"):
        load_gate_policy(path)
    path.write_text("environment: staging\n")
    with pytest.raises(InputError, match="environment"):
        load_gate_policy(path)


def test_empty_policy_is_refused_not_defaults(tmp_path: Path) -> None:
    """issue 8 attack 3: an empty file used to mean the built-in defaults."""
    path = tmp_path / "policy.yaml"
    path.write_text("# all commented out\n")
    with pytest.raises(ControlRefused, match="empty") as err:
        load_gate_policy(path)
    assert err.value.reason is PolicyRefusal.EMPTY_POLICY
    assert "secmlops policy sign" in (err.value.fix or "")


def test_set_expiry_rewrites_only_the_top_level_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    text = (PROJECT / "secmlops-policy.yaml").read_text()
    path.write_text(text)
    set_expiry(path, dt.date(2031, 2, 3))
    new = path.read_text()
    assert read_policy(path).policy.expires == dt.date(2031, 2, 3)
    assert new == text.replace("expires: null", "expires: 2031-02-03")
    path.write_text("environment: demo\n")
    set_expiry(path, dt.date(2031, 2, 3))
    assert path.read_text() == "environment: demo\nexpires: 2031-02-03\n"


def test_policy_built_in_code_has_no_source_but_a_digest() -> None:
    policy = GatePolicy()
    assert policy.source is None and len(policy.digest) == 64
    assert policy.descriptor("staging").annotations == {"environment": "demo", "signed": False}
