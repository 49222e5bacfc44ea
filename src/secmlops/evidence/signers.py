"""Who signs: one :class:`Signer` interface over a PEM key file and an AWS KMS key.

A signer makes ECDSA P-256 / SHA-256 signatures (DER) over the bytes it is given, and says
which public key checks them (``key_id`` is :func:`~secmlops.evidence.statements.key_id`
of it, the bundle hint). Where a role signs is a *signer spec*:

- ``file:PATH`` or a bare path: a PEM private key. Unencrypted keys are for the demo only; a
  site's key is passphrase-encrypted PKCS#8, its passphrase from
  ``SECMLOPS_<ROLE>_KEY_PASSPHRASE[_FILE]``, ``SECMLOPS_KEY_PASSPHRASE[_FILE]`` or a prompt.
- ``kms:KEY_ID_OR_ARN``: an AWS KMS asymmetric key (``ECC_NIST_P256``, ``SIGN_VERIFY``);
  the private key never leaves KMS. Region and credentials come from the ``AWS_*``
  variables (or the key's ARN), the endpoint from ``SECMLOPS_KMS_ENDPOINT_URL``.

:meth:`secmlops.evidence.keys.KeyDirectory.signer` picks the spec for a role
(``SECMLOPS_<ROLE>_SIGNER``, default ``<keys>/<role>.pem``). Signatures are checked against
the trust root's public keys, never against anything a signer says about itself.

Example::

    signer = open_signer("kms:alias/secmlops-gate", subject="gate")
    bundle = sign_statement(statement, signer)
"""

from __future__ import annotations

import getpass
import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secmlops.errors import InputError, ToolError
from secmlops.evidence.statements import PrivateKey, PublicKey, key_id

if TYPE_CHECKING:
    from secmlops.settings import Settings

#: KMS signs a RAW message of at most this many bytes; longer ones are sent as a digest.
KMS_RAW_LIMIT = 4096
KMS_KEY_SPEC = "ECC_NIST_P256"
KMS_SIGNING_ALGORITHM = "ECDSA_SHA_256"
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):(?!//)")


@runtime_checkable
class Signer(Protocol):
    """Signs bytes with one ECDSA P-256 key: DER signature over SHA-256 of ``data``."""

    @property
    def key_id(self) -> str:
        """sha256 of the DER SubjectPublicKeyInfo of the key that checks the signatures."""
        ...

    @property
    def public_key(self) -> PublicKey:
        """The public half (what the trust root must list for the role)."""
        ...

    @property
    def description(self) -> str:
        """Where the key is, for messages (``file:/path``, ``kms:alias/x``)."""
        ...

    def sign(self, data: bytes) -> bytes:
        """An ECDSA P-256 / SHA-256 signature (DER) over ``data``."""
        ...


# --- PEM files --------------------------------------------------------------------------


def _current_settings() -> Settings:
    from secmlops.settings import current_settings

    return current_settings()


def _passphrase(path: Path, subject: str | None, settings: Settings) -> bytes:
    """The passphrase of encrypted key ``path``: a variable, a file, or a prompt."""
    found = settings.keys.passphrase(subject)
    if found is not None:
        var, value, is_file = found
        if not is_file:
            return value.encode()
        source = Path(value)
        try:
            text = source.read_text()
        except OSError as exc:
            raise InputError(
                f"cannot read the passphrase file {source} for {path}: {exc.strerror}",
                where=var,
                fix=f"point {var} at a readable file holding the passphrase",
            ) from exc
        secret = text.rstrip("\r\n")
        if not secret:
            raise InputError(
                f"the passphrase file {source} for {path} is empty",
                where=var,
                fix="write the key's passphrase into it",
            )
        return secret.encode()
    if sys.stdin is not None and sys.stdin.isatty():
        who = f" ({subject})" if subject else ""
        return getpass.getpass(f"passphrase for {path}{who}: ").encode()
    from secmlops.settings import signer_variable_prefix

    own = f"{signer_variable_prefix(subject)}_KEY_PASSPHRASE" if subject else ""
    names = " or ".join(v for v in (own, "SECMLOPS_KEY_PASSPHRASE") if v)
    raise InputError(
        f"{path} is encrypted and no passphrase was given",
        where=str(path),
        fix=f"set {names} (or the same name with _FILE, naming a file holding it), "
        "or run from a terminal to be asked",
    )


def pem_passphrase(path: Path, *, subject: str | None = None) -> bytes | None:
    """The passphrase of PEM key ``path`` if it is encrypted (from the same variables, file
    or prompt as :func:`load_pem_private_key`), ``None`` if it is not: for tools that load
    the key themselves (model-signing)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(
            f"cannot read private key {path}: {exc.strerror}", where=str(path)
        ) from exc
    if b"ENCRYPTED" not in data.split(b"\n", 1)[0] and b"Proc-Type: 4,ENCRYPTED" not in data:
        return None
    return _passphrase(path, subject, _current_settings())


def load_pem_private_key(
    path: Path, *, subject: str | None = None, settings: Settings | None = None
) -> PrivateKey:
    """A PEM ECDSA P-256 private key, unencrypted or passphrase-encrypted (see module doc).

    ``InputError`` naming the file for anything else: missing, not PEM, not P-256, a wrong
    or missing passphrase.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(f"private key {path} does not exist", where=str(path)) from exc
    except OSError as exc:
        raise InputError(
            f"cannot read private key {path}: {exc.strerror}", where=str(path)
        ) from exc
    password: bytes | None = None
    if b"ENCRYPTED" in data.split(b"\n", 1)[0] or b"Proc-Type: 4,ENCRYPTED" in data:
        password = _passphrase(path, subject, settings or _current_settings())
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:  # encrypted after all, or a passphrase for an unencrypted key
        if password is None:
            password = _passphrase(path, subject, settings or _current_settings())
            return _decrypt(path, data, password)
        raise InputError(f"{path} is not encrypted: {exc}", where=str(path)) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if password is not None:
            raise InputError(
                f"wrong passphrase for {path} (or the key is damaged)",
                where=str(path),
                fix="check the passphrase variable or file for this key",
            ) from exc
        raise InputError(f"{path} is not a PEM private key: {exc}", where=str(path)) from exc
    return _ec_private(path, key)


def _decrypt(path: Path, data: bytes, password: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InputError(
            f"wrong passphrase for {path} (or the key is damaged)",
            where=str(path),
            fix="check the passphrase variable or file for this key",
        ) from exc
    return _ec_private(path, key)


def _ec_private(path: Path, key: Any) -> PrivateKey:
    # Evidence keys are P-256; model-signing keys may be P-384/P-521 as well.
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(f"{path} is not an elliptic-curve (ECDSA) private key", where=str(path))
    return key


def write_private_key(path: Path, key: PrivateKey, passphrase: bytes | None) -> None:
    """Write ``key`` as PKCS#8 PEM (encrypted when ``passphrase`` is given), mode 0600;
    refuses to overwrite."""
    import os

    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


@dataclass(frozen=True)
class FileSigner:
    """A PEM private key loaded from a file (see :func:`load_pem_private_key`)."""

    path: Path
    private_key: PrivateKey

    @classmethod
    def load(
        cls, path: Path, *, subject: str | None = None, settings: Settings | None = None
    ) -> FileSigner:
        return cls(path, load_pem_private_key(path, subject=subject, settings=settings))

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def description(self) -> str:
        return f"file:{self.path}"

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))


# --- AWS KMS ----------------------------------------------------------------------------


def _kms_client(key_ref: str, endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    region = None
    if key_ref.startswith("arn:"):
        parts = key_ref.split(":")
        region = parts[3] if len(parts) > 3 and parts[3] else None
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10)
    return boto3.client("kms", endpoint_url=endpoint_url, region_name=region, config=config)


def _kms_error(exc: Exception, key_ref: str, doing: str) -> Exception:
    """A botocore error as ``InputError`` (configuration: key, region, credentials, access)
    or ``ToolError`` (the service or the network)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    where = f"kms:{key_ref}"
    if isinstance(exc, NoRegionError):
        return InputError(
            f"no AWS region for KMS key {key_ref}",
            where=where,
            fix="set AWS_REGION (or AWS_DEFAULT_REGION), or give the key's full ARN",
        )
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return InputError(
            f"no AWS credentials to {doing} with KMS key {key_ref}",
            where=where,
            fix="give the worker AWS credentials (AWS_* variables, a profile or a role)",
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code in (
            "NotFoundException",
            "AccessDeniedException",
            "DisabledException",
            "KMSInvalidStateException",
            "InvalidKeyUsageException",
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "ValidationException",
            "InvalidGrantTokenException",
        ):
            return InputError(
                f"KMS refused to {doing} with key {key_ref}: {code}: {message}",
                where=where,
                fix="check the key id or alias, its state, and that these credentials may "
                "use it (kms:GetPublicKey, kms:Sign)",
            )
        return ToolError(
            f"KMS failed to {doing} with key {key_ref}: {code}: {message}", where=where
        )
    if isinstance(exc, BotoCoreError):
        return ToolError(f"KMS failed to {doing} with key {key_ref}: {exc}", where=where)
    return exc


class KmsSigner:
    """An AWS KMS asymmetric key (``ECC_NIST_P256``, ``SIGN_VERIFY``, ``ECDSA_SHA_256``).

    The public key is read once (``GetPublicKey``) and checked; every signature KMS returns
    is checked against it before use (a KMS that signs with another key is a ``ToolError``).
    Messages up to 4096 bytes are sent as they are (``MessageType=RAW``: KMS hashes them),
    longer ones as their SHA-256 digest (``MessageType=DIGEST``): the same ECDSA_SHA_256
    signature over the same bytes either way.
    """

    def __init__(self, key_ref: str, *, endpoint_url: str | None = None, client: Any = None):
        from botocore.exceptions import BotoCoreError, ClientError

        if not key_ref:
            raise InputError("empty KMS key reference", where="kms:", fix="give kms:KEY_ID")
        self.key_ref = key_ref
        try:
            self._client = client or _kms_client(key_ref, endpoint_url)
            answer = self._client.get_public_key(KeyId=key_ref)
        except (BotoCoreError, ClientError) as exc:
            raise _kms_error(exc, key_ref, "read the public key") from exc
        spec = answer.get("KeySpec") or answer.get("CustomerMasterKeySpec")
        usage = answer.get("KeyUsage")
        algorithms = answer.get("SigningAlgorithms") or []
        if (
            spec != KMS_KEY_SPEC
            or usage != "SIGN_VERIFY"
            or KMS_SIGNING_ALGORITHM not in algorithms
        ):
            raise InputError(
                f"KMS key {key_ref} is {spec} {usage}, not {KMS_KEY_SPEC} SIGN_VERIFY with "
                f"{KMS_SIGNING_ALGORITHM}",
                where=f"kms:{key_ref}",
                fix="create the key with KeySpec=ECC_NIST_P256 and KeyUsage=SIGN_VERIFY",
            )
        public = serialization.load_der_public_key(answer["PublicKey"])
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
            public.curve, ec.SECP256R1
        ):
            raise ToolError(f"KMS key {key_ref} returned a public key that is not P-256")
        self._public = public
        self.arn = str(answer.get("KeyId", key_ref))

    @property
    def key_id(self) -> str:
        return key_id(self._public)

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def description(self) -> str:
        return f"kms:{self.key_ref}"

    def sign(self, data: bytes) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if len(data) <= KMS_RAW_LIMIT:
            message, message_type = data, "RAW"
        else:
            message, message_type = hashlib.sha256(data).digest(), "DIGEST"
        try:
            answer = self._client.sign(
                KeyId=self.key_ref,
                Message=message,
                MessageType=message_type,
                SigningAlgorithm=KMS_SIGNING_ALGORITHM,
            )
        except (BotoCoreError, ClientError) as exc:
            raise _kms_error(exc, self.key_ref, "sign") from exc
        signature = bytes(answer["Signature"])
        try:
            self._public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise ToolError(
                f"KMS key {self.key_ref} returned a signature ({message_type}) that does not "
                "verify with its public key",
                where=f"kms:{self.key_ref}",
            ) from exc
        return signature


# --- specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignerSpec:
    """A parsed signer spec: ``file`` and a path, or ``kms`` and a key id, alias or ARN."""

    kind: Literal["file", "kms"]
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_signer_spec(spec: str, *, where: str = "signer") -> SignerSpec:
    """``file:PATH`` / a bare path / ``kms:KEY_ID_OR_ARN``; ``InputError`` otherwise."""
    text = spec.strip()
    match = _SCHEME.match(text)
    if match and len(match.group(1)) > 1:  # a one-letter "scheme" is a Windows drive
        kind, target = match.group(1), text[match.end() :]
        if kind not in ("file", "kms"):
            raise InputError(
                f"unknown signer kind {kind!r} in {spec!r}",
                where=where,
                fix="use file:PATH (a PEM key) or kms:KEY_ID_OR_ARN (an AWS KMS key)",
            )
    else:
        kind, target = "file", text
    if not target:
        raise InputError(
            f"signer spec {spec!r} names no key",
            where=where,
            fix="use file:PATH (a PEM key) or kms:KEY_ID_OR_ARN (an AWS KMS key)",
        )
    return SignerSpec("file" if kind == "file" else "kms", target)


def open_signer(
    spec: str | SignerSpec,
    *,
    subject: str | None = None,
    settings: Settings | None = None,
    where: str = "signer",
) -> Signer:
    """The signer a spec names (a PEM file is loaded now, its passphrase resolved; a KMS
    key's public key is read now)."""
    parsed = spec if isinstance(spec, SignerSpec) else parse_signer_spec(spec, where=where)
    settings = settings or _current_settings()
    if parsed.kind == "kms":
        return KmsSigner(parsed.target, endpoint_url=settings.kms_endpoint_url)
    return FileSigner.load(Path(parsed.target), subject=subject, settings=settings)


def public_key_of(source: str, *, settings: Settings | None = None) -> PublicKey:
    """A public key from a PEM public-key file, or a ``kms:KEY`` spec (its ``GetPublicKey``).

    For registering keys in the trust root: no private key is read.
    """
    from secmlops.evidence.statements import load_public_key

    if source.startswith("kms:"):
        settings = settings or _current_settings()
        return KmsSigner(source[4:], endpoint_url=settings.kms_endpoint_url).public_key
    return load_public_key(Path(source.removeprefix("file:")))
