"""Issue 8 attack 3: the policy is not pinned.

Old behaviour (before issue 8): ``--policy``/``SECMLOPS_POLICY`` swapped the gate policy per
command. A file naming ``mallory`` as approver with ``min_smoke_accuracy: 0`` promoted to
production (exit 0), ``verify-stage`` under the normal policy passed afterwards, the VSA
recorded a digest nothing checked, and an empty policy file silently meant built-in defaults.

Now the gate runs only under a policy whose exact bytes a ``policy-owner`` key of the trust
root signed, unexpired: an unsigned, edited, expired, wrongly signed or empty policy is
refused (exit 1) saying how to sign it; only the embedded demo signs its own policy, saying
so, and keeps that signature out of the checkout. Real keys, a real local registry with
versions that pass the gate (``deploy_world``), the real ``secmlops`` CLI.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from secmlops.errors import ControlRefused, InputError
from secmlops.evidence.keys import KeyDirectory
from secmlops.evidence.statements import generate_keypair, load_private_key, sign_statement
from secmlops.evidence.trust_root import TrustRoot
from secmlops.gate import GatePolicy
from secmlops.policy import (
    PolicyRefusal,
    demo_signature_path,
    load_gate_policy,
    policy_drift,
    policy_statement,
    read_policy,
    sign_policy,
    vsa_policy_digest,
)
from secmlops.registry.stores import LocalRegistry
from tests.conftest import PROJECT_POLICY, sign_site_policy
from tests.integration.deploy_world import MODEL, World, make_world

SECMLOPS = Path(sys.executable).parent / "secmlops"
SIGN_IT = "secmlops policy sign"


@dataclasses.dataclass
class Site:
    world: World
    env: dict[str, str]
    policy: Path  # the site's signed policy (the one the world passes under)
    v2: str

    def cli(self, *args: str, policy: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "SECMLOPS_POLICY": str(policy or self.policy)}
        return subprocess.run(
            [str(SECMLOPS), *args], env=env, capture_output=True, text=True, timeout=300
        )

    def production(self) -> str:
        pointer, _ = self.world.models.read_pointer("production")
        assert pointer is not None
        return pointer.version


def _clean_env(**changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECMLOPS_")}
    return {**env, **changes}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """Site keys (``SECMLOPS_KEYS``), v1 in production under the signed site policy, v2
    registered and not promoted."""
    root = tmp_path_factory.mktemp("site")
    world = make_world(root, LocalRegistry(root / "registry"))
    v1 = world.register()
    world.to_production(v1)
    v2 = world.register()
    policy = sign_site_policy(world.policy_file(), world.keys.root)
    env = _clean_env(
        SECMLOPS_HOME=str(root / "home"),
        SECMLOPS_KEYS=str(world.keys.root),
        SECMLOPS_REGISTRY=str(root / "registry"),
    )
    return Site(world, env, policy, v2)


def _mallory_policy(site: Site, tmp_path: Path) -> Path:
    data = yaml.safe_load(site.policy.read_text())
    data["approval"]["approvers"] = {"staging": ["mallory"], "production": ["mallory"]}
    data["min_smoke_accuracy"] = 0
    path = tmp_path / "mallory-policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]


def test_signed_site_policy_is_in_force(site: Site) -> None:
    """The baseline: under the owner's signed policy, verify-stage passes."""
    proc = site.cli("verify-stage", MODEL, "--stage", "production")
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = site.cli("policy", "show")
    assert shown.returncode == 0, shown.stderr
    assert "verifies:    yes" in shown.stdout


def test_unsigned_weakened_policy_is_refused_by_every_command(site: Site, tmp_path: Path) -> None:
    """issue 8 attack 3: mallory's unsigned policy (mallory approves, smoke floor 0) used to
    promote to production; now every command refuses it before doing anything."""
    mallory = _mallory_policy(site, tmp_path)
    # mallory holds her own approver key on the operator's machine: still refused.
    keys_dir = Path(site.env["SECMLOPS_KEYS"])
    generate_keypair(keys_dir / "approvers" / "mallory.pem", keys_dir / "approvers" / "mallory.pub")
    before = sorted(p.name for p in (site.world.root / "registry").rglob("*"))
    commands = [
        ("promote", MODEL, site.v2, "--stage", "staging", "--approve-as", "mallory"),
        ("promote", MODEL, site.v2, "--stage", "production"),
        ("rollback", MODEL, "--stage", "production"),
        ("verify-stage", MODEL, "--stage", "production"),
        ("run", "--approve-as", "mallory"),
        ("scan-image", str(tmp_path)),
        ("policy", "show"),
    ]
    for command in commands:
        proc = site.cli(*command, policy=mallory)
        _refused(proc, "not signed by a policy owner", SIGN_IT, str(mallory))
    assert site.production() != site.v2
    assert sorted(p.name for p in (site.world.root / "registry").rglob("*")) == before
    assert not mallory.with_name(mallory.name + ".sig").exists()  # never signed for a site
    assert not (Path(site.env["SECMLOPS_HOME"]) / "policy-signatures").exists()


def test_edited_signed_policy_is_refused(site: Site, tmp_path: Path) -> None:
    """Changing one byte of a signed policy (here: the smoke floor) breaks its signature."""
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(site.policy.read_bytes())
    sig = policy.with_name("policy.yaml.sig")
    sig.write_bytes(site.policy.with_name(site.policy.name + ".sig").read_bytes())
    assert site.cli("policy", "show", policy=policy).returncode == 0
    policy.write_text(
        policy.read_text().replace("min_smoke_accuracy: 0.6", "min_smoke_accuracy: 0")
    )
    proc = site.cli("verify-stage", MODEL, "--stage", "production", policy=policy)
    _refused(proc, "changed after it was signed", "re-sign it", SIGN_IT)
    assert "policy_changed_after_signing" in proc.stderr


def test_expired_policy_is_refused(site: Site, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    policy.write_text(
        site.policy.read_text().replace(
            f"expires: {read_policy(site.policy).policy.expires}", f"expires: {yesterday}"
        )
    )
    # Signed while it was still valid (sign_policy itself refuses a past expiry).
    owner = load_private_key(site.world.keys.private("policy-owner"))
    bundle = sign_statement(policy_statement(read_policy(policy), owner="site"), owner)
    policy.with_name("policy.yaml.sig").write_text(json.dumps(bundle))
    proc = site.cli("promote", MODEL, site.v2, "--stage", "staging", policy=policy)
    _refused(proc, f"expired on {yesterday}", SIGN_IT, "--days")
    with pytest.raises(InputError, match="in the past"):
        sign_policy(policy, owner, expires=yesterday)


def test_policy_signed_by_another_role_is_refused(site: Site, tmp_path: Path) -> None:
    """The gate's (or any non-owner) key cannot sign the policy."""
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(site.policy.read_bytes())
    sign_policy(policy, load_private_key(site.world.keys.private("gate")))
    proc = site.cli("rollback", MODEL, "--stage", "production", policy=policy)
    _refused(proc, "does not verify with a policy-owner key", "untrusted_policy_signer")


def test_site_policy_without_expiry_is_refused(site: Site, tmp_path: Path) -> None:
    """A site's policy must expire: ``policy sign`` refuses, and so does the gate."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        site.policy.read_text().replace(
            f"expires: {read_policy(site.policy).policy.expires}", "expires: null"
        )
    )
    proc = site.cli("policy", "sign", policy=policy)
    assert proc.returncode == 2 and "--days" in proc.stderr, proc.stderr
    owner = load_private_key(site.world.keys.private("policy-owner"))
    sign_policy(policy, owner, require_expiry=False)
    _refused(site.cli("verify-stage", MODEL, policy=policy), "has no `expires:`")


def test_empty_policy_file_is_refused(site: Site, tmp_path: Path) -> None:
    """issue 8 attack 3: an empty policy used to mean the built-in defaults."""
    policy = tmp_path / "empty.yaml"
    for text in ("", "# nothing here\n", "{}\n"):
        policy.write_text(text)
        proc = site.cli("verify-stage", MODEL, "--stage", "production", policy=policy)
        _refused(proc, "is empty", "empty_policy", SIGN_IT)
    # Demo or not: an empty file is never signed for you.
    demo = _clean_env(SECMLOPS_HOME=str(tmp_path / "demo"), SECMLOPS_POLICY=str(policy))
    proc = subprocess.run(
        [str(SECMLOPS), "promote", MODEL, "v1", "--stage", "staging"],
        env=demo,
        capture_output=True,
        text=True,
    )
    _refused(proc, "is empty")


def test_policy_sign_and_show(site: Site, tmp_path: Path) -> None:
    """``policy sign --days`` rewrites expires: and writes <policy>.sig; ``policy show``
    prints digest, signer, expiry, environment and whether it verifies."""
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(site.policy.read_bytes())
    signed = site.cli(
        "policy",
        "sign",
        "--days",
        "10",
        "--owner",
        "alice",
        "--key",
        str(site.world.keys.private("policy-owner")),
        policy=policy,
    )
    assert signed.returncode == 0, signed.stderr
    expires = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=10)).isoformat()
    assert f"expires: {expires}\n" in policy.read_text()
    assert policy.with_name("policy.yaml.sig").is_file()
    file = read_policy(policy)
    shown = site.cli("policy", "show", "--policy", str(policy))
    assert shown.returncode == 0, shown.stderr
    for line in (
        f"sha256:      {file.sha256}",
        "environment: demo",
        f"expires:     {expires}",
        "signed by:   alice with policy-owner key",
        "verifies:    yes",
    ):
        assert line in shown.stdout, shown.stdout
    as_json = json.loads(site.cli("policy", "show", "--json", policy=policy).stdout)
    assert as_json["verified"] is True and as_json["sha256"] == file.sha256
    policy.write_text(policy.read_text() + "# edited\n")
    shown = site.cli("policy", "show", policy=policy)
    assert shown.returncode == 1 and "verifies:    NO" in shown.stdout
    assert "changed after it was signed" in shown.stderr


def test_vsa_records_the_policy_and_verify_stage_flags_drift(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The VSA names the policy in force by the digest of the signed file (and its signer);
    a VSA issued under another policy is flagged, not refused: a re-signed policy must not
    strand a deployed version, which the gate re-judges under the policy in force anyway."""
    for var, value in {**site.env, "SECMLOPS_POLICY": str(site.policy)}.items():
        monkeypatch.setenv(var, value)
    policy = load_gate_policy()
    assert policy.source is not None and policy.digest == read_policy(site.policy).sha256
    descriptor = policy.descriptor("production")
    assert descriptor.digest == {"sha256": policy.digest}
    assert descriptor.annotations and descriptor.annotations["signer"] == "policy-owner"
    assert descriptor.annotations["signerKeyId"] == policy.source.key_id
    assert policy.audit_record()["sha256"] == policy.digest

    pointer, _ = site.world.models.read_pointer("production")
    assert pointer is not None
    # The world promoted under its in-code policy; the signed file is another policy.
    assert vsa_policy_digest(site.world.models, pointer) == site.world.policy.digest
    assert policy_drift(site.world.models, pointer, site.world.policy) is None
    warning = policy_drift(site.world.models, pointer, policy)
    assert warning is not None and str(site.policy) in warning and "re-judged" in warning


# --- the embedded demo -----------------------------------------------------------------------


def test_demo_signs_its_own_policy_and_says_so(tmp_path: Path) -> None:
    """Without site keys, an unsigned policy is signed with the demo owner key (a WARNING
    naming the file), the signature kept in the state home, never beside the policy; an
    edit afterwards is refused as with site keys, until it is re-signed."""
    home = tmp_path / "home"
    policy = tmp_path / "checkout" / "secmlops-policy.yaml"
    policy.parent.mkdir()
    policy.write_bytes(PROJECT_POLICY.read_bytes())
    env = _clean_env(SECMLOPS_HOME=str(home), SECMLOPS_POLICY=str(policy))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SECMLOPS), *args], env=env, capture_output=True, text=True)

    unsigned = cli("policy", "show")
    _refused(unsigned, "not signed", "signs it with its demo key on first use")
    promote = ("promote", MODEL, "v1", "--stage", "staging")
    first = cli(*promote)  # an empty registry: bad input, but only after the policy loaded
    assert "the embedded demo signed it with its demo policy-owner key" in first.stderr
    assert str(policy) in first.stderr and first.returncode == 2, first.stderr
    stored = demo_signature_path(policy, home)
    assert stored.is_file() and not list(policy.parent.glob("*.sig"))
    again = cli(*promote)
    assert "embedded demo signed it" not in again.stderr  # signed once
    shown = cli("policy", "show")
    assert shown.returncode == 0 and "signed by:   embedded demo" in shown.stdout

    policy.write_text(
        policy.read_text().replace("min_smoke_accuracy: 0.6", "min_smoke_accuracy: 0")
    )
    _refused(cli(*promote), "changed after it was signed", SIGN_IT)
    resigned = cli("policy", "sign")
    assert resigned.returncode == 0, resigned.stderr
    assert str(stored) in resigned.stdout and not list(policy.parent.glob("*.sig"))
    assert cli("policy", "show").returncode == 0


def test_demo_never_signs_a_production_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    text = PROJECT_POLICY.read_text()
    policy.write_text(
        text.replace("environment: demo", "environment: production")
        .replace("unsafe_allow_curated_db: true", "unsafe_allow_curated_db: false")
        .replace("max_approval_age_days: null", "max_approval_age_days: 30")
    )
    for var in [k for k in os.environ if k.startswith("SECMLOPS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SECMLOPS_HOME", str(tmp_path / "home"))
    with pytest.raises(ControlRefused, match="never signed automatically") as err:
        load_gate_policy(policy)
    assert err.value.reason is PolicyRefusal.DEMO_KEY


# --- production ------------------------------------------------------------------------------


def _production_text(expires: dt.date) -> str:
    return (
        PROJECT_POLICY.read_text()
        .replace("environment: demo", "environment: production")
        .replace("expires: null", f"expires: {expires}")
        .replace("unsafe_allow_curated_db: true", "unsafe_allow_curated_db: false")
        .replace("max_approval_age_days: null", "max_approval_age_days: 30")
    )


def test_production_policy_refuses_demo_keys(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A production policy signed by a key the trust root marks demo is refused; signed by
    the site's (non-demo) owner key it loads, and the gate's check then refuses evidence
    signed by a demo key."""
    keys = tmp_path / "keys"
    shutil.copytree(site.world.keys.root, keys)
    for var in [k for k in os.environ if k.startswith("SECMLOPS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("SECMLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SECMLOPS_KEYS", str(keys))
    policy = tmp_path / "policy.yaml"
    policy.write_text(_production_text(dt.datetime.now(dt.UTC).date() + dt.timedelta(days=5)))
    owner = load_private_key(keys / "policy-owner.pem")
    sign_policy(policy, owner)
    with pytest.raises(ControlRefused, match="embedded demo's key") as err:
        load_gate_policy(policy)  # every key keygen/ensure made is demo: true
    assert err.value.reason is PolicyRefusal.DEMO_KEY

    root = TrustRoot.load(keys / "trust-root.yaml")
    site_owner = [
        dataclasses.replace(e, demo=False) if e.subject == "policy-owner" else e
        for e in root.entries
    ]
    TrustRoot(root.path, tuple(site_owner)).save()
    loaded = load_gate_policy(policy)
    assert loaded.environment == "production" and loaded.source is not None
    directory = KeyDirectory(keys)
    attestor = directory.trusted("attestor")
    (attestor_id,) = attestor.keys
    with pytest.raises(ControlRefused, match="production policy does not accept"):
        loaded.require_key_allowed(directory, attestor_id, where="release.json")
    GatePolicy().require_key_allowed(directory, attestor_id, where="release.json")  # demo: ok


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            ("unsafe_allow_curated_db: false", "unsafe_allow_curated_db: true"),
            "unsafe_allow_curated_db",
        ),
    ],
)
def test_production_policy_must_be_strict(
    tmp_path: Path, change: tuple[str, str], field: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(_production_text(dt.date(2099, 1, 1)).replace(*change))
    with pytest.raises(InputError, match=field):
        read_policy(policy)


def test_policy_owner_signs_in_kms(
    site: Site, tmp_path: Path, s3_endpoint: str, aws_env: None
) -> None:
    """The owner's key may live in AWS KMS (moto_server over HTTP): `policy sign --signer
    kms:ALIAS` signs, the trust root lists the KMS key's public key, and the gate accepts it."""
    import boto3

    kms = boto3.client("kms", endpoint_url=s3_endpoint)
    created = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    alias = f"alias/policy-owner-{created['KeyId'][:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=created["KeyId"])
    keys = tmp_path / "keys"
    shutil.copytree(site.world.keys.root, keys)
    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env = {
        **site.env,
        **aws,
        "AWS_DEFAULT_REGION": "us-east-1",
        "SECMLOPS_KEYS": str(keys),
        "SECMLOPS_KMS_ENDPOINT_URL": s3_endpoint,
    }
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(site.policy.read_bytes())
    site = dataclasses.replace(site, env=env)
    signed = site.cli("policy", "sign", "--signer", f"kms:{alias}", policy=policy)
    assert signed.returncode == 0, signed.stderr
    assert "WARNING: the gate will not accept it" in signed.stderr  # not in the trust root yet
    _refused(site.cli("policy", "show", policy=policy), "untrusted")
    added = site.cli("trust", "add-key", "policy-owner", f"kms:{alias}")
    assert added.returncode == 0, added.stderr
    shown = site.cli("policy", "show", policy=policy)
    assert shown.returncode == 0, shown.stderr
    assert site.cli("verify-stage", MODEL, policy=policy).returncode == 0
