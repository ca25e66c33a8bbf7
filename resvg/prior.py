"""The semantic-prior features: reading ``<split>_fea.pth``, checking it against the split, carrying it to the model.

The official data package has, next to each split list ``<split_root>/<dataset>/<dataset>_<split>.pth``, a file
``<split_root>/<dataset>/<split>_fea.pth``: a float tensor [N, 512] whose row i is the prior feature of sample i
of the split list (no dataset prefix in the name).  Validation and test splits have one too: the model needs a
prior for every query it grounds.

`read_prior_file` loads one file (a tensor / array [N, D], or a list of N vectors) and `attach_priors` checks it
against the records of its split and stores row i in ``record.extra["prior_feature"]`` of the record read from
row i of the split list (``record.extra["index"]``).  Any mismatch raises `vgcore.data.errors.DataError`
naming the file and the sample: a file of the wrong length, a row of the wrong width, a missing (None) or
non-finite row.  `batch_prior` stacks the rows of a batch's records into the [B, D] tensor the model reads.

The files are made by the prior pipeline, `resvg.prior_gen` (``python -m resvg.prior_gen``: text-to-image images
of each query embedded by an image encoder, resumable and sharded).

The rows travel inside the records because the shared collate (`vgcore.data.dataset.Collate`) only carries the
dataset index in ``Batch.extra``; ``batch.extra["prior_feature"]``, when present, wins.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from vgcore.checkpoint.safe import UntrustedFileError, torch_load
from vgcore.data.errors import DataError

__all__ = ["PRIOR_KEY", "prior_path", "read_prior_file", "attach_priors", "attach_zero_priors", "batch_prior"]

PRIOR_KEY = "prior_feature"


def prior_path(root: str, split: str) -> str:
    """``<root>/<split>_fea.pth`` (root = the folder of the dataset's split files by default)."""
    return os.path.join(os.fspath(root), f"{split}_fea.pth")


def _describe(rec) -> str:
    return f"sample {rec.extra.get('index')} ({os.path.basename(rec.image_path)}, {rec.expression!r})"


def read_prior_file(path: str, width: int) -> np.ndarray:
    """The [N, width] float32 rows of a prior file (weights-only load).  A list entry that is None is a missing
    row; rows must be finite and ``width`` wide."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: prior feature file not found")
    try:
        obj = torch_load(path, allow_numpy=True)
    except UntrustedFileError as e:
        raise DataError(str(e)) from None
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: not a readable torch.save file: {e}") from None
    if isinstance(obj, (list, tuple)):
        rows = []
        for i, r in enumerate(obj):
            if r is None:
                raise DataError(f"{path}: row {i} is missing (None): sample {i} of the split has no prior feature")
            r = np.asarray(r.float() if torch.is_tensor(r) else r, dtype=np.float32).reshape(-1)
            if r.shape[0] != width:
                raise DataError(f"{path}: row {i} has width {r.shape[0]}, the model's prior_dim is {width}")
            rows.append(r)
        arr = np.stack(rows) if rows else np.zeros((0, width), np.float32)
    elif torch.is_tensor(obj) or isinstance(obj, np.ndarray):
        arr = (obj.float().numpy() if torch.is_tensor(obj) else np.asarray(obj, dtype=np.float32))
        if arr.ndim != 2:
            raise DataError(f"{path}: expected a [N, {width}] tensor of prior features, got shape {tuple(arr.shape)}")
        if arr.shape[1] != width:
            raise DataError(f"{path}: prior features are {arr.shape[1]} wide, the model's prior_dim is {width}")
    else:
        raise DataError(f"{path}: expected a [N, {width}] tensor (or a list of rows), got {type(obj).__name__}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def attach_priors(records: Sequence, rows: np.ndarray, path: str) -> List:
    """Records of ONE split list, in file order, each given its row of ``rows`` [N, D] (read from ``path``).

    The file must have exactly one row per sample of the split: a shorter file names the first sample without a
    row, a longer one says how many rows are extra.  Non-finite rows name their sample."""
    n, m = int(rows.shape[0]), len(records)
    idx = np.array([int(r.extra.get("index", k)) for k, r in enumerate(records)], dtype=np.int64)
    if n < m:
        first = records[int(np.argmax(idx >= n))] if (idx >= n).any() else records[n]
        raise DataError(f"{path}: {n} prior rows for a split of {m} samples: {_describe(first)} has no prior row")
    if n > m:
        raise DataError(f"{path}: {n} prior rows for a split of {m} samples ({n - m} more rows than samples: "
                        f"the prior file of another split?)")
    bad = ~np.isfinite(rows[idx]).all(1)
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(f"{path}: the prior row of {_describe(records[k])} is not finite")
    return [r.replace(extra={**r.extra, PRIOR_KEY: rows[i]}) for r, i in zip(records, idx)]


def attach_zero_priors(records: Sequence, width: int) -> List:
    """Every record gets an all-zero prior row (the fallback when a split has no prior file)."""
    zero = np.zeros((width,), np.float32)
    return [r.replace(extra={**r.extra, PRIOR_KEY: zero}) for r in records]


def batch_prior(batch) -> Optional[torch.Tensor]:
    """[B, D] prior features of a batch (see module doc), on the batch's device; None when it carries none."""
    extra: Dict = getattr(batch, "extra", None) or {}
    if PRIOR_KEY in extra:
        return extra[PRIOR_KEY]
    recs = getattr(batch, "records", None)
    if not recs or PRIOR_KEY not in (recs[0].extra or {}):
        return None
    missing = [r for r in recs if PRIOR_KEY not in (r.extra or {})]
    if missing:
        raise DataError(f"ResVG: {len(missing)} sample(s) of the batch carry no prior feature, e.g. {missing[0].key()}")
    rows = np.stack([r.extra[PRIOR_KEY] for r in recs])  # B rows, one per sample, like the collate's stacking
    return torch.from_numpy(rows).to(batch.images.device)
