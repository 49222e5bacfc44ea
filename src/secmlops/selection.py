"""What one run selected: its parameters, resolved against the site's sources.

The training flow's parameters are names (:mod:`secmlops.site`); :meth:`RunSelection.resolve`
turns them into the site's entries, refusing an unknown name (``InputError``, exit 2) before
anything is pulled, scanned or written. The selection keeps the parameters exactly as given
(secrets redacted) for the provenance, which records every one of them.

Example::

    run = RunSelection.resolve(policy.sources, model_name="churn-classifier",
                               dataset="churn-demo", data_rev=None, image="demo",
                               registry="default", promote_to_production=True)
    run.dataset.path, run.rev, run.image.digest
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from secmlops.errors import InputError
from secmlops.registry.models import check_model_name
from secmlops.site import (
    DatasetSource,
    ImageSource,
    RegistrySource,
    Sources,
    is_data_rev,
    redact_url,
    select,
)


@dataclass(frozen=True)
class RunSelection:
    """The entries one run selected, and its parameters as given."""

    parameters: dict[str, Any]
    model_name: str
    dataset_name: str
    dataset: DatasetSource
    rev: str
    image_name: str
    image: ImageSource
    registry_name: str
    registry: RegistrySource

    @classmethod
    def resolve(
        cls,
        sources: Sources,
        *,
        model_name: str,
        dataset: str | None,
        data_rev: str | None,
        image: str | None,
        registry: str | None,
        promote_to_production: bool,
    ) -> RunSelection:
        """Resolve the run's parameters against ``sources``; ``InputError`` for a bad one."""
        check_model_name(model_name)
        dataset_name, dataset_entry = select(sources.datasets, dataset, "dataset")
        image_name, image_entry = select(sources.images, image, "image")
        registry_name, registry_entry = select(sources.registries, registry, "registry")
        rev = data_rev or dataset_entry.rev
        # The pull's own rule (a branch is refused there, once the rev is resolved).
        if not is_data_rev(rev):
            raise InputError(
                f"data_rev {redact_url(str(rev))!r} is not a tag or a full commit sha",
                where="parameter data_rev",
                fix="name a git tag (v1.2) or a full 40-hex commit of the dataset's registry",
            )
        parameters = {
            "model_name": model_name,
            "dataset": dataset_name,
            "data_rev": data_rev,
            "image": image_name,
            "registry": registry_name,
            "promote_to_production": promote_to_production,
        }
        return cls(
            parameters=parameters,
            model_name=model_name,
            dataset_name=dataset_name,
            dataset=dataset_entry,
            rev=rev,
            image_name=image_name,
            image=image_entry,
            registry_name=registry_name,
            registry=registry_entry,
        )
