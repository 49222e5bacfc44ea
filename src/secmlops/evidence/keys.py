"""Where keys live and which keys are trusted for what.

Which keys are *trusted* comes from the trust root (:mod:`secmlops.evidence.trust_root`):
per role and per approver, the accepted public keys with their validity windows; private
keys are never needed to verify. Where each role *signs* is a signer
(:mod:`secmlops.evidence.signers`): ``SECMLOPS_<ROLE>_SIGNER`` (``file:PATH`` or
``kms:KEY``), default the key directory's ``<role>.pem``.

The embedded demo's key directory holds one unencrypted key pair per role and approver, and
the trust root it writes from them (every key ``demo: true``)::

    <keys>/policy-owner.pem|.pub      signs the gate policy
    <keys>/model-signer.pem|.pub      signs the model (OpenSSF model-signing)
    <keys>/attestor.pem|.pub          signs every control's in-toto statement
    <keys>/gate.pem|.pub              signs the deploy gate's verification summary (VSA)
    <keys>/approvers/<name>.pem|.pub  one pair per human approver
    <keys>/trust-root.yaml            the public keys above, per role and approver

It is generated on first run into ``.secmlops/keys`` (git-ignored and never committed). A
site provides its own trust root (``SECMLOPS_TRUST_ROOT``, or ``trust-root.yaml`` in
``SECMLOPS_KEYS``) and holds its private keys apart: encrypted PEM files, or AWS KMS keys;
an approver's private key stays with the approver. Trust never comes from the registry the
evidence is stored in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from secmlops.errors import InputError
from secmlops.evidence.statements import (
    TrustedKeys,
    generate_keypair,
    key_id,
    load_public_key,
)

if TYPE_CHECKING:
    from secmlops.evidence.signers import Signer
    from secmlops.evidence.trust_root import TrustRoot

#: The pipeline roles, each with its own key (see :data:`trust_root.TRUST_ROLES`).
ROLES = ("policy-owner", "model-signer", "attestor", "gate")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def check_name(name: str, what: str) -> str:
    """Names that become file names and registry keys (approvers, models) are short
    lowercase identifiers; anything else is ``InputError``.

    The whole name must match (``fullmatch``: ``$`` would accept a trailing newline, and
    ``eve\n`` would become a key file ``approvers/eve\n.pem``); an empty name is refused,
    never taken as "no name"."""
    if not isinstance(name, str) or not name:
        raise InputError(
            f"the {what} name is empty",
            where=what,
            fix="give a name: lowercase letters, digits, '.', '_' or '-' (e.g. alice)",
        )
    if not _NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 80 else f"{name[:60]!r}… ({len(name)} characters)"
        raise InputError(
            f"invalid {what} name {shown}",
            where=what,
            fix="use lowercase letters, digits, '.', '_' or '-' (e.g. alice or churn-model)",
        )
    return name


def check_approver_name(name: str) -> str:
    """Approver names become key file names."""
    return check_name(name, "approver")


@dataclass(frozen=True)
class KeyDirectory:
    """A directory of role key pairs and the trust root (see module docstring)."""

    root: Path
    #: The trust root file; default ``SECMLOPS_TRUST_ROOT``, else ``<root>/trust-root.yaml``.
    trust_root_path: Path | None = None

    @property
    def trust_root_file(self) -> Path:
        from secmlops.evidence.trust_root import TRUST_ROOT_FILE
        from secmlops.settings import current_settings

        return self.trust_root_path or current_settings().trust_root or self.root / TRUST_ROOT_FILE

    def trust_root(self) -> TrustRoot:
        """The trust root, read and checked now (``InputError`` if missing or wrong)."""
        from secmlops.evidence.trust_root import TrustRoot

        return TrustRoot.load(self.trust_root_file)

    def private(self, role: str) -> Path:
        return self.root / f"{role}.pem"

    def public(self, role: str) -> Path:
        return self.root / f"{role}.pub"

    def approver_private(self, name: str) -> Path:
        return self.root / "approvers" / f"{check_approver_name(name)}.pem"

    def approver_public(self, name: str) -> Path:
        return self.root / "approvers" / f"{check_approver_name(name)}.pub"

    def ensure(self, approvers: tuple[str, ...] = ()) -> list[Path]:
        """Generate any missing key pair; return the private keys created (for the log).

        Demo keys only (unencrypted). The key directory's own trust root
        (``<root>/trust-root.yaml``) is created or extended to list every key pair here that
        it does not list yet, each ``demo: true``; a trust root kept elsewhere
        (``SECMLOPS_TRUST_ROOT``) is the site's and is left alone.
        """
        created: list[Path] = []
        pairs = [(self.private(r), self.public(r)) for r in ROLES]
        pairs += [(self.approver_private(a), self.approver_public(a)) for a in approvers]
        for private, public in pairs:
            if private.exists() and public.exists():
                continue
            if private.exists() or public.exists():
                raise InputError(
                    f"half a key pair at {private.with_suffix('')}.{{pem,pub}}",
                    where=str(private.parent),
                    fix="restore the missing half or delete both to generate a new pair",
                )
            generate_keypair(private, public)
            created.append(private)
        gitignore = self.root / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("# private keys: never commit\n*\n")
        self.update_demo_trust_root()
        return created

    def owns_trust_root(self) -> bool:
        """Is the trust root this directory's own ``trust-root.yaml`` (the demo's)?"""
        from secmlops.evidence.trust_root import TRUST_ROOT_FILE

        return self.trust_root_file.resolve() == (self.root / TRUST_ROOT_FILE).resolve()

    def update_demo_trust_root(self) -> list[str]:
        """List every key pair of this directory that the trust root does not list yet, as a
        demo key (roles by role, ``approvers/NAME`` as approver NAME). Only for the
        directory's own trust root; returns the subjects added."""
        from secmlops.evidence.trust_root import APPROVER_PREFIX, TrustRoot

        if not self.owns_trust_root():
            return []
        path = self.trust_root_file
        root = TrustRoot.load(path) if path.exists() else TrustRoot(path)
        pairs = [(r, self.public(r)) for r in ROLES]
        folder = self.root / "approvers"
        if folder.is_dir():
            pairs += [(APPROVER_PREFIX + p.stem, p) for p in sorted(folder.glob("*.pub"))]
        added: list[str] = []
        for subject, public_path in pairs:
            if not public_path.is_file() or not public_path.with_suffix(".pem").is_file():
                continue
            public = load_public_key(public_path)
            if root.entry(key_id(public)) is None:
                root = root.with_key(subject, public, demo=True, source=str(public_path))
                added.append(subject)
        if added or not path.exists():
            root.save()
        return added

    def require(self, path: Path) -> Path:
        if not path.is_file():
            raise InputError(
                f"key file {path} does not exist",
                where=str(path),
                fix="run `secmlops run` once to generate demo keys, or configure your own keys",
            )
        return path

    def trusted(self, role: str) -> TrustedKeys:
        """Trust set for one role: its keys in the trust root, each with its window."""
        return self.trust_root().trusted(role)

    def trusted_approvers(self, names: tuple[str, ...]) -> TrustedKeys:
        """Trust set holding the named approvers' public keys (from the trust root).

        An approver the trust root does not list is left out: nothing they signed can
        verify, so their approvals do not count, while everyone else's still do. No
        approver's private key is needed here.
        """
        for name in names:
            check_approver_name(name)
        return self.trust_root().trusted_approvers(names)

    def trusted_all(self) -> TrustedKeys:
        """Every key of the trust root: roles by role name, approvers as ``approver:NAME``."""
        return self.trust_root().trusted_all()

    def demo_key_ids(self) -> frozenset[str]:
        """Key ids the trust root marks ``demo: true`` (a production policy refuses them)."""
        return self.trust_root().demo_key_ids()

    def role_key_ids(self) -> dict[str, str]:
        """Key id -> role of every pipeline role key in the trust root."""
        return self.trust_root().role_key_ids()

    # --- signing ------------------------------------------------------------------------

    def signer_spec(self, subject: str) -> tuple[str, str]:
        """(where it was set, spec) of ``subject``'s signer: ``SECMLOPS_<SUBJECT>_SIGNER``,
        else the key file here."""
        from secmlops.settings import current_settings

        configured = current_settings().keys.signer_spec(subject)
        if configured is not None:
            return configured
        if subject.startswith("approver:"):
            path = self.approver_private(subject.removeprefix("approver:"))
        else:
            path = self.private(subject)
        return str(path), f"file:{path}"

    def signer(self, role: str) -> Signer:
        """The signer of pipeline role ``role`` (``SECMLOPS_<ROLE>_SIGNER``, default
        ``<keys>/<role>.pem``), checked against the trust root when there is one: a key it
        does not accept for ``role`` now is ``InputError`` (nothing it signed would verify).
        """
        from secmlops.evidence.trust_root import TRUST_ROLES

        if role not in TRUST_ROLES:
            raise InputError(
                f"unknown role {role!r}", where="signer", fix=f"use one of {TRUST_ROLES}"
            )
        return self._open_signer(role)

    def approver_signer(self, name: str) -> Signer:
        """Approver ``name``'s signer (``SECMLOPS_APPROVER_<NAME>_SIGNER``, default
        ``<keys>/approvers/<name>.pem``): on the approver's machine, not the operator's."""
        check_approver_name(name)
        return self._open_signer(f"approver:{name}")

    def model_signer(self, key: str = "", *, in_trust_root: bool = True) -> Signer:
        """The model-signer's key: ``key`` (a signer spec, the site's
        ``sources.signing.key``), else ``SECMLOPS_MODEL_SIGNER_SIGNER``, else
        ``<keys>/model-signer.pem``. ``in_trust_root``: checked against the trust root like
        every role key (listed for model-signer, valid now); off for a key that signs with a
        certificate, which the trust root trusts through its CA instead."""
        configured = ("sources.signing.key", key) if key else None
        return self._open_signer("model-signer", configured, check_listed=in_trust_root)

    def _open_signer(
        self,
        subject: str,
        configured: tuple[str, str] | None = None,
        *,
        check_listed: bool = True,
    ) -> Signer:
        import datetime as dt

        from secmlops.evidence.signers import open_signer, parse_signer_spec
        from secmlops.evidence.trust_root import subject_label

        where, spec = configured or self.signer_spec(subject)
        parsed = parse_signer_spec(spec, where=where)
        if parsed.kind == "file":
            self.require(Path(parsed.target))
        signer = open_signer(parsed, subject=subject, where=where)
        if not check_listed or not self.trust_root_file.is_file():
            return signer  # signing needs no trust root; verifying will
        entry = self.trust_root().entry(signer.key_id)
        label = subject_label(subject)
        if entry is None or entry.subject != subject:
            listed = f"is listed for {subject_label(entry.subject)}" if entry else "is not listed"
            raise InputError(
                f"the {label} signer {signer.description} (key {signer.key_id[:16]}…) {listed} "
                f"in the trust root {self.trust_root_file}",
                where=where,
                fix=f"add its public key: `secmlops trust add-key {subject} PUB.pem`, or sign "
                "with the key the trust root lists",
            )
        if not entry.valid_at(dt.datetime.now(dt.UTC)):
            raise InputError(
                f"the {label} key {signer.key_id[:16]}… ({signer.description}) is not valid "
                f"now (valid {entry.window.describe()})",
                where=where,
                fix=f"sign with the {label}'s current key (SECMLOPS_"
                f"{subject.upper().replace(':', '_').replace('-', '_')}_SIGNER)",
            )
        return signer
