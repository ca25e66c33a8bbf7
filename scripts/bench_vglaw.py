"""VG-LAW speed and memory (ViTDet ViT-B + 6-layer BERT, svd language-adaptive weights, both heads, 448 px):
training step and inference, fp32 eager and every fast path; and the batched adaptive weights against
per-sample loops.

    python scripts/bench_vglaw.py [--level paths|qkv|model|all] [--batch 8] [--device cpu|cuda] [--json] [--quick]

``--level paths`` (default): figures of vgcore.bench -- fp32 eager (the reference), bf16 autocast,
torch.compile, both, and activation checkpointing of the ViT blocks for training (``--grad_ckpt``); ms/step,
images/s, peak memory of a step; and the data loader's images/s per worker for the training pipeline at 448 px
(random placement, flip; masks decoded) on synthetic JPEG scenes scaled x4 to COCO-like sizes (448-768 px).
Training: the four losses (L1, GIoU, focal, dice), clipping (--clip_max_norm), the three-group AdamW of
vglaw/train.py; random weights (the generator's last layers non-zero, so that the weights adapt) and random
inputs (12 real text tokens of 40, a random mask).

The loop levels compare the batched adaptive-weight path with per-sample loops, each timed for a training step
(forward + backward; the model level includes the loss) and for inference (``torch.no_grad``):

* ``qkv``: the adapted qkv projection of one ViT-B block (N = 784 tokens of a 448 px image, C = 768, svd
  rank 32), for each law type of ``--laws``.  Paths:
    batched      `vglaw.law.AdaptiveLinear.forward`, the whole batch at once (what the model runs);
    loop         the same function called on one sample at a time (`AdaptiveLinear.forward_loop`);
    loop_weight  one sample at a time, building that sample's dense weight W_b first
                 (`AdaptiveLinear.sample_weight`: svd W0 + S A_b D, la / od W0 scaled) and applying it;
    plain        the unadapted Linear(768 -> 2304) on the batch: the floor every path pays.
* ``model``: the whole model (``--preset``), batch ``--batch``.  Paths: batched (one forward of the batch) and
  loop (the model on one sample at a time: B forwards of batch 1, each sample's loss / B backpropagated,
  gradients accumulating; what a per-sample implementation of adaptive weights would run).

Paths of one loop level are interleaved (round r runs every path once; ``--rounds`` for qkv, ``--model_rounds``
for the model) and the best time is reported, so that a load change on a shared machine hits every path alike.
Their peak memory: CUDA ``max_memory_allocated`` above the allocation before the step; CPU the peak resident set
above the resident set before the step, with every block of 128 KiB or more its own mapping (the resident set
follows the live tensors).  ``--level all``: the paths, then both loop levels.  ``--json``: one JSON line per
figure (method, mode, path, ms_per_step, images_per_s, peak_mb; loop levels add level and law).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vgcore import bench  # noqa: E402

MODES = ("train", "infer")
LEVELS = ("paths", "qkv", "model", "all")
QKV_PATHS = ("batched", "loop", "loop_weight", "plain")
MODEL_PATHS = ("batched", "loop")


def add_args(p):
    p.add_argument("--preset", default="vitb", choices=["vitb", "tiny"],
                   help="model (tiny: the CPU test preset, a smoke test of the benchmark itself)")
    p.add_argument("--img_size", type=int, default=None, help="default: the preset's (448; tiny 128)")
    p.add_argument("--level", default="paths", choices=LEVELS,
                   help="paths: fp32 and the fast paths; qkv / model: batched against per-sample loops; all: each")
    p.add_argument("--laws", default="svd,la,od3", help="law types of the qkv level (svd, la, od1, od2, od3)")
    p.add_argument("--rounds", type=int, default=5, help="qkv level: interleaved timing rounds (--quick: 2)")
    p.add_argument("--model_rounds", type=int, default=1, help="model level: interleaved timing rounds")


def _img_size(a) -> int:
    return a.img_size or (128 if a.preset == "tiny" else 448)


def _model(preset: str, img_size: int):
    from vglaw.model import build_model
    model = build_model({"preset": preset, "img_size": img_size, **({"vocab_size": 2000} if preset == "tiny" else {})})
    with torch.no_grad():  # a generator that adapts (the fresh svd generator outputs A = 0)
        for p in model.weight_generator.proj:
            p[-1].weight.normal_(std=0.02)
    return model


def _train_args(a, extra=()):
    import vglaw.method as method
    from vgcore.method import train_parser
    args = train_parser(method).parse_args(["--preset", a.preset, "--img_size", str(_img_size(a)), *extra])
    method.prepare(args)
    return args


# ------------------------------------------------------------------------------------------------ paths level
def make_case(mode, device, a):
    import vglaw.method as method
    from vgcore.bench import method_case, random_batch, random_tokens
    from vglaw.loss import VGLAWCriterion

    args = _train_args(a)
    S = _img_size(a)
    model = _model(a.preset, S).to(device)
    B, L = a.batch, model.cfg.max_len
    ids, mask = random_tokens(B, L, 5, min(2000, model.cfg.vocab_size), real=12)
    batch = random_batch(B, S, device, ids, mask, boxes=torch.rand(B, 4) * 0.4 + 0.3,
                         masks=lambda: (torch.rand(B, S, S) > 0.7).to(torch.uint8))
    return method_case(method, args, model, batch, VGLAWCriterion(), args.clip_max_norm, f"VG-LAW {a.preset} {S}px svd")


def make_loader(a):
    from types import SimpleNamespace

    import vglaw.method as method
    from vgcore.bench import grounding_loader, synthetic_folder, upscale_records
    from vglaw.model import config_from_args

    tmp, cleanup = synthetic_folder("vglaw", "refer", a)
    args = _train_args(a, ["--split_root", f"{tmp}/refer", "--image_root", f"{tmp}/images",
                           "--bert_model", f"{tmp}/tokenizers"])
    stub = SimpleNamespace(cfg=config_from_args({"preset": a.preset, "img_size": _img_size(a)}))
    transform, tokenizer = method.pipeline(args, stub, True)
    return grounding_loader(upscale_records(method.records(args, "train", True)), transform, tokenizer, a.batch,
                            f"VG-LAW train pipeline {_img_size(a)}px with masks, synthetic JPEG 448-768 px", cleanup,
                            load_masks=method.load_masks(args, True))


# ------------------------------------------------------------------------------------------------ memory
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
            bench._reset_peak_rss()  # the kernel's high-water mark (VmHWM) back to the current resident set
            self.base = bench._status_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        else:
            self.mb = bench._status_mb("VmHWM") - self.base
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
def bench_model(preset: str, batch: int, img_size: int, iters: int, warmup: bool, device) -> list:
    from vglaw.loss import VGLAWCriterion

    torch.manual_seed(0)
    model = _model(preset, img_size).to(device)
    crit = VGLAWCriterion()
    L = model.cfg.max_len
    images = torch.randn(batch, 3, img_size, img_size, device=device)
    ids = torch.randint(5, min(2000, model.cfg.vocab_size), (batch, L), device=device)
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
                             shape=f"{preset} {img_size} px, both heads"))
    model.zero_grad(set_to_none=True)
    return rows


# --------------------------------------------------------------------------------------------- loop levels
def _finish(row: dict, device, batch: int) -> dict:
    sec = row.pop("sec")
    return {"method": "vglaw", "mode": row["mode"], "path": row["path"], "ms_per_step": round(sec * 1e3, 2),
            "images_per_s": round(batch / sec, 3), "peak_mb": round(row["peak_mb"], 1), "level": row["level"],
            "law": row["law"], "device": device.type, "batch": batch, "threads": torch.get_num_threads(),
            "shape": row["shape"]}


def loops(a) -> list:
    """The ``qkv`` / ``model`` levels (in this process)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    bench._track_memory()  # the resident set follows the live tensors (peak memory per path)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rounds = 2 if a.quick else a.rounds
    groups = []
    if a.level in ("qkv", "all"):
        groups += [bench_qkv(law.strip(), a.batch, _img_size(a), rounds, device)
                   for law in a.laws.split(",") if law.strip()]
    if a.level in ("model", "all"):
        groups.append(bench_model(a.preset, a.batch, _img_size(a), a.model_rounds, not a.quick, device))
    out = []
    for rows in groups:
        rows = [_finish(r, device, a.batch) for r in rows]
        out += rows
        for r in rows:
            if a.json:
                print(json.dumps(r), flush=True)
            else:
                print(f"  {r['level']:<5} {r['law']:<4} {r['mode']:<5} {r['path']:<11} {r['ms_per_step']:>10.1f} "
                      f"ms/step {r['images_per_s']:>9.2f} images/s  peak {r['peak_mb']:7.0f} MB", flush=True)
        if not a.json:
            base = {r["mode"]: r["ms_per_step"] for r in rows if r["path"] == "batched"}
            for r in rows:
                if r["path"].startswith("loop"):
                    print(f"     {r['level']} {r['law']} {r['mode']}: {r['path']} / batched = "
                          f"x{r['ms_per_step'] / base[r['mode']]:.2f}", flush=True)
    if not a.json:
        print(f"# loop levels on {device.type}, {torch.get_num_threads()} threads, batch {a.batch}")
    return out


# --------------------------------------------------------------------------------------------------- main
def main(argv=None) -> list:
    description = __doc__.split("\n")[0]
    a, argv = bench.parse_args(description, MODES, argv, add_args, {"batch": 8})
    out = []
    if a._worker or a.level in ("paths", "all"):
        out += bench.main("vglaw", make_case, MODES, argv, make_loader=make_loader, add_args=add_args,
                          description=description, defaults={"batch": 8}, script=__file__)
    if not a._worker and a.level != "paths":
        out += loops(a)
    return out


if __name__ == "__main__":
    main()
