"""The copier template (issue 7): one source with the reference pipeline, answers checked at
the question, S3 configuration rendered into the policy, `copier update` keeping user edits,
and a rendered project that is green on its own (`make test`, `make lint`, `make demo`, its
prefect.yaml deployed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from secmlops.errors import InputError
from secmlops.new import checkout_version, new_project, next_steps_text
from secmlops.policy import load_gate_policy
from tests.conftest import free_port

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
SECMLOPS = Path(sys.executable).parent / "secmlops"
#: What the template takes from the reference pipeline unchanged (symlinks in
#: templates/project/ to the repository's own files).
COPIED = ("flows", "tasks", "blocks", "ml", ".ci", "dvc.yaml", "params.yaml")
#: What it derives from the reference pipeline's file with the answers put in.
DERIVED = ("Makefile", "prefect.yaml", "secmlops-policy.yaml", ".gitignore")

S3_ANSWERS = {
    "model_name": "fraud-model",
    "dataset_repo": "https://git.example.com/data/fraud-registry.git",
    "dataset_path": "data/fraud.csv",
    "dataset_rev": "v2.3",
    "dataset_dvc_remotes": "s3://ml-data/fraud, s3://ml-data/shared",
    "registry_uri": "s3://ml-models/fraud",
    "s3_endpoint_url": "https://minio.example.com:9000",
    "s3_region": "eu-central-1",
    "approvers_staging": "alice, bob",
    "approvers_production": "carol",
    "python_version": "3.12",
}


def _reference_files(root: Path, names: tuple[str, ...]) -> set[str]:
    """The files of ``names`` in a checkout as git sees its work tree (tracked or new, not
    ignored, not deleted): what copier renders from a checkout with uncommitted changes."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", *names],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return {
        name
        for name in listed.split("\0")
        if name and ((root / name).is_file() or (root / name).is_symlink())
    }


def _rendered_files(root: Path, names: tuple[str, ...]) -> set[str]:
    found = set()
    for name in names:
        path = root / name
        paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        found |= {p.relative_to(root).as_posix() for p in paths}
    return found


def _render(dest: Path, template: Path = PROJECT, **answers: str) -> Path:
    return new_project(
        dest, defaults=True, data=answers, vcs_ref="HEAD", template=str(template), lock=False
    )


def test_the_template_copies_the_reference_pipeline_byte_for_byte(tmp_path: Path) -> None:
    """One source: the template holds no copy of flows/, tasks/, blocks/, ml/, CI or the ML
    stages (symlinks into this repository), and a render reproduces the reference pipeline's
    files exactly; with the default answers, the derived files differ only where the
    project's own name or the library's absence requires it."""
    for name in COPIED:
        link = PROJECT / "templates" / "project" / name
        assert link.is_symlink(), f"templates/project/{name} must be a symlink, not a copy"
        assert link.resolve() == (PROJECT / name).resolve()
    project = _render(tmp_path / "churn-two")

    reference = _reference_files(PROJECT, COPIED)
    assert reference, "the reference pipeline has no files?"
    assert _rendered_files(project, COPIED) == reference
    for name in sorted(reference):
        assert (project / name).read_bytes() == (PROJECT / name).read_bytes(), name
    assert os.access(project / ".ci" / "run", os.X_OK)

    for name in ("secmlops-policy.yaml", ".gitignore"):
        assert (project / name).read_bytes() == (PROJECT / name).read_bytes(), name
    makefile = (PROJECT / "Makefile").read_text()
    expected = makefile.replace(
        "secmlops run --approve-as demo-approver",
        "secmlops run --model churn-classifier --approve-as demo-approver",
    ).replace(" src ml flows tasks blocks tests", " ml flows tasks blocks tests")
    assert (project / "Makefile").read_text() == expected
    prefect_yaml = (PROJECT / "prefect.yaml").read_text()
    expected = prefect_yaml.replace("\nname: secmlops-pipelines\n", "\nname: churn-two\n")
    assert (project / "prefect.yaml").read_text() == expected

    # The library is a dependency, never copied; the project has no src/ of its own.
    assert not (project / "src").exists()
    assert not list(project.rglob("secmlops/__init__.py"))
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["dependencies"] == [f"secmlops=={checkout_version(PROJECT)}"]
    assert pyproject["tool"]["uv"]["sources"]["secmlops"] == {
        "path": str(PROJECT),
        "editable": False,
    }
    # Lint rules are the reference's, so the shared files pass the same checks.
    ours = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]
    theirs = pyproject["tool"]
    assert theirs["ruff"]["line-length"] == ours["ruff"]["line-length"]
    assert theirs["ruff"]["lint"]["select"] == ours["ruff"]["lint"]["select"]
    assert theirs["ruff"]["lint"]["ignore"] == ours["ruff"]["lint"]["ignore"]
    assert theirs["mypy"]["strict"] is ours["mypy"]["strict"] is True
    assert set(theirs["mypy"]["packages"]) == set(ours["mypy"]["packages"]) - {"secmlops"}

    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_src_path"] == str(PROJECT)
    assert answers["model_name"] == "churn-classifier"
    assert answers["signing_method"] == "key"
    text = next_steps_text(project)
    assert "make demo" in text and "make test" in text and "git init" in text


def test_s3_answers_are_rendered_into_the_site_policy_and_the_project(tmp_path: Path) -> None:
    """A registry on S3 and a data registry of the team's own: the policy's sources name
    them (and only them), approvers per stage are the answers, and every other gate setting
    is the reference pipeline's."""
    project = _render(
        tmp_path / "fraud",
        secmlops_source="https://git.example.com/ml/secmlops-pipelines.git",
        secmlops_ref="v0.1.0",
        **S3_ANSWERS,
    )
    policy = load_gate_policy(project / "secmlops-policy.yaml")
    reference = load_gate_policy(PROJECT / "secmlops-policy.yaml")
    assert dict(policy.approval.approvers) == {
        "staging": ("alice", "bob"),
        "production": ("carol",),
    }
    ((name, dataset),) = policy.sources.datasets.items()
    assert name == "fraud-model-data"
    assert dataset.repo == S3_ANSWERS["dataset_repo"]
    assert (dataset.path, dataset.rev) == ("data/fraud.csv", "v2.3")
    assert dataset.dvc_remotes == ("s3://ml-data/fraud", "s3://ml-data/shared")
    assert not dataset.is_demo
    registry = policy.sources.registries["default"]
    assert list(policy.sources.registries) == ["default"]
    assert registry.uri == "s3://ml-models/fraud"
    assert registry.s3_endpoint_url == "https://minio.example.com:9000"
    assert registry.region == "eu-central-1"
    # Everything the answers do not decide is the reference pipeline's.
    assert policy.scan == reference.scan
    assert policy.model_dump(exclude={"approval", "sources"}) == reference.model_dump(
        exclude={"approval", "sources"}
    )
    assert policy.approval.model_dump(exclude={"approvers"}) == reference.approval.model_dump(
        exclude={"approvers"}
    )
    assert policy.sources.model_dump(
        exclude={"datasets", "registries"}
    ) == reference.sources.model_dump(exclude={"datasets", "registries"})

    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.12"
    assert pyproject["tool"]["uv"]["sources"]["secmlops"] == {
        "git": "https://git.example.com/ml/secmlops-pipelines.git",
        "rev": "v0.1.0",
    }
    # make demo approves with one name; staging and production have no approver in common.
    assert (
        "secmlops run --model fraud-model --approve-as alice --staging-only"
        in (project / "Makefile").read_text()
    )
    deployments = yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]
    training = next(d for d in deployments if d["name"] == "secure-training")
    assert training["parameters"]["model_name"] == "fraud-model"
    tests = (project / "tests" / "test_pipeline.py").read_text()
    assert 'MODEL = "fraud-model"' in tests
    assert 'STAGING_APPROVER = "alice"' in tests and 'PRODUCTION_APPROVER = "carol"' in tests
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert {k: answers[k] for k in S3_ANSWERS} == S3_ANSWERS


@pytest.mark.parametrize(
    ("answers", "question", "says"),
    [
        ({"model_name": "team/churn"}, "model_name", "no '/'"),
        ({"model_name": "Churn Model"}, "model_name", "upper case"),
        ({"signing_method": "pgp"}, "signing_method", "pgp"),
        ({"approvers_production": ""}, "approvers_production", "at least one approver"),
        ({"approvers_production": " , "}, "approvers_production", "at least one approver"),
        ({"approvers_staging": "prefect-ui"}, "approvers_staging", "reserved"),
        ({"dataset_rev": "main"}, "dataset_rev", "branch"),
        ({"dataset_rev": ""}, "dataset_rev", "must not be empty"),
        ({"dataset_rev": "5ca5023f"}, "dataset_rev", "40 hex"),
        ({"registry_uri": "s3://Bad_Bucket/models"}, "registry_uri", "bucket"),
        ({"registry_uri": "relative/dir"}, "registry_uri", "absolute"),
        ({"dataset_repo": "https://bob:tok3n@git.example.com/d.git"}, "dataset_repo", "cred"),
    ],
)
def test_bad_answers_are_refused_at_the_question(
    tmp_path: Path, answers: dict[str, str], question: str, says: str
) -> None:
    dest = tmp_path / "refused"
    with pytest.raises(InputError) as refused:
        _render(dest, **answers)
    assert question in refused.value.message
    assert says in refused.value.message
    assert not dest.exists(), "a refused render leaves nothing behind"


def test_secmlops_new_refuses_a_bad_answer_with_exit_2_and_one_sentence(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(SECMLOPS), "new", str(tmp_path / "p"), "--defaults", "--data", "model_name=a/b"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first = proc.stderr.strip().splitlines()[0]
    assert first.startswith("bad input: answer refused:") and "model_name" in first, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "p").exists()


def test_an_unknown_question_and_a_non_empty_destination_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no question model"):
        _render(tmp_path / "p", model="churn")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty directory"):
        _render(tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout


def _template_repo(dest: Path) -> Path:
    """A copy of this checkout's work tree (uncommitted changes too) as a fresh git repo."""
    for name in _reference_files(PROJECT, (".",)):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (PROJECT / name).is_symlink():
            target.symlink_to(os.readlink(PROJECT / name))
        else:
            shutil.copy2(PROJECT / name, target)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", "template v0.1.0")
    _git(dest, "tag", "v0.1.0")
    return dest


def test_copier_update_takes_a_newer_template_and_keeps_the_users_edits(tmp_path: Path) -> None:
    """Template versions are git tags: a project rendered from v0.1.0 takes v0.2.0 with
    `copier update`, and keeps what its team changed."""
    import copier

    template = _template_repo(tmp_path / "template")
    project = new_project(tmp_path / "churn-two", defaults=True, template=str(template), lock=False)
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == "v0.1.0"
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "rendered")
    # The user edits their code and a scaffolding file.
    with (project / "ml" / "schema.py").open("a") as f:
        f.write("\n# our churn rules: reviewed by the data team\n")
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("  C: 1.0\n", "  C: 0.5\n"))
    _git(project, "commit", "-qam", "our edits")
    # The template moves on: a copied file of the reference pipeline and a template file.
    with (template / "flows" / "operations.py").open("a") as f:
        f.write("\n# template v0.2.0: a security fix in the operator flows\n")
    readme = template / "templates" / "project" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\nNew in template v0.2.0.\n")
    _git(template, "commit", "-qam", "template v0.2.0")
    _git(template, "tag", "v0.2.0")

    copier.run_update(str(project), defaults=True, overwrite=True, quiet=True, unsafe=False)

    assert "# our churn rules: reviewed by the data team" in (project / "ml/schema.py").read_text()
    assert "  C: 0.5\n" in (project / "params.yaml").read_text()
    assert "# template v0.2.0: a security fix" in (project / "flows/operations.py").read_text()
    assert "New in template v0.2.0." in (project / "README.md").read_text()
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == "v0.2.0"
    status = _git(project, "status", "--porcelain")
    assert ".rej" not in status and "<<<<<<<" not in (project / "ml/schema.py").read_text()


def _nested_env(home: Path) -> dict[str, str]:
    """The rendered project's own environment: an empty HOME, no Prefect or SecMLOps settings
    of this test session, this machine's uv cache (as .ci/run shares it)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SECMLOPS_", "PREFECT_", "PYTEST_", "AWS_"))
        and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["UV_CACHE_DIR"] = os.environ.get("UV_CACHE_DIR") or str(Path.home() / ".cache" / "uv")
    env["HOME"] = str(home)
    return env


def _make(project: Path, target: str, env: dict[str, str], timeout: float) -> float:
    start = time.monotonic()
    proc = subprocess.run(
        ["make", target],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"make {target}:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return time.monotonic() - start


@pytest.mark.timeout(900)
def test_a_rendered_project_is_green_on_its_own(tmp_path: Path) -> None:
    """`secmlops new --defaults`, then in the project: `make test` (a run, a tampered model
    refused at promotion), `make lint` (ruff, mypy strict), `make demo`, and its prefect.yaml
    deployed on a local Prefect server (`make server`)."""
    project = new_project(tmp_path / "churn-two", defaults=True)
    assert (project / "uv.lock").is_file()
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "rendered")
    home = tmp_path / "home"
    home.mkdir()
    env = _nested_env(home)
    timings = {target: _make(project, target, env, 600) for target in ("test", "lint", "demo")}
    production = project / ".secmlops" / "registry" / "churn-classifier" / "stages"
    assert (production / "production.json").is_file()
    env["PREFECT_SERVER_PORT"] = str(free_port())
    try:
        timings["server"] = _make(project, "server", env, 600)
        proc = subprocess.run(
            [str(project / ".venv" / "bin" / "prefect"), "deployment", "ls"],
            cwd=project,
            env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{env['PREFECT_SERVER_PORT']}/api"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        for name in ("secure-training", "promote", "rollback", "verify"):
            assert name in proc.stdout, proc.stdout
    finally:
        subprocess.run(
            ["make", "server-stop"], cwd=project, env=env, capture_output=True, timeout=120
        )
    print("rendered project timings (s):", {k: round(v, 1) for k, v in timings.items()})
