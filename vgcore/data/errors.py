"""Data errors and the per-sample validation policy every annotation reader shares.

`DataError` (a ValueError) is what readers and `load_image` raise: the message always names the file, the
sample (index in the file, or `Record.key()`) and what is wrong.

`IssueLog` implements the ``on_error`` switch of the readers:

* ``"raise"`` (default): the first bad sample raises `DataError`.
* ``"skip"``: bad samples are dropped and counted by reason; `finish()` emits ONE `DataWarning` summarising
  how many were skipped and why (with the first example of each reason), and the reader returns a
  `RecordList` whose ``.skipped`` attribute holds the counts.

`check_box` is the one box validator (degenerate box, box outside the image with a tolerance).
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Optional

import numpy as np

__all__ = ["DataError", "DataWarning", "IssueLog", "RecordList", "check_box", "BOX_TOLERANCE"]

BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image before it is an error


class DataError(ValueError):
    """An annotation or image file that cannot be used as it is (missing, corrupt, malformed, inconsistent)."""


class DataWarning(UserWarning):
    """Summary of samples a reader skipped under ``on_error="skip"``, or a risky fallback it took."""


class RecordList(list):
    """A plain list of records plus ``skipped``: Counter(reason -> number of samples dropped)."""

    skipped: Counter

    def __init__(self, items=(), skipped: Optional[Counter] = None):
        super().__init__(items)
        self.skipped = Counter(skipped or {})

    @property
    def num_skipped(self) -> int:
        return int(sum(self.skipped.values()))


class IssueLog:
    """Collects per-sample problems of one file under an ``on_error`` policy ("raise" or "skip")."""

    def __init__(self, file, on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.file = str(file)
        self.on_error = on_error
        self.counts: Counter = Counter()
        self.first: dict = {}

    def fail(self, index, reason: str, detail: str = "") -> None:
        """Report sample `index` as bad. Raises under "raise"; counts it under "skip" (caller then skips it)."""
        msg = f"{self.file}: sample {index}: {reason}" + (f" ({detail})" if detail else "")
        if self.on_error == "raise":
            raise DataError(msg)
        self.counts[reason] += 1
        self.first.setdefault(reason, msg)

    def finish(self, records) -> RecordList:
        """Emit the one summary warning (if anything was skipped) and wrap `records`."""
        if self.counts:
            n = sum(self.counts.values())
            parts = "; ".join(f"{k}: {v} (first: {self.first[k]})" for k, v in self.counts.most_common())
            warnings.warn(f"{self.file}: skipped {n} sample(s), kept {len(records)}: {parts}", DataWarning,
                          stacklevel=3)
        return RecordList(records, self.counts)


def check_box(xyxy, height: Optional[int] = None, width: Optional[int] = None,
              tol: float = BOX_TOLERANCE) -> Optional[str]:
    """Return a description of what is wrong with one xyxy pixel box, or None if it is fine.

    Degenerate: non-finite, or width / height <= 0.  Outside: when the image size is known, any side more
    than `tol` pixels outside [0, width] x [0, height].
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1)
    if b.shape[0] != 4:
        return f"box must have 4 numbers, got {b.shape[0]}"
    if not np.all(np.isfinite(b)):
        return f"degenerate box: non-finite values {b.tolist()}"
    x1, y1, x2, y2 = b
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return f"degenerate box: xyxy {[round(v, 3) for v in b.tolist()]} has width {x2 - x1:g} and height {y2 - y1:g}"
    if height is not None and width is not None:
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            return (f"box outside image: xyxy {[round(v, 3) for v in b.tolist()]} vs image "
                    f"width {width}, height {height} (tolerance {tol:g} px)")
    return None


def reason_of(problem: str) -> str:
    """Short category of a `check_box` message (the text before the first colon)."""
    return problem.split(":", 1)[0]
