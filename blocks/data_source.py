"""Where the training data comes from: a DVC data registry at a pinned revision."""

from __future__ import annotations

from pydantic import Field

from blocks._schema import SecMLOpsBlock


class DataSource(SecMLOpsBlock):
    """A dataset in a DVC data registry (a git repo with DVC-tracked files), pinned by rev."""

    _block_type_name = "SecMLOps Data Source"
    _description = "A DVC-tracked dataset pinned to a git tag or commit."
    _form_required = ("repo",)

    repo: str = Field(
        default="",
        description="Git URL or path of the DVC data registry (the block form asks for it). "
        "Empty, or no data block given to a run: the embedded demo registry "
        "(.secmlops/data-registry/repo), created on first run.",
    )
    path: str = Field(default="data/churn.csv", description="Path of the dataset in the repo.")
    rev: str = Field(
        default="v1.0",
        description="Git tag or commit to pull. Pin a tag or a full commit sha, never a branch.",
    )
    schema_spec: str = Field(
        default="ml.schema:ChurnDataset",
        description="pandera schema to validate against: 'module:Class' or 'path/file.py:Class'.",
    )
