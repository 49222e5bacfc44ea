"""``secmlops new``: render a new secure pipeline project from the SecMLOps copier template.

The template is part of the repository that holds this library: ``copier.yml`` at its root
(questions in ``templates/copier.yml``), the files in ``templates/project/``, where the
reference pipeline's flows, tasks, blocks, user code and CI are symlinks to the repository's
own files (one source; docs/templates.md). The rendered project depends on this library,
pinned, and never receives a copy of it.

:func:`new_project` renders the template (questions asked on the terminal, or the defaults
and ``data`` answers only), then writes the project's ``uv.lock`` with the uv version its
Makefile pins. A refused answer is an ``InputError`` naming the question (exit 2).

Example::

    project = new_project(Path("../churn-two"), defaults=True, data={"model_name": "churn"})
    print(next_steps_text(project))
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from secmlops.errors import InputError, ToolError

#: What marks a checkout of the template repository (copier.yml at its root).
TEMPLATE_MARKERS = ("copier.yml", "templates/project")
#: The uv the rendered project's Makefile installs (``make .tools/uv/bin/uv``).
PROJECT_UV = Path(".tools/uv/bin/uv")
LOCK_TIMEOUT_SECONDS = 900
#: Variables ``uv lock`` and the Makefile's uv bootstrap may see (indexes, cache, proxies).
_LOCK_ENV_ALLOW = (
    "UV_CACHE_DIR",
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_NATIVE_TLS",
    "UV_OFFLINE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_CONFIG_FILE",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PYENV_ROOT",
    "PYENV_VERSION",
)


def library_checkout() -> Path | None:
    """The checkout this library is installed from, if it holds the template (editable
    installs and ``secmlops`` run from a clone); ``None`` for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if all((root / marker).exists() for marker in TEMPLATE_MARKERS) else None


def parse_data_options(options: Iterable[str]) -> dict[str, str]:
    """``["model_name=churn", ...]`` (the ``--data`` options) as a dict; ``InputError`` for an
    option without ``=`` or with an empty key."""
    answers: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            raise InputError(
                f"--data {option!r} is not key=value",
                where="--data",
                fix="give each answer as --data question=value, e.g. --data model_name=churn",
            )
        answers[key.strip()] = value
    return answers


def new_project(
    dest: Path,
    *,
    defaults: bool = False,
    data: Mapping[str, str] | None = None,
    vcs_ref: str | None = None,
    template: str | None = None,
    lock: bool = True,
) -> Path:
    """Render the template into ``dest`` (absent or empty) and return its absolute path.

    ``defaults``: ask nothing, take each question's default unless ``data`` answers it;
    otherwise the questions are asked on the terminal. ``template``: a checkout path or git
    URL of the template repository (default: the checkout this library is installed from).
    ``vcs_ref``: the template's git tag or commit; default: HEAD of a local checkout (the
    commit its library is at: with a local checkout as template, the project's ``secmlops``
    dependency is that checkout at its version), the latest tag of a git URL. ``lock``: also
    write ``uv.lock`` (needs the package index).
    """
    target = dest.expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(
            f"{target} already exists and is not an empty directory",
            where=str(target),
            fix="name a new directory; to take a newer template into an existing project, "
            "run `copier update` in it (docs/templates.md)",
        )
    source, checkout = _template_source(template)
    answers = dict(data or {})
    if checkout is not None:
        # Scaffolding and library from the same commit: not the latest tag, which may be
        # older than the library this checkout holds.
        vcs_ref = vcs_ref or "HEAD"
        answers.setdefault("secmlops_source", str(checkout))
        answers.setdefault("secmlops_version", checkout_version(checkout))
    if not defaults and not sys.stdin.isatty():
        raise InputError(
            "no terminal to ask the template's questions on",
            where="secmlops new",
            fix="pass --defaults, with --data question=value for each answer to set",
        )
    _render(source, target, answers, defaults=defaults, vcs_ref=vcs_ref)
    if lock:
        write_lock(target, checkout)
    return target


def next_steps_text(project: Path) -> str:
    """What to run after :func:`new_project`: enter the project, commit, demo, test."""
    answers = _answers(project)
    model = answers.get("model_name", "")
    relative = os.path.relpath(project)
    where = shlex.quote(relative if not relative.startswith("../..") else str(project))
    lines = [
        f"Created {project}" + (f" (model {model})." if model else "."),
        "",
        "Next steps:",
        f"  cd {where}",
        "  git init -q && git add -A && git commit -qm 'Render from the SecMLOps template'",
        "  make demo     # the pipeline end to end on the embedded demo",
        "  make test     # a run, and a tampered model refused at promotion",
        "",
        "Then edit ml/ (your schema, stages and model: YOUR CODE HERE), params.yaml and",
        "secmlops-policy.yaml. Newer scaffolding: `.venv/bin/copier update --defaults` in",
        "the committed project; a newer library: `.tools/uv/bin/uv lock --upgrade-package",
        "secmlops` (docs/templates.md of the template repository).",
    ]
    if not (project / "uv.lock").is_file():
        lines.insert(4, "  make .tools/uv/bin/uv && .tools/uv/bin/uv lock")
    if not _template_commit_exists(answers):
        lines += [
            "",
            f"Warning: the template was rendered with uncommitted changes of "
            f"{answers.get('_src_path')}; `copier update` needs a commit of the template "
            "repository (commit there and render again).",
        ]
    return "\n".join(lines)


def checkout_version(checkout: Path) -> str:
    """The ``secmlops`` version a checkout holds (its pyproject.toml)."""
    path = checkout / "pyproject.toml"
    try:
        version = tomllib.loads(path.read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise InputError(
            f"{path} has no [project] version",
            where=str(path),
            fix="point --template at a checkout of the SecMLOps repository",
        ) from exc
    return str(version)


def write_lock(project: Path, checkout: Path | None = None) -> Path:
    """Write ``project/uv.lock`` with ``uv lock``: the uv the Makefile pins (the template
    checkout's or, bootstrapped by ``make``, the project's own), else uv on ``PATH``."""
    from secmlops._internal.toolrun import run_tool

    uv = _project_uv(project, checkout)
    run_tool(
        [uv, "lock", "--quiet"],
        timeout=LOCK_TIMEOUT_SECONDS,
        env_allow=_LOCK_ENV_ALLOW,
        extra_env={"UV_PYTHON_DOWNLOADS": "never", "PATH": _path_without_this_venv()},
        cwd=project,
        what="uv lock",
    )
    return project / "uv.lock"


# -- internals ---------------------------------------------------------------------------------


def _template_source(template: str | None) -> tuple[str, Path | None]:
    """The copier source to render, and the local checkout it is (if it is one)."""
    if template is None:
        checkout = library_checkout()
        if checkout is None:
            raise InputError(
                "this secmlops is not installed from a checkout of the template repository",
                where="secmlops new",
                fix="pass --template with the git URL (or a local clone) of the SecMLOps "
                "repository",
            )
        return str(checkout), checkout
    path = Path(template).expanduser()
    if "://" not in template and not template.startswith("git@") and path.exists():
        path = path.resolve()
        if not all((path / marker).exists() for marker in TEMPLATE_MARKERS):
            raise InputError(
                f"{path} is not a checkout of the SecMLOps template repository",
                where="--template",
                fix="point --template at the repository root (it holds copier.yml)",
            )
        return str(path), path
    return template, None


def _render(
    source: str, target: Path, answers: dict[str, str], *, defaults: bool, vcs_ref: str | None
) -> None:
    copier = _import_copier()
    try:
        with warnings.catch_warnings():
            # Rendering uncommitted template changes: next_steps_text says what that means.
            warnings.filterwarnings("ignore", category=copier.errors.DirtyLocalWarning)
            _run_copy(copier, source, target, answers, defaults=defaults, vcs_ref=vcs_ref)
    except ValueError as exc:
        question, message = _refusal(exc)
        raise InputError(
            f"answer refused: {message}",
            where=f"question {question}" if question else "secmlops new",
            fix="give a valid answer (--data question=value); docs/templates.md lists the "
            "questions and what each accepts",
        ) from exc
    except (InputError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise ToolError(
            f"copier could not render the template: {type(exc).__name__}: {exc}",
            where=source,
            fix="rerun with -v for the traceback; if the template and the reference "
            "pipeline disagree, the message names the file to update",
        ) from exc


def _refusal(exc: ValueError) -> tuple[str | None, str]:
    """The question and one sentence from copier's ValueError for a refused answer
    ("Validation error for question 'q': <the validator's message>", "Invalid choice for
    'q': 'v' is not in ['a', 'b']")."""
    text = " ".join(str(exc).split()) or repr(exc)
    validation = re.fullmatch(r"Validation error for question '([^']+)': (.+)", text)
    if validation:
        return validation.group(1), validation.group(2)
    choice = re.fullmatch(r"Invalid choice for '([^']+)': (.+) is not in \[(.*)\]", text)
    if choice:
        question, value, allowed = choice.groups()
        allowed = ", ".join(a.strip(" '\"") for a in allowed.split(","))
        return question, f"{question} {value} is not one of the choices: {allowed}"
    return None, text


def _run_copy(
    copier: Any,
    source: str,
    target: Path,
    answers: dict[str, str],
    *,
    defaults: bool,
    vcs_ref: str | None,
) -> None:
    with copier.Worker(
        src_path=source,
        dst_path=target,
        data=answers,
        defaults=defaults,
        vcs_ref=vcs_ref,
        quiet=True,
        unsafe=False,
        overwrite=False,
    ) as worker:
        unknown = sorted(set(answers) - set(worker.template.questions_data))
        if unknown:
            known = ", ".join(sorted(worker.template.questions_data))
            raise InputError(
                f"the template asks no question {', '.join(unknown)}",
                where="--data",
                fix=f"answer only these: {known}",
            )
        worker.run_copy()


def _import_copier() -> Any:
    try:
        import copier
    except ImportError as exc:  # pragma: no cover - copier is a dependency
        raise ToolError(
            "copier is not installed",
            where="secmlops new",
            fix="run `make venv` (copier is a dependency of secmlops)",
        ) from exc
    return copier


def _project_uv(project: Path, checkout: Path | None) -> Path:
    if checkout is not None and (checkout / PROJECT_UV).is_file():
        return checkout / PROJECT_UV
    from secmlops._internal.toolrun import run_tool

    make = shutil.which("make")
    if make is not None:
        # The Makefile's own bootstrap (pip install uv==<pinned> into .tools/uv), with a
        # PATH whose python3 is not this venv's (uv venvs have no pip).
        run_tool(
            [make, "--no-print-directory", str(PROJECT_UV)],
            timeout=LOCK_TIMEOUT_SECONDS,
            env_allow=_LOCK_ENV_ALLOW,
            extra_env={"PATH": _path_without_this_venv()},
            cwd=project,
            what="make .tools/uv/bin/uv",
        )
        if (project / PROJECT_UV).is_file():
            return project / PROJECT_UV
    found = shutil.which("uv")
    if found is None:
        raise ToolError(
            "no uv to write the project's uv.lock with",
            where=str(project),
            fix="install uv (pip install uv) or run `make .tools/uv/bin/uv` in the project, "
            "then `.tools/uv/bin/uv lock` there",
        )
    return Path(found)


def _path_without_this_venv() -> str:
    venv_bin = str(Path(sys.executable).parent)
    parts = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p != venv_bin]
    return os.pathsep.join(parts)


def _template_commit_exists(answers: Mapping[str, Any]) -> bool:
    """False only when the answers name a local template repository that lacks the
    recorded commit (copier rendered its uncommitted changes as a throw-away commit)."""
    source, commit = answers.get("_src_path"), answers.get("_commit")
    if not isinstance(source, str) or not isinstance(commit, str) or not Path(source).is_dir():
        return True
    from secmlops._internal.toolrun import resolve_binary, run_tool

    try:
        proc = run_tool(
            [
                resolve_binary("git"),
                "-C",
                source,
                "rev-parse",
                "--verify",
                "--quiet",
                f"{commit}^{{commit}}",
            ],
            timeout=30,
            ok_codes=(0, 1, 128),
            what="git rev-parse",
        )
    except ToolError:
        return True
    return proc.returncode == 0


def _answers(project: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load((project / ".copier-answers.yml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
