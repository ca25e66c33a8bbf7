"""ResVG-R50 speed and memory: forward+backward time per training step and inference images/s.

    python scripts/bench_resvg.py [--batch 8] [--img_size 640] [--device cpu|cuda] [--iters 3] [--quick] [--json]

The official network (ResNet-50 + 6-layer DETR encoder, BERT-base, discriminative encoder, 6-stage decoder, the
semantic-prior MLP), random weights (speed does not depend on their values), random inputs of the official
shapes (640 x 640, 40 query tokens, a 512-d prior per sample).  Figures, each in its own subprocess so that the
peak memory is that mode's alone:

* ``train`` / ``encoders_frozen``: the first ``freeze_epochs`` epochs (ResNet, input_proj, visual encoder and
  BERT frozen: the backward pass stops at the fusion), forward + loss (6 stages x (5 L1 + 2 GIoU)) + backward +
  clipping 0.1 + AdamW;
* ``train`` / ``all_trainable``: the same after the unfreeze (ResNet layer2-4, encoder and BERT train too);
* ``infer`` / ``eval``: forward in eval mode without gradients.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation after building the model; on the
CPU the process's peak resident set (ru_maxrss) minus its resident size after building the model (what the step
needs on top of the weights).  Default devices: the CPU, and CUDA when present.  ``--json``: one JSON line per
figure (method, mode, path, device, batch, img_size, ms_per_step, images_per_s, peak_mb, threads) instead of
the table.
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

FIGURES = (("train", "encoders_frozen"), ("train", "all_trainable"), ("infer", "eval"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def worker(a) -> dict:
    import torch

    from resvg.loss import ResVGCriterion
    from resvg.model import build_model

    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = build_model({"model_preset": a.preset, "img_size": a.img_size}).to(dev)
    B, S, L = a.batch, a.img_size, model.cfg.max_query_len
    images = torch.randn(B, 3, S, S, device=dev)
    ids = torch.zeros(B, L, dtype=torch.long, device=dev)
    ids[:, 0], ids[:, 1:11], ids[:, 11] = 101, torch.randint(1000, 30000, (B, 10)), 102
    mask = ids != 0
    prior = torch.randn(B, model.cfg.prior_dim, device=dev)
    target = (torch.rand(B, 4, device=dev) * 0.3 + torch.tensor([0.35, 0.35, 0.2, 0.2], device=dev))
    crit = ResVGCriterion(dict(weight_l1=5.0, weight_giou=2.0, aux_loss=True))
    if a.path == "encoders_frozen":
        model.set_frozen(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    base = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if a.amp == "bf16" else torch.autocast(dev.type, enabled=False)
    if a.mode == "train":
        model.train()  # no schedule_epoch: the freeze set above stays as it is

        def step():
            with amp:
                out = model.forward_tensors(images, None, ids, mask, prior)
                loss = crit(out, target)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.no_grad(), amp:
                model.forward_tensors(images, None, ids, mask, prior)
    step()  # warm-up
    sync()
    iters = 1 if a.quick else a.iters
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    dt = (time.perf_counter() - t) / iters
    peak = ((torch.cuda.max_memory_allocated() - base_cuda) / 2 ** 20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    return {"method": "ResVG", "mode": a.mode, "path": a.path, "device": a.device, "preset": a.preset, "batch": B,
            "img_size": S, "amp": a.amp, "iters": iters, "ms_per_step": dt * 1000, "images_per_s": B / dt,
            "peak_mb": peak, "threads": torch.get_num_threads(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "trainable_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="r50", choices=["r50", "vltvg_r50", "tiny"], help="resvg model preset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--img_size", type=int, default=640, help="input size (the official code accepts only 640)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cpu, and cuda too when present)")
    ap.add_argument("--amp", default="none", choices=["none", "bf16"], help="official: none (fp32)")
    ap.add_argument("--iters", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--quick", action="store_true", help="one timed step")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="one JSON line per figure instead of the table")
    ap.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.mode:  # subprocess
        if a.threads:
            import torch
            torch.set_num_threads(a.threads)
        print(json.dumps(worker(a)))
        return []
    import torch

    devices = [a.device] if a.device else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for dev in devices:
        for mode, path in FIGURES:
            cmd = [sys.executable, __file__, "--mode", mode, "--path", path, "--device", dev, "--preset", a.preset,
                   "--batch", str(a.batch), "--img_size", str(a.img_size), "--amp", a.amp, "--iters", str(a.iters)]
            cmd += (["--quick"] if a.quick else []) + (["--threads", str(a.threads)] if a.threads else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"bench_resvg: {mode} / {path} on {dev} failed")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(r)
            if a.json:
                print(json.dumps(r), flush=True)
    if not a.json:
        r0 = rows[0]
        print(f"ResVG {a.preset} ({r0['params_m']:.1f} M parameters), batch {a.batch}, {a.img_size} px, amp {a.amp}")
        for r in rows:
            what = f"{'fwd+bwd' if r['mode'] == 'train' else 'inference'} ({r['path']})"
            print(f"  {r['device']:>4} {what:<28} {r['ms_per_step']:9.1f} ms/step  {r['images_per_s']:7.2f} images/s  "
                  f"peak memory {r['peak_mb']:7.0f} MB  ({r['trainable_m']:.1f} M trainable, {r['threads']} threads)")
    return rows


if __name__ == "__main__":
    main()
