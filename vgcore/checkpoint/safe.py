"""Reading files without running code from them.

A pickle can name any importable callable and have it called while loading, so a checkpoint or data file is
read with ``torch.load(weights_only=True)`` (tensors, containers, numbers, strings) plus a short safelist of
plain record types that official checkpoints contain:

* ``argparse.Namespace`` -- TransVG-family and HiVG checkpoints store their command line under ``args``;
* numpy scalars and dtypes -- metrics such as SimVG's ``d_acc`` / ``miou`` may be numpy floats.

Files that need anything else (a pickled class instance, a function, a TorchScript archive) are refused with
`UntrustedFileError`, which names the file and the first disallowed global and points to the explicit
opt-in: ``trust_pickle=True`` in Python, ``--trust_pickle`` on the command lines.  There is no silent
fallback to full unpickling anywhere.

`load_plain_pickle` reads files that are pickles by format (REFER ``refs(*).p``, detectron2 ``.pkl`` weight
files): only builtin containers, strings and numbers are rebuilt (numpy arrays too with ``allow_numpy``).
"""
from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

__all__ = ["UntrustedFileError", "SAFE_GLOBALS", "NUMPY_ARRAY_GLOBALS", "torch_load", "load_plain_pickle"]

TRUST_HINT = "if you trust this file, pass --trust_pickle (trust_pickle=True in Python)"


def _numpy_scalar():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


# the dtype classes a numeric numpy scalar / array pickles (numpy >= 1.25 names them in BUILD)
_NUMERIC_DTYPES = sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFD"} - {np.dtype}, key=lambda t: t.__name__)

# (object, name in the file): files written with numpy 1.x name the scalar constructor numpy.core.*
SAFE_GLOBALS = [
    argparse.Namespace,
    np.dtype,
    _numpy_scalar(),
    (_numpy_scalar(), "numpy.core.multiarray.scalar"),
] + _NUMERIC_DTYPES
# numpy arrays (plain dtypes; an object array's items go through the same restricted loader): data files only
NUMPY_ARRAY_GLOBALS = [np.ndarray, _numpy_reconstruct(), (_numpy_reconstruct(), "numpy.core.multiarray._reconstruct")]


class UntrustedFileError(pickle.UnpicklingError):
    """A file needs full unpickling (it could run code) and the caller did not opt in."""


def _disallowed_global(msg: str):
    """The global a weights-only load refused, from torch's message (None: the file is corrupt instead)."""
    m = (re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"Unsupported class ([\w.]+)", msg)
         or re.search(r"but got <class '([\w.]+)'>", msg))
    return m.group(1) if m else None


def torch_load(path: Union[str, Path], map_location="cpu", *, trust_pickle: bool = False,
               allow_numpy: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with `SAFE_GLOBALS` allowed (and numpy arrays with
    ``allow_numpy``, for data files such as TransVG split lists).

    ``trust_pickle=True`` does full unpickling (``weights_only=False``): only for files you trust.  Otherwise a
    file needing more raises `UntrustedFileError` naming the file, the disallowed global and the opt-in flag."""
    if trust_pickle:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS + (NUMPY_ARRAY_GLOBALS if allow_numpy else [])):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name = _disallowed_global(str(e))
        if name is None:
            raise
        raise UntrustedFileError(
            f"{path}: refused: it pickles {name}, which a weights-only load does not rebuild "
            f"(full unpickling could run code stored in the file); {TRUST_HINT}") from None
    except RuntimeError as e:
        if "TorchScript" not in str(e):
            raise
        raise UntrustedFileError(f"{path}: refused: a TorchScript archive (loading it compiles and may run code "
                                 f"stored in the file); {TRUST_HINT}") from None


_PLAIN = {("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "bytearray"),
          ("__builtin__", "set"), ("__builtin__", "frozenset"), ("__builtin__", "complex"),
          ("__builtin__", "bytearray"), ("_codecs", "encode"), ("collections", "OrderedDict")}
_NUMPY = {("numpy", "dtype"), ("numpy", "ndarray"), ("numpy.core.multiarray", "scalar"),
          ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "_reconstruct"),
          ("numpy._core.multiarray", "_reconstruct")}


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, f, path, allow_numpy: bool, **kw):
        super().__init__(f, **kw)
        self._path, self._numpy = path, allow_numpy
        self._allowed = _PLAIN | (_NUMPY if allow_numpy else set())

    def find_class(self, module, name):
        if (module, name) in self._allowed:
            if module == "__builtin__":
                module = "builtins"
            if module.startswith("numpy"):
                return {"dtype": np.dtype, "ndarray": np.ndarray, "scalar": _numpy_scalar(),
                        "_reconstruct": _numpy_reconstruct()}[name]
            return super().find_class(module, name)
        raise UntrustedFileError(
            f"{self._path}: refused: the pickle names {module}.{name}; this reader rebuilds only builtin "
            f"containers, strings and numbers{' and numpy arrays' if self._numpy else ''}")


def load_plain_pickle(path: Union[str, Path], *, allow_numpy: bool = False) -> Any:
    """Unpickle ``path`` rebuilding only plain data (dict/list/tuple/set/str/bytes/numbers, numpy arrays and
    scalars with ``allow_numpy``); any other global raises `UntrustedFileError`.  Python-2 pickles of byte
    strings are retried with ``encoding="latin1"``."""
    for enc in ("ASCII", "latin1"):
        try:
            with open(path, "rb") as f:
                return _PlainUnpickler(f, path, allow_numpy, encoding=enc).load()
        except UnicodeDecodeError:
            continue
    raise UntrustedFileError(f"{path}: not decodable as ASCII or latin-1 strings")
