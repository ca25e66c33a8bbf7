"""Data layer: records, readers for every official format, transforms, dataset and collate."""
from .sample import Batch, Record

__all__ = ["Record", "Batch"]
