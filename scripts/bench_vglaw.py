"""VG-LAW speed and memory: the batched language-adaptive weights against per-sample loops.

    python scripts/bench_vglaw.py [--level qkv|model|all] [--device cpu|cuda] [--batch 8] [--img_size 448]
                                  [--laws svd,la,od3] [--rounds 5] [--iters 1] [--quick] [--json]

Two levels, each timed for a training step (forward + backward; the model level includes the loss) and for
inference (``torch.no_grad``, reported as images/s):

* ``qkv``: the adapted qkv projection of one ViT-B block (N = 784 tokens of a 448 px image, C = 768, svd
  rank 32), for each law type of ``--laws``.  Paths:
    batched      `vglaw.law.AdaptiveLinear.forward`, the whole batch at once (what the model runs);
    loop         the same function called on one sample at a time (`AdaptiveLinear.forward_loop`);
    loop_weight  one sample at a time, building that sample's dense weight W_b first
                 (`AdaptiveLinear.sample_weight`: svd W0 + S A_b D, la / od W0 scaled) and applying it;
    plain        the unadapted Linear(768 -> 2304) on the batch: the floor every path pays.
* ``model``: the whole VG-LAW model (ViTDet ViT-B + 6-layer BERT, svd, both heads, random weights with a
  non-zero generator output), batch ``--batch`` at ``--img_size``.  Paths: batched (one forward of the batch)
  and loop (the model on one sample at a time: B forwards of batch 1, each sample's loss / B backpropagated,
  gradients accumulating; what a per-sample implementation of adaptive weights would run).

Paths of one level are interleaved (round r runs every path once) and the best time over the rounds is
reported, so that a load change on a shared machine hits every path alike.  Peak memory ``peak_mb``: CUDA
``max_memory_allocated`` above the allocation before the step; CPU the process's peak resident set above its
resident set before the step (the kernel's high-water mark, reset before every measurement; the script
re-executes itself with ``MALLOC_MMAP_THRESHOLD_`` set so that every tensor of 128 kB or more is its own
mapping, returned to the system when freed, and the resident set follows the live tensors).  Output: one line
per figure and the loop / batched ratios, or with ``--json`` one JSON object per line (method, level, law,
mode, path, ms_per_step, images_per_s, peak_mb, device, batch, threads).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

QKV_PATHS = ("batched", "loop", "loop_weight", "plain")
MODEL_PATHS = ("batched", "loop")


# ------------------------------------------------------------------------------------------------ memory
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024
    return float("nan")


class Peak:
    """Peak memory of a block above the memory in use when it starts (see the module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:  # reset the kernel's high-water mark (VmHWM) to the current resident set
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.base = _status_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        else:
            self.mb = _status_mb("VmHWM") - self.base
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _interleaved(fns: dict, rounds: int, device) -> dict:
    """{path: (best seconds, peak MB of the first timed run)} with the paths alternating every round."""
    best = {k: float("inf") for k in fns}
    peak = {}
    for r in range(rounds):
        for k, fn in fns.items():
            if k not in peak:
                with Peak(device) as pk:
                    _sync(device)
                    t0 = time.perf_counter()
                    fn()
                    _sync(device)
                    dt = time.perf_counter() - t0
                peak[k] = pk.mb
            else:
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                dt = time.perf_counter() - t0
            best[k] = min(best[k], dt)
    return {k: (best[k], peak[k]) for k in fns}


# ------------------------------------------------------------------------------------------------ qkv level
def bench_qkv(law: str, batch: int, img_size: int, rounds: int, device) -> list:
    from vglaw.law import AdaptiveLinear, law_channels

    torch.manual_seed(0)
    C, K = 768, 32
    N = (img_size // 16) ** 2
    lin = AdaptiveLinear(C, 3 * C, law).to(device)
    a = (torch.randn(batch, law_channels(law, C, 3 * C, 1, K), device=device) * 0.01 + (law != "svd"))
    S = torch.randn(3 * C, K, device=device) * 0.1
    D = torch.randn(K, C, device=device) * 0.1
    a.requires_grad_()
    S.requires_grad_()
    D.requires_grad_()
    shared = (S, D) if law == "svd" else None
    x = torch.randn(batch, N, C, device=device, requires_grad=True)
    grad = torch.randn(batch, N, 3 * C, device=device)
    paths = {"batched": lambda: lin(x, a, shared),
             "loop": lambda: lin.forward_loop(x, a, shared),
             "loop_weight": lambda: lin.forward_loop(x, a, shared, build_weight=True),
             "plain": lambda: F.linear(x, lin.weight, lin.bias)}
    tensors = [x, a, S, D, lin.weight, lin.bias]

    def train(f):
        def step():
            for t in tensors:
                t.grad = None
            f().backward(grad)
        return step

    def infer(f):
        def step():
            with torch.no_grad():
                f()
        return step

    rows = []
    for mode, wrap in (("infer", infer), ("train", train)):
        for fn in paths.values():  # warm-up
            wrap(fn)()
        res = _interleaved({k: wrap(f) for k, f in paths.items()}, rounds, device)
        for path, (sec, mb) in res.items():
            rows.append(dict(level="qkv", law=law, mode=mode, path=path, sec=sec, peak_mb=mb,
                             shape=f"[{batch}, {N}, {C}] -> {3 * C}"))
    return rows


# ---------------------------------------------------------------------------------------------- model level
def bench_model(batch: int, img_size: int, iters: int, warmup: bool, device) -> list:
    from vglaw.loss import VGLAWCriterion
    from vglaw.model import build_model

    torch.manual_seed(0)
    model = build_model({"preset": "vitb", "img_size": img_size}).to(device)
    with torch.no_grad():  # a generator that adapts (the fresh svd generator outputs A = 0)
        for p in model.weight_generator.proj:
            p[-1].weight.normal_(std=0.02)
    crit = VGLAWCriterion()
    L = model.cfg.max_len
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    ids = torch.randint(1000, 2000, (batch, L), device=device)
    att = torch.zeros(batch, L, dtype=torch.long, device=device)
    att[:, :12] = 1
    boxes = torch.rand(batch, 4, device=device) * 0.4 + 0.3
    masks = (torch.rand(batch, img_size, img_size, device=device) > 0.7).float()

    def fwd_bwd(sl, scale):
        loss = crit(model(images[sl], ids[sl], att[sl]), boxes[sl], masks[sl])["loss"] * scale
        loss.backward()

    def train_batched():
        model.zero_grad(set_to_none=True)
        fwd_bwd(slice(None), 1.0)

    def train_loop():
        model.zero_grad(set_to_none=True)
        for b in range(batch):
            fwd_bwd(slice(b, b + 1), 1.0 / batch)

    @torch.no_grad()
    def infer_batched():
        model(images, ids, att)

    @torch.no_grad()
    def infer_loop():
        for b in range(batch):
            model(images[b:b + 1], ids[b:b + 1], att[b:b + 1])

    rows = []
    for mode, fns in (("infer", {"batched": infer_batched, "loop": infer_loop}),
                      ("train", {"batched": train_batched, "loop": train_loop})):
        model.train(mode == "train")
        if warmup:  # one sample through each mode's code (kernel set-up), not timed
            if mode == "train":
                fwd_bwd(slice(0, 1), 1.0)
            else:
                with torch.no_grad():
                    model(images[:1], ids[:1], att[:1])
            model.zero_grad(set_to_none=True)
        res = _interleaved(fns, iters, device)
        for path, (sec, mb) in res.items():
            rows.append(dict(level="model", law=model.cfg.law_type, mode=mode, path=path, sec=sec, peak_mb=mb,
                             shape=f"ViT-B {img_size} px, BERT-6, both heads"))
    model.zero_grad(set_to_none=True)
    return rows


# --------------------------------------------------------------------------------------------------- main
def _finish(row: dict, device, batch: int) -> dict:
    sec = row.pop("sec")
    return {"method": "VG-LAW", "level": row["level"], "law": row["law"], "mode": row["mode"], "path": row["path"],
            "ms_per_step": round(sec * 1e3, 2), "images_per_s": round(batch / sec, 3),
            "peak_mb": round(row["peak_mb"], 1), "device": device.type, "batch": batch,
            "threads": torch.get_num_threads(), "shape": row["shape"]}


MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def main(argv=None) -> list:
    if argv is None and MMAP_ENV not in os.environ and sys.platform.startswith("linux"):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, MMAP_ENV: str(128 * 1024)})
    p = argparse.ArgumentParser("VG-LAW benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--level", default="all", choices=["qkv", "model", "all"])
    p.add_argument("--device", default=None, help="cpu | cuda (default: cpu, and cuda too when present)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img_size", type=int, default=448)
    p.add_argument("--laws", default="svd,la,od3", help="law types of the qkv level (svd, la, od1, od2, od3)")
    p.add_argument("--rounds", type=int, default=5, help="qkv level: interleaved timing rounds")
    p.add_argument("--iters", type=int, default=1, help="model level: interleaved timing rounds")
    p.add_argument("--quick", action="store_true", help="2 qkv rounds, no model warm-up")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="one JSON object per figure and line")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    rounds = 2 if a.quick else a.rounds
    devices = [a.device] if a.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    out = []
    for dev_name in devices:
        device = torch.device(dev_name)
        groups = []
        if a.level in ("qkv", "all"):
            groups += [bench_qkv(law.strip(), a.batch, a.img_size, rounds, device)
                       for law in a.laws.split(",") if law.strip()]
        if a.level in ("model", "all"):
            groups.append(bench_model(a.batch, a.img_size, a.iters, not a.quick, device))
        for rows in groups:
            rows = [_finish(r, device, a.batch) for r in rows]
            out += rows
            for r in rows:
                if a.json:
                    print(json.dumps(r), flush=True)
                else:
                    what = "fwd+bwd" if r["mode"] == "train" else "infer"
                    print(f"{r['device']:>4} {r['level']:<5} {r['law']:<4} {what:<7} {r['path']:<11} "
                          f"{r['ms_per_step']:>10.1f} ms/step {r['images_per_s']:>9.2f} img/s "
                          f"peak +{r['peak_mb']:.0f} MB", flush=True)
            if not a.json:
                base = {r["mode"]: r["ms_per_step"] for r in rows if r["path"] == "batched"}
                for r in rows:
                    if r["path"].startswith("loop"):
                        print(f"     {r['level']} {r['law']} {r['mode']}: {r['path']} / batched = "
                              f"x{r['ms_per_step'] / base[r['mode']]:.2f}", flush=True)
    if not a.json:
        print(f"# {torch.get_num_threads()} threads; os.cpu_count() {os.cpu_count()}")
    return out


if __name__ == "__main__":
    main()
