"""Strict loading with one readable mismatch report (there is deliberately no silent ``strict=False``)."""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import torch

from ..dist import unwrap_model

__all__ = ["StateDictMismatchError", "check_state_dict", "load_strict", "group_keys"]


def _ranges(ids: List[int]) -> str:
    ids = sorted(set(ids))
    out, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)


def group_keys(keys: Iterable[str], limit: int = 40) -> List[str]:
    """Keys grouped by pattern, numeric path parts replaced by ``*`` with the indices listed:
    ``blocks.0.attn.q.weight .. blocks.11.attn.q.weight`` -> ``blocks.*.attn.q.weight  [0-11]``.
    A pattern that only one key has is shown as that key."""
    groups: "OrderedDict[str, List[List[int]]]" = OrderedDict()
    names: Dict[str, str] = {}
    for k in sorted(keys):
        parts = k.split(".")
        nums = [int(p) for p in parts if p.isdigit()]
        pat = ".".join("*" if p.isdigit() else p for p in parts)
        groups.setdefault(pat, []).append(nums)
        names[pat] = k
    lines = []
    for pat, idx in groups.items():
        if len(idx) == 1 or not idx[0]:
            lines.append(names[pat] if len(idx) == 1 else pat)
            continue
        cols = ["[" + _ranges([n[i] for n in idx]) + "]" for i in range(len(idx[0]))]
        lines.append(f"{pat}  {' '.join(cols)}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more patterns"]
    return lines


class StateDictMismatchError(RuntimeError):
    """Raised by `load_strict`; ``missing``, ``unexpected``, ``mismatched`` ((key, ckpt shape, model shape))."""

    def __init__(self, missing, unexpected, mismatched, what: str = ""):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = [f"state dict does not match the model{(' (' + what + ')') if what else ''}:"]
        if self.missing:
            parts.append(f"  missing from the checkpoint ({len(self.missing)}):")
            parts += ["    " + g for g in group_keys(self.missing)]
        if self.unexpected:
            parts.append(f"  unexpected, not in the model ({len(self.unexpected)}):")
            parts += ["    " + g for g in group_keys(self.unexpected)]
        if self.mismatched:
            parts.append(f"  shape mismatches ({len(self.mismatched)}):")
            by_shape: "OrderedDict[tuple, List[str]]" = OrderedDict()
            for k, a, b in self.mismatched:
                by_shape.setdefault((tuple(a), tuple(b)), []).append(k)
            for (a, b), ks in by_shape.items():
                parts += [f"    {g}: checkpoint {a} vs model {b}" for g in group_keys(ks)]
        super().__init__("\n".join(parts))


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], allow_missing: Sequence[str] = (),
                     allow_unexpected: Sequence[str] = ()) -> Tuple[List[str], List[str], List[tuple]]:
    """(missing, unexpected, shape-mismatched) keys of ``sd`` against ``model``; ``allow_*`` are regexes of
    keys that may legitimately be missing / unexpected (e.g. a head trained from scratch)."""
    own = unwrap_model(model).state_dict()
    am = [re.compile(p) for p in allow_missing]
    au = [re.compile(p) for p in allow_unexpected]
    missing = [k for k in own if k not in sd and not any(r.search(k) for r in am)]
    unexpected = [k for k in sd if k not in own and not any(r.search(k) for r in au)]
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
                  if k in sd and torch.is_tensor(sd[k]) and tuple(sd[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, mismatched


def load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], allow_missing: Sequence[str] = (),
                allow_unexpected: Sequence[str] = (), what: str = "", assign: bool = False
                ) -> Tuple[List[str], List[str]]:
    """Load ``sd`` into ``model``; raise one `StateDictMismatchError` listing every missing, unexpected and
    shape-mismatched key (grouped by pattern) unless allowed by the ``allow_*`` regexes.  ``what`` names the
    source in the message (a path).  Returns the allowed (missing, unexpected) keys so the caller can report
    them.  ``assign=True`` for models built on the meta device."""
    missing, unexpected, mismatched = check_state_dict(model, sd, allow_missing, allow_unexpected)
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(missing, unexpected, mismatched, what)
    res = unwrap_model(model).load_state_dict(sd, strict=False, assign=assign)
    return list(res.missing_keys), list(res.unexpected_keys)

