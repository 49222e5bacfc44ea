"""The small typed interface between the library and the project's own model code.

The library never imports the project's ``ml`` package. Controls that must run the model
(the staging smoke test) take a :class:`ModelLoader` instead: any callable that turns a
model directory into a :class:`LoadedModel`. The Prefect layer passes the project's loader
(the demo's is ``ml.model.load_model``); a fork passes its own.

A loader must not run code chosen by the model files (no pickle): the smoke test calls it
on files downloaded from the registry, after their signature verified.

Example::

    from ml.model import load_model  # the project's loader, in flows/ or tasks/

    result = smoke_test_stage(models, "staging", sample, keys=keys, loader=load_model,
                              min_accuracy=0.7)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["LoadedModel", "ModelLoader"]


@runtime_checkable
class LoadedModel(Protocol):
    """A loaded classifier: what the smoke test needs to exercise it on labelled rows."""

    @property
    def label(self) -> str:
        """The column of a labelled frame that holds the true class."""
        ...

    @property
    def feature_names(self) -> Sequence[str]:
        """The columns ``predict`` reads; a frame must hold all of them."""
        ...

    @property
    def classes(self) -> Sequence[Any]:
        """Every label the model can predict, in the column order of ``predict_proba``."""
        ...

    def predict(self, rows: pd.DataFrame) -> np.ndarray:
        """One predicted label per row."""
        ...

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        """Class probabilities, shape ``(len(rows), len(classes))``."""
        ...


class ModelLoader(Protocol):
    """Loads a model directory written by the project's training stage.

    Raises ``secmlops.errors.InputError`` for a missing or malformed directory.
    """

    def __call__(self, model_dir: Path, /) -> LoadedModel: ...
