"""Every ``SECMLOPS_*`` setting in one place, and where the embedded default keeps its state.

The environment is read here and nowhere else in the library: :func:`current_settings` builds
a frozen :class:`Settings` from it (cheap; call it where a value is needed, so a worker, a
test or a CLI option that changed the environment is seen). Flows run on workers, so the
environment is also how the CLI hands its options on.

- ``SECMLOPS_PROJECT_DIR``: the project checkout (dvc.yaml, the policy, flows/); default:
  the nearest such directory from the current one upwards.
- ``SECMLOPS_HOME``: state of the embedded default; default ``<project>/.secmlops``.
- ``SECMLOPS_KEYS``: a key directory provisioned by the site (never generated); default
  ``<home>/keys`` (demo keys, generated on first run).
- ``SECMLOPS_REGISTRY``: model registry, a directory, ``file://`` or ``s3://bucket/prefix``;
  default ``<home>/registry``.
- ``SECMLOPS_S3_ENDPOINT_URL``: S3 API endpoint (MinIO, moto, ...); default AWS.
- ``SECMLOPS_POLICY``: the gate policy file; default ``<project>/secmlops-policy.yaml``.
- ``SECMLOPS_TRIVY``, ``SECMLOPS_DVC``: path of the ``trivy`` / ``dvc`` binary; default the
  venv's, then ``PATH``.
- ``SECMLOPS_TRUST_ROOT``: the trust root file (which public keys each role and approver may
  sign with, and when); default ``<keys>/trust-root.yaml`` (written by the embedded default
  from its demo keys; a site provides its own).
- ``SECMLOPS_<ROLE>_SIGNER``: where role ``<ROLE>`` signs (ROLE upper-cased, ``-``/``.`` ->
  ``_``: ``POLICY_OWNER``, ``ATTESTOR``, ``GATE``, ``MODEL_SIGNER``; an approver ``alice`` is
  ``APPROVER_ALICE``): ``file:PATH`` (or a bare path) for a PEM key, ``kms:KEY_ID_OR_ARN``
  for an AWS KMS key; default the key directory's ``<role>.pem``.
- ``SECMLOPS_<ROLE>_KEY_PASSPHRASE`` / ``SECMLOPS_<ROLE>_KEY_PASSPHRASE_FILE``, then
  ``SECMLOPS_KEY_PASSPHRASE`` / ``SECMLOPS_KEY_PASSPHRASE_FILE``: the passphrase of an
  encrypted PEM key (else a prompt when stdin is a terminal).
- ``SECMLOPS_KMS_ENDPOINT_URL``: AWS KMS API endpoint (moto, LocalStack, a VPC endpoint);
  default AWS. Region and credentials: the usual ``AWS_*`` variables.

Example::

    from secmlops.settings import current_settings

    settings = current_settings()
    print(settings.paths.keys, settings.registry or settings.paths.default_registry)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_PROJECT_MARKERS = ("dvc.yaml", "secmlops-policy.yaml")
POLICY_FILE = "secmlops-policy.yaml"

#: Binaries whose location a site may pin, and the variable that pins each.
TOOL_VARIABLES: Mapping[str, str] = {"trivy": "SECMLOPS_TRIVY", "dvc": "SECMLOPS_DVC"}

#: Per-signer variables: ``SECMLOPS_<SUBJECT>_SIGNER`` and ``..._KEY_PASSPHRASE[_FILE]``.
_KEY_VARIABLE = re.compile(
    r"^SECMLOPS_(?:[A-Z0-9_]+_)?(?:SIGNER|KEY_PASSPHRASE|KEY_PASSPHRASE_FILE)$"
)


def signer_variable_prefix(subject: str) -> str:
    """``SECMLOPS_<SUBJECT>``: a role (``gate`` -> ``SECMLOPS_GATE``) or an approver
    (``approver:alice`` -> ``SECMLOPS_APPROVER_ALICE``)."""
    name = subject.upper().replace(":", "_").replace("-", "_").replace(".", "_")
    return f"SECMLOPS_{name}"


@dataclass(frozen=True)
class KeySettings:
    """Where each role and approver signs, and the passphrases of encrypted PEM keys."""

    variables: Mapping[str, str] = field(default_factory=dict, repr=False)

    def signer_spec(self, subject: str) -> tuple[str, str] | None:
        """(variable, signer spec) set for ``subject`` (a role or ``approver:NAME``), if any."""
        var = f"{signer_variable_prefix(subject)}_SIGNER"
        value = self.variables.get(var)
        return (var, value) if value else None

    def passphrase(self, subject: str | None) -> tuple[str, str, bool] | None:
        """(variable, value, is_file) of the first passphrase setting for ``subject``: its own
        ``_KEY_PASSPHRASE`` / ``_KEY_PASSPHRASE_FILE``, then the shared ones."""
        prefixes = [signer_variable_prefix(subject)] if subject else []
        for prefix in (*prefixes, "SECMLOPS"):
            for var, is_file in (
                (f"{prefix}_KEY_PASSPHRASE", False),
                (f"{prefix}_KEY_PASSPHRASE_FILE", True),
            ):
                if self.variables.get(var):
                    return var, self.variables[var], is_file
        return None


def _is_project(path: Path) -> bool:
    return all((path / name).is_file() for name in _PROJECT_MARKERS)


def _find_project(env: Mapping[str, str]) -> Path:
    if env.get("SECMLOPS_PROJECT_DIR"):
        return Path(env["SECMLOPS_PROJECT_DIR"]).resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if _is_project(candidate):
            return candidate
    checkout = Path(__file__).resolve().parents[2]  # editable install in a checkout
    return checkout if _is_project(checkout) else cwd


@dataclass(frozen=True)
class LocalPaths:
    """Paths below the state home (``.secmlops/``) of the embedded default."""

    home: Path
    site_keys: Path | None = None

    @property
    def demo_keys(self) -> bool:
        """True when keys live in the embedded default's folder (generated on first run).

        With ``SECMLOPS_KEYS`` set, keys are provisioned by the site and never generated.
        """
        return self.site_keys is None

    @property
    def keys(self) -> Path:
        return self.site_keys or self.home / "keys"

    @property
    def data_registry(self) -> Path:
        return self.home / "data-registry"

    @property
    def trivy_cache(self) -> Path:
        return self.home / "trivy-cache"

    @property
    def images(self) -> Path:
        return self.home / "images"

    @property
    def runs(self) -> Path:
        return self.home / "runs"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def default_registry(self) -> str:
        return str(self.home / "registry")


@dataclass(frozen=True)
class Settings:
    """The library's settings, read from ``SECMLOPS_*`` variables by :func:`current_settings`."""

    project_dir: Path
    paths: LocalPaths
    registry: str | None
    s3_endpoint_url: str | None
    policy_file: Path
    tools: Mapping[str, Path]
    #: ``SECMLOPS_TRUST_ROOT``, if set (else the key directory's ``trust-root.yaml``).
    trust_root: Path | None = None
    kms_endpoint_url: str | None = None
    keys: KeySettings = field(default_factory=KeySettings)

    def registry_uri(self, given: str | None = None) -> str:
        """The registry to use: ``given``, else ``SECMLOPS_REGISTRY``, else the local one."""
        return given or self.registry or self.paths.default_registry

    def tool(self, name: str) -> Path | None:
        """The pinned path of binary ``name`` (``SECMLOPS_TRIVY``, ...), if the site set one."""
        return self.tools.get(name)


def current_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    project = _find_project(env)
    home = Path(env["SECMLOPS_HOME"]).resolve() if env.get("SECMLOPS_HOME") else None
    keys = Path(env["SECMLOPS_KEYS"]) if env.get("SECMLOPS_KEYS") else None
    return Settings(
        project_dir=project,
        paths=LocalPaths(home or project / ".secmlops", keys),
        registry=env.get("SECMLOPS_REGISTRY") or None,
        s3_endpoint_url=env.get("SECMLOPS_S3_ENDPOINT_URL") or None,
        policy_file=Path(env["SECMLOPS_POLICY"])
        if env.get("SECMLOPS_POLICY")
        else project / POLICY_FILE,
        tools={name: Path(env[var]) for name, var in TOOL_VARIABLES.items() if env.get(var)},
        trust_root=Path(env["SECMLOPS_TRUST_ROOT"]) if env.get("SECMLOPS_TRUST_ROOT") else None,
        kms_endpoint_url=env.get("SECMLOPS_KMS_ENDPOINT_URL") or None,
        keys=KeySettings({k: v for k, v in env.items() if _KEY_VARIABLE.match(k)}),
    )


def project_root() -> Path:
    """The project checkout (holds dvc.yaml, params.yaml, the policy file, prefect.yaml).

    ``SECMLOPS_PROJECT_DIR`` if set; else the nearest directory from the current one upwards
    that holds ``dvc.yaml`` and ``secmlops-policy.yaml``; else the checkout this library is
    installed from in development (editable install); else the current directory.
    """
    return current_settings().project_dir


def state_home() -> Path:
    """Local state of the embedded default: keys, demo data registry, Trivy cache, registry."""
    return current_settings().paths.home


def local_paths() -> LocalPaths:
    """The embedded default's paths under the current settings."""
    return current_settings().paths
