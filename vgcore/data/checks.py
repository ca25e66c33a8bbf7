"""Load-time checks of a split against what a method can train or evaluate on.

`require_single_target` guards the single-box (REC) methods: a no-target (``Record.boxes`` [0, 4]) or
multi-target ([N > 1, 4]) sample, e.g. from a gRefCOCO split, is reported when the records are loaded, not
as an index error in the loss or the metric after an epoch.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .errors import DataError, DataWarning, RecordList

__all__ = ["require_single_target", "count_targets", "SHOWN_KEYS"]

SHOWN_KEYS = 3  # sample keys quoted per kind of problem


def count_targets(records: Sequence) -> np.ndarray:
    """[len(records)] number of target boxes of each record."""
    return np.array([r.boxes.shape[0] for r in records], dtype=np.int64)


def require_single_target(records: Sequence, what: str, on_bad: str = "raise", needed_by: str = "this method",
                          hint: str = "") -> RecordList:
    """``records`` if every one has exactly one target box.

    Otherwise ``on_bad="raise"`` raises `DataError` naming ``what`` (the split file), the counts of no-target
    and multi-target samples and the keys of the first few; ``on_bad="skip"`` drops them with one `DataWarning`
    carrying the same counts and returns the rest (counts in ``.skipped``).  ``hint`` ends the error message
    (e.g. the flag that skips).
    """
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
    n = count_targets(records)
    none, multi = np.flatnonzero(n == 0), np.flatnonzero(n > 1)
    if not len(none) and not len(multi):
        return records if isinstance(records, RecordList) else RecordList(records)
    parts = []
    for idx, kind in ((none, "no-target"), (multi, "multi-target")):
        if len(idx):
            keys = "; ".join(records[i].key() for i in idx[:SHOWN_KEYS])
            more = f" (first {SHOWN_KEYS})" if len(idx) > SHOWN_KEYS else ""
            parts.append(f"{len(idx)} {kind} sample(s){more}: {keys}")
    summary = (f"{what}: {len(none) + len(multi)} of {len(records)} samples do not have exactly one target box, "
               f"which {needed_by} needs; " + " | ".join(parts))
    if on_bad == "raise":
        raise DataError(summary + (f". {hint}" if hint else ""))
    bad = set(none.tolist()) | set(multi.tolist())
    kept = [r for i, r in enumerate(records) if i not in bad]
    warnings.warn(f"skipped {len(bad)}, kept {len(kept)}. " + summary, DataWarning, stacklevel=2)
    skipped = dict(getattr(records, "skipped", {}) or {})
    for kind, idx in (("no-target", none), ("multi-target", multi)):
        if len(idx):
            skipped[kind] = skipped.get(kind, 0) + len(idx)
    return RecordList(kept, skipped)
