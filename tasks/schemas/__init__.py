"""pandera schemas for the datasets this project validates (``ChurnDataset`` is the demo)."""

from tasks.schemas.churn import ChurnDataset

__all__ = ["ChurnDataset"]
