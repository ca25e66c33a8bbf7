"""HiVG speed and memory: forward+backward time per training step and inference images/s.

    python scripts/bench_hivg.py [--model ViT-B/16] [--batch 8] [--imsize 224] [--device cpu|cuda] [--quick]

Each measurement runs in its own subprocess so that peak memory is per mode: on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set size (ru_maxrss) minus the
resident size after building the model (i.e. what the step itself needs on top of the weights).
Training uses the official warm-up trainable set (CLIP frozen, bridges + heads trained), all losses on,
random weights (speed does not depend on their values) and random inputs of the right shapes.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def worker(a) -> dict:
    import torch

    from hivg.loss import HiVGCriterion
    from hivg.model import build_model
    from vgcore.data.sample import Batch

    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = build_model({"model": a.model, "dataset": "unc", "enable_adaptive_weights": True, "normalize_before": True,
                         "imsize": a.imsize, "hi_lora_stage": a.stage}).to(dev)
    B, S = a.batch, a.imsize
    ids = torch.zeros(B, 77, dtype=torch.long)
    ids[:, 0], ids[:, 1:9], ids[:, 9] = 49406, torch.randint(300, 40000, (B, 8)), 49407
    boxes = torch.rand(B, 4) * 0.4 + 0.3
    batch = Batch(images=torch.randn(B, 3, S, S), pixel_mask=torch.zeros(B, S, S, dtype=torch.bool), text_ids=ids,
                  text_mask=ids != 0, boxes=boxes, target_boxes=[b[None] for b in boxes],
                  num_targets=torch.ones(B, dtype=torch.long), affine=torch.tensor([[1.0, 0, 1, 0]] * B),
                  orig_size=torch.tensor([[S, S]] * B), texts=["x"] * B, records=[None] * B).to(dev)
    crit = HiVGCriterion()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-5)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    base = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if a.amp == "bf16" else torch.autocast(dev.type, enabled=False)
    iters = 2 if a.quick else a.iters
    if a.mode == "train":
        model.train()

        def step():
            with amp:
                loss = crit(model(batch), batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.no_grad(), amp:
                model(batch)
    step()  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    dt = (time.perf_counter() - t) / iters
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    return {"mode": a.mode, "model": a.model, "device": a.device, "batch": B, "imsize": S, "amp": a.amp,
            "sec_per_step": dt, "images_per_s": B / dt, "peak_mem_mb": peak,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "threads": torch.get_num_threads()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ViT-B/16", choices=["ViT-B/16", "ViT-L/14"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--imsize", type=int, default=224)
    ap.add_argument("--stage", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.mode:  # subprocess
        print(json.dumps(worker(a)))
        return
    import torch

    devices = [a.device] if a.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for dev in devices:
        for mode in ("train", "infer"):
            cmd = [sys.executable, __file__, "--mode", mode, "--device", dev, "--model", a.model, "--batch",
                   str(a.batch), "--imsize", str(a.imsize), "--stage", str(a.stage), "--amp", a.amp,
                   "--iters", str(a.iters)] + (["--quick"] if a.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"HiVG {a.model}, batch {a.batch}, {a.imsize}px, Hi LoRA stage {a.stage}, amp {a.amp}")
    for r in rows:
        what = "fwd+bwd" if r["mode"] == "train" else "inference"
        print(f"  {r['device']:>4} {what:>9}: {r['sec_per_step'] * 1000:8.1f} ms/step  {r['images_per_s']:7.1f} images/s  "
              f"peak memory {r['peak_mem_mb']:7.0f} MB  ({r['threads']} threads)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
