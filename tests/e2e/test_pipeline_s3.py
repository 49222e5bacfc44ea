"""The same pipeline against an S3 registry (moto_server over HTTP on 127.0.0.1), via the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3

from secmlops.registry.models import StagePointer, parse_pointer

SECMLOPS = Path(sys.executable).parent / "secmlops"
MODEL = "churn-classifier"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SECMLOPS), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_pipeline_on_s3_then_gate_refuses_a_tampered_object(
    s3_bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SECMLOPS_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "SECMLOPS_REGISTRY": f"s3://{s3_bucket}/registry",
        "SECMLOPS_S3_ENDPOINT_URL": s3_endpoint,
    }
    run = _cli(env, "run", "--approve-as", "demo-approver", "--staging-only", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    prefix = f"registry/{MODEL}"

    def pointer(stage: str) -> StagePointer:
        key = f"{prefix}/stages/{stage}.json"
        return parse_pointer(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read(), key)

    assert pointer("staging").version == "v1"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]]
    assert f"{prefix}/versions/v1/model.sig" in keys
    assert f"{prefix}/versions/v1/evidence/release.json" in keys
    assert not any(k.startswith(f"{prefix}/stages/production") for k in keys)

    promote = _cli(
        env, "promote", MODEL, "v1", "--stage", "production", "--approve-as", "demo-approver"
    )
    assert promote.returncode == 0, promote.stderr
    assert pointer("production").version == "v1"
    report = _cli(env, "evidence", MODEL, "v1", "--json")
    assert report.returncode == 0 and json.loads(report.stdout)["all_verified"] is True

    # Someone with bucket write access swaps the model weights: the gate must refuse.
    weights = f"{prefix}/versions/v1/model/model.safetensors"
    data = bytearray(s3.get_object(Bucket=s3_bucket, Key=weights)["Body"].read())
    data[-1] ^= 0x01
    s3.put_object(Bucket=s3_bucket, Key=weights, Body=bytes(data))
    before = pointer("production")
    again = _cli(env, "promote", MODEL, "v1", "--stage", "production")
    assert again.returncode == 1, again.stderr
    assert "model-signature" in again.stderr
    after = pointer("production")
    assert after == before and after.sha256 == before.sha256  # the same stored bytes
