"""The trust root: which public keys each role and each approver may sign with, and when.

One YAML file, the only place verification takes keys from (private keys are never needed
to verify anything)::

    version: 1
    roles:
      gate:
        - public_key: |
            -----BEGIN PUBLIC KEY-----
            ...
          key_id: 3f2a...            # sha256 of the DER public key (checked if given)
          not_before: 2025-01-01T00:00:00Z   # optional
          not_after: 2026-01-01T00:00:00Z    # optional: retired after this
          demo: false
    approvers:
      alice:
        - public_key: |
            ...

The ``model-signer`` role may also name who signs models by certificate or keyless
(issue 10), beside or instead of public keys; the deploy gate verifies a model signature with
whichever of them the role lists::

      model-signer:
        - ca_certificate: |              # a CA of the site's PKI: a leaf it issued (with
            -----BEGIN CERTIFICATE-----  # digitalSignature and codeSigning) signs models,
            ...                          # checked at the release's signed time
          fingerprint: 9c1e...           # sha256 of the DER certificate (checked if given)
          not_after: 2027-01-01T00:00:00Z
        - identity: https://github.com/org/repo/.github/workflows/train.yml@refs/heads/main
          issuer: https://token.actions.githubusercontent.com
          trust_config: sigstore-production  # or a client trust config file (private instance)
          require_rekor: true                # the signing time must be witnessed by Rekor

Roles: ``policy-owner`` (signs the policy), ``attestor`` (build evidence), ``model-signer``
(the model), ``gate`` (VSAs, stage pointers). Several keys per role may be valid at once
(rotation: add the new key, then retire the old one with ``not_after``); a signature counts
when its key was valid at the statement's signed time. One key listed for two roles, for a
role and an approver, or for two approvers is refused: that is one person or machine
holding two duties.

Location: ``SECMLOPS_TRUST_ROOT``, default ``<keys>/trust-root.yaml``. The embedded demo
writes it from the demo keys it generates (each ``demo: true``; a production policy refuses
those); a site provides its own and it is never generated.

Example::

    root = TrustRoot.load(Path("trust-root.yaml"))
    statement = verify_bundle(bundle, root.trusted("gate"))
    root.with_key("gate", new_public).retire("gate", old_id, at=now).save()
    for option in root.model_signer().valid_at(release_time).signer_trusts():
        print(option.method, option.trust.methods)   # key / certificate / sigstore
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.errors import InputError
from secmlops.evidence.statements import (
    KeyWindow,
    PublicKey,
    TrustedKeys,
    format_time,
    key_id,
    parse_time,
)

if TYPE_CHECKING:
    from secmlops.controls.signer_trust import SignerTrust

#: The pipeline roles a trust root lists keys for.
TRUST_ROLES = ("policy-owner", "attestor", "model-signer", "gate")
TRUST_ROOT_FILE = "trust-root.yaml"
APPROVER_PREFIX = "approver:"
_FIELDS = {"public_key", "key_id", "not_before", "not_after", "demo", "source"}
#: The role whose entries may be CA certificates and Sigstore identities besides keys.
MODEL_SIGNER = "model-signer"
_CA_FIELDS = {"ca_certificate", "fingerprint", "not_before", "not_after", "demo", "source"}
_IDENTITY_FIELDS = {
    "identity",
    "issuer",
    "trust_config",
    "require_rekor",
    "not_before",
    "not_after",
}
#: ``trust_config`` naming the public-good Sigstore instance: the ``trusted_root.json`` pinned
#: inside the installed ``sigstore`` package (never fetched).
SIGSTORE_PRODUCTION = "sigstore-production"
#: The signing methods a model-signer entry stands for (as ``sources.signing.method`` names them).
SIGNING_METHODS = ("key", "certificate", "sigstore")


def subject_label(subject: str) -> str:
    """How messages name a subject: ``role gate`` / ``approver alice``."""
    if subject.startswith(APPROVER_PREFIX):
        return f"approver {subject[len(APPROVER_PREFIX) :]}"
    return f"role {subject}"


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True)
class TrustEntry:
    """One accepted public key of one subject (a role, or ``approver:NAME``)."""

    subject: str
    public_key: PublicKey
    window: KeyWindow = field(default_factory=KeyWindow)
    demo: bool = False
    #: Where the key is held, for people (``kms:alias/x``, a file name); never trusted.
    source: str = ""

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def valid_at(self, when: dt.datetime) -> bool:
        return self.window.contains(when)

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key_id": self.key_id, "public_key": public_pem(self.public_key)}
        if self.window.not_before:
            out["not_before"] = format_time(self.window.not_before)
        if self.window.not_after:
            out["not_after"] = format_time(self.window.not_after)
        out["demo"] = self.demo
        if self.source:
            out["source"] = self.source
        return out


def _bad(path: Path, what: str, fix: str = "") -> InputError:
    return InputError(
        f"trust root {path}: {what}",
        where=str(path),
        fix=fix or "correct the trust root (`secmlops trust show` lists what it holds)",
    )


def _parse_entry(path: Path, subject: str, i: int, raw: Any) -> TrustEntry:
    where = f"{subject_label(subject)} key #{i + 1}"
    if not isinstance(raw, Mapping):
        raise _bad(path, f"{where} is not a mapping")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise _bad(path, f"{where} has unknown fields {sorted(unknown)}")
    pem = raw.get("public_key")
    if not isinstance(pem, str):
        raise _bad(path, f"{where} has no public_key (a PEM public key)")
    try:
        public = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise _bad(path, f"{where}: public_key is not a PEM public key ({exc})") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, ec.SECP256R1
    ):
        raise _bad(path, f"{where}: public_key is not an ECDSA P-256 key")
    given = raw.get("key_id")
    if given is not None and given != key_id(public):
        raise _bad(path, f"{where}: key_id {given} is not the id of its public_key")
    window = _parse_window(path, where, raw)
    demo = _parse_flag(path, where, raw, "demo", default=False)
    source = raw.get("source", "")
    return TrustEntry(subject, public, window, demo, str(source or ""))


def _parse_window(path: Path, where: str, raw: Mapping[str, Any]) -> KeyWindow:
    bounds: dict[str, dt.datetime | None] = {}
    for name in ("not_before", "not_after"):
        value = raw.get(name)
        bounds[name] = None if value is None else parse_time(value)
        if value is not None and bounds[name] is None:
            raise _bad(path, f"{where}: {name} {value!r} is not an ISO 8601 time")
    window = KeyWindow(bounds["not_before"], bounds["not_after"])
    if window.not_before and window.not_after and window.not_after < window.not_before:
        raise _bad(path, f"{where}: not_after is before not_before")
    return window


def _parse_flag(
    path: Path, where: str, raw: Mapping[str, Any], name: str, *, default: bool
) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise _bad(path, f"{where}: {name} must be true or false")
    return value


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """sha256 (hex) of the DER certificate: how the trust root and messages name a CA."""
    from secmlops._internal.digests import sha256_bytes

    return sha256_bytes(certificate.public_bytes(serialization.Encoding.DER))


def check_ca_certificate(certificate: x509.Certificate, *, where: str) -> None:
    """``ValueError`` unless ``certificate`` is a CA (basicConstraints CA:TRUE): a leaf is
    trusted through its issuer, never pinned as a CA."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound as exc:
        raise ValueError(f"{where} has no basicConstraints: it is not a CA certificate") from exc
    if not constraints.value.ca:
        raise ValueError(
            f"{where} is not a CA certificate (basicConstraints CA:FALSE); list the CA that "
            "issued it, or the signing key's public_key"
        )


@dataclass(frozen=True)
class CaCertificateEntry:
    """A CA certificate the model-signer role trusts: a model signed with a certificate
    chaining to it verifies (the leaf valid, and this entry's window open, at signing time)."""

    subject: str
    certificate: x509.Certificate
    window: KeyWindow = field(default_factory=KeyWindow)
    demo: bool = False
    source: str = ""

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.certificate)

    @property
    def name(self) -> str:
        """The CA's subject (RFC 4514), for messages."""
        return self.certificate.subject.rfc4514_string()

    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def valid_at(self, when: dt.datetime) -> bool:
        return self.window.contains(when)

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fingerprint": self.fingerprint, "ca_certificate": self.pem()}
        if self.window.not_before:
            out["not_before"] = format_time(self.window.not_before)
        if self.window.not_after:
            out["not_after"] = format_time(self.window.not_after)
        out["demo"] = self.demo
        if self.source:
            out["source"] = self.source
        return out


@dataclass(frozen=True)
class SigstoreIdentityEntry:
    """A Sigstore keyless signer the model-signer role trusts: the certificate identity (SAN)
    and OIDC issuer Fulcio put in the signing certificate, checked offline against
    ``trust_config`` (:data:`SIGSTORE_PRODUCTION` or a client trust config file)."""

    subject: str
    identity: str
    issuer: str
    trust_config: str = SIGSTORE_PRODUCTION
    require_rekor: bool = True
    window: KeyWindow = field(default_factory=KeyWindow)

    @property
    def label(self) -> str:
        return f"{self.identity} (issuer {self.issuer})"

    def trust_config_path(self) -> Path | None:
        """The client trust config file; ``None`` for :data:`SIGSTORE_PRODUCTION`."""
        return None if self.trust_config == SIGSTORE_PRODUCTION else Path(self.trust_config)

    def valid_at(self, when: dt.datetime) -> bool:
        return self.window.contains(when)

    def to_yaml(self, base: Path | None = None) -> dict[str, Any]:
        config = self.trust_config
        if base is not None and config != SIGSTORE_PRODUCTION:
            # Written back as it was given: relative to the trust root's folder when inside it.
            config_path = Path(config)
            if config_path.is_relative_to(base):
                config = config_path.relative_to(base).as_posix()
        out: dict[str, Any] = {
            "identity": self.identity,
            "issuer": self.issuer,
            "trust_config": config,
            "require_rekor": self.require_rekor,
        }
        if self.window.not_before:
            out["not_before"] = format_time(self.window.not_before)
        if self.window.not_after:
            out["not_after"] = format_time(self.window.not_after)
        return out


def _parse_ca(path: Path, subject: str, i: int, raw: Mapping[str, Any]) -> CaCertificateEntry:
    where = f"{subject_label(subject)} entry #{i + 1} (ca_certificate)"
    unknown = set(raw) - _CA_FIELDS
    if unknown:
        raise _bad(path, f"{where} has unknown fields {sorted(unknown)}")
    pem = raw.get("ca_certificate")
    if not isinstance(pem, str):
        raise _bad(path, f"{where}: ca_certificate is not a PEM certificate")
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise _bad(path, f"{where}: ca_certificate is not a PEM certificate ({exc})") from exc
    if len(certificates) != 1:
        raise _bad(
            path,
            f"{where}: ca_certificate holds {len(certificates)} certificates",
            "list each CA certificate as an entry of its own",
        )
    certificate = certificates[0]
    try:
        check_ca_certificate(certificate, where="ca_certificate")
    except ValueError as exc:
        raise _bad(path, f"{where}: {exc}") from exc
    entry = CaCertificateEntry(
        subject,
        certificate,
        _parse_window(path, where, raw),
        _parse_flag(path, where, raw, "demo", default=False),
        str(raw.get("source") or ""),
    )
    given = raw.get("fingerprint")
    if given is not None and given != entry.fingerprint:
        raise _bad(path, f"{where}: fingerprint {given} is not the sha256 of its certificate")
    return entry


def _parse_identity(
    path: Path, subject: str, i: int, raw: Mapping[str, Any]
) -> SigstoreIdentityEntry:
    where = f"{subject_label(subject)} entry #{i + 1} (identity)"
    unknown = set(raw) - _IDENTITY_FIELDS
    if unknown:
        raise _bad(path, f"{where} has unknown fields {sorted(unknown)}")
    identity, issuer = raw.get("identity"), raw.get("issuer")
    if not isinstance(identity, str) or not identity.strip() or identity != identity.strip():
        raise _bad(path, f"{where}: identity must be the certificate identity (a non-empty string)")
    if not isinstance(issuer, str) or not issuer.startswith("https://") or " " in issuer:
        raise _bad(
            path,
            f"{where}: issuer must be the OIDC issuer URL (https://...), got {issuer!r}",
        )
    config = raw.get("trust_config", SIGSTORE_PRODUCTION)
    if not isinstance(config, str) or not config:
        raise _bad(path, f"{where}: trust_config must be {SIGSTORE_PRODUCTION!r} or a file path")
    if config != SIGSTORE_PRODUCTION:
        config_path = Path(config)
        if not config_path.is_absolute():
            config_path = path.parent / config_path  # relative to the trust root's folder
        if not config_path.is_file():
            raise _bad(
                path,
                f"{where}: trust_config {config} is not a file",
                f"give the Sigstore client trust config (JSON) of the instance, or "
                f"{SIGSTORE_PRODUCTION!r} for the public-good instance",
            )
        config = str(config_path)
    return SigstoreIdentityEntry(
        subject,
        identity,
        issuer,
        config,
        _parse_flag(path, where, raw, "require_rekor", default=True),
        _parse_window(path, where, raw),
    )


@dataclass(frozen=True)
class ModelSignerTrust:
    """Who the model-signer role trusts: public keys, CA certificates, Sigstore identities."""

    path: Path
    keys: tuple[TrustEntry, ...] = ()
    certificates: tuple[CaCertificateEntry, ...] = ()
    identities: tuple[SigstoreIdentityEntry, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.keys or self.certificates or self.identities)

    @property
    def methods(self) -> tuple[str, ...]:
        """The signing methods this trust accepts, in :data:`SIGNING_METHODS` order."""
        present = {"key": self.keys, "certificate": self.certificates, "sigstore": self.identities}
        return tuple(m for m in SIGNING_METHODS if present[m])

    def valid_at(self, when: dt.datetime | None) -> ModelSignerTrust:
        """Only the entries whose window holds ``when`` (all of them for ``None``)."""
        if when is None:
            return self
        return replace(
            self,
            keys=tuple(e for e in self.keys if e.valid_at(when)),
            certificates=tuple(e for e in self.certificates if e.valid_at(when)),
            identities=tuple(e for e in self.identities if e.valid_at(when)),
        )

    def describe(self) -> str:
        """One line for messages: what is trusted, by method."""
        parts = []
        if self.keys:
            parts.append("keys " + ", ".join(e.key_id[:12] + "…" for e in self.keys))
        if self.certificates:
            parts.append("CAs " + ", ".join(e.name for e in self.certificates))
        if self.identities:
            parts.append("identities " + ", ".join(e.label for e in self.identities))
        return "; ".join(parts) or "nothing"

    def signer_trusts(self) -> list[TrustedModelSigner]:
        """This trust as :class:`~secmlops.controls.signer_trust.SignerTrust` objects to
        verify with: one for every key together, one per CA certificate and one per Sigstore
        identity (each with its own trust config), so whoever verified names its entry."""
        from secmlops.controls.signer_trust import SignerTrust
        from secmlops.controls.signer_trust import SigstoreIdentity as Identity

        source = f"{self.path}: roles.model-signer"
        out: list[TrustedModelSigner] = []
        if self.keys:
            keys = tuple(e.public_key for e in self.keys)
            out.append(TrustedModelSigner("key", SignerTrust(public_keys=keys, source=source)))
        for ca in self.certificates:
            trust = SignerTrust(ca_certificates=(ca.certificate,), source=source)
            out.append(TrustedModelSigner("certificate", trust, ca=ca))
        for who in self.identities:
            trust = SignerTrust(
                identities=(Identity(who.identity, who.issuer),),
                trust_config=who.trust_config_path(),
                require_rekor=who.require_rekor,
                source=source,
            )
            out.append(TrustedModelSigner("sigstore", trust, identity=who))
        return out


@dataclass(frozen=True)
class TrustedModelSigner:
    """One way a model signature may verify under the trust root: the model-signer keys
    (``method="key"``), one CA certificate, or one Sigstore identity, as the
    :class:`~secmlops.controls.signer_trust.SignerTrust` to verify it with."""

    method: str
    trust: SignerTrust
    ca: CaCertificateEntry | None = None
    identity: SigstoreIdentityEntry | None = None


@dataclass(frozen=True)
class TrustRoot:
    """The accepted public keys per role and per approver (see module docstring)."""

    path: Path
    entries: tuple[TrustEntry, ...] = ()
    #: The model-signer role's CA certificates and Sigstore identities (issue 10).
    certificates: tuple[CaCertificateEntry, ...] = ()
    identities: tuple[SigstoreIdentityEntry, ...] = ()

    def __post_init__(self) -> None:
        others = {e.subject for e in self.certificates} | {e.subject for e in self.identities}
        for subject in sorted(others - {MODEL_SIGNER}):
            raise InputError(
                f"{subject_label(subject)} lists a CA certificate or Sigstore identity: only "
                "the model-signer role may",
                where=str(self.path),
                fix="list public keys for every other role and approver",
            )
        fingerprints = [e.fingerprint for e in self.certificates]
        pairs = [(e.identity, e.issuer) for e in self.identities]
        for what, names in (("CA certificate", fingerprints), ("Sigstore identity", pairs)):
            if len(set(names)) != len(names):
                raise InputError(
                    f"one {what} is listed twice for the model-signer role",
                    where=str(self.path),
                    fix="list it once (one window per entry)",
                )
        seen: dict[str, str] = {}
        for entry in self.entries:
            other = seen.get(entry.key_id)
            if other is not None:
                raise InputError(
                    f"one key ({entry.key_id[:16]}…) is listed for {subject_label(other)} and "
                    f"for {subject_label(entry.subject)}"
                    + (" twice" if other == entry.subject else ""),
                    where=str(self.path),
                    fix="give each role and each approver a key of its own: one key holding "
                    "two duties defeats their separation",
                )
            seen[entry.key_id] = entry.subject

    # --- reading ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> TrustRoot:
        """Read and check the trust root at ``path``; ``InputError`` naming what is wrong."""
        import yaml

        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            raise InputError(
                f"no trust root at {path}",
                where=str(path),
                fix="provide the site's trust root (SECMLOPS_TRUST_ROOT, or trust-root.yaml "
                "in the key directory; `secmlops trust add-key ROLE PUB.pem` writes one), or "
                "run `secmlops keygen` for demo keys",
            ) from exc
        except OSError as exc:
            raise InputError(
                f"cannot read trust root {path}: {exc.strerror}", where=str(path)
            ) from exc
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise _bad(path, f"not YAML ({exc})") from exc
        if not isinstance(raw, Mapping):
            raise _bad(path, "is empty or not a mapping (version, roles, approvers)")
        unknown = set(raw) - {"version", "roles", "approvers"}
        if unknown or raw.get("version") != 1:
            raise _bad(path, f"needs version: 1 and only roles/approvers (got {sorted(raw)})")
        entries: list[TrustEntry] = []
        certificates: list[CaCertificateEntry] = []
        identities: list[SigstoreIdentityEntry] = []
        for section, prefix in (("roles", ""), ("approvers", APPROVER_PREFIX)):
            listed = raw.get(section) or {}
            if not isinstance(listed, Mapping):
                raise _bad(path, f"{section} is not a mapping of names to key lists")
            for name, keys in listed.items():
                subject = f"{prefix}{name}"
                _check_subject(subject, where=str(path))
                if not isinstance(keys, list):
                    raise _bad(path, f"{subject_label(subject)} is not a list of keys")
                if subject == MODEL_SIGNER and not keys:
                    raise _bad(
                        path,
                        "roles.model-signer lists nothing: no model signature could verify",
                        "list the model signer's public_key, the ca_certificate of the PKI "
                        "that issues its certificates, or its Sigstore identity and issuer",
                    )
                for i, k in enumerate(keys):
                    kind = _entry_kind(path, subject, i, k)
                    if kind == "ca_certificate":
                        certificates.append(_parse_ca(path, subject, i, k))
                    elif kind == "identity":
                        identities.append(_parse_identity(path, subject, i, k))
                    else:
                        entries.append(_parse_entry(path, subject, i, k))
        return cls(path, tuple(entries), tuple(certificates), tuple(identities))

    def subjects(self) -> list[str]:
        """Every subject with a key (or, for the model-signer, a CA or an identity), roles
        first (in :data:`TRUST_ROLES` order)."""
        present = {e.subject for e in self.entries} | {e.subject for e in self.certificates}
        present |= {e.subject for e in self.identities}
        roles = [r for r in TRUST_ROLES if r in present]
        return roles + sorted(s for s in present if s.startswith(APPROVER_PREFIX))

    def entries_for(self, subject: str) -> list[TrustEntry]:
        return [e for e in self.entries if e.subject == subject]

    def entry(self, kid: str) -> TrustEntry | None:
        """The entry of key id ``kid`` (each key belongs to one subject)."""
        return next((e for e in self.entries if e.key_id == kid), None)

    def trusted(self, role: str) -> TrustedKeys:
        """Role ``role``'s keys, each with its window; ``InputError`` if it lists none."""
        _check_subject(role, where=str(self.path))
        trusted = TrustedKeys()
        for entry in self.entries_for(role):
            trusted.add(role, entry.public_key, entry.window)
        if not trusted:
            raise InputError(
                f"trust root {self.path} lists no key for {subject_label(role)}",
                where=str(self.path),
                fix=f"add one: `secmlops trust add-key {role} PUB.pem`",
            )
        return trusted

    def model_signer(self) -> ModelSignerTrust:
        """Everyone the model-signer role trusts (keys, CA certificates, Sigstore
        identities); ``InputError`` naming the file when it lists none."""
        trust = ModelSignerTrust(
            self.path,
            keys=tuple(self.entries_for(MODEL_SIGNER)),
            certificates=self.certificates,
            identities=self.identities,
        )
        if not trust:
            raise InputError(
                f"trust root {self.path} lists no key, CA certificate or Sigstore identity "
                "for role model-signer",
                where=f"{self.path}: roles.model-signer",
                fix="add one: `secmlops trust add-key model-signer PUB.pem`, "
                "`secmlops trust add-ca CA.pem` or `secmlops trust add-identity ID --issuer URL`",
            )
        return trust

    def with_ca_certificate(
        self,
        certificate: x509.Certificate,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        demo: bool = False,
        source: str = "",
    ) -> TrustRoot:
        """A copy whose model-signer role also trusts CA ``certificate`` (``InputError`` if
        it is not a CA certificate, or is listed already)."""
        try:
            check_ca_certificate(certificate, where="the certificate")
        except ValueError as exc:
            raise InputError(str(exc), where=source or str(self.path)) from exc
        window = KeyWindow(not_before, not_after)
        if not_before and not_after and not_after < not_before:
            raise InputError(
                "not_after is before not_before", where=str(self.path), fix="swap them"
            )
        entry = CaCertificateEntry(MODEL_SIGNER, certificate, window, demo, source)
        return replace(self, certificates=(*self.certificates, entry))

    def with_identity(
        self,
        identity: str,
        issuer: str,
        *,
        trust_config: str = SIGSTORE_PRODUCTION,
        require_rekor: bool = True,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> TrustRoot:
        """A copy whose model-signer role also trusts Sigstore keyless signatures by
        ``identity`` from ``issuer`` (checked as :meth:`load` checks them)."""
        raw: dict[str, Any] = {
            "identity": identity,
            "issuer": issuer,
            "trust_config": trust_config,
            "require_rekor": require_rekor,
        }
        if not_before:
            raw["not_before"] = format_time(not_before)
        if not_after:
            raw["not_after"] = format_time(not_after)
        entry = _parse_identity(self.path, MODEL_SIGNER, len(self.identities), raw)
        return replace(self, identities=(*self.identities, entry))

    def trusted_approvers(self, names: Iterable[str]) -> TrustedKeys:
        """The named approvers' keys (named by approver). An approver the trust root does not
        list is left out: nothing they sign verifies, so their decisions do not count."""
        trusted = TrustedKeys()
        for name in names:
            for entry in self.entries_for(f"{APPROVER_PREFIX}{name}"):
                trusted.add(name, entry.public_key, entry.window)
        return trusted

    def trusted_all(self) -> TrustedKeys:
        """Every key: roles named by role, approvers ``approver:NAME`` (for the report)."""
        trusted = TrustedKeys()
        for entry in self.entries:
            trusted.add(entry.subject, entry.public_key, entry.window)
        return trusted

    def is_demo_key(self, kid: str) -> bool:
        """Is ``kid`` a demo key (generated by the embedded default, ``demo: true``)?"""
        entry = self.entry(kid)
        return entry is not None and entry.demo

    def demo_key_ids(self) -> frozenset[str]:
        return frozenset(e.key_id for e in self.entries if e.demo)

    def role_key_ids(self) -> dict[str, str]:
        """Key id -> role, for every pipeline role key (no approver may sign with one)."""
        return {e.key_id: e.subject for e in self.entries if e.subject in TRUST_ROLES}

    # --- changing -----------------------------------------------------------------------

    def with_key(
        self,
        subject: str,
        public: PublicKey,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        demo: bool = False,
        source: str = "",
    ) -> TrustRoot:
        """A copy listing ``public`` for ``subject`` too (``InputError`` if any subject
        already lists it)."""
        _check_subject(subject, where=str(self.path))
        entry = TrustEntry(subject, public, KeyWindow(not_before, not_after), demo, source)
        window = entry.window
        if window.not_before and window.not_after and window.not_after < window.not_before:
            raise InputError(
                "not_after is before not_before", where=str(self.path), fix="swap them"
            )
        return replace(self, entries=(*self.entries, entry))

    def retire(self, subject: str, kid: str, *, at: dt.datetime) -> TrustRoot:
        """A copy where ``subject``'s key ``kid`` (a unique prefix will do) is valid until
        ``at`` only. Its earlier signatures keep verifying; later ones do not."""
        matches = [e for e in self.entries_for(subject) if e.key_id.startswith(kid.lower())]
        if len(kid) < 8 or len(matches) != 1:
            listed = ", ".join(e.key_id[:16] for e in self.entries_for(subject)) or "none"
            raise InputError(
                f"{subject_label(subject)} has no single key {kid!r} in {self.path} "
                f"(its keys: {listed})",
                where=str(self.path),
                fix="give the key id (at least 8 characters) `secmlops trust show` prints",
            )
        old = matches[0]
        if old.window.not_before and at < old.window.not_before:
            raise InputError(
                f"cannot retire key {old.key_id[:16]}… before it became valid",
                where=str(self.path),
            )
        new = replace(old, window=KeyWindow(old.window.not_before, at))
        return replace(self, entries=tuple(new if e is old else e for e in self.entries))

    def to_yaml(self) -> str:
        import yaml

        roles: dict[str, list[dict[str, Any]]] = {}
        approvers: dict[str, list[dict[str, Any]]] = {}
        for entry in self.entries:
            if entry.subject.startswith(APPROVER_PREFIX):
                name = entry.subject[len(APPROVER_PREFIX) :]
                approvers.setdefault(name, []).append(entry.to_yaml())
            else:
                roles.setdefault(entry.subject, []).append(entry.to_yaml())
        for ca in self.certificates:
            roles.setdefault(ca.subject, []).append(ca.to_yaml())
        for identity in self.identities:
            roles.setdefault(identity.subject, []).append(identity.to_yaml(self.path.parent))
        head = (
            "# secmlops trust root: the PUBLIC keys each role and approver may sign with, and\n"
            "# when (not_before/not_after). Edit with `secmlops trust add-key|retire`.\n"
        )
        body = {"version": 1, "roles": roles, "approvers": approvers}
        return head + yaml.dump(
            body, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
        )

    def save(self) -> None:
        """Write atomically (a reader never sees half a trust root)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".trust-root-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.to_yaml())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _literal_blocks() -> type[Any]:
    import yaml

    class Dumper(yaml.SafeDumper):
        """PEM keys as literal blocks, as people paste them."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


_Dumper = _literal_blocks()


def _entry_kind(path: Path, subject: str, i: int, raw: Any) -> str:
    """Which kind of entry ``raw`` is: ``public_key``, ``ca_certificate`` or ``identity``."""
    where = f"{subject_label(subject)} entry #{i + 1}"
    if not isinstance(raw, Mapping):
        raise _bad(path, f"{where} is not a mapping")
    kinds = [k for k in ("public_key", "ca_certificate", "identity") if k in raw]
    if len(kinds) > 1:
        raise _bad(path, f"{where} has {' and '.join(kinds)}: give one per entry")
    kind = kinds[0] if kinds else "public_key"
    if kind != "public_key" and subject != MODEL_SIGNER:
        raise _bad(
            path,
            f"{where}: {kind} is for role model-signer only ({subject_label(subject)} signs "
            "evidence with a key)",
            "list a public_key",
        )
    return kind


def _check_subject(subject: str, *, where: str) -> None:
    from secmlops.evidence.keys import check_approver_name

    if subject.startswith(APPROVER_PREFIX):
        check_approver_name(subject[len(APPROVER_PREFIX) :])
    elif subject not in TRUST_ROLES:
        raise InputError(
            f"unknown role {subject!r}",
            where=where,
            fix=f"use one of {', '.join(TRUST_ROLES)}, or approver:NAME for an approver",
        )
