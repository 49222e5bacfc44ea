"""The names a run may pick, as typed choices in the Prefect UI's run form.

A flow parameter only *selects* an entry of the site configuration (the policy file's
``sources:``; :mod:`secmlops.site`). Annotated with the types below, a parameter shows in
the run form as a drop-down of the entries the site allows, and Prefect refuses any other
value before the run starts (``validate_parameters``). The choices are read from the policy
file when this module is imported (on ``prefect deploy``, and on the worker): add an entry
to the policy, redeploy, and it appears in the form. The flow resolves the name against the
policy again when it runs, so an entry removed since the deployment is refused there.

Without a readable policy file the types fall back to ``str`` (the flow then refuses at run
time, with the error the policy file gives).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from secmlops.errors import SecMLOpsError
from secmlops.policy import load_gate_policy


def _choices(kind: str) -> Any:
    try:
        sources = load_gate_policy().sources
    except SecMLOpsError:
        return str
    names = tuple(getattr(sources, kind))
    return Literal[names]


if TYPE_CHECKING:  # to a type checker they are names; to Prefect, the site's choices
    DatasetName = str
    ImageName = str
    RegistryName = str
else:
    DatasetName = _choices("datasets")
    ImageName = _choices("images")
    RegistryName = _choices("registries")
