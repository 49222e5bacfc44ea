"""The `secmlops` command-line contract: outputs and exit codes (0/1/2/3), real tools."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from secmlops.demo.data_registry import generate_churn_dataset, write_dataset_csv
from secmlops.demo.serving_image import build_serving_image
from secmlops.evidence.statements import generate_keypair

PROJECT = Path(__file__).resolve().parents[2]
SECMLOPS = Path(sys.executable).parent / "secmlops"


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SECMLOPS_HOME": str(tmp_path / "home")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SECMLOPS), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_sign_verify_and_tamper(tmp_path: Path, cli_env: dict[str, str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.json").write_text('{"w": [1, 2, 3]}')
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert run(cli_env, "sign", str(model), "--key", str(tmp_path / "k.pem")).returncode == 0
    sig = tmp_path / "model.sig"
    assert sig.is_file()
    ok = run(
        cli_env,
        "verify",
        str(model),
        "--signature",
        str(sig),
        "--public-key",
        str(tmp_path / "k.pub"),
    )
    assert ok.returncode == 0, ok.stderr
    (model / "weights.json").write_text('{"w": [1, 2, 4]}')
    bad = run(
        cli_env,
        "verify",
        str(model),
        "--signature",
        str(sig),
        "--public-key",
        str(tmp_path / "k.pub"),
    )
    assert bad.returncode == 1
    assert "does not verify" in bad.stderr
    missing = run(
        cli_env,
        "verify",
        str(model),
        "--signature",
        str(sig),
        "--public-key",
        str(tmp_path / "nope.pub"),
    )
    assert missing.returncode == 2


def test_validate_good_and_bad_data(tmp_path: Path, cli_env: dict[str, str]) -> None:
    frame = generate_churn_dataset("v1.0", rows=200)
    good = tmp_path / "good.csv"
    write_dataset_csv(frame, good)
    schema = "ml.schema:ChurnDataset"
    assert run(cli_env, "validate", str(good), "--schema", schema).returncode == 0
    frame.loc[3, "monthly_charges"] = -5.0
    bad = tmp_path / "bad.csv"
    write_dataset_csv(frame, bad)
    refused = run(cli_env, "validate", str(bad), "--schema", schema)
    assert refused.returncode == 1
    assert "monthly_charges" in refused.stderr
    assert run(cli_env, "validate", str(good), "--schema", "nocolon").returncode == 2


def test_scan_model_refuses_pickle(tmp_path: Path, cli_env: dict[str, str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text("{}")
    assert run(cli_env, "scan-model", str(model)).returncode == 0
    (model / "model.pkl").write_bytes(pickle.dumps({"a": 1}))
    refused = run(cli_env, "scan-model", str(model))
    assert refused.returncode == 1
    assert "model.pkl" in refused.stderr


def test_scan_image_exit_codes(tmp_path: Path, cli_env: dict[str, str]) -> None:
    lock = PROJECT / "uv.lock"
    clean = build_serving_image(tmp_path / "clean.tar", lock_file=lock)
    vulnerable = build_serving_image(
        tmp_path / "vuln.tar", lock_file=lock, extra_python_packages={"PyYAML": "5.3"}
    )
    cache = tmp_path / "trivy-cache"
    empty = run(cli_env, "scan-image", str(clean.path), "--trivy-cache", str(cache))
    assert empty.returncode == 3, empty.stderr  # no DB: a tool failure, never a pass
    ok = run(cli_env, "scan-image", str(clean.path), "--trivy-cache", str(cache), "--seed-demo-db")
    assert ok.returncode == 0, ok.stderr
    assert "PASSED" in ok.stdout
    refused = run(cli_env, "scan-image", str(vulnerable.path), "--trivy-cache", str(cache))
    assert refused.returncode == 1
    assert "CVE-2020-14343" in refused.stderr
    assert run(
        cli_env, "scan-image", str(tmp_path / "missing.tar"), "--trivy-cache", str(cache)
    ).returncode in (2, 3)


def test_bad_policy_file_is_bad_input(tmp_path: Path, cli_env: dict[str, str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("scan:\n  fail_on: []\n")
    model = tmp_path / "m"
    model.mkdir()
    (model / "a.json").write_text("{}")
    proc = run({**cli_env, "SECMLOPS_POLICY": str(policy)}, "scan-image", str(model / "a.json"))
    assert proc.returncode == 2
    assert "fail_on" in proc.stderr
    policy.write_text("scan:\n  fail_on: [HIGH]\nunknown_knob: 1\n")
    proc = run({**cli_env, "SECMLOPS_POLICY": str(policy)}, "scan-image", str(model / "a.json"))
    assert proc.returncode == 2
    assert "unknown_knob" in proc.stderr


def test_keygen_creates_role_and_approver_keys_once(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    keys = tmp_path / "keys"
    first = run(cli_env, "keygen", "--keys", str(keys), "--approver", "alice")
    assert first.returncode == 0, first.stderr
    for name in ("model-signer", "attestor", "gate", "approvers/alice"):
        assert (keys / f"{name}.pem").stat().st_mode & 0o777 == 0o600
        assert (keys / f"{name}.pub").is_file()
    before = (keys / "attestor.pem").read_bytes()
    again = run(cli_env, "keygen", "--keys", str(keys))
    assert again.returncode == 0 and "already exist" in again.stdout
    assert (keys / "attestor.pem").read_bytes() == before
    assert run(cli_env, "keygen", "--keys", str(keys), "--approver", "Not Valid").returncode == 2


def test_prefect_start_failure_says_what_to_do(tmp_path: Path) -> None:
    """A local Prefect API that does not come up is exit 3 with the setting to raise."""
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "1",
    }
    proc = subprocess.run(
        [str(SECMLOPS), "run", "--approve-as", "demo-approver"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "Prefect's local API server did not start within 1 s" in proc.stderr
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in proc.stderr
    assert not (tmp_path / "home" / "registry").exists()
