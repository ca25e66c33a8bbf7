"""Argument groups shared by every ``train.py`` / ``eval.py``.

Each ``add_*_args(parser, skip=(), **defaults)`` adds one argparse group; keyword arguments override the
defaults so a method can match its official values, e.g. ``add_optim_args(p, lr=1e-4, lr_scheduler="cosine")``,
and ``skip`` leaves out the flags the method does not use, or ``only`` names the ones it uses (a flag that
does nothing is not offered).
An unknown name in either is an error (catches typos).

`add_accepted_args` holds the flags an official command line passes but this code does not need: they
parse, and using one prints a warning that it is ignored.  Flag names follow the TransVG family
(``--lr_scheduler``, ``--clip_max_norm``, ``--output_dir`` ...).

Distributed: ranks come from the environment (``torchrun`` or ``torch.distributed.launch --use_env``);
``--local_rank`` / ``--local-rank`` are accepted (and ignored beyond being recorded) so that the legacy
launcher without ``--use_env``, which appends ``--local-rank=<n>``, still parses.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, Iterable, Optional

__all__ = ["add_data_args", "add_optim_args", "add_dist_args", "add_logging_args", "add_speed_args",
           "add_accepted_args", "str2bool", "set_help"]


def str2bool(v) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("1", "true", "yes", "y", "on"):
        return True
    if s in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _apply(group, specs: Dict[str, tuple], defaults: Dict[str, Any], fn: str, skip: Iterable[str] = (),
           only: Optional[Iterable[str]] = None) -> None:
    if isinstance(skip, str) or isinstance(only, str):
        raise TypeError(f"{fn}: skip / only take a collection of flag names, not a string")
    if only is not None:
        only = set(only)
        if skip or only - set(specs):
            raise TypeError(f"{fn}: give skip or only, with known names; known: {sorted(specs)}")
        skip = set(specs) - only
    skip = set(skip)
    unknown = (set(defaults) | skip) - set(specs)
    if unknown:
        raise TypeError(f"{fn}: unknown flag name(s) {sorted(unknown)}; known: {sorted(specs)}")
    clash = set(defaults) & skip
    if clash:
        raise TypeError(f"{fn}: {sorted(clash)} both skipped and given a default")
    for dest, (flags, kw) in specs.items():
        if dest in skip:
            continue
        kw = dict(kw)
        if dest in defaults:
            kw["default"] = defaults[dest]
        group.add_argument(*flags, dest=dest, **kw)


def add_data_args(parser: argparse.ArgumentParser, skip: Iterable[str] = (), only: Optional[Iterable[str]] = None,
                  **defaults) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("data")
    specs = {
        "data_root": (["--data_root"], dict(default="./ln_data", help="images root (per dataset sub-folders)")),
        "split_root": (["--split_root"], dict(default="./data", help="annotation / split files root")),
        "dataset": (["--dataset"], dict(default="refcoco", help="dataset name (an unknown one is an error listing the --format's names)")),
        "format": (["--format"], dict(default="transvg", help="annotation format: transvg | refer | seqtr")),
        "splitby": (["--splitby"], dict(default=None, help="refer split-by (unc, umd, google); None = dataset default")),
        "train_split": (["--train_split"], dict(default="train", help="split trained on")),
        "val_split": (["--val_split"], dict(default="val", help="split validated on after each epoch (selects the best checkpoint)")),
        "test_split": (["--test_split"], dict(default=None, help="split(s) for eval.py, comma separated")),
        "imsize": (["--imsize"], dict(type=int, default=640, help="input size (pixels)")),
        "max_query_len": (["--max_query_len"], dict(type=int, default=20, help="text tokens per expression (longer ones are cut)")),
        "num_workers": (["--num_workers"], dict(type=int, default=4, help="data loader workers per process (None: from the CPU count)")),
        "batch_size": (["--batch_size"], dict(type=int, default=32, help="per process")),
        "eval_batch_size": (["--eval_batch_size"], dict(type=int, default=None, help="per process; default = --batch_size")),
        "box_convention": (["--box_convention"], dict(default=None, choices=["xywh", "xyxy"],
                                                      help="stored box layout of transvg split files; default: the "
                                                           "dataset's (xyxy for referit / flickr, else xywh)")),
        "box_int_truncate": (["--box_int_truncate"], dict(action="store_true",
                                                          help="truncate the stored transvg box numbers to int "
                                                               "before xywh->xyxy, as the official loaders do")),
        "skip_bad_targets": (["--skip_bad_targets"], dict(action="store_true",
                                                          help="single-box methods: drop no-target / multi-target "
                                                               "samples with one warning instead of failing at load")),
    }
    _apply(g, specs, defaults, "add_data_args", skip, only)
    return g


def add_optim_args(parser: argparse.ArgumentParser, skip: Iterable[str] = (), only: Optional[Iterable[str]] = None,
                   **defaults) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("optimisation")
    specs = {
        "optimizer": (["--optimizer"], dict(default="adamw", choices=["adamw", "adam", "sgd"], help="optimizer")),
        "lr": (["--lr"], dict(type=float, default=1e-4, help="base learning rate")),
        "weight_decay": (["--weight_decay"], dict(type=float, default=1e-4, help="weight decay")),
        "epochs": (["--epochs"], dict(type=int, default=90, help="training epochs")),
        "lr_scheduler": (["--lr_scheduler"], dict(default="step", choices=["constant", "step", "cosine", "poly", "linear"], help="learning-rate schedule")),
        "lr_interval": (["--lr_interval"], dict(default="epoch", choices=["epoch", "step"],
                                                help="schedule stepped per epoch or per optimizer step")),
        "lr_milestones": (["--lr_milestones"], dict(type=int, nargs="*", default=[], help="epochs (step schedule)")),
        "lr_drop": (["--lr_drop"], dict(type=int, default=None, help="StepLR step size in epochs (step schedule)")),
        "lr_gamma": (["--lr_gamma"], dict(type=float, default=0.1, help="lr factor at each step (step schedule)")),
        "lr_power": (["--lr_power"], dict(type=float, default=0.9, help="poly schedule power")),
        "min_lr_ratio": (["--min_lr_ratio"], dict(type=float, default=0.0, help="final lr / base lr (cosine, poly, linear)")),
        "warmup_epochs": (["--warmup_epochs"], dict(type=float, default=0.0, help="linear lr warm-up length in epochs (0 = none)")),
        "warmup_steps": (["--warmup_steps"], dict(type=int, default=None, help="overrides --warmup_epochs with --lr_interval step")),
        "warmup_start_factor": (["--warmup_start_factor"], dict(type=float, default=0.0, help="lr factor at the start of the warm-up")),
        "clip_max_norm": (["--clip_max_norm"], dict(type=float, default=0.0, help="0 = no clipping")),
        "accum_steps": (["--accum_steps"], dict(type=int, default=1, help="gradient accumulation steps")),
        "amp": (["--amp"], dict(default="none", choices=["none", "bf16", "fp16"], help="mixed precision (none = float32)")),
        "ema": (["--ema"], dict(type=str2bool, nargs="?", const=True, default=False, help="keep an exponential moving average of the weights; it is evaluated and saved")),
        "ema_decay": (["--ema_decay"], dict(type=float, default=0.999, help="EMA decay per optimizer step")),
    }
    _apply(g, specs, defaults, "add_optim_args", skip, only)
    return g


def add_dist_args(parser: argparse.ArgumentParser, skip: Iterable[str] = (), only: Optional[Iterable[str]] = None,
                  **defaults) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("distributed")
    specs = {
        "dist_backend": (["--dist_backend"], dict(default=None, help="nccl | gloo (default: nccl on CUDA, gloo on CPU)")),
        "device": (["--device"], dict(default=None, help="cuda | cpu (default: cuda if available)")),
        "world_size": (["--world_size"], dict(type=int, default=None,
                                              help="informational; the real value comes from WORLD_SIZE")),
        "local_rank": (["--local_rank", "--local-rank"], dict(type=int, default=None,
                                                             help="set by the legacy launcher; ranks are read from the environment")),
    }
    _apply(g, specs, defaults, "add_dist_args", skip, only)
    return g


def add_logging_args(parser: argparse.ArgumentParser, skip: Iterable[str] = (), only: Optional[Iterable[str]] = None,
                     **defaults) -> argparse._ArgumentGroup:
    g = parser.add_argument_group("logging / output")
    specs = {
        "output_dir": (["--output_dir"], dict(default="./outputs", help="checkpoints, logs and evaluation results")),
        "resume": (["--resume"], dict(default="", help="vgcore checkpoint to resume from (exact resume)")),
        "seed": (["--seed"], dict(type=int, default=13, help="random seed (offset by the rank)")),
        "log_every": (["--log_every"], dict(type=int, default=50, help="batches between log lines")),
        "checkpoint_every_steps": (["--checkpoint_every_steps"], dict(type=int, default=0,
                                                                      help="mid-epoch checkpoints (optimizer steps); 0 = per epoch only")),
        "eval_every": (["--eval_every"], dict(type=int, default=1, help="epochs between evaluations")),
        "max_steps": (["--max_steps"], dict(type=int, default=None, help="stop each epoch after this many batches (debug)")),
        "stop_after_steps": (["--stop_after_steps"], dict(type=int, default=None,
                                                          help="stop the run after this many batches in total "
                                                               "(checkpointed; continue with --resume)")),
        "tensorboard": (["--tensorboard"], dict(type=str2bool, nargs="?", const=True, default=True, help="also write tensorboard logs to --output_dir (true / false)")),
        "overwrite": (["--overwrite"], dict(action="store_true",
                                            help="start over in an --output_dir that holds a previous run (deletes its checkpoints and logs)")),
        "allow_resume_changes": (["--allow_resume_changes"], dict(action="store_true",
                                                                  help="accept a --batch_size / --lr / --accum_steps that differs from the resumed run's")),
    }
    _apply(g, specs, defaults, "add_logging_args", skip, only)
    return g


def add_speed_args(parser: argparse.ArgumentParser, skip: Iterable[str] = (), only: Optional[Iterable[str]] = None,
                   **defaults) -> argparse._ArgumentGroup:
    """``--compile`` and ``--grad_ckpt`` (`vgcore.speed`); ``--amp`` is in the optimisation group."""
    g = parser.add_argument_group("speed / memory")
    specs = {
        "compile": (["--compile"], dict(action="store_true",
                                        help="torch.compile the model forward (the first batches include the "
                                             "compilation time)")),
        "grad_ckpt": (["--grad_ckpt"], dict(action="store_true",
                                            help="training: activation checkpointing per backbone block (less "
                                                 "memory, about one extra backbone forward per step)")),
    }
    _apply(g, specs, defaults, "add_speed_args", skip, only)
    return g


class _Ignored(argparse.Action):
    """Parses like the official flag; warns on stderr that it has no effect here."""

    def __init__(self, option_strings, dest, why: str = "", **kw):
        self.why = why
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values if self.nargs != 0 else True)
        print(f"warning: {option_string} is accepted for official command lines and ignored"
              + (f" ({self.why})" if self.why else ""), file=sys.stderr)


def add_accepted_args(parser: argparse.ArgumentParser, flags: Dict[str, str], valued: Iterable[str] = ()
                      ) -> Optional[argparse._ArgumentGroup]:
    """One group "accepted for official command lines" with ``flags`` (``{"--name": "why it is ignored"}``).

    A flag in ``valued`` takes one value, the others none; using any of them prints a warning."""
    if not flags:
        return None
    g = parser.add_argument_group("accepted for official command lines (ignored, with a warning)")
    valued = set(valued)
    for flag, why in flags.items():
        g.add_argument(flag, action=_Ignored, why=why, nargs=None if flag in valued else 0,
                       default=None, help=f"ignored: {why}")
    return g


def set_help(parser: argparse.ArgumentParser, **helps: str) -> None:
    """Replace the help of flags already added (by ``dest``), e.g. a method's own list of dataset names."""
    actions = {a.dest: a for a in parser._actions}
    unknown = set(helps) - set(actions)
    if unknown:
        raise TypeError(f"set_help: no flag(s) {sorted(unknown)}")
    for dest, text in helps.items():
        actions[dest].help = text


def parse_key_values(items) -> dict:
    """``--set KEY=JSON`` values -> {KEY: parsed JSON} (a value that is not JSON stays a string)."""
    import json
    out = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
