"""Shared benchmarking machinery of ``scripts/bench_<method>.py``: one run measures fp32 eager (the reference)
and every fast path (bf16 autocast, torch.compile, both; activation checkpointing for training) of each mode,
plus the data loader's throughput per worker, and prints a table or, with ``--json``, one JSON line per figure:

    {"method": ..., "mode": ..., "path": ..., "ms_per_step": ..., "images_per_s": ..., "peak_mb": ...}

A bench script supplies a ``make_case(mode, device, args) -> Case`` (model, inputs, loss, optimizer of one mode)
and, optionally, a ``make_loader(args) -> LoaderCase`` (the method's training pipeline on synthetic images at
its official size), then calls `main`.  `random_tokens`, `random_batch` and `method_case` make a case of random
inputs, `synthetic_folder` and `grounding_loader` a loader case on synthetic JPEG scenes.

How it measures
---------------
* Each (mode, path) runs in its own subprocess (fresh allocator, fresh compile caches, per-path peak memory).
* Warm-up steps first (the first includes torch.compile's compilation: reported as ``compile_s`` in the table,
  = first step - steady step).  Then one step measures memory, then ``iters`` timed steps: ``ms_per_step`` is
  wall time per step (CUDA synchronised), ``images_per_s`` = batch / step time; the table also shows the
  process CPU time per step (a better figure than wall time on a shared machine).
* ``peak_mb``: what one step needs on top of what stays resident between steps (weights, optimizer state): on
  CUDA ``max_memory_allocated`` minus ``memory_allocated`` before the step; on the CPU the peak resident set
  (VmHWM, reset through /proc/self/clear_refs) minus the resident set before the step, measured while glibc
  returns every block of 128 KiB or more to the system on free, so that the resident set follows the live
  tensors.
* Timed steps run with glibc's allocator told to keep freed memory (`reuse_memory`, the same setting as the
  ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` environment of scripts/lib.sh): otherwise every tensor above
  glibc's mmap threshold (at most 32 MiB) is a fresh mmap that page-faults on first touch and is unmapped again
  on free, every step (measured: up to 40 % system time on a SimVG step).
* Training steps are the loop's: forward under autocast only, outputs cast to float32 (`float_outputs`),
  criterion in float32, backward (grad scaler for fp16), clipping when the method clips, the optimizer the
  method's ``train.py`` builds (fused Adam / AdamW), ``zero_grad(set_to_none=True)``.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["FIELDS", "ALLOCATOR_ENV", "BenchPath", "PATHS", "Case", "LoaderCase", "default_paths", "is_train",
           "reuse_memory", "measure", "measure_loader", "main", "figure", "upscale_records", "build_parser",
           "parse_args", "random_tokens", "random_batch", "method_case", "synthetic_folder",
           "grounding_loader"]

FIELDS = ("method", "mode", "path", "ms_per_step", "images_per_s", "peak_mb")

# glibc: large blocks from the heap (never mmap), freed memory kept for reuse (scripts/lib.sh exports the same)
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


@dataclass(frozen=True)
class BenchPath:
    name: str
    amp: str = "none"
    compile: bool = False
    grad_ckpt: bool = False
    train_only: bool = False
    cuda_only: bool = False


PATHS = {p.name: p for p in (
    BenchPath("fp32"),
    BenchPath("bf16", amp="bf16"),
    BenchPath("fp16", amp="fp16", cuda_only=True),
    BenchPath("compile", compile=True),
    BenchPath("bf16+compile", amp="bf16", compile=True),
    BenchPath("fp16+compile", amp="fp16", compile=True, cuda_only=True),
    BenchPath("grad_ckpt", grad_ckpt=True, train_only=True),
    BenchPath("bf16+grad_ckpt", amp="bf16", grad_ckpt=True, train_only=True),
)}


def is_train(mode: str) -> bool:
    """A training mode: ``train`` or ``train_<variant>`` (e.g. ResVG's ``train_frozen``); the others infer."""
    return mode == "train" or mode.startswith("train_")


def default_paths(mode: str, device: str) -> List[str]:
    """fp32 first (the reference), then every fast path that applies to ``mode`` on ``device``."""
    cuda = torch.device(device).type == "cuda"
    return [n for n, p in PATHS.items() if (cuda or not p.cuda_only) and (is_train(mode) or not p.train_only)]


@dataclass
class Case:
    """One mode of a method: ``forward(model, batch) -> outputs``; training also ``loss(outputs, batch) ->
    scalar`` and ``optimizer(model)``.  ``images``: images per step."""
    model: torch.nn.Module
    batch: Any
    images: int
    forward: Callable[[torch.nn.Module, Any], Any]
    loss: Optional[Callable[[Any, Any], torch.Tensor]] = None
    optimizer: Optional[Callable[[torch.nn.Module], torch.optim.Optimizer]] = None
    clip_max_norm: float = 0.0
    label: str = ""


@dataclass
class LoaderCase:
    """A map-style dataset (the method's training transform + tokenizer) and its collate function."""
    dataset: Any
    collate: Callable
    batch_size: int
    label: str = ""
    cleanup: Callable[[], None] = field(default=lambda: None)


# ------------------------------------------------------------------------------------------------ memory
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4


def _mallopt(param: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    except (OSError, AttributeError):  # not glibc
        return False


def reuse_memory() -> bool:
    """Tell glibc (in this process, from now on) to serve large blocks from the heap and keep freed memory, as
    ``ALLOCATOR_ENV`` does at process start.  Returns False where there is no glibc ``mallopt``."""
    return _mallopt(_M_MMAP_MAX, 0) and _mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1)


def _track_memory() -> bool:
    """Every block of >= 128 KiB mmap'd and unmapped on free (no dynamic threshold, mmap on even when the
    process started with ``MALLOC_MMAP_MAX_=0``): the resident set follows the live tensors."""
    return (_mallopt(_M_MMAP_MAX, 65536) and _mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
            and _mallopt(_M_TRIM_THRESHOLD, 128 * 1024))


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ measuring
def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(case: Case, mode: str, path: BenchPath, device: str, iters: int = 5, warmup: int = 1,
            allocator: bool = False) -> dict:
    """Run ``case`` on ``path`` (in this process; see the module docstring) and return its figures.

    ``allocator``: this process may change glibc's settings (the bench workers): CPU peak memory is then
    measured and the timed steps reuse memory; otherwise the CPU ``peak_mb`` is NaN."""
    from .engine import autocast_context, build_grad_scaler, check_amp, float_outputs
    from .speed import compile_model, enable_grad_ckpt

    dev = torch.device(device)
    check_amp(path.amp, dev)
    cuda = dev.type == "cuda"
    tracked = allocator and not cuda and _track_memory()
    model = case.model
    train = is_train(mode)
    if path.grad_ckpt:
        enable_grad_ckpt(model)
    if path.compile:
        compile_model(model)
    model.train(train)
    opt = case.optimizer(model) if train else None
    scaler = build_grad_scaler(path.amp, dev) if train else None

    def step():
        if train:
            with autocast_context(path.amp, dev):
                out = case.forward(model, case.batch)
            loss = case.loss(float_outputs(out), case.batch)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                if case.clip_max_norm > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), case.clip_max_norm)
                scaler.step(opt)
                scaler.update()
            else:
                if case.clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), case.clip_max_norm)
                opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), autocast_context(path.amp, dev):
                float_outputs(case.forward(model, case.batch))

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    for _ in range(max(warmup - 1, 0)):
        step()
    sync()
    # memory: one step on top of what stays resident
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        sync()
        peak = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20
    else:
        base = _status_mb("VmRSS")
        peak = float("nan")
        if tracked and _reset_peak_rss():
            step()
            peak = _status_mb("VmHWM") - base
    if allocator and not cuda:
        reuse_memory()
        step()  # the heap grows to its working size once
    sync()
    c0, t0 = _cpu_s(), time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    dt = (time.perf_counter() - t0) / iters
    cpu = (_cpu_s() - c0) / iters
    return {"mode": mode, "path": path.name, "ms_per_step": round(dt * 1000, 3),
            "images_per_s": round(case.images / dt, 3), "peak_mb": round(peak, 1),
            "cpu_ms_per_step": round(cpu * 1000, 1), "compile_s": round(max(first - dt, 0.0), 1) if path.compile else None,
            "threads": torch.get_num_threads(), "device": str(dev), "label": case.label}


def measure_loader(lc: LoaderCase, batches: int = 4) -> dict:
    """Images/s of one data-loader worker: the dataset's ``__getitem__`` (decode, transform, tokenize) and the
    collate, in this process (what each worker process does)."""
    n = min(batches * lc.batch_size, len(lc.dataset))
    lc.collate([lc.dataset[i] for i in range(min(lc.batch_size, n))])  # warm-up (imports, caches)
    c0, t0 = _cpu_s(), time.perf_counter()
    done = 0
    while done < n:
        k = min(lc.batch_size, n - done)
        lc.collate([lc.dataset[(done + i) % len(lc.dataset)] for i in range(k)])
        done += k
    dt = time.perf_counter() - t0
    cpu = _cpu_s() - c0
    return {"mode": "data", "path": "1 worker", "ms_per_step": round(dt / n * lc.batch_size * 1000, 1),
            "images_per_s": round(n / dt, 2), "peak_mb": float("nan"), "cpu_images_per_s": round(n / max(cpu, 1e-9), 2),
            "label": lc.label}


# ------------------------------------------------------------------------------------------------ inputs
def random_tokens(B: int, L: int, low: int, high: int, real: int = 12, start: Optional[int] = None,
                  end: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random text of ``real`` real tokens out of ``L``: ``(ids [B, L] long, mask [B, L] bool, True = real)``.

    Without ``start`` / ``end`` every id (the padding's too) is drawn from [low, high); with them the real tokens
    are ``start``, ``real - 2`` ids drawn from [low, high) and ``end``, and the padding ids are 0 (the layout of
    CLIP's and BERT's tokenizers)."""
    if (start is None) != (end is None):
        raise ValueError("random_tokens: give both start and end, or neither")
    if start is None:
        ids = torch.randint(low, high, (B, L))
    else:
        ids = torch.zeros(B, L, dtype=torch.long)
        ids[:, 0], ids[:, 1:real - 1], ids[:, real - 1] = start, torch.randint(low, high, (B, real - 2)), end
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, :real] = True
    return ids, mask


def random_batch(B: int, S: int, device, text_ids: torch.Tensor, text_mask: torch.Tensor, boxes: torch.Tensor,
                 masks: Union[torch.Tensor, Callable[[], torch.Tensor], None] = None):
    """A `vgcore.data.sample.Batch` on ``device`` of B standard-normal S x S images (no padding, identity affine,
    original size S x S) with the given text and one target box each (``boxes`` [B, 4], normalised cxcywh).
    ``masks``: [B, S, S] uint8 object masks, or a function that draws them (called after the images are drawn,
    so that a seeded run draws the same inputs in the same order)."""
    from .data.sample import Batch
    images = torch.randn(B, 3, S, S)
    if callable(masks):
        masks = masks()
    return Batch(images=images, pixel_mask=torch.zeros(B, S, S, dtype=torch.bool), text_ids=text_ids,
                 text_mask=text_mask, boxes=boxes, target_boxes=[b[None] for b in boxes],
                 num_targets=torch.ones(B, dtype=torch.long), affine=torch.tensor([[1.0, 0, 1, 0]] * B),
                 orig_size=torch.tensor([[S, S]] * B), texts=["x"] * B, records=[None] * B, masks=masks).to(device)


def method_case(method: Any, args: argparse.Namespace, model: torch.nn.Module, batch: Any, criterion: Callable,
                clip_max_norm: float, label: str, forward: Optional[Callable[[torch.nn.Module, Any], Any]] = None,
                images: Optional[int] = None) -> Case:
    """The `Case` of a method package's model (``method``: its `vgcore.method` module, ``args``: its training
    flags): ``forward(model, batch)`` (default ``model(batch)``), the loss ``criterion(outputs, batch)["loss"]``,
    the optimizer its train.py builds (``method.build_optimizer(args, model, 1)``'s), gradient clipping at
    ``clip_max_norm``.  ``images``: per step, default ``len(batch)``."""
    return Case(model=model, batch=batch, images=len(batch) if images is None else images,
                forward=forward or (lambda m, b: m(b)), loss=lambda out, b: criterion(out, b)["loss"],
                optimizer=lambda m: method.build_optimizer(args, m, 1)[0], clip_max_norm=clip_max_norm, label=label)


def synthetic_folder(method: str, fmt: str, a: argparse.Namespace, **generate_kw) -> Tuple[str, Callable[[], None]]:
    """A temporary folder of synthetic JPEG scenes (`vgcore.synthetic.scenes.generate`) in the annotation layout
    ``fmt`` (transvg, refer, seqtr), for the data-loader figure: ``max(a.batch * a.loader_batches, a.batch)``
    training samples, one validation and one test sample.  ``generate_kw``: further `generate` options (e.g.
    ``tokenizers=False``).  Returns the folder and the function that removes it (`LoaderCase.cleanup`)."""
    import shutil
    import tempfile

    from .synthetic.scenes import generate
    tmp = tempfile.mkdtemp(prefix=f"bench_{method}_data_")
    cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
    try:
        generate(tmp, num_train=max(a.batch * a.loader_batches, a.batch), num_val=1, num_test=1, formats=(fmt,),
                 image_format="jpg", verbose=False, **generate_kw)
    except BaseException:
        cleanup()
        raise
    return tmp, cleanup


def grounding_loader(records: list, transform: Callable, tokenizer: Any, batch_size: int, label: str,
                     cleanup: Callable[[], None], **dataset_kw) -> LoaderCase:
    """The `LoaderCase` of a method's training pipeline: a `GroundingDataset` of ``records`` through ``transform``
    and ``tokenizer`` (``dataset_kw``: its further options, e.g. ``load_masks``) and its `Collate`."""
    from .data.dataset import Collate, GroundingDataset
    ds = GroundingDataset(records, transform, tokenizer=tokenizer, **dataset_kw)
    return LoaderCase(ds, Collate(tokenizer), batch_size, label=label, cleanup=cleanup)


def upscale_records(records: list, factor: int = 4, quality: int = 95) -> list:
    """Scale the images of ``records`` (re-saved in place) and their annotations (boxes, polygon masks, sizes) by
    ``factor``, so that the data-loader figure decodes and resizes images of a real dataset's size: the synthetic
    scenes are 112-192 px, x4 gives 448-768 px (COCO images are about 640 x 480).  Returns new records."""
    import dataclasses

    import numpy as np
    from PIL import Image
    done = set()
    out = []
    for r in records:
        if r.image_path not in done:
            with Image.open(r.image_path) as im:
                big = im.convert("RGB").resize((im.width * factor, im.height * factor), Image.BILINEAR)
            big.save(r.image_path, quality=quality)
            done.add(r.image_path)
        mask = r.mask
        if isinstance(mask, (list, tuple)):  # polygons: [[x0, y0, x1, y1, ...], ...]
            mask = [[float(v) * factor for v in poly] for poly in mask]
        elif mask is not None:
            raise ValueError("upscale_records: only polygon masks are scaled")
        out.append(dataclasses.replace(r, boxes=np.asarray(r.boxes) * factor, mask=mask,
                                       height=r.height * factor if r.height else None,
                                       width=r.width * factor if r.width else None))
    return out


def figure(method: str, r: dict) -> dict:
    """The JSON line of one result: exactly `FIELDS`."""
    d = dict(r, method=method)
    return {k: (None if isinstance(d[k], float) and d[k] != d[k] else d[k]) for k in FIELDS}


# ------------------------------------------------------------------------------------------------ driver
def _parser(description: str, modes: Sequence[str], defaults: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present, else cpu)")
    p.add_argument("--batch", type=int, default=defaults.get("batch", 8), help="images per step")
    p.add_argument("--modes", nargs="+", default=list(modes), choices=list(modes), help="what to measure")
    p.add_argument("--paths", nargs="+", default=None, choices=list(PATHS),
                   help="default: fp32 and every fast path that applies (fp16 ones on CUDA only)")
    p.add_argument("--iters", type=int, default=3, help="timed steps per figure")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first compiles)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--loader_batches", type=int, default=4, help="batches of the data-loader figure (0 = skip it)")
    p.add_argument("--quick", action="store_true", help="1 warm-up and 1 timed step, fp32 and bf16 only")
    p.add_argument("--json", action="store_true", help="one JSON line per figure (fields: " + ", ".join(FIELDS) + ")")
    p.add_argument("--system_malloc", action="store_true",
                   help="no allocator setting in the worker processes (to see what it saves)")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p


def build_parser(description: str, modes: Sequence[str], defaults: Optional[dict] = None) -> argparse.ArgumentParser:
    """The flags `main` parses (for a script that adds its own levels next to `main`'s figures)."""
    return _parser(description, modes, defaults or {})


def parse_args(description: str, modes: Sequence[str], argv=None,
               add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None,
               defaults: Optional[dict] = None) -> Tuple[argparse.Namespace, List[str]]:
    """Parse `main`'s flags and the script's own (``add_args``), as `main` does (for a script that decides what
    to run before calling `main`).  Returns the namespace and the arguments (``sys.argv[1:]`` when ``argv`` is
    None) as a list."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = build_parser(description, modes, defaults)
    if add_args is not None:
        add_args(p)
    return p.parse_args(argv), argv


def _row(r: dict, ref: Optional[dict]) -> str:
    speed = ""
    if ref is not None and r["path"] != ref["path"]:
        speed = f"  x{ref['ms_per_step'] / r['ms_per_step']:.2f}"
    peak = "" if r.get("peak_mb") is None or r["peak_mb"] != r["peak_mb"] else f"  peak {r['peak_mb']:7.0f} MB"
    comp = f"  compile {r['compile_s']:.0f} s" if r.get("compile_s") is not None else ""
    cpu = f"  (cpu {r['cpu_ms_per_step']:.0f} ms/step)" if "cpu_ms_per_step" in r else ""
    return (f"  {r['mode']:<14} {r['path']:<15} {r['ms_per_step']:9.1f} ms/step {r['images_per_s']:8.2f} images/s"
            f"{peak}{speed}{comp}{cpu}")


def main(method: str, make_case: Callable[[str, str, argparse.Namespace], Case], modes: Sequence[str],
         argv=None, make_loader: Optional[Callable[[argparse.Namespace], LoaderCase]] = None,
         description: str = "", add_args: Optional[Callable[[argparse.ArgumentParser], None]] = None,
         defaults: Optional[dict] = None, script: Optional[str] = None) -> List[dict]:
    """The bench script's entry point: parse, run every (mode, path) in a subprocess of ``script`` (default: the
    running script), print the table (or JSON lines); returns the results."""
    a, argv = parse_args(description or f"{method} speed and memory", modes, argv, add_args, defaults)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a._worker:  # one figure, printed as the last line
        what, _, name = a._worker.partition(":")
        if what == "data":
            lc = make_loader(a)
            try:
                r = measure_loader(lc, a.loader_batches)
            finally:
                lc.cleanup()
        else:
            torch.manual_seed(0)
            iters, warmup = (1, 1) if a.quick else (a.iters, a.warmup)
            r = measure(make_case(what, device, a), what, PATHS[name], device, iters=iters, warmup=warmup,
                        allocator=not a.system_malloc)
        print(json.dumps(r))
        return [r]
    script = script or os.path.abspath(sys.argv[0])
    env = dict(os.environ)
    if not a.system_malloc:
        env.update({k: env.get(k, v) for k, v in ALLOCATOR_ENV.items()})
    passthrough = [x for x in argv if x != "--json"]
    jobs = []
    for mode in a.modes:
        names = a.paths or (["fp32", "bf16"] if a.quick else default_paths(mode, device))
        if "fp32" in names:
            names = ["fp32"] + [n for n in names if n != "fp32"]
        jobs += [(mode, n) for n in names if is_train(mode) or not PATHS[n].train_only]
    if make_loader is not None and a.loader_batches > 0:
        jobs.append(("data", ""))
    results, refs = [], {}
    if not a.json:
        print(f"{method} on {device} ({torch.get_num_threads() if not a.threads else a.threads} threads), batch {a.batch}; "
              "x = speed-up over fp32 eager of the same mode", flush=True)
    for mode, name in jobs:
        cmd = [sys.executable, script, *passthrough, "--device", device, "--_worker", f"{mode}:{name}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{method} benchmark {mode}/{name or 'data'} failed (exit {proc.returncode})")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        if r["path"] == "fp32":
            refs[mode] = r
        if a.json:
            print(json.dumps(figure(method, r)), flush=True)
        elif mode == "data":
            print(f"  data loader ({r['label']}): {r['images_per_s']:.1f} images/s per worker "
                  f"(cpu {r['cpu_images_per_s']:.1f})", flush=True)
        else:
            print(_row(r, refs.get(mode)), flush=True)
    return results
