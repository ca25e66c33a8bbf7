"""ResVG optimisation: the official parameter groups, StepLR and the freeze schedule.

AdamW (weight decay on every group, PyTorch's betas / eps) with four groups: ResNet layer2-4 at
``--lr_backbone``, DETR encoder + input_proj at ``--lr_vis_enc``, BERT at ``--lr_bert`` and the rest (bert_proj,
the discriminative encoder, decoder incl. the prior MLP, box head) at ``--lr``.  The groups are built before
freezing, as the official code does: a frozen parameter sits in its group with no gradient, which AdamW skips
(no update, no decay, no moment change).  StepLR(``--lr_drop``, 0.1) stepped per epoch, frozen epochs included.

`FreezingSchedule` is that StepLR plus the freeze: it tells the model the epoch it is in
(``model.schedule_epoch``), and the model's ``train()`` freezes ``cfg.freeze_modules`` while the epoch is below
``cfg.freeze_epochs``.  A resumed run restores the epoch with the schedule's state.  Freezing happens at the
first ``train()``, after the (optional) DistributedDataParallel wrap, so DDP registers every parameter and the
unfrozen ones are synchronised after epoch ``freeze_epochs``.
"""
from __future__ import annotations

from vgcore.optim import Schedule, ScheduleFactor, build_optimizer as _build_optimizer, build_param_groups

__all__ = ["FreezingSchedule", "build_optimizer", "GROUP_RULES"]


def _rules(args):
    return [(r"^backbone\.", {"lr": args.lr_backbone}),
            (r"^(visual_encoder|input_proj)\.", {"lr": args.lr_vis_enc}),
            (r"^bert\.", {"lr": args.lr_bert})]


GROUP_RULES = "backbone: --lr_backbone; visual_encoder + input_proj: --lr_vis_enc; bert: --lr_bert; rest: --lr"


class FreezingSchedule(Schedule):
    """StepLR per epoch that keeps ``model.schedule_epoch`` = epochs done (see module doc)."""

    def __init__(self, optimizer, model, lr_drop: int, gamma: float = 0.1):
        self.model = model
        super().__init__(optimizer, ScheduleFactor("step", step_size=lr_drop, gamma=gamma), "epoch")
        model.schedule_epoch = self.last_step

    def step(self) -> None:
        super().step()
        self.model.schedule_epoch = self.last_step

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        self.model.schedule_epoch = self.last_step


def build_optimizer(args, model, iters_per_epoch: int):
    groups = build_param_groups(model, args.lr, args.weight_decay, rules=_rules(args))
    optimizer = _build_optimizer("adamw", groups, args.lr, args.weight_decay)
    return optimizer, FreezingSchedule(optimizer, model, args.lr_drop), None
