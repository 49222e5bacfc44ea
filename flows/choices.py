"""The names a run may pick, as drop-downs in the Prefect UI's run form.

A flow parameter only *selects* an entry of the site configuration (the policy file's
``sources:``; :mod:`secmlops.site`). Annotated with the types below, a parameter shows in
the run form as a drop-down of the entries the site allows (a string enum in the
deployment's parameter schema), and Prefect refuses any other value before the run starts
(``validate_parameters``). The choices are read from the policy file when this module is
imported (on ``prefect deploy``, and on the worker; read, not verified: the flow
verifies the policy's signature when it runs): add an entry to the policy, redeploy,
and it appears in the form. The flow resolves the name against the policy again when it
runs, so an entry removed since the deployment is refused there.

Without a readable policy file the types fall back to ``str`` and the demo's names (the
flow then refuses at run time, with the error the policy file gives).
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any

from secmlops.errors import SecMLOpsError
from secmlops.policy import policy_path, read_policy
from secmlops.site import DEFAULT_REGISTRY, DEMO_DATASET, DEMO_IMAGE


def _names(kind: str) -> tuple[str, ...]:
    try:
        # Names only, for the run form: the flow checks the policy's signature when it runs.
        return tuple(getattr(read_policy(policy_path()).policy.sources, kind))
    except SecMLOpsError:
        return ()


def _choices(type_name: str, names: tuple[str, ...]) -> Any:
    """A string enum of ``names`` (a drop-down even for one name); ``str`` without names."""
    if not names:
        return str
    return Enum(type_name, [(name, name) for name in names], type=str)


_DATASETS, _IMAGES, _REGISTRIES = _names("datasets"), _names("images"), _names("registries")

#: The first entry of each catalogue: what a run gets when it picks nothing.
DEFAULT_DATASET: str = (_DATASETS or (DEMO_DATASET,))[0]
DEFAULT_IMAGE: str = (_IMAGES or (DEMO_IMAGE,))[0]
DEFAULT_REGISTRY_NAME: str = (_REGISTRIES or (DEFAULT_REGISTRY,))[0]

if TYPE_CHECKING:  # to a type checker they are names; to Prefect, the site's choices
    DatasetName = str
    ImageName = str
    RegistryName = str
else:
    DatasetName = _choices("DatasetName", _DATASETS)
    ImageName = _choices("ImageName", _IMAGES)
    RegistryName = _choices("RegistryName", _REGISTRIES)
