"""A tiny training + evaluation script built only from vgcore pieces.

Used by tests/test_distributed.py (launched with ``torch.distributed.launch --use_env`` / ``torchrun``) and
tests/test_checkpoint.py (exact mid-epoch resume, called in-process through ``main``).

Task: find a bright rectangle in a small noisy image; the model regresses one normalised cxcywh box.
It is shaped like a real ``train.py``: ``get_args_parser()`` + ``main(args)``, vgcore.cli flags, vgcore.dist
set-up, `build_loader`, `ModelEMA`, optim param groups + schedule, engine loops, atomic checkpoints and an
``--resume`` that continues exactly mid-epoch.  Writes ``<output_dir>/metrics.json`` (rank 0).
``--fit`` runs the same task through `vgcore.trainer.fit` instead (what ``vgcore.method.train`` does: output
folder checks, resume checks, ``wrap_ddp``) and writes ``train_summary.json``.

For the distributed-vs-single comparison run it deterministically (``--dropout 0 --augment_noise 0
--norm none``) with the same GLOBAL batch (2 ranks x B == 1 process x 2B).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vgcore import checkpoint, cli, dist, engine, optim, trainer  # noqa: E402
from vgcore.data.sample import Batch, Record  # noqa: E402
from vgcore.ema import ModelEMA  # noqa: E402
from vgcore.metrics import RECAccumulator  # noqa: E402


class ToyDataset(torch.utils.data.Dataset):
    """``n`` images [3, S, S] with one bright axis-aligned rectangle each (fixed by ``seed``); training
    samples may add Gaussian noise drawn from the *global* torch RNG (so resume must restore it)."""

    def __init__(self, n: int, size: int = 16, seed: int = 0, noise: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.size, self.noise = size, noise
        wh = torch.randint(4, size // 2 + 2, (n, 2), generator=g)
        xy = (torch.rand(n, 2, generator=g) * (size - wh)).floor()
        self.boxes = torch.cat([xy, xy + wh], 1).float()  # xyxy pixels
        ys = torch.arange(size).view(1, size, 1)
        xs = torch.arange(size).view(1, 1, size)
        b = self.boxes
        inside = ((xs >= b[:, 0, None, None]) & (xs < b[:, 2, None, None]) &
                  (ys >= b[:, 1, None, None]) & (ys < b[:, 3, None, None])).float()
        self.images = 0.2 * torch.randn(n, 3, size, size, generator=g) + inside[:, None]

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        img = self.images[i]
        if self.noise > 0:
            img = img + self.noise * torch.randn_like(img)
        return img, self.boxes[i], i


def collate(items) -> Batch:
    imgs = torch.stack([it[0] for it in items])
    xyxy = torch.stack([it[1] for it in items])
    idx = torch.tensor([it[2] for it in items])
    B, _, H, W = imgs.shape
    cxcywh = torch.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2 / W, (xyxy[:, 1] + xyxy[:, 3]) / 2 / H,
                          (xyxy[:, 2] - xyxy[:, 0]) / W, (xyxy[:, 3] - xyxy[:, 1]) / H], 1)
    return Batch(
        images=imgs, pixel_mask=torch.zeros(B, H, W, dtype=torch.bool),
        text_ids=torch.zeros(B, 1, dtype=torch.long), text_mask=torch.ones(B, 1, dtype=torch.bool),
        boxes=cxcywh, target_boxes=list(cxcywh[:, None]), num_targets=torch.ones(B, dtype=torch.long),
        affine=torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64).repeat(B, 1),
        orig_size=torch.tensor([[H, W]]).repeat(B, 1), texts=["the bright box"] * B,
        records=[Record(f"toy/{int(i)}.png", "the bright box", b.numpy(), image_id=int(i)) for i, b in zip(idx, xyxy)],
        extra={"gt_xyxy": xyxy, "idx": idx},
    )


class ToyModel(nn.Module):
    def __init__(self, size: int = 16, width: int = 16, dropout: float = 0.1, norm: str = "bn"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(width) if norm == "bn" else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(width * (size // 4) ** 2, 64)
        self.head = nn.Linear(64, 4)

    def forward(self, batch: Batch) -> dict:
        x = F.relu(self.norm(self.conv1(batch.images)))
        x = F.relu(self.conv2(x)).flatten(1)
        x = self.drop(F.relu(self.fc1(x)))
        return {"pred_boxes": self.head(x).sigmoid()}


class ToyCriterion(nn.Module):
    def forward(self, outputs: dict, batch: Batch) -> dict:
        l1 = F.l1_loss(outputs["pred_boxes"], batch.boxes)
        l2 = F.mse_loss(outputs["pred_boxes"], batch.boxes)
        return {"l1": l1, "l2": l2, "loss": l1 + l2}


class IndexAccumulator:
    """Counts evaluated samples and sums their indices (proves each sample is evaluated exactly once)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.c = torch.zeros(3, dtype=torch.float64)

    def update(self, idx):
        i = idx.to(torch.float64).cpu()
        self.c += torch.stack([torch.tensor(float(i.numel()), dtype=torch.float64), i.sum(), (i * i).sum()])

    def all_reduce(self):
        dist.all_reduce_sum(self.c)

    def compute(self):
        return {"eval_count": float(self.c[0]), "idx_sum": float(self.c[1]), "idx_sqsum": float(self.c[2])}


def postprocess(outputs: dict, batch: Batch) -> dict:
    pred = batch.boxes_to_original(outputs["pred_boxes"])
    return {"rec": {"pred_xyxy": pred, "gt_xyxy": batch.extra["gt_xyxy"]}, "ids": {"idx": batch.extra["idx"]}}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("vgcore toy train", add_help=True)
    cli.add_data_args(p, batch_size=4, num_workers=0, dataset="toy", eval_batch_size=3)
    cli.add_optim_args(p, lr=3e-3, weight_decay=1e-4, epochs=2, lr_scheduler="cosine", clip_max_norm=1.0)
    cli.add_dist_args(p)
    cli.add_logging_args(p, output_dir="", seed=7, log_every=2, tensorboard=False)
    g = p.add_argument_group("toy")
    g.add_argument("--n_train", type=int, default=24)
    g.add_argument("--n_val", type=int, default=7)
    g.add_argument("--size", type=int, default=16)
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--norm", default="bn", choices=["bn", "none"])
    g.add_argument("--augment_noise", type=float, default=0.05)
    g.add_argument("--fit", action="store_true", help="train through vgcore.trainer.fit (main_fit)")
    return p


def main_fit(args) -> dict:
    """The toy task through `vgcore.trainer.fit`, set up as `vgcore.method.train` sets up a method."""
    info = dist.init_distributed(args.dist_backend, device=args.device or "cpu")
    dist.seed_everything(args.seed, info.rank)
    loop = trainer.LoopConfig(epochs=args.epochs, output_dir=args.output_dir, resume=args.resume,
                              clip_max_norm=args.clip_max_norm, accum_steps=args.accum_steps, amp=args.amp,
                              log_every=args.log_every, checkpoint_every_steps=args.checkpoint_every_steps,
                              max_steps=args.max_steps, stop_after_steps=args.stop_after_steps,
                              tensorboard=args.tensorboard, metric="miou", overwrite=args.overwrite,
                              allow_resume_changes=args.allow_resume_changes)
    notes = trainer.prepare_output_dir(loop)
    logger = engine.Logger(args.output_dir, tensorboard=args.tensorboard)
    for note in notes:
        logger.info(note)
    train_loader = dist.build_loader(ToyDataset(args.n_train, args.size, seed=1, noise=args.augment_noise),
                                     args.batch_size, train=True, seed=args.seed, num_workers=args.num_workers,
                                     collate_fn=collate)
    val_loader = dist.build_loader(ToyDataset(args.n_val, args.size, seed=2), args.eval_batch_size or args.batch_size,
                                   train=False, num_workers=args.num_workers, collate_fn=collate)
    model = ToyModel(args.size, dropout=args.dropout, norm=args.norm).to(info.device)
    optimizer = optim.build_optimizer(args.optimizer, optim.build_param_groups(model, args.lr, args.weight_decay),
                                      args.lr, args.weight_decay)
    scheduler = optim.build_scheduler_from_args(optimizer, args, len(train_loader) // args.accum_steps)
    ddp = trainer.wrap_ddp(model, info.device) if info.distributed else model
    summary = trainer.fit(loop, model=ddp, criterion=ToyCriterion(), optimizer=optimizer, scheduler=scheduler,
                          train_loader=train_loader, val_loader=val_loader, device=info.device,
                          postprocess=lambda o, b: postprocess(o, b)["rec"],
                          make_accumulators=lambda: RECAccumulator(thresholds=(0.5,)),
                          scaler=engine.build_grad_scaler(args.amp, info.device), model_config={"toy": True},
                          logger=logger, run_args=vars(args))
    logger.close()
    return summary


def main(args) -> dict:
    info = dist.init_distributed(args.dist_backend, device=args.device or "cpu")
    dist.seed_everything(args.seed)
    out = Path(args.output_dir) if args.output_dir else None
    logger = engine.Logger(str(out) if out else None, tensorboard=args.tensorboard)

    train_set = ToyDataset(args.n_train, args.size, seed=1, noise=args.augment_noise)
    val_set = ToyDataset(args.n_val, args.size, seed=2)
    train_loader = dist.build_loader(train_set, args.batch_size, train=True, seed=args.seed,
                                     num_workers=args.num_workers, collate_fn=collate)
    val_loader = dist.build_loader(val_set, args.eval_batch_size or args.batch_size, train=False,
                                   num_workers=args.num_workers, collate_fn=collate)

    model = ToyModel(args.size, dropout=args.dropout, norm=args.norm).to(info.device)
    criterion = ToyCriterion()
    groups = optim.build_param_groups(model, args.lr, args.weight_decay, rules=[(r"^head\.", {"lr_mult": 2.0})],
                                      no_decay_1d=True)
    optimizer = optim.build_optimizer(args.optimizer, groups, args.lr, args.weight_decay)
    steps_per_epoch = len(train_loader) // args.accum_steps
    scheduler = optim.build_scheduler_from_args(optimizer, args, steps_per_epoch)
    scaler = engine.build_grad_scaler(args.amp, info.device)
    train_model = model
    if info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights
    ema = ModelEMA(model, args.ema_decay, warmup="ratio") if args.ema else None

    start_epoch, start_step = 0, 0
    if args.resume:
        pos = checkpoint.load_checkpoint(args.resume, model, optimizer, scheduler, scaler, ema)
        start_epoch, start_step = pos["epoch"], pos["step"]
        logger.info(f"resumed from {args.resume} at epoch {start_epoch} step {start_step}")

    def save(epoch, step):
        if out is not None:
            checkpoint.save_checkpoint(out / "checkpoint.pth", model, optimizer, scheduler, scaler, ema,
                                       epoch=epoch, step=step, args=args)

    ckpt_cb = save if args.checkpoint_every_steps > 0 else None
    batches_per_epoch = len(train_loader) + 0
    history = []
    crashed = False
    for epoch in range(start_epoch, args.epochs):
        s0 = start_step if epoch == start_epoch else 0
        train_loader.set_epoch(epoch, start_step=s0)
        max_steps = args.max_steps
        if args.stop_after_steps is not None:
            left = args.stop_after_steps - epoch * batches_per_epoch
            max_steps = left if max_steps is None else min(max_steps, left)
        stats = engine.train_one_epoch(train_model, criterion, train_loader, optimizer, scheduler, info.device,
                                       epoch, amp=args.amp, scaler=scaler, accum_steps=args.accum_steps,
                                       clip_max_norm=args.clip_max_norm, ema=ema, logger=logger,
                                       log_every=args.log_every, start_step=s0, checkpoint_fn=ckpt_cb,
                                       checkpoint_every=args.checkpoint_every_steps, max_steps=max_steps)
        if not stats["completed"]:
            crashed = True
            break
        save(epoch + 1, 0)
        accs = {"rec": RECAccumulator(thresholds=(0.5,)), "ids": IndexAccumulator()}
        metrics = engine.evaluate(model, val_loader, info.device, postprocess=postprocess, accumulators=accs,
                                  amp=args.amp, logger=logger, log_step=epoch)
        if ema is not None:
            with ema.apply_to(model):
                accs_e = {"rec": RECAccumulator(thresholds=(0.5,)), "ids": IndexAccumulator()}
                m_e = engine.evaluate(model, val_loader, info.device, postprocess=postprocess,
                                      accumulators=accs_e, amp=args.amp)
            metrics.update({f"ema_{k}": v for k, v in m_e.items()})
        rec = {"epoch": epoch, "train_loss": stats["loss"], "lr": stats["lr"], **metrics}
        history.append(rec)
        logger.info(json.dumps(rec))
    result = {"world_size": info.world_size, "history": history, "crashed": crashed,
              "final": history[-1] if history else None}
    if out is not None and dist.is_main_process():
        with open(out / "metrics.json", "w") as f:
            json.dump(result, f, indent=1, sort_keys=True)
    logger.close()
    return result


if __name__ == "__main__":
    a = get_args_parser().parse_args()
    main_fit(a) if a.fit else main(a)
    dist.destroy()
