"""Where keys live and which keys are trusted for what.

A key directory holds one key pair per role::

    <keys>/model-signer.pem|.pub      signs the model (OpenSSF model-signing)
    <keys>/attestor.pem|.pub          signs every control's in-toto statement
    <keys>/gate.pem|.pub              signs the deploy gate's verification summary (VSA)
    <keys>/approvers/<name>.pem|.pub  one pair per human approver

The embedded demo generates these on first run into ``.secmlops/keys`` (git-ignored and
never committed). Production sites keep private keys in their secret store and give the
gate only the public halves: trust comes from this directory (or the trust policy), never
from the registry the evidence is stored in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from secmlops.errors import InputError
from secmlops.evidence.statements import TrustedKeys, generate_keypair, load_public_key

ROLES = ("model-signer", "attestor", "gate")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def check_name(name: str, what: str) -> str:
    """Names that become file names and registry keys (approvers, models) are short
    lowercase identifiers; anything else is ``InputError``."""
    if not _NAME.match(name):
        raise InputError(
            f"invalid {what} name {name!r}",
            where=what,
            fix="use lowercase letters, digits, '.', '_' or '-' (e.g. alice or churn-model)",
        )
    return name


def check_approver_name(name: str) -> str:
    """Approver names become key file names."""
    return check_name(name, "approver")


@dataclass(frozen=True)
class KeyDirectory:
    """A directory of role key pairs (see module docstring)."""

    root: Path

    def private(self, role: str) -> Path:
        return self.root / f"{role}.pem"

    def public(self, role: str) -> Path:
        return self.root / f"{role}.pub"

    def approver_private(self, name: str) -> Path:
        return self.root / "approvers" / f"{check_approver_name(name)}.pem"

    def approver_public(self, name: str) -> Path:
        return self.root / "approvers" / f"{check_approver_name(name)}.pub"

    def ensure(self, approvers: tuple[str, ...] = ()) -> list[Path]:
        """Generate any missing key pair; return the private keys created (for the log)."""
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
        return created

    def require(self, path: Path) -> Path:
        if not path.is_file():
            raise InputError(
                f"key file {path} does not exist",
                where=str(path),
                fix="run `secmlops run` once to generate demo keys, or configure your own keys",
            )
        return path

    def trusted(self, role: str) -> TrustedKeys:
        """Trust set for one role (its public key)."""
        trusted = TrustedKeys()
        trusted.add(role, load_public_key(self.require(self.public(role))))
        return trusted

    def trusted_approvers(self, names: tuple[str, ...]) -> TrustedKeys:
        """Trust set holding the named approvers' public keys.

        A listed approver without a key here is left out: nothing they signed can verify,
        so their approvals do not count, while everyone else's still do.
        """
        trusted = TrustedKeys()
        for name in names:
            public = self.approver_public(name)
            if public.is_file():
                trusted.add(name, load_public_key(public))
        return trusted
