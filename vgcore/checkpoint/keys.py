r"""State-dict keys: unwrapping checkpoint files and renaming keys with rule tables.

A method's converter is a rule table over `convert_state_dict`::

    RULES = [
        (r"^module\.", ""),                          # regex, replacement (re.sub syntax or a callable)
        (r"^backbone\.body\.", "backbone."),
        (r"\.num_batches_tracked$", None),           # None drops the key
        (r"^text_projection$", "text_proj.weight", lambda v: v.t()),   # optional value transform
    ]
    sd, report = convert_state_dict(unwrap(raw), RULES, expected_keys=model.state_dict())
    report.check(what=path)       # raises one readable ConversionError if anything is unmatched / missing

For each key the **first** rule whose pattern matches (``re.search``) decides: the key is rewritten with that
rule's replacement (first occurrence) or dropped.  Keys no rule matches are kept unchanged and listed as
``unmatched``.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .strict import group_keys

__all__ = ["Rules", "ConversionError", "ConversionReport", "convert_state_dict", "unwrap", "unwrap_checkpoint",
           "strip_prefix"]

Replacement = Union[None, str, Callable[[re.Match], str]]
Rules = Sequence[Union[Tuple[str, Replacement], Tuple[str, Replacement, Callable[[Any], Any]]]]

_WRAPPERS = ("model", "state_dict", "module")
_EMA_WRAPPERS = ("ema_state_dict", "state_dict_ema", "model_ema", "ema")


class ConversionError(KeyError):
    """A checkpoint that does not convert completely; the message lists the keys by pattern."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def strip_prefix(sd: Mapping[str, Any], prefixes: Union[str, Sequence[str]], repeat: bool = True) -> "OrderedDict":
    """Remove any of ``prefixes`` from the start of each key (again and again if ``repeat``, e.g.
    ``module.module.x``).  Raises if two keys collide after stripping."""
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    out: "OrderedDict[str, Any]" = OrderedDict()
    for k, v in sd.items():
        nk = k
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if p and nk.startswith(p):
                    nk = nk[len(p):]
                    changed = repeat
                    break
        if nk in out:
            raise ConversionError(f"strip_prefix: keys collide after stripping {list(prefixes)}: {nk!r} (from {k!r})")
        out[nk] = v
    return out


def unwrap_checkpoint(obj: Any, keys: Sequence[str] = _WRAPPERS) -> Mapping[str, Any]:
    """Descend through wrapper dicts (``{"model": {...}}``, ``{"state_dict": ...}``, nested) to the state dict.

    A key is followed only if its value is itself a mapping, so a state dict that happens to contain a
    tensor named "model" is returned as is."""
    for _ in range(8):
        if not isinstance(obj, Mapping):
            break
        nxt = next((obj[k] for k in keys if k in obj and isinstance(obj[k], Mapping)), None)
        if nxt is None:
            break
        obj = nxt
    if not isinstance(obj, Mapping):
        raise TypeError(f"unwrap: expected a mapping, got {type(obj).__name__}")
    return obj


def unwrap(obj: Any, *, ema: bool = False, strip: Sequence[str] = ("module.",), what: str = "") -> Dict[str, Any]:
    """The state dict inside a checkpoint object.

    * descends through ``model`` / ``state_dict`` / ``module`` wrappers (and an ``nn.Module`` gives its
      ``state_dict()``);
    * ``ema=True`` takes the averaged weights instead: ``ema_state_dict`` (mmdet-style, SimVG),
      ``state_dict_ema`` / ``model_ema`` (timm) or ``ema`` (ours, ``{"shadow": sd}``); raises if there are none;
    * removes the ``strip`` prefixes (DDP's ``module.``) when *every* key carries one."""
    import torch
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if ema:
        if not isinstance(obj, Mapping):
            raise KeyError(f"{what or 'checkpoint'}: no EMA weights (not a dict)")
        key = next((k for k in _EMA_WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise KeyError(f"{what or 'checkpoint'}: no EMA weights (none of {list(_EMA_WRAPPERS)}); "
                           f"the run kept no EMA")
        obj = obj[key]
        obj = unwrap_checkpoint(obj, ("shadow",) + _WRAPPERS)
    else:
        obj = unwrap_checkpoint(obj)
    sd = dict(obj)
    for p in strip:
        if sd and all(k.startswith(p) for k in sd):
            sd = dict(strip_prefix(sd, p))
    return sd


@dataclass
class ConversionReport:
    """What `convert_state_dict` did: ``renamed`` {old: new}, ``dropped`` (by a None rule), ``unmatched``
    (no rule; kept unchanged unless ``keep_unmatched=False``), and against ``expected_keys``: ``missing``
    (expected, not produced) and ``unexpected`` (produced, not expected)."""
    renamed: Dict[str, str] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)
    unmatched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unmatched or self.missing or self.unexpected)

    def text(self, what: str = "") -> str:
        lines = [f"checkpoint conversion incomplete{(' (' + what + ')') if what else ''}:"]
        for name, keys, note in (("unmatched", self.unmatched, "no rule for these checkpoint keys"),
                                 ("missing", self.missing, "expected, not produced"),
                                 ("unexpected", self.unexpected, "produced, not expected")):
            if keys:
                lines.append(f"  {name} ({len(keys)}; {note}):")
                lines += ["    " + g for g in group_keys(keys)]
        return "\n".join(lines)

    def check(self, what: str = "", allow_unmatched: bool = False) -> "ConversionReport":
        """Raise `ConversionError` (with `text`) unless everything was mapped and matches the expected keys."""
        bad = self.missing or self.unexpected or (self.unmatched and not allow_unmatched)
        if bad:
            raise ConversionError(self.text(what))
        return self

    def to_dict(self) -> dict:
        return {"renamed": dict(self.renamed), "dropped": list(self.dropped), "unmatched": list(self.unmatched),
                "missing": list(self.missing), "unexpected": list(self.unexpected)}


def convert_state_dict(sd: Mapping[str, Any], rules: Rules, *, expected_keys: Optional[Iterable[str]] = None,
                       keep_unmatched: bool = True) -> Tuple["OrderedDict[str, Any]", ConversionReport]:
    """Rename / drop / transform the keys of ``sd`` by the first matching rule (see the module docstring).

    Returns ``(new_sd, report)``; raises `ConversionError` if two keys map to the same new name.  With
    ``expected_keys`` (e.g. ``model.state_dict()``) the report also lists missing and unexpected keys."""
    compiled = [(re.compile(r[0]), r[1], r[2] if len(r) > 2 else None) for r in rules]
    out: "OrderedDict[str, Any]" = OrderedDict()
    rep = ConversionReport()
    src: Dict[str, str] = {}
    for k, v in sd.items():
        for pat, repl, fn in compiled:
            if pat.search(k):
                break
        else:
            rep.unmatched.append(k)
            if not keep_unmatched:
                continue
            pat = None
        if pat is not None:
            if repl is None:
                rep.dropped.append(k)
                continue
            nk = pat.sub(repl, k, count=1)
            rep.renamed[k] = nk
            if fn is not None:
                v = fn(v)
        else:
            nk = k
        if nk in out:
            raise ConversionError(f"convert_state_dict: {k!r} and {src[nk]!r} both map to {nk!r}")
        out[nk] = v
        src[nk] = k
    if expected_keys is not None:
        exp = list(expected_keys)
        have = set(exp)
        rep.missing = [k for k in exp if k not in out]
        rep.unexpected = [k for k in out if k not in have]
    return out, rep
