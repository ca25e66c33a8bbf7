"""Benchmark ALVG beside SimVG at the same settings: BEiT-3 base (random init), 640 px, patch 32, one query, batch 8.

    python scripts/bench_alvg.py [--quick] [--device cpu|cuda] [--batch 8] [--iters N] [--threads T] [--json]

Figures, per method and device:
* ``train``: one training step -- forward, the method's full loss, backward, gradient clipping (0.15) and the
  Adam (amsgrad) step.  ALVG: detection loss on the 3 decoder layers, mask focal + dice, TIE score-map and
  decoder-attention losses (mask targets).  SimVG: its one-stage recipe (decoder branch + token branch with
  distillation).
* ``infer``: the forward pass under ``torch.no_grad`` (ALVG: boxes, mask and attention maps; SimVG: the
  decoder branch).
Each figure runs in a fresh subprocess so that the CPU peak belongs to that measurement alone: "peak MB" is
the peak resident memory of the process minus its resident memory right after the model was built
(activations, gradients, optimizer state); on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation
after building.  CUDA is measured too when present (unless ``--device`` names one).

Output: one line per figure, then a JSON summary; ``--json`` prints only JSON, one line per figure with
``method``, ``mode``, ``path`` (the device: cpu | cuda), ``ms_per_step``, ``images_per_s``, ``peak_mb``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("alvg", "simvg")
MODES = ("train", "infer")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(B: int, dev):
    import torch
    images = torch.randn(B, 3, 640, 640, device=dev)
    ids = torch.randint(4, 64000, (B, 20), device=dev)
    pad = torch.zeros(B, 20, dtype=torch.bool, device=dev)
    pad[:, 12:] = True
    boxes = [torch.tensor([[0.5, 0.5, 0.3, 0.4]], device=dev) for _ in range(B)]
    masks = torch.zeros(B, 640, 640, dtype=torch.uint8, device=dev)
    masks[:, 192:448, 224:416] = 1
    return images, ids, pad, boxes, masks


def _build(method: str, dev):
    if method == "alvg":
        from alvg.loss import ALVGCriterion
        from alvg.model import build_model
        model = build_model({"preset": "vitb"}).to(dev)
        crit = ALVGCriterion({}, model.cfg.compat())

        def fwd(images, ids, pad):
            return model.forward_tensors(images, ids, pad)

        def loss(out, boxes, masks):
            import types
            return crit(out, types.SimpleNamespace(target_boxes=boxes, masks=masks))["loss"]
    else:
        from simvg.loss import SimVGCriterion
        from simvg.model import build_model
        model = build_model({"preset": "vitb"}).to(dev)
        crit = SimVGCriterion(dict(lambda_decoder=1.0, lambda_token=2.0, lambda_distill=1.0))
        branch = {"train": "both", "infer": "decoder"}

        def fwd(images, ids, pad):
            return model.forward_tensors(images, ids, pad, branch=branch["train" if model.training else "infer"])

        def loss(out, boxes, masks):
            return crit(out, boxes)["loss"]
    return model, fwd, loss


def run(method: str, mode: str, device: str, batch: int, iters: int, warmup: int) -> dict:
    import torch
    torch.manual_seed(0)
    dev = torch.device(device)
    model, fwd, loss_fn = _build(method, dev)
    images, ids, pad, boxes, masks = _inputs(batch, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _rss_mb()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-9, amsgrad=True)

    def step():
        if mode == "train":
            model.train()
            loss_fn(fwd(images, ids, pad), boxes, masks).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.15)
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                fwd(images, ids, pad)

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / iters
    peak = ((torch.cuda.max_memory_allocated() - base) / 2 ** 20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss)
    return {"method": method, "mode": mode, "path": dev.type, "ms_per_step": round(1000 * dt, 1),
            "images_per_s": round(batch / dt, 3), "peak_mb": round(peak, 1), "batch": batch, "iters": iters,
            "threads": torch.get_num_threads(), "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def main(argv=None) -> list:
    p = argparse.ArgumentParser("ALVG (and SimVG) BEiT-3 base benchmark")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 1 timed iteration per figure")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cpu, and cuda too when present)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 3; --quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--json", action="store_true", help="only JSON: one line per figure")
    p.add_argument("--_run", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    iters = a.iters or (1 if a.quick else 3)
    if a._run:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(run(a._run[0], a._run[1], a.device or "cpu", a.batch, iters, warmup=1)))
        return []
    import torch
    devices = [a.device] if a.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for dev in devices:
        for method in a.methods:
            for mode in MODES:
                cmd = [sys.executable, __file__, "--_run", method, mode, "--device", dev, "--batch", str(a.batch),
                       "--iters", str(iters)] + (["--threads", str(a.threads)] if a.threads else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"benchmark {method} {mode} on {dev} failed")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(r)
                if a.json:
                    print(json.dumps({k: r[k] for k in ("method", "mode", "path", "ms_per_step", "images_per_s",
                                                         "peak_mb")}), flush=True)
                else:
                    what = "train step (fwd+loss+bwd+Adam)" if mode == "train" else "inference (no grad)"
                    print(f"{method:>5} {dev:>4} {what:<30} batch {r['batch']}: {r['ms_per_step']:.0f} ms/step, "
                          f"{r['images_per_s']:.2f} img/s, peak +{r['peak_mb']:.0f} MB ({r['threads']} threads, "
                          f"{r['params_M']} M params)", flush=True)
    if not a.json:
        print(json.dumps({"settings": "BEiT-3 base, 640 px, patch 32, 1 query, batch %d" % a.batch, "results": rows}))
    return rows


if __name__ == "__main__":
    main()
