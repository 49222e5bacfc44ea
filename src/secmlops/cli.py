"""The ``secmlops`` command line.

Exit codes everywhere: 0 passed, 1 a control refused, 2 bad usage or input, 3 tool or
infrastructure failure. Errors print one clear message (traceback with ``-v``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from secmlops.errors import ControlRefused, InputError, SecMLOpsError

if TYPE_CHECKING:  # the CLI imports heavy modules lazily, per command
    from secmlops.evidence.keys import KeyDirectory
    from secmlops.evidence.trust_root import TrustRoot
    from secmlops.registry.models import ModelRegistry


class _Commands(TyperGroup):
    """The top-level commands; ``server`` (and what it imports, ~50 ms) loads only when it
    is run, listed in the help, or may be the command a typo meant."""

    def _add_server(self) -> None:
        if "server" not in self.commands:
            from secmlops.server import server_app

            command = typer.main.get_group(server_app)
            command.name = "server"
            self.add_command(command, "server")

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            self._add_server()
            command = super().get_command(ctx, cmd_name)
        return command

    def list_commands(self, ctx: Any) -> list[str]:
        self._add_server()
        return list(super().list_commands(ctx))


app = typer.Typer(
    name="secmlops",
    cls=_Commands,
    help="Secure ML pipeline: validate, scan, sign, verify, promote, roll back, show evidence.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state: dict[str, Any] = {"verbose": False}


def _use_options(
    *,
    registry: str | None = None,
    s3_endpoint_url: str | None = None,
    keys: Path | None = None,
    policy: Path | None = None,
) -> None:
    """Hand options on as the settings' variables (read by :mod:`secmlops.settings`).

    Flows run in this process or on workers and read their settings from the environment,
    so an option given on the command line is set there, where every layer sees it.
    """
    for var, value in (
        ("SECMLOPS_REGISTRY", registry),
        ("SECMLOPS_S3_ENDPOINT_URL", s3_endpoint_url),
        ("SECMLOPS_KEYS", keys),
        ("SECMLOPS_POLICY", policy),
    ):
        if value:
            os.environ[var] = str(value)


# --- option validation: bad input is exit 2 and one sentence naming the option, before any
# command runs. Parsers get the raw text (typer would turn '' into Path('.')); a
# ``typer.BadParameter`` is reported by ``main`` as "bad input: Invalid value for '--x': ...".


def _items(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _free_text_option(value: Any) -> Any:
    """Free text (a reason): given, it must say something; '' is refused, never read as "not
    given" (which would silently fall back to a default)."""
    for item in _items(value):
        if isinstance(item, str) and not item.strip():
            raise typer.BadParameter("is empty; give a value or leave the option out")
        if isinstance(item, str) and "\0" in item:
            raise typer.BadParameter("contains a NUL character")
    return value


def _text_option(value: Any) -> Any:
    """A one-word value (a name, a reference, a URI): not empty, and no control characters
    (a trailing newline would name a different object than the one shown)."""
    _free_text_option(value)
    for item in _items(value):
        if isinstance(item, str) and not item.isprintable():
            raise typer.BadParameter(f"{item[:60]!r} contains a control character")
    return value


def _key_id_option(value: str) -> str:
    """``--key-id``: a whole sha256 key id (64 lowercase hex; no trailing newline)."""
    import re

    _text_option(value)
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise typer.BadParameter(
            f"{value[:80]!r} is not a key id (the sha256, 64 lowercase hex, of the public key)"
        )
    return value


def _approver_option(value: Any) -> Any:
    """An approver name (``--approve-as``, ``--as``, ``--approver``): the full-match name
    check, so '' and ``eve\\n`` are refused (exit 2) instead of ignored or written to disk."""
    from secmlops.evidence.keys import check_approver_name

    for item in _items(value):
        if item is not None:
            check_approver_name(item)
    return value


def _version_option(value: str) -> str:
    """A model version option (``v1``, ``v2``, ...), checked whole: ``v1\\n`` is refused."""
    from secmlops.registry.models import check_version

    return check_version(value)


def _path_text(value: str) -> Path:
    if not value or not value.strip():
        raise typer.BadParameter("is an empty path")
    if "\0" in value:
        raise typer.BadParameter("contains a NUL character")
    return Path(value).expanduser()


def _path_kind(path: Path) -> str:
    """``missing``, ``dir``, ``file`` or ``other`` (a fifo, a device, ...); a path the OS
    cannot even look up (too long, a loop of symlinks) is bad input."""
    import errno
    import stat

    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, "unusable")
        shown = str(path) if len(str(path)) <= 80 else f"{str(path)[:60]}…"
        raise typer.BadParameter(f"{shown} is not a usable path ({reason})") from None
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def _existing_file(value: str) -> Path:
    """A file the command reads: it must exist and be a regular file."""
    path = _path_text(value)
    kind = _path_kind(path)
    if kind == "dir":
        raise typer.BadParameter(f"{path} is a directory, not a file")
    if kind == "missing":
        raise typer.BadParameter(f"{path} does not exist")
    if kind != "file":
        raise typer.BadParameter(f"{path} is not a regular file")
    return path


def _existing_dir(value: str) -> Path:
    """A directory the command reads: it must exist and be a directory."""
    path = _path_text(value)
    kind = _path_kind(path)
    if kind == "missing":
        raise typer.BadParameter(f"{path} does not exist")
    if kind != "dir":
        raise typer.BadParameter(f"{path} is a file, not a directory")
    return path


def _dir_or_new(value: str) -> Path:
    """A directory the command may create: if it exists it must be a directory."""
    path = _path_text(value)
    if _path_kind(path) not in ("missing", "dir"):
        raise typer.BadParameter(f"{path} is a file, not a directory")
    return path


def _file_or_new(value: str) -> Path:
    """A file the command writes: it must not be a directory."""
    path = _path_text(value)
    if _path_kind(path) == "dir":
        raise typer.BadParameter(f"{path} is a directory, not a file")
    return path


def _image_target(value: str) -> str:
    """``scan-image TARGET``: a local archive or layout is handed on as an absolute path
    (Trivy runs in an empty temporary directory); anything else is an image reference, which
    must be one word (the scanner refuses it unless registry access is on)."""
    _text_option(value)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise typer.BadParameter(f"{value!r} is neither a local path nor an image reference")
    if _path_kind(Path(value).expanduser()) != "missing":
        return str(Path(value).expanduser().resolve())
    if value.startswith(("/", "./", "../", "~")) or value.endswith((".tar", ".tar.gz")):
        raise typer.BadParameter(f"{value} does not exist")
    return value


_POLICY_MAX_BYTES = 1 << 20


def _policy_file(value: str) -> Path:
    """``--policy``: a text (UTF-8 YAML) file if it exists; a missing one is reported by the
    command that needs the policy (``load_gate_policy`` names it)."""
    path = _path_text(value)
    kind = _path_kind(path)
    if kind == "dir":
        raise typer.BadParameter(f"{path} is a directory, not a policy file")
    if kind != "missing":
        if kind != "file":
            raise typer.BadParameter(f"{path} is not a regular file")
        if path.stat().st_size > _POLICY_MAX_BYTES:
            raise typer.BadParameter(f"{path} is larger than 1 MiB: not a policy file")
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise typer.BadParameter(f"{path} is not a text (UTF-8 YAML) file") from None
    return path


def _local_registry_path(uri: str) -> Path | None:
    """The directory a registry URI names, or ``None`` for a remote (s3://) one."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme in ("", None) or len(parsed.scheme) == 1:
        return Path(uri).expanduser()
    return None


def _registry_option(value: str | None) -> str | None:
    """``--registry``: not empty; a local one that exists must be a directory."""
    if value is None:
        return None
    _text_option(value)
    path = _local_registry_path(value)
    if path is not None and _path_kind(path) not in ("missing", "dir"):
        raise typer.BadParameter(f"{path} is a file, not a registry directory")
    return value


def _severity_option(value: list[str] | None) -> list[str] | None:
    """``--fail-on``: each one of the scan policy's severities (case-insensitive)."""
    from secmlops.controls.image_scan.policy import SEVERITIES

    for item in value or []:
        if item.upper() not in SEVERITIES:
            raise typer.BadParameter(
                f"{item!r} is not a severity; use one of {', '.join(SEVERITIES)}"
            )
    return value


RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--registry",
        parser=_registry_option,
        help="Registry: directory, file:///path or s3://bucket/prefix [env SECMLOPS_REGISTRY].",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint-url",
        parser=_text_option,
        help="S3 API endpoint (MinIO, moto, ...) [env SECMLOPS_S3_ENDPOINT_URL].",
    ),
]
KeysOpt = Annotated[
    Path | None,
    typer.Option(
        "--keys",
        parser=_dir_or_new,
        help="Key directory (default .secmlops/keys) [env SECMLOPS_KEYS].",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@app.callback()
def _common(
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Tracebacks and debug logs.")
    ] = False,
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            parser=_policy_file,
            help="Policy file (default secmlops-policy.yaml) [env SECMLOPS_POLICY].",
        ),
    ] = None,
) -> None:
    _use_options(registry=registry, s3_endpoint_url=s3_endpoint_url, keys=keys, policy=policy)
    _state.update(verbose=verbose)
    # Our own modules log through one stderr handler; Prefect configures its own loggers.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("secmlops", "tasks", "flows", "blocks", "ml"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
        logger.propagate = False


class _WithoutTraceback(logging.Formatter):
    """Wraps a console formatter so log records print without tracebacks (``-v`` shows them).

    The record is restored afterwards, so other handlers (Prefect's API log handler, which
    feeds the UI) still get the full traceback.
    """

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _quiet_console_tracebacks() -> None:
    if _state["verbose"]:
        return
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            is_console = isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            )
            if is_console and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))


def _keys(keys: Path | None) -> KeyDirectory:
    from secmlops.evidence.keys import KeyDirectory
    from secmlops.settings import current_settings

    _use_options(keys=keys)
    root = current_settings().paths.keys
    if root.exists() and not root.is_dir():  # also SECMLOPS_KEYS, which no option parser saw
        raise InputError(
            f"the key directory {root} is a file, not a directory",
            where="--keys / SECMLOPS_KEYS",
            fix="point --keys (or SECMLOPS_KEYS) at a key directory",
        )
    return KeyDirectory(root)


def _models(model: str, registry: str | None, endpoint: str | None) -> ModelRegistry:
    from secmlops.registry.models import ModelRegistry
    from secmlops.registry.stores import open_registry
    from secmlops.settings import current_settings

    _use_options(registry=registry, s3_endpoint_url=endpoint)
    settings = current_settings()
    uri = settings.registry_uri()
    local = _local_registry_path(uri)
    if local is not None and (settings.registry is not None or local.exists()):
        # A registry someone named must exist: a typo'd path is bad input, not "nothing is
        # deployed" (the default local registry may not exist yet: it is just empty).
        what = "--registry / SECMLOPS_REGISTRY"
        if not local.exists():
            raise InputError(
                f"the registry {local} does not exist",
                where=what,
                fix="check the path, or use the registry the pipeline registered to",
            )
        if not local.is_dir():
            raise InputError(
                f"the registry {local} is a file, not a directory", where=what, fix="check the path"
            )
    return ModelRegistry(open_registry(uri, s3_endpoint_url=settings.s3_endpoint_url), model)


def _import_project_code(*, need_flow: bool = True) -> None:
    """Make the project's own Prefect layer and ML code (flows/, blocks/, ml/) importable.

    ``secmlops run`` runs the project's pipeline, not one shipped in this library: the flow
    lives in the project checkout (``flows/training.py``), as on a Prefect worker. A schema
    given as ``module:Class`` is the project's code too.
    """
    from secmlops.settings import project_root

    root = project_root()
    if need_flow and not (root / "flows" / "training.py").is_file():
        raise InputError(
            f"{root} holds no flows/training.py to run",
            where=str(root),
            fix="run from the project checkout, or set SECMLOPS_PROJECT_DIR to it",
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def _emit(obj: Any, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
    else:
        typer.echo(text)


@app.command()
def run(
    model: Annotated[str, typer.Option(help="Model name in the registry.")] = "churn-classifier",
    approve_as: Annotated[
        str | None,
        typer.Option(
            "--approve-as",
            callback=_approver_option,
            help="Decide up front: answer each approval pause with a decision signed by "
            "NAME's key (an allowed approver), as `secmlops approve` would. Without it, "
            "the run waits for a decision (policy approval.timeout_seconds).",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            parser=_text_option,
            help="Dataset: a name of the policy's sources.datasets (default: the first).",
        ),
    ] = None,
    data_rev: Annotated[
        str | None,
        typer.Option(
            parser=_text_option,
            help="Data version: a git tag or full commit (default: the entry's rev).",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            parser=_text_option, help="Serving image: a name of the policy's sources.images."
        ),
    ] = None,
    registry_name: Annotated[
        str | None,
        typer.Option(
            "--registry-name",
            parser=_text_option,
            help="Registry: a name of the policy's sources.registries (default: the first; "
            "an entry with no uri uses --registry / SECMLOPS_REGISTRY).",
        ),
    ] = None,
    staging_only: Annotated[
        bool, typer.Option("--staging-only", help="Stop after the staging smoke test.")
    ] = False,
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole secure pipeline once (what `make demo` runs)."""
    _import_project_code()
    from flows.training import secure_training
    from secmlops.local_prefect import start_local_api

    _use_options(registry=registry, s3_endpoint_url=s3_endpoint_url)
    # The approver's key first: a missing one is bad input before anything else happens.
    approver_key = _approver_key(approve_as) if approve_as else None
    # Names only: what each name points at is the site's (the policy file's sources:). They
    # are resolved here first, so a wrong one is bad input (exit 2) naming the allowed ones;
    # the flow resolves them again on its own.
    from secmlops.policy import load_gate_policy
    from secmlops.selection import RunSelection

    selection = RunSelection.resolve(
        load_gate_policy().sources,
        model_name=model,
        dataset=dataset,
        data_rev=data_rev,
        image=image,
        registry=registry_name,
        promote_to_production=not staging_only,
    )
    parameters = {k: v for k, v in selection.parameters.items() if v is not None}
    _quiet_console_tracebacks()
    start_local_api()
    import uuid

    from secmlops.remote_approval import ApprovalAgent

    run_name = f"cli-{uuid.uuid4().hex[:12]}"
    agent = ApprovalAgent(
        run_name,
        approver=approve_as,
        private_key=approver_key,
        reason=f"decided up front: secmlops run --approve-as {approve_as}",
        say=lambda text: typer.echo(text, err=True),
    )
    with agent:
        result = secure_training.with_options(flow_run_name=run_name)(**parameters)
    _emit(result, as_json, _render_run(result))


def _approver_key(name: str) -> Path:
    """``name``'s private key; for the embedded default's demo keys, made if the policy lists
    ``name`` as an approver (site keys are never generated)."""
    from secmlops.evidence.keys import check_approver_name
    from secmlops.policy import load_gate_policy
    from secmlops.settings import current_settings

    check_approver_name(name)
    paths = current_settings().paths
    keys = _keys(None)
    if not paths.demo_keys:  # a site's key: only ever looked up, before anything else
        return keys.require(keys.approver_private(name))
    policy = load_gate_policy()
    allowed = {n for stage in ("staging", "production") for n in policy.approval.allowed(stage)}
    if paths.demo_keys and name in allowed:
        keys.ensure(approvers=(name,))
    return keys.require(keys.approver_private(name))


@app.command()
def approve(
    flow_run_id: Annotated[
        str, typer.Argument(parser=_text_option, help="The paused run's id (from the UI).")
    ],
    key: Annotated[
        Path,
        typer.Option("--key", parser=_existing_file, help="Your approver private key (PEM)."),
    ],
    approve_run: Annotated[
        bool | None,
        typer.Option("--approve/--reject", help="Approve, or reject, what the run waits for."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why; recorded in the signed evidence.")] = "",
    approver: Annotated[
        str | None,
        typer.Option(
            "--as",
            callback=_approver_option,
            help="Approver name (default: the key file's name).",
        ),
    ] = None,
) -> None:
    """Sign a decision on a paused run's approval and resume it (needs PREFECT_API_URL)."""
    from secmlops.local_prefect import configured_api_url
    from secmlops.remote_approval import submit_decision

    if approve_run is None:
        raise InputError("say --approve or --reject", where="approve", fix="add one of them")
    if not configured_api_url():
        raise InputError(
            "no Prefect server is configured",
            where="PREFECT_API_URL",
            fix="set PREFECT_API_URL to the server the paused run belongs to",
        )
    name = approver or key.name.removesuffix(".pem")
    outcome = submit_decision(
        flow_run_id, private_key=key, approver=name, approve=approve_run, reason=reason
    )
    typer.echo(f"accepted: {outcome.detail}")


def _render_run(result: dict[str, Any]) -> str:
    # The flow already logged the stage-by-stage summary; end with where to look next.
    return (
        f"model {result['model']} {result['version']} registered in {result['registry']} "
        f"({result['seconds']:.1f}s). Evidence: "
        f"secmlops evidence {result['model']} {result['version']}"
    )


@app.command()
def validate(
    data: Annotated[
        Path, typer.Argument(parser=_existing_file, help="Dataset file (.csv or .parquet).")
    ],
    schema: Annotated[
        str,
        typer.Option(
            parser=_text_option,
            help="pandera schema 'module:Class' or 'file.py:Class' (pandera.pandas or "
            "pandera.polars).",
        ),
    ],
    quarantine_dir: Annotated[
        Path | None,
        typer.Option(
            parser=_dir_or_new,
            help="Where the clean and quarantined rows go when the schema's quarantine "
            "policy applies (default: beside the dataset).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a dataset against a pandera schema (exit 0 passed, 1 refused, 2 bad input).

    A polars schema scans Parquet lazily; a pandas schema reads the file into pandas.
    """
    from secmlops.controls.validation import validate_dataset

    _import_project_code(need_flow=False)
    result = validate_dataset(data, schema, quarantine_dir=quarantine_dir)
    text = (
        f"PASSED: {data} ({result.rows} rows, sha256 {result.data_sha256[:12]}…) "
        f"matches {result.schema_name} ({result.backend})"
    )
    if result.quarantine is not None:
        text += f"\nQUARANTINED: {result.quarantine.describe()}"
        text += "".join(f"\n  - {f.describe()}" for f in result.quarantine.failures)
        text += f"\ntrain on: {result.quarantine.clean_path}"
    _emit(result.to_json(), as_json, text)


@app.command("scan-image")
def scan_image(
    target: Annotated[
        str,
        typer.Argument(
            parser=_image_target, help="Image reference, docker-archive tar or OCI layout dir."
        ),
    ],
    trivy_cache: Annotated[
        Path | None,
        typer.Option(parser=_dir_or_new, help="Trivy cache dir holding db/trivy.db."),
    ] = None,
    seed_demo_db: Annotated[
        bool, typer.Option(help="Seed the cache with the offline demo DB if empty.")
    ] = False,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(callback=_severity_option, help="Blocking severity (repeatable)."),
    ] = None,
    ignore_unfixed: Annotated[
        bool, typer.Option(help="Ignore vulnerabilities with no fix.")
    ] = False,
    registry_access: Annotated[
        bool,
        typer.Option(help="Let Trivy pull TARGET from its registry (default: local only)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Scan a container image with Trivy and judge it against the scan policy.

    The DB must be one the policy accepts (``sources.trivy_db.sha256``, or the demo DB
    with ``scan.unsafe_allow_curated_db``)."""
    from secmlops.controls.image_scan import ScanPolicy, enforce_scan_policy
    from secmlops.controls.image_scan import scan_image as run_scan
    from secmlops.demo.trivy_db import seed_demo_trivy_db
    from secmlops.policy import load_gate_policy
    from secmlops.settings import local_paths

    cache = trivy_cache or local_paths().trivy_cache
    if seed_demo_db:
        seed_demo_trivy_db(cache)
    overrides: dict[str, Any] = {}
    if fail_on:
        overrides["fail_on"] = tuple(s.upper() for s in fail_on)
    if ignore_unfixed:
        overrides["ignore_unfixed"] = True
    gate_policy = load_gate_policy()
    base = gate_policy.scan
    policy = ScanPolicy.model_validate({**base.model_dump(), **overrides})
    result = run_scan(target, cache_dir=cache, policy=policy, registry_access=registry_access)
    try:
        verdict = enforce_scan_policy(
            result, policy, trusted_db_sha256=gate_policy.sources.trivy_db.sha256
        )
    except ControlRefused:
        if as_json:
            typer.echo(json.dumps(result.to_json(), indent=2, default=str))
        raise
    _emit(
        {"scan": result.to_json(), "verdict": verdict.to_json()},
        as_json,
        f"PASSED: {target} (sha256 {result.image_digest[:12]}…): {verdict.summary()}",
    )


@app.command("scan-model")
def scan_model(
    path: Annotated[Path, typer.Argument(parser=_existing_dir, help="Model directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Scan model files for unsafe serialization (pickle, unknown formats)."""
    from secmlops.controls.model_scan import scan_model_files

    result = scan_model_files(path)
    _emit(
        result.to_json(),
        as_json,
        f"PASSED: {len(result.files)} files in {path} are safe formats "
        f"(model sha256 {result.model_digest[:12]}…)",
    )


def _sign_method_option(value: str) -> str:
    """``sign --method``: key, certificate or sigstore."""
    _text_option(value)
    if value not in ("key", "certificate", "sigstore"):
        raise typer.BadParameter(
            f"{value[:60]!r} is not a method; use key, certificate or sigstore"
        )
    return value


def _signed_at_option(value: str) -> Any:
    """``--signed-at``: an ISO 8601 time with a time zone (e.g. 2026-01-31T12:00:00Z)."""
    import datetime as dt

    _text_option(value)
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value[:60]!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise typer.BadParameter(f"{value[:60]!r} has no time zone (add Z or +00:00)")
    return when


#: Units of ``--shard-size`` (binary: 256M is 256 MiB).
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MIN_SHARD = 1 << 20


def _shard_size_option(value: str) -> int:
    """``--shard-size``: bytes, or a number with K, M, G or T (KiB, MiB, GiB, TiB; an
    optional ``iB``/``B``), at least 1M (smaller shards only bloat the signature)."""
    import re

    _text_option(value)
    match = re.fullmatch(r"\s*([0-9]{1,16})\s*([KMGT]?)(?:i?B)?\s*", value, re.IGNORECASE)
    if match is None:
        raise typer.BadParameter(
            f"{value[:60]!r} is not a size; use bytes or a number with K, M, G (e.g. 256M, 1G)"
        )
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if size < _MIN_SHARD:
        raise typer.BadParameter(
            f"{value[:60]!r} is {size} bytes; a shard is at least 1M (1048576 bytes)"
        )
    return size


@app.command()
def sign(
    model_dir: Annotated[
        Path, typer.Argument(parser=_existing_dir, help="Model directory to sign.")
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method", parser=_sign_method_option, help="key, certificate or sigstore (keyless)."
        ),
    ] = "key",
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", parser=_existing_file, help="PEM EC private key (key and certificate)."
        ),
    ] = None,
    certificate: Annotated[
        Path | None,
        typer.Option(
            parser=_existing_file, help="Signing certificate (PEM; --method certificate)."
        ),
    ] = None,
    certificate_chain: Annotated[
        list[Path] | None,
        typer.Option(
            parser=_existing_file,
            help="CA certificates of the chain (PEM; repeatable; --method certificate).",
        ),
    ] = None,
    trust_config: Annotated[
        Path | None,
        typer.Option(
            parser=_existing_file,
            help="Sigstore client trust config (--method sigstore; default: public instance).",
        ),
    ] = None,
    signature: Annotated[
        Path | None,
        typer.Option(parser=_file_or_new, help="Signature file (default MODEL_DIR.sig)."),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(
            "--shard-size",
            parser=_shard_size_option,
            help="Sign a sharded manifest (e.g. 256M, 1G): faster for very large single "
            "files; verifies with secmlops and model-signing's library, not its 1.1.1 CLI.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign a model directory (OpenSSF model-signing bundle) with a key, a certificate, or
    Sigstore keyless (an ambient OIDC token; needs network access to Fulcio and Rekor)."""
    needs = {
        "key": {"--key": key},
        "certificate": {"--key": key, "--certificate": certificate},
        "sigstore": {},
    }[method]
    allowed = {
        "key": {"--key"},
        "certificate": {"--key", "--certificate", "--certificate-chain"},
        "sigstore": {"--trust-config"},
    }[method]
    given = {
        name
        for name, value in (
            ("--key", key),
            ("--certificate", certificate),
            ("--certificate-chain", certificate_chain),
            ("--trust-config", trust_config),
        )
        if value
    }
    missing = [name for name, value in needs.items() if value is None]
    if missing or given - allowed:
        problem = (
            f"needs {' and '.join(missing)}"
            if missing
            else f"does not take {', '.join(sorted(given - allowed))}"
        )
        raise InputError(
            f"sign --method {method} {problem}",
            fix="key: --key; certificate: --key, --certificate [--certificate-chain]; "
            "sigstore: [--trust-config]",
        )
    out = signature or model_dir.parent / f"{model_dir.name}.sig"
    if method == "sigstore":
        from secmlops.controls.signing_sigstore import sign_model_keyless

        signed = sign_model_keyless(
            model_dir, signature=out, trust_config=trust_config, shard_size=shard_size
        )
    else:
        from secmlops.controls.signing import (
            CertificateSigner,
            KeySigner,
            ModelSigner,
            sign_model_with,
        )

        assert key is not None  # noqa: S101 - checked above
        signer: ModelSigner = (
            CertificateSigner.from_files(
                key, certificate=certificate, chain=list(certificate_chain or [])
            )
            if method == "certificate" and certificate is not None
            else KeySigner.from_pem(key)
        )
        signed = sign_model_with(model_dir, signer=signer, signature=out, shard_size=shard_size)
    manifest = "files" if shard_size is None else f"shards of {shard_size} bytes"
    _emit(
        {"model": str(model_dir), **signed.to_json()},
        as_json,
        f"signed {model_dir} ({method}, {manifest}; model digest {signed.model_digest}) -> {out}",
    )


@app.command()
def verify(
    model_dir: Annotated[Path, typer.Argument(parser=_existing_dir, help="Model directory.")],
    signature: Annotated[
        Path, typer.Option(parser=_existing_file, help="model-signing signature bundle.")
    ],
    public_key: Annotated[
        list[Path] | None,
        typer.Option(parser=_existing_file, help="Trusted PEM EC public key (repeatable)."),
    ] = None,
    certificate_chain: Annotated[
        list[Path] | None,
        typer.Option(
            parser=_existing_file,
            help="Trusted CA certificates, PEM (repeatable, or one bundle file); "
            "self-signed ones are the roots.",
        ),
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option(parser=_text_option, help="Sigstore keyless signer identity (SAN)."),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option(parser=_text_option, help="OIDC issuer URL of the keyless signer."),
    ] = None,
    trust_config: Annotated[
        Path | None,
        typer.Option(
            parser=_existing_file,
            help="Sigstore client trust config (default: the public instance, pinned offline).",
        ),
    ] = None,
    require_rekor: Annotated[
        bool, typer.Option(help="Keyless: require a Rekor-witnessed signing time.")
    ] = False,
    signed_at: Annotated[
        Any,
        typer.Option(
            parser=_signed_at_option,
            help="Certificate method: check validity at this signing time (default: now).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a model directory's model-signing signature against who is trusted: public
    keys, a CA chain, or a Sigstore identity (offline)."""
    from secmlops.controls.signer_trust import SignerTrust, verify_signed_model

    methods = [
        name
        for name, given in (
            ("--public-key", public_key),
            ("--certificate-chain", certificate_chain),
            ("--identity/--issuer", identity or issuer or trust_config or require_rekor),
        )
        if given
    ]
    fix = (
        "give exactly one of --public-key PUB, --certificate-chain CA.pem, "
        "or --identity ID --issuer URL [--trust-config FILE] [--require-rekor]"
    )
    if len(methods) != 1:
        what = "no signer to trust" if not methods else f"both {' and '.join(methods)}"
        raise InputError(f"verify got {what}", fix=fix)
    if (identity or issuer or trust_config or require_rekor) and not (identity and issuer):
        raise InputError("verify needs --identity and --issuer together", fix=fix)
    if signed_at is not None and not certificate_chain:
        raise InputError("--signed-at applies to --certificate-chain only", fix=fix)
    trust = SignerTrust.from_files(
        public_keys=public_key or [],
        certificate_chain=certificate_chain or [],
        identities=[(identity, issuer)] if identity and issuer else [],
        trust_config=trust_config,
        require_rekor=require_rekor,
        source="command-line options",
    )
    # Each byte hashed once: a sharded signature reports its manifest's digest, not the
    # whole-file tree_digest (docs/signing.md, "files or shards").
    signer = verify_signed_model(
        model_dir, signature=signature, trust=trust, signed_at=signed_at, whole_files=False
    )
    by = f"{signer.identity}" + (f" ({signer.issuer})" if signer.issuer else "")
    _emit(
        {"model": str(model_dir), "signature": str(signature), **signer.to_json()},
        as_json,
        f"PASSED: {model_dir} matches {signature}, signed by {signer.method} {by}",
    )


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version, e.g. v2.")],
    stage: Annotated[str, typer.Option(help="staging or production.")],
    approve_as: Annotated[
        str | None,
        typer.Option(callback=_approver_option, help="Record your approval first as NAME."),
    ] = None,
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait-for-approval",
            help="If the version lacks approvals for the stage, run the promote flow and "
            "pause for them (answer with `secmlops approve`, as the run prints).",
        ),
    ] = False,
) -> None:
    """Promote a version to a stage through the deploy gate."""
    if wait:
        _promote_waiting(model, version, stage, registry, s3_endpoint_url, keys)
        return
    from secmlops.operations import promote_version

    pointer = promote_version(
        _models(model, registry, s3_endpoint_url),
        version,
        stage,
        keys=_keys(keys),
        approve_as=approve_as,
    )
    typer.echo(f"{model} {stage} -> {pointer.version} (VSA {pointer.vsa})")


def _promote_waiting(
    model: str,
    version: str,
    stage: str,
    registry: str | None,
    s3_endpoint_url: str | None,
    keys: Path | None,
) -> None:
    """``promote --wait-for-approval``: the `promote` operator flow, run here, pausing for
    approvals the gate lacks; the run prints how to answer from another shell."""
    import uuid

    from secmlops.controls.approval import check_stage
    from secmlops.local_prefect import start_local_api
    from secmlops.remote_approval import ApprovalAgent

    checked = check_stage(stage)
    _use_options(registry=registry, s3_endpoint_url=s3_endpoint_url, keys=keys)
    _import_project_code()
    from flows.operations import promote as promote_flow

    _quiet_console_tracebacks()
    start_local_api()
    run_name = f"cli-promote-{uuid.uuid4().hex[:12]}"
    agent = ApprovalAgent(
        run_name,
        approver=None,
        private_key=None,
        reason="",
        say=lambda text: typer.echo(text, err=True),
    )
    with agent:
        pointer = promote_flow.with_options(flow_run_name=run_name)(
            version=version, model=model, stage=checked
        )
    typer.echo(f"{model} {stage} -> {pointer['version']} (VSA {pointer['vsa']['key']})")


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    stage: Annotated[str, typer.Option(help="staging or production.")],
    to_version: Annotated[
        str | None,
        typer.Option(parser=_version_option, help="Earlier version (default: the previous)."),
    ] = None,
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Move a stage back to the version it served before, through the same gate."""
    from secmlops.operations import rollback_version

    pointer = rollback_version(
        _models(model, registry, s3_endpoint_url), stage, keys=_keys(keys), to_version=to_version
    )
    typer.echo(f"{model} {stage} rolled back -> {pointer.version} (VSA {pointer.vsa})")


@app.command("verify-stage")
def verify_stage_cmd(
    model: Annotated[str, typer.Argument(help="Model name.")],
    stage: Annotated[str, typer.Option(help="staging or production.")] = "production",
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Re-verify what the signed stage history says the stage serves through the "
            "full gate and re-sign its pointer (new expiry); the answer to an expired pointer.",
        ),
    ] = False,
) -> None:
    """Re-verify what a stage serves now (signed, fresh pointer + its VSA + the full deploy
    gate); exit 1 if not."""
    from secmlops.operations import refresh_stage_pointer, verify_stage

    run = refresh_stage_pointer if refresh else verify_stage
    pointer, report = run(_models(model, registry, s3_endpoint_url), stage, keys=_keys(keys))
    done = (
        f"re-signed (sequence {pointer.sequence}, expires {pointer.expires_at})" if refresh else ""
    )
    typer.echo(
        f"PASSED: {model} {stage} serves {pointer.version}; {len(report.checks)} gate checks pass"
        + (f"; pointer {done}" if done else "")
    )


@app.command()
def evidence(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version, e.g. v1.")],
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Judge a version with the deploy gate (the full gate for each stage serving it, else
    its build checks) and show every evidence bundle; exit 1 unless all of it verifies."""
    from secmlops.report import evidence_report, render_report, require_all_verified

    report = evidence_report(_models(model, registry, s3_endpoint_url), version, _keys(keys))
    _emit(report, as_json, render_report(report))
    require_all_verified(report)


@app.command()
def keygen(
    approver: Annotated[
        list[str] | None,
        typer.Option(
            "--approver",
            callback=_approver_option,
            help="Also create a key for NAME (repeatable).",
        ),
    ] = None,
    keys: KeysOpt = None,
) -> None:
    """Create missing demo keys (policy-owner, model-signer, attestor, gate, approvers).

    Private keys are unencrypted (demo only), written mode 0600 next to a .gitignore; existing
    keys are never replaced. The key directory's trust-root.yaml lists every key (demo: true);
    a trust root kept elsewhere (SECMLOPS_TRUST_ROOT) is the site's and is left alone.
    """
    directory = _keys(keys)
    created = directory.ensure(approvers=tuple(approver or ()))
    for path in created:
        typer.echo(f"created {path} (+ {path.with_suffix('.pub').name})")
    if not created:
        typer.echo(f"all keys already exist in {directory.root}")
    if directory.owns_trust_root():
        typer.echo(f"demo trust root: {directory.trust_root_file} (`secmlops trust show`)")
    elif created:
        typer.echo(
            f"the trust root {directory.trust_root_file} is the site's: list the new keys with "
            "`secmlops trust add-key ROLE PUB.pem` if they are to be trusted"
        )


@app.command()
def new(
    dest: Annotated[Path, typer.Argument(help="Directory of the new project (new or empty).")],
    defaults: Annotated[
        bool, typer.Option("--defaults", help="Ask nothing: every default, except --data answers.")
    ] = False,
    data: Annotated[
        list[str] | None,
        typer.Option("--data", help="Answer a question: NAME=VALUE (repeatable)."),
    ] = None,
    vcs_ref: Annotated[
        str | None,
        typer.Option("--vcs-ref", help="Template version: a git tag or commit (default: HEAD)."),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template",
            help="Template repository: a clone or git URL (default: this secmlops checkout).",
        ),
    ] = None,
) -> None:
    """Render a new secure pipeline project from the template (copier), then print what next."""
    from secmlops.new import new_project, next_steps_text, parse_data_options

    project = new_project(
        dest,
        defaults=defaults,
        data=parse_data_options(data or []),
        vcs_ref=vcs_ref,
        template=template,
    )
    typer.echo(next_steps_text(project))


audit_app = typer.Typer(name="audit", help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app)


@audit_app.command("verify")
def audit_verify(
    model: Annotated[str, typer.Argument(help="Model name.")],
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Walk a model's audit chain: every signature, gaps (deleted entries), forged or replaced
    entries, intents without an outcome (a crash mid-promotion); exit 1 on any problem."""
    from secmlops.audit import render_audit_report, require_clean, verify_audit_log

    report = verify_audit_log(_models(model, registry, s3_endpoint_url), _keys(keys))
    _emit(report.to_json(), as_json, render_audit_report(report))
    require_clean(report)


trust_app = typer.Typer(
    name="trust",
    help="The trust root: which public keys each role and approver may sign with, and when.",
    no_args_is_help=True,
)
app.add_typer(trust_app)


def _time_option(value: str | None, option: str) -> Any:
    """An ISO 8601 time option (``now`` allowed), as an aware UTC datetime."""
    import datetime as dt

    from secmlops.evidence.statements import parse_time

    if value is None:
        return None
    when = dt.datetime.now(dt.UTC) if value == "now" else parse_time(value)
    if when is None:
        raise InputError(
            f"{option} {value!r} is not a time",
            where=option,
            fix="give an ISO 8601 time, e.g. 2025-07-01T00:00:00Z, or 'now'",
        )
    return when


@trust_app.command("show")
def trust_show(keys: KeysOpt = None, as_json: JsonOpt = False) -> None:
    """List each role's and approver's keys: key id, validity window, demo flag, source."""
    directory = _keys(keys)
    root = directory.trust_root()
    rows = [
        {
            "subject": entry.subject,
            "key_id": entry.key_id,
            "not_before": entry.window.not_before,
            "not_after": entry.window.not_after,
            "demo": entry.demo,
            "source": entry.source,
        }
        for subject in root.subjects()
        for entry in root.entries_for(subject)
    ]
    certificates = [
        {
            "subject": ca.subject,
            "fingerprint": ca.fingerprint,
            "ca": ca.name,
            "certificate_not_before": ca.certificate.not_valid_before_utc,
            "certificate_not_after": ca.certificate.not_valid_after_utc,
            "not_before": ca.window.not_before,
            "not_after": ca.window.not_after,
            "demo": ca.demo,
            "source": ca.source,
        }
        for ca in root.certificates
    ]
    identities = [
        {
            "subject": i.subject,
            "identity": i.identity,
            "issuer": i.issuer,
            "trust_config": i.trust_config,
            "require_rekor": i.require_rekor,
            "not_before": i.window.not_before,
            "not_after": i.window.not_after,
        }
        for i in root.identities
    ]
    lines = [f"trust root {root.path}"]
    for subject in root.subjects():
        lines.append(f"  {subject}:")
        for entry in root.entries_for(subject):
            flags = " demo" if entry.demo else ""
            source = f" ({entry.source})" if entry.source else ""
            lines.append(f"    {entry.key_id[:16]}  valid {entry.window.describe()}{flags}{source}")
        for ca in (c for c in root.certificates if c.subject == subject):
            flags = " demo" if ca.demo else ""
            lines.append(
                f"    CA {ca.fingerprint[:16]}  {ca.name}  valid {ca.window.describe()}{flags}"
            )
        for i in (i for i in root.identities if i.subject == subject):
            rekor = "Rekor entry required" if i.require_rekor else "no Rekor entry required"
            lines.append(
                f"    identity {i.identity}  issuer {i.issuer}  trust {i.trust_config}; "
                f"{rekor}; valid {i.window.describe()}"
            )
    _emit(
        {
            "path": str(root.path),
            "keys": rows,
            "certificates": certificates,
            "identities": identities,
        },
        as_json,
        "\n".join(lines),
    )


@trust_app.command("add-key")
def trust_add_key(
    role: Annotated[
        str,
        typer.Argument(help="policy-owner, attestor, model-signer, gate, or approver:NAME."),
    ],
    public_key: Annotated[
        str, typer.Argument(help="PEM public key file, or kms:KEY_ID_OR_ARN (its public key).")
    ],
    not_before: Annotated[
        str | None, typer.Option("--not-before", help="Valid from (ISO 8601 or 'now').")
    ] = None,
    not_after: Annotated[
        str | None, typer.Option("--not-after", help="Valid until (ISO 8601 or 'now').")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Mark it a demo key (a production policy refuses it).")
    ] = False,
    keys: KeysOpt = None,
) -> None:
    """Accept a public key for a role or approver (rotation: add the new key, then retire the
    old one). The trust root is created if missing; one key for two roles is refused."""
    from secmlops.evidence.signers import public_key_of

    root = _trust_root(keys)
    public = public_key_of(public_key)
    updated = root.with_key(
        role,
        public,
        not_before=_time_option(not_before, "--not-before"),
        not_after=_time_option(not_after, "--not-after"),
        demo=demo,
        source=public_key,
    )
    updated.save()
    entry = updated.entries[-1]
    typer.echo(
        f"{role}: added key {entry.key_id[:16]}… (valid {entry.window.describe()}) to {root.path}"
    )


def _trust_root(keys: Path | None) -> TrustRoot:
    """The key directory's trust root, or a new empty one at its path (saved by the caller)."""
    from secmlops.evidence.trust_root import TrustRoot

    path = _keys(keys).trust_root_file
    return TrustRoot.load(path) if path.exists() else TrustRoot(path)


@trust_app.command("add-ca")
def trust_add_ca(
    certificate: Annotated[
        Path,
        typer.Argument(help="PEM CA certificate of the PKI issuing model-signing certificates."),
    ],
    not_before: Annotated[
        str | None, typer.Option("--not-before", help="Valid from (ISO 8601 or 'now').")
    ] = None,
    not_after: Annotated[
        str | None, typer.Option("--not-after", help="Valid until (ISO 8601 or 'now').")
    ] = None,
    keys: KeysOpt = None,
) -> None:
    """Trust models signed with a certificate issued under this CA (role model-signer; the
    leaf is checked at the release's signed time)."""
    from secmlops.controls.signer_trust import load_certificates

    loaded = load_certificates(certificate, "CA certificate")
    if len(loaded) != 1:
        raise InputError(
            f"{certificate} holds {len(loaded)} certificates",
            where=str(certificate),
            fix="add each CA certificate on its own",
        )
    root = _trust_root(keys)
    updated = root.with_ca_certificate(
        loaded[0],
        not_before=_time_option(not_before, "--not-before"),
        not_after=_time_option(not_after, "--not-after"),
        source=str(certificate),
    )
    updated.save()
    ca = updated.certificates[-1]
    typer.echo(f"model-signer: added CA {ca.name} ({ca.fingerprint[:16]}…) to {root.path}")


@trust_app.command("add-identity")
def trust_add_identity(
    identity: Annotated[
        str, typer.Argument(help="Certificate identity (SAN): an email or a workflow URI.")
    ],
    issuer: Annotated[str, typer.Option("--issuer", help="OIDC issuer URL (https://...).")],
    trust_config: Annotated[
        str,
        typer.Option(
            "--trust-config",
            help="'sigstore-production' or a Sigstore client trust config file (private instance).",
        ),
    ] = "sigstore-production",
    no_rekor: Annotated[
        bool,
        typer.Option("--no-rekor", help="Do not require a Rekor inclusion proof in the bundle."),
    ] = False,
    keys: KeysOpt = None,
) -> None:
    """Trust models signed keyless through Sigstore by IDENTITY from --issuer (role
    model-signer; verified offline against the trust config)."""

    root = _trust_root(keys)
    if trust_config != "sigstore-production":
        trust_config = str(Path(trust_config).resolve())  # given relative to here
    updated = root.with_identity(
        identity, issuer, trust_config=trust_config, require_rekor=not no_rekor
    )
    updated.save()
    typer.echo(f"model-signer: added Sigstore identity {identity} (issuer {issuer}) to {root.path}")


@trust_app.command("retire")
def trust_retire(
    role: Annotated[str, typer.Argument(help="The role or approver:NAME the key belongs to.")],
    key_id: Annotated[str, typer.Argument(help="Its key id (or a unique prefix, 8+ chars).")],
    at: Annotated[
        str, typer.Option("--at", help="Last moment its signatures count (ISO 8601 or 'now').")
    ],
    keys: KeysOpt = None,
) -> None:
    """End a key's validity window: what it signed until then keeps verifying, nothing later."""
    from secmlops.evidence.trust_root import TrustRoot

    directory = _keys(keys)
    root = TrustRoot.load(directory.trust_root_file)
    updated = root.retire(role, key_id, at=_time_option(at, "--at"))
    updated.save()
    entry = next(e for e in updated.entries_for(role) if e.key_id.startswith(key_id.lower()))
    typer.echo(f"{role}: key {entry.key_id[:16]}… now valid {entry.window.describe()}")


def _add_policy_commands() -> None:
    """``secmlops policy sign|show`` (:mod:`secmlops.policy_cli`; its commands import lazily)."""
    from secmlops.policy_cli import policy_app

    app.add_typer(policy_app)


_add_policy_commands()


@app.command()
def revoke(
    model: Annotated[str, typer.Argument(help="Model name.")],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            parser=_existing_file,
            help="Your private key (PEM): an approver's, or the policy owner's.",
        ),
    ],
    reason: Annotated[
        str,
        typer.Option("--reason", parser=_free_text_option, help="Why; signed into the revocation."),
    ],
    version: Annotated[
        str | None,
        typer.Option(
            "--version", parser=_text_option, help="Revoke this version, for every stage."
        ),
    ] = None,
    approval: Annotated[
        str | None,
        typer.Option(
            "--approval",
            parser=_text_option,
            help="Revoke the approval stored at this registry key.",
        ),
    ] = None,
    key_id: Annotated[
        str | None,
        typer.Option(
            "--key-id",
            parser=_key_id_option,
            help="Revoke this key (its sha256 key id, as bundles name it).",
        ),
    ] = None,
    effective_from: Annotated[
        str | None,
        typer.Option(
            "--from",
            parser=_text_option,
            help="With --key-id: refuse what it signed from then (default now).",
        ),
    ] = None,
    approver: Annotated[
        str | None,
        typer.Option(
            "--as",
            callback=_approver_option,
            help="Approver name (default: the key file's name; the owner's key signs as "
            "policy-owner).",
        ),
    ] = None,
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
) -> None:
    """Sign and store a revocation of an approval, a version or a key; the gate then refuses
    it (exit 1 if you may not revoke it)."""
    from secmlops.controls.revocation import revoke as revoke_target
    from secmlops.policy import load_gate_policy

    chosen = [
        (kind, target)
        for kind, target in (("approval", approval), ("version", version), ("key", key_id))
        if target
    ]
    if len(chosen) != 1:
        raise InputError(
            "say what to revoke: exactly one of --version, --approval or --key-id",
            where="revoke",
            fix="e.g. secmlops revoke MODEL --version v3 --reason '...' --key KEY.pem",
        )
    kind, target = chosen[0]
    if effective_from and kind != "key":
        raise InputError("--from applies to --key-id only", where="--from")
    revocation = revoke_target(
        _models(model, registry, s3_endpoint_url),
        kind="approval" if kind == "approval" else "version" if kind == "version" else "key",
        target=target,
        reason=reason,
        private_key=key,
        name=approver,
        keys=_keys(keys),
        policy=load_gate_policy().approval,
        effective_from=effective_from,
    )
    typer.echo(f"revoked {kind} {target}: {revocation.describe()}")


@app.command()
def fetch(
    model: Annotated[str, typer.Argument(help="Model name.")],
    dest: Annotated[
        Path,
        typer.Argument(
            parser=_dir_or_new, help="New or empty directory to put the verified model files in."
        ),
    ],
    stage: Annotated[str, typer.Option(help="staging or production.")] = "production",
    registry: RegistryOpt = None,
    s3_endpoint_url: EndpointOpt = None,
    keys: KeysOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify what a stage serves (signed, fresh pointer, its VSA, the full deploy gate) and
    move the model into DEST only if all of it passed; exit 1 (DEST untouched) if not."""
    from secmlops.consume import fetch as fetch_model

    got = fetch_model(_models(model, registry, s3_endpoint_url), stage, dest, keys=_keys(keys))
    _emit(
        got.to_json(),
        as_json,
        f"FETCHED: {model} {stage} {got.version} sha256:{got.model_digest} -> {got.dest} "
        f"({len(got.files)} files, {len(got.report.checks)} gate checks pass)",
    )


def _is_validation_error(exc: Exception) -> bool:
    """A pydantic ``ValidationError``, without importing pydantic (~50 ms) for commands
    that never load it: if it is not loaded, nothing raised one."""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(exc, pydantic.ValidationError)


def _one_line(text: str) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space)."""
    return " ".join(str(text).split())


def _validation_error_line(exc: Any) -> str:
    """A pydantic ``ValidationError`` as one sentence: the model, then each error's field and
    message (never the multi-line dump with its input values and documentation links)."""
    try:
        errors = exc.errors(include_url=False, include_input=False)
        title = exc.title
    except Exception:  # not the pydantic we know: fall back to its text, on one line
        return _one_line(str(exc))
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return _one_line(f"{title}: " + "; ".join(parts) + more)


def _usage_error_line(exc: Any, argv: list[str] | None) -> str:
    """A click usage error (unknown command or option, bad or missing value) as one line
    naming the command's ``--help``, instead of click's usage block."""
    fmt = getattr(exc, "format_message", None)
    message = _one_line(fmt() if callable(fmt) else str(exc))
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "secmlops"
    return f"bad input: {message}\n  what to do: see `{path} --help`"


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app and map errors to exit codes."""
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from secmlops.local_prefect import configure_prefect_home
    from secmlops.settings import state_home

    configure_prefect_home(state_home())
    try:
        app(args=argv, standalone_mode=False)
    except SecMLOpsError as exc:
        if _state["verbose"]:
            traceback.print_exc()
        if not isinstance(exc, ControlRefused):
            # One sentence: a message built from a parser's text (YAML, pydantic) may span
            # lines. (A refusal's message may be a report, kept as written.)
            exc.message = _one_line(exc.message)
            exc.fix = _one_line(exc.fix) if exc.fix else exc.fix
        exc.where = _one_line(exc.where) if exc.where else exc.where
        typer.echo(exc.diagnostics(), err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 2
    except typer.TyperException as exc:  # click usage errors: unknown command, bad option
        typer.echo(_usage_error_line(exc, argv), err=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if _is_validation_error(exc):
            typer.echo(f"bad input: {_validation_error_line(exc)}", err=True)
            return 2
        if _state["verbose"]:
            traceback.print_exc()
        typer.echo(
            f"tool failure: {type(exc).__name__}: {exc}\n  (rerun with -v for the traceback)",
            err=True,
        )
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
