"""Issue 8 attack 2: key custody.

Old behaviour: every role key and every approver key sat unencrypted in one directory, and
each role trusted the ``.pub`` file next to it. Anyone with the checkout could approve as
anyone or re-sign a whole evidence chain; holding two approver identities (or an approver
and a role key) defeated separation of duties; encrypted PEM keys were refused ("is not an
unencrypted PEM private key"). Now: a trust root lists the accepted public keys per role and
approver (one key for two duties is refused), role keys may be passphrase-encrypted PEM
files or AWS KMS keys, an approver's private key stays on the approver's machine, and demo
keys are marked so a production policy can refuse them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from secmlops.controls.approval import ApprovalPolicy
from secmlops.deploy import promote_to_stage, record_approval
from secmlops.errors import ControlRefused
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.signers import KmsSigner, write_private_key
from secmlops.evidence.statements import (
    generate_keypair,
    key_id,
    load_private_key,
    sign_statement,
    verify_bundle,
)
from secmlops.gate import verify_release
from secmlops.operations import verify_stage
from secmlops.registry.models import parse_json_object
from secmlops.registry.stores import LocalRegistry
from tests.integration import deploy_world
from tests.integration.deploy_world import World, make_world
from tests.unit import test_predicates as writers

SECMLOPS = Path(sys.executable).parent / "secmlops"
PASSPHRASE = "tr0ub4dor&3"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no terminal to prompt on (a passphrase must come from env or file)."""
    return subprocess.run(
        [str(SECMLOPS), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path, LocalRegistry(tmp_path / "registry"))


def _site_env(world: World) -> dict[str, str]:
    """The CLI pointed at the world's registry, keys and (owner-signed) policy."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("SECMLOPS_") or key.startswith("AWS_"))
    }
    env |= {
        "SECMLOPS_HOME": str(world.root / "home"),
        "SECMLOPS_KEYS": str(world.keys.root),
        "SECMLOPS_REGISTRY": str(world.root / "registry"),
        "SECMLOPS_POLICY": str(world.policy_file()),
    }
    signed = run(env, "policy", "sign", "--days", "30")
    assert signed.returncode == 0, signed.stderr
    return env


def _encrypt_in_place(path: Path) -> None:
    key = load_private_key(path)
    path.unlink()
    write_private_key(path, key, PASSPHRASE.encode())
    assert b"ENCRYPTED" in path.read_bytes()


def test_encrypted_role_keys_sign_with_a_passphrase_from_env_or_file(world: World) -> None:
    env = _site_env(world)
    version = world.register()
    gate_pem = world.keys.root / "gate-encrypted.pem"
    world.keys.private("gate").rename(gate_pem)  # the unencrypted file is gone
    _encrypt_in_place(gate_pem)
    env["SECMLOPS_GATE_SIGNER"] = f"file:{gate_pem}"
    promote = ("promote", "churn", version, "--stage", "staging", "--approve-as", "demo-approver")

    missing = run(env, *promote)
    assert missing.returncode == 2, missing.stderr
    assert f"{gate_pem} is encrypted and no passphrase was given" in missing.stderr
    assert "SECMLOPS_GATE_KEY_PASSPHRASE" in missing.stderr

    wrong = run({**env, "SECMLOPS_GATE_KEY_PASSPHRASE": "guess"}, *promote)
    assert wrong.returncode == 2, wrong.stderr
    assert f"wrong passphrase for {gate_pem}" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    ok = run({**env, "SECMLOPS_GATE_KEY_PASSPHRASE": PASSPHRASE}, *promote)
    assert ok.returncode == 0, ok.stderr
    pointer, _ = world.models.read_pointer("staging")
    assert pointer is not None and pointer.version == version

    # The passphrase from a file (shared variable), for the production promotion.
    world.smoke_test(version, pointer.model_digest)
    secret = world.root / "gate.passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    production = (*promote[:4], "production", *promote[5:])
    ok = run({**env, "SECMLOPS_KEY_PASSPHRASE_FILE": str(secret)}, *production)
    assert ok.returncode == 0, ok.stderr
    verified = run({**env, "SECMLOPS_GATE_KEY_PASSPHRASE": "guess"}, "verify-stage", "churn")
    assert verified.returncode == 0, verified.stderr  # verifying needs no private key


# --- AWS KMS (moto_server over HTTP) -------------------------------------------------------


@pytest.fixture
def kms_key(s3_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An ECC_NIST_P256 SIGN_VERIFY key on the session's moto_server, by alias."""
    monkeypatch.setenv("SECMLOPS_KMS_ENDPOINT_URL", s3_endpoint)
    kms = boto3.client("kms", endpoint_url=s3_endpoint)
    created = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    alias = f"alias/secmlops-attestor-{created['KeyMetadata']['KeyId'][:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=created["KeyMetadata"]["KeyId"])
    yield alias


def test_a_kms_attestor_signs_a_release_that_verifies_through_the_trust_root(
    world: World, kms_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "SECMLOPS_HOME": str(world.root / "home")}
    added = run(
        env, "--keys", str(world.keys.root), "trust", "add-key", "attestor", f"kms:{kms_key}"
    )
    assert added.returncode == 0, added.stderr
    monkeypatch.setenv("SECMLOPS_ATTESTOR_SIGNER", f"kms:{kms_key}")
    signer = world.keys.signer("attestor")
    assert isinstance(signer, KmsSigner)
    assert signer.key_id != key_id(load_private_key(world.keys.private("attestor")).public_key())

    statement = writers._data_pull()
    verified = verify_bundle(sign_statement(statement, signer), world.keys.trusted("attestor"))
    assert verified.signer == "attestor" and verified.statement == statement
    assert verified.key_id == signer.key_id

    # A whole release signed in KMS passes the gate, which holds no attestor private key.
    attestor_file = world.keys.private("attestor")
    real_loader = load_private_key

    def attestor_in_kms(path: Path, **kwargs: object) -> object:
        return world.keys.signer("attestor") if path == attestor_file else real_loader(path)

    monkeypatch.setattr(deploy_world, "load_private_key", attestor_in_kms)
    version = world.register()
    release = world.models.store.read(f"{world.models.evidence_prefix(version)}/release.json")
    hint = parse_json_object(release, "release")["verificationMaterial"]["publicKey"]["hint"]
    assert hint == signer.key_id
    assert world.to_production(version).pointer.version == version


def test_a_kms_key_of_the_wrong_kind_is_bad_input(
    s3_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECMLOPS_KMS_ENDPOINT_URL", s3_endpoint)
    kms = boto3.client("kms", endpoint_url=s3_endpoint)
    rsa = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    from secmlops.errors import InputError
    from secmlops.evidence.signers import open_signer

    with pytest.raises(InputError, match="not ECC_NIST_P256"):
        open_signer(f"kms:{rsa}")
    with pytest.raises(InputError, match="NotFoundException"):
        open_signer("kms:alias/does-not-exist")


# --- one key, two duties -------------------------------------------------------------------


def test_roles_sharing_one_key_are_refused(world: World) -> None:
    env = {**os.environ, "SECMLOPS_HOME": str(world.root / "home")}
    keys = str(world.keys.root)
    shared = run(
        env, "--keys", keys, "trust", "add-key", "approver:mallory", str(world.keys.public("gate"))
    )
    assert shared.returncode == 2
    assert "listed for role gate and for approver mallory" in shared.stderr
    second = world.keys.approver_public("demo-approver")
    twice = run(env, "--keys", keys, "trust", "add-key", "approver:mallory", str(second))
    assert twice.returncode == 2
    assert "approver demo-approver and for approver mallory" in twice.stderr
    # A hand-edited trust root that gives the gate the attestor's key is refused on load.
    raw = yaml.safe_load(world.keys.trust_root_file.read_text())
    raw["roles"]["gate"] = raw["roles"]["attestor"]
    world.keys.trust_root_file.write_text(yaml.safe_dump(raw))
    shown = run(env, "--keys", keys, "trust", "show")
    assert shown.returncode == 2
    assert "listed for role attestor and for role gate" in shown.stderr


# --- approvers keep their own keys ---------------------------------------------------------


def test_the_gate_verifies_an_approval_with_only_the_approvers_public_key(world: World) -> None:
    policy = world.policy.model_copy(
        update={
            "approval": ApprovalPolicy(approvers={"staging": ("alice",), "production": ("alice",)})
        }
    )
    # Alice's laptop: her private key, and a copy of the site's (public) trust root.
    laptop = world.root / "alice-laptop"
    generate_keypair(laptop / "approvers" / "alice.pem", laptop / "approvers" / "alice.pub")
    env = {**os.environ, "SECMLOPS_HOME": str(world.root / "home")}
    added = run(
        env,
        "--keys",
        str(world.keys.root),
        "trust",
        "add-key",
        "approver:alice",
        str(laptop / "approvers" / "alice.pub"),
    )
    assert added.returncode == 0, added.stderr
    site_root = laptop / "trust-root.yaml"
    site_root.write_text(world.keys.trust_root_file.read_text())
    alices = KeyDirectory(laptop, trust_root_path=site_root)
    assert not world.keys.approver_private("alice").exists()

    version = world.register()
    record_approval(
        world.models, version, "staging", keys=alices, policy=policy, approve_as="alice"
    )
    promoted = promote_to_stage(
        world.models,
        version,
        "staging",
        keys=world.keys,
        policy=policy,
        actor="ops",
        seen=world.seen,
    )
    assert promoted.pointer.version == version

    # Someone else's key named "alice" does not count: the trust root decides, not the name.
    other = world.register()
    mallory = world.root / "mallory"
    generate_keypair(mallory / "approvers" / "alice.pem", mallory / "approvers" / "alice.pub")
    record_approval(
        world.models,
        other,
        "staging",
        policy=policy,
        approve_as="alice",
        keys=KeyDirectory(mallory, trust_root_path=site_root),
    )
    with pytest.raises(ControlRefused, match="approval"):
        promote_to_stage(
            world.models,
            other,
            "staging",
            keys=world.keys,
            policy=policy,
            actor="ops",
            seen=world.seen,
        )


# --- stolen demo keys ----------------------------------------------------------------------


def test_a_chain_forged_with_stolen_demo_keys_is_refused_under_a_production_policy(
    world: World,
) -> None:
    """The forged chain (attestor-signed release, gate-signed VSA, approver-signed approval)
    verifies with the demo trust root; every key that signed it is a demo key, which a
    production policy refuses (``GatePolicy.require_key_allowed``, engineer B's check, called
    by the gate for every signature it accepts)."""
    version = world.register()
    world.to_production(version)
    demo = world.keys.demo_key_ids()
    signed_with = set()
    for key in world.models.evidence_keys(version):
        bundle = parse_json_object(world.models.store.read(key), key)
        signed_with.add(bundle["verificationMaterial"]["publicKey"]["hint"])
    assert signed_with and signed_with <= demo
    production = world.policy.model_copy(update={"environment": "production"})
    for kid in signed_with:
        with pytest.raises(ControlRefused, match="production policy does not accept"):
            production.require_key_allowed(world.keys, kid, where="forged chain")
    # And the readers apply it: the gate, and verify-stage (the gate-signed pointer too).
    with pytest.raises(ControlRefused, match="production policy does not accept"):
        verify_release(world.models, version, "production", keys=world.keys, policy=production)
    with pytest.raises(ControlRefused, match="production policy does not accept"):
        verify_stage(world.models, "production", keys=world.keys, policy=production)
    # A site's own key (not demo) is accepted.
    site = world.root / "site"
    generate_keypair(site / "gate.pem", site / "gate.pub")
    world.keys.trust_root().with_key(
        "gate", load_private_key(site / "gate.pem").public_key()
    ).save()
    site_kid = key_id(load_private_key(site / "gate.pem").public_key())
    assert site_kid not in world.keys.demo_key_ids()
    production.require_key_allowed(world.keys, site_kid, where="site key")
