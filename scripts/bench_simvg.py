"""Benchmark SimVG with BEiT-3 base (random init, 640 px, patch 32, 1 query): training step time
(forward + loss + backward + Adam step, batch 8, DB + TB with distillation), inference images/s of the decoder
branch (``branch="both"`` minus nothing: DB run alone) and of the TB-only fast path, and the peak memory of each.

    python scripts/bench_simvg.py [--quick] [--device cpu|cuda] [--batch 8] [--iters N] [--threads T]

Each measurement runs in a fresh subprocess so that the CPU peak (``ru_maxrss``, resident set) belongs to that
mode alone; the reported "peak MB" is the peak resident memory of the process minus its resident memory right
after the model was built (i.e. activations, gradients, optimizer state).  CUDA: ``torch.cuda.max_memory_allocated``
(minus the allocation after building).  Output: one line per mode and a JSON summary.
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

MODES = ("train", "infer_decoder", "infer_token")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(mode: str, device: str, batch: int, iters: int, warmup: int) -> dict:
    import torch
    from simvg.loss import SimVGCriterion
    from simvg.model import build_model
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model({"preset": "vitb", "img_size": 640}).to(dev)
    B, L = batch, 20
    images = torch.randn(B, 3, 640, 640, device=dev)
    ids = torch.randint(4, 64000, (B, L), device=dev)
    pad = torch.zeros(B, L, dtype=torch.bool, device=dev)
    pad[:, 12:] = True
    boxes = [torch.tensor([[0.5, 0.5, 0.3, 0.4]], device=dev) for _ in range(B)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    base_rss = _rss_mb()
    crit = SimVGCriterion(dict(lambda_decoder=1.0, lambda_token=2.0, lambda_distill=1.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-9, amsgrad=True)

    def step():
        if mode == "train":
            model.train()
            out = model.forward_tensors(images, ids, pad, branch="both")
            loss = crit(out, boxes)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.15)
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                model.forward_tensors(images, ids, pad, branch="decoder" if mode == "infer_decoder" else "token")

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
    res = {"mode": mode, "device": device, "batch": B, "iters": iters, "sec_per_step": dt,
           "images_per_sec": B / dt, "threads": torch.get_num_threads(),
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    if dev.type == "cuda":
        res["peak_mem_MB"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        res["peak_mem_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser("SimVG BEiT-3 base benchmark")
    p.add_argument("--quick", action="store_true", help="1 warm-up + 1 timed iteration per mode")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cpu, and cuda too when present)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 5; --quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--_mode", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    iters = a.iters or (1 if a.quick else 5)
    warmup = 1
    if a._mode:
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(run_mode(a._mode, a.device or "cpu", a.batch, iters, warmup)))
        return {}
    import torch
    devices = [a.device] if a.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = []
    for dev in devices:
        for mode in MODES:
            cmd = [sys.executable, __file__, "--_mode", mode, "--device", dev, "--batch", str(a.batch),
                   "--iters", str(iters)] + (["--threads", str(a.threads)] if a.threads else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"benchmark {mode} on {dev} failed")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            what = "train step (fwd+bwd+Adam)" if mode == "train" else f"inference {mode[6:]} branch"
            print(f"{dev:>4} {what:<28} batch {r['batch']}: {r['sec_per_step']:.3f} s/step, "
                  f"{r['images_per_sec']:.2f} img/s, peak +{r['peak_mem_MB']:.0f} MB ({r['threads']} threads)",
                  flush=True)
    summary = {"model": "SimVG BEiT-3 base, 640 px, patch 32, Q=1", "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
