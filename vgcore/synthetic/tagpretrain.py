"""Dense-tag pretraining of a small image tower on the synthetic scenes.

The papers start from towers pretrained on web data (CLIP for HiVG, BEiT-3 for SimVG); none of those weights
are available offline, and a tiny tower trained from random initialisation by the grounding losses alone
does not learn the shape kinds within a CPU budget (hivg/README.md, "Tiny preset").  This
module stands in for that pretraining: every patch of a synthetic scene, seen through the method's own
evaluation transform, is labelled with the kind / colour / size of the shape that covers it
(`vgcore.synthetic.scenes.scene_tag_maps` + `patch_tags`), and a linear probe per field on the tower's patch
features is trained with cross-entropy.  Use scenes of a seed the grounding data does not use.

    recs, images = make_scenes(6000, seed=1)  # vgcore.synthetic.scenes, re-exported here
    train = SceneTagDataset(recs, images, build_transforms("hivg", train=False, imsize=128), patch=16)
    result = pretrain_tags(lambda x: tower(x)[0][-1][:, 1:], tower.parameters(), train, steps=3000)

The defaults (batch 16, lr 6e-3, cosine) are what learned the kinds fastest for HiVG's tiny tower: 92% of the
shape patches of held-out scenes after 3,000 steps (hivg/README.md, "Tiny preset").

Besides the content tags, ``fields`` may hold ``row`` / ``col`` (`POSITION_FIELDS`): every patch labelled with
its grid cell, so that the features keep the position table.  Text towers: `ExpressionTagDataset` +
`pretrain_text_tags` (what an expression says).  One-tower models: `ImageTextDataset` + `pretrain_masked_text`
(masked language modelling on image-text pairs, optional image-text matching) or `pretrain_joint_tags` (the
image CLS of the joint forward says what the paired expression says and, optionally, what the object it
describes looks like and where it is).  All phases run on the same loop, `train_steps`.

The tower-specific parts (which features, which weights to keep) live in the method package
(e.g. ``hivg/pretrain_tiny.py``, ``simvg/pretrain_tiny.py``).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .scenes import COLORS, KINDS, SIZES, TAG_CLASSES, make_records, make_scenes, patch_tags, scene_tag_maps

POSITION_FIELDS = ("row", "col")  # per-patch grid position (label = index + 1 on every patch, no background)

__all__ = ["make_scenes", "make_records", "POSITION_FIELDS", "SceneTagDataset", "pretrain_tags", "tag_accuracy",
           "TEXT_TAG_CLASSES", "program_tags", "ExpressionTagDataset", "pretrain_text_tags", "text_tag_accuracy",
           "ImageTextDataset", "described_present", "mask_tokens", "masked_text_accuracy", "pretrain_masked_text",
           "train_steps", "record_tags", "REFERENT_FIELDS", "referent_tags", "joint_tag_accuracy",
           "pretrain_joint_tags"]


def _reads(x) -> list:
    """Features a phase supervises: one tensor, or a list of them (several layers), as a list."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


class SceneTagDataset(torch.utils.data.Dataset):
    """One sample per scene: (image [3, H, W] after ``transform``, labels [len(fields), H/patch, W/patch]).

    ``transform``: the method's (deterministic, evaluation) transform, e.g. ``build_transforms("hivg",
    train=False, imsize=128)``; its ``affine`` places the labels.  Every sample is transformed once, on first
    use, and kept (images in float16), so epochs after the first cost no decoding or resizing.
    ``min_fraction``: a patch is labelled when one shape covers at least that share of it (else background 0).
    ``fields`` may also name ``"row"`` / ``"col"`` (`POSITION_FIELDS`): every patch is labelled with its grid
    row / column + 1, which makes the features carry where they are (a pretrained tower's features do; a
    tower trained on content tags alone keeps little of its position table, see simvg/README.md).
    """

    def __init__(self, records: Sequence, images: dict, transform: Callable, patch: int,
                 fields: Sequence[str] = ("kind", "color"), min_fraction: float = 0.3):
        from PIL import Image

        from ..data.dataset import GroundingDataset

        bad = [f for f in fields if f not in TAG_CLASSES and f not in POSITION_FIELDS]
        if bad:
            raise ValueError(f"SceneTagDataset: unknown tag fields {bad}; choose from "
                             f"{sorted(TAG_CLASSES) + list(POSITION_FIELDS)}")
        missing = [r.image_path for r in records if r.image_path not in images]
        if missing:
            raise ValueError(f"SceneTagDataset: no image for {len(missing)} records, e.g. {missing[:3]}")
        self.records, self.fields, self.patch, self.min_fraction = list(records), tuple(fields), int(patch), min_fraction
        self._ds = GroundingDataset(self.records, transform,
                                    image_loader=lambda p, rec: Image.fromarray(images[p]))
        self._cache: Dict[int, tuple] = {}

    @property
    def num_classes(self) -> Dict[str, int]:
        """Classes per field, background included (position fields: grid size + 1, label 0 unused)."""
        grid = None
        if any(f in POSITION_FIELDS for f in self.fields):
            grid = tuple(self[0][1].shape[-2:]) if len(self) else (0, 0)
        return {f: (grid[POSITION_FIELDS.index(f)] if f in POSITION_FIELDS else len(TAG_CLASSES[f])) + 1
                for f in self.fields}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        hit = self._cache.get(i)
        if hit is None:
            s = self._ds[i]
            rec = self.records[i]
            try:
                maps = scene_tag_maps(rec.extra["objects"], rec.height, rec.width)
            except (KeyError, ValueError) as e:
                raise ValueError(f"SceneTagDataset: record {i} ({rec.image_path}): {e}") from e
            hw = tuple(s["image"].shape[-2:])
            gh, gw = hw[0] // self.patch, hw[1] // self.patch
            grid = {"row": np.repeat(np.arange(1, gh + 1)[:, None], gw, 1),
                    "col": np.repeat(np.arange(1, gw + 1)[None, :], gh, 0)}
            labels = np.stack([grid[f].astype(np.int64) if f in grid else
                               patch_tags(maps[f], s["affine"].numpy(), hw, self.patch, self.min_fraction)
                               for f in self.fields])
            hit = (s["image"].to(torch.float16), torch.from_numpy(labels))
            self._cache[i] = hit
        return hit[0].float(), hit[1]


def _loss(logits: Dict[str, torch.Tensor], labels: torch.Tensor, fields, background_weight: float):
    total = 0.0
    for j, f in enumerate(fields):
        lg = logits[f]  # [B, N, C]
        w = torch.ones(lg.shape[-1], device=lg.device, dtype=lg.dtype)
        w[0] = background_weight
        total = total + F.cross_entropy(lg.flatten(0, 1), labels[:, j].flatten(), weight=w)
    return total


@torch.no_grad()
def tag_accuracy(features: Callable, heads: nn.ModuleDict, dataset, fields: Sequence[str],
                 batch_size: int = 64, device="cpu") -> Dict[str, float]:
    """Per field: accuracy over the patches that a shape covers (background patches excluded)."""
    right = {f: 0 for f in fields}
    total = {f: 0 for f in fields}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for img, lab in loader:
        feats = _reads(features(img.to(device)))[-1]  # several supervised layers: report the last
        for j, f in enumerate(fields):
            pred = heads[f](feats).argmax(-1).cpu()
            y = lab[:, j].flatten(1)
            on = y > 0
            right[f] += int((pred[on] == y[on]).sum())
            total[f] += int(on.sum())
    return {f: right[f] / max(total[f], 1) for f in fields}


def _loader(dataset, batch_size: int, seed: int, who: str, what: str):
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=gen)
    if len(loader) == 0:
        raise ValueError(f"{who}: {len(dataset)} {what} do not fill one batch of {batch_size}")
    return loader


def train_steps(loss_fn: Callable[[object], torch.Tensor], params: Iterable[torch.nn.Parameter], loader, *,
                steps: int, lr: float, weight_decay: float = 1e-4, warmup_steps: int = 50, schedule: str = "cosine",
                name: str = "pretraining", log: Optional[Callable[[str], None]] = None, log_every: int = 100,
                on_log: Optional[Callable[[int], dict]] = None):
    """The loop every pretraining phase shares: ``steps`` AdamW steps of ``loss_fn(batch)`` over ``loader``
    (re-iterated as needed), linear warm-up then cosine decay to 0 (``schedule="constant"``: none).  Parameters
    with ``requires_grad`` False are skipped.  Every ``log_every`` steps (and at the end) the mean loss is
    recorded, with what ``on_log(step)`` returns.  Returns (history, seconds)."""
    if steps < 1:
        raise ValueError(f"{name}: steps must be >= 1, got {steps}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"{name}: schedule must be 'cosine' or 'constant', got {schedule!r}")
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def lr_at(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(steps - warmup_steps, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history, running, t0, step = [], 0.0, time.time(), 0
    while step < steps:
        for batch in loader:
            loss = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            step += 1
            if step % log_every == 0 or step == steps:
                n = log_every if step % log_every == 0 else step % log_every
                rec = {"step": step, "loss": running / n, **(on_log(step) if on_log is not None else {})}
                history.append(rec)
                if log is not None:
                    acc = "".join(f", val {f} {a:.3f}" for f, a in rec.get("val", {}).items())
                    log(f"{name} step {step}/{steps}: loss {running / n:.4f}{acc} ({time.time() - t0:.0f} s)")
                running = 0.0
            if step >= steps:
                break
    return history, time.time() - t0


def pretrain_tags(features: Callable[[torch.Tensor], torch.Tensor], params: Iterable[torch.nn.Parameter],
                  dataset: SceneTagDataset, *, steps: int, feature_dim: Optional[int] = None,
                  batch_size: int = 16, lr: float = 6e-3, weight_decay: float = 1e-4, warmup_steps: int = 50,
                  background_weight: float = 0.1, schedule: str = "cosine", seed: int = 0, device="cpu",
                  val_dataset: Optional[SceneTagDataset] = None, val_every: int = 0,
                  log: Optional[Callable[[str], None]] = None, log_every: int = 100) -> dict:
    """Train the tower behind ``features`` (images [B, 3, H, W] -> patch features [B, N, D], N = the label
    grid in row-major order; or a list of such, e.g. of several layers, each supervised by the same heads and
    the last one reported) with one linear head per field: AdamW, linear warm-up then cosine decay to 0
    (``schedule="constant"``: no decay), cross-entropy with the background class down-weighted by
    ``background_weight``.

    ``params``: the tower parameters to train (the heads are added).  Returns {"heads", "history" (loss per
    ``log_every`` steps; with ``val_every`` also the `tag_accuracy` on ``val_dataset`` every that many steps),
    "val" (`tag_accuracy` on ``val_dataset`` at the end, when given), "seconds"}.
    """
    if steps < 1:
        raise ValueError(f"pretrain_tags: steps must be >= 1, got {steps}")
    fields = dataset.fields
    if feature_dim is None:
        with torch.no_grad():
            feature_dim = int(_reads(features(dataset[0][0][None].to(device)))[-1].shape[-1])
    heads = nn.ModuleDict({f: nn.Linear(feature_dim, n) for f, n in dataset.num_classes.items()}).to(device)

    def loss_fn(batch):
        img, lab = batch
        lab = lab.to(device)
        return sum(_loss({f: heads[f](x) for f in fields}, lab, fields, background_weight)
                   for x in _reads(features(img.to(device))))

    def extra(step):
        if val_dataset is not None and val_every and step % val_every == 0 and step < steps:
            return {"val": tag_accuracy(features, heads, val_dataset, fields, device=device)}
        return {}

    history, seconds = train_steps(loss_fn, list(params) + list(heads.parameters()),
                                   _loader(dataset, batch_size, seed, "pretrain_tags", "scenes"), steps=steps, lr=lr,
                                   weight_decay=weight_decay, warmup_steps=warmup_steps, schedule=schedule,
                                   name="tag pretraining", log=log, log_every=log_every, on_log=extra)
    out = {"heads": heads, "history": history, "seconds": seconds}
    if val_dataset is not None:
        out["val"] = tag_accuracy(features, heads, val_dataset, fields, device=device)
    return out


# ------------------------------------------------------------------------------------------ text towers

TEXT_TAG_CLASSES = {  # label 0 = not said, i + 1 = class i
    "kind": KINDS, "color": tuple(COLORS), "size": SIZES,
    "expr_type": ("attr", "extreme", "ordinal", "rel", "set"),
    "dir": ("left", "right", "top", "bottom", "above", "below"),
    "ordinal": (2, 3),
    "anchor_kind": KINDS, "anchor_color": tuple(COLORS), "anchor_size": SIZES,
}


def program_tags(program: dict, fields: Sequence[str] = tuple(TEXT_TAG_CLASSES)) -> list:
    """Labels of one expression's program (``Record.extra["program"]`` of the synthetic data): per field the
    class index + 1 of what the expression says (head noun phrase: kind / color / size; the program type; the
    direction of an extreme, ordinal or relation; the ordinal; the anchor's kind / color / size), 0 when it
    does not say it."""
    np_, anchor = program.get("np") or {}, program.get("anchor") or {}
    said = {"kind": np_.get("kind"), "color": np_.get("color"), "size": np_.get("size"),
            "expr_type": program.get("type"), "dir": program.get("dir", program.get("rel")),
            "ordinal": program.get("k"), "anchor_kind": anchor.get("kind"),
            "anchor_color": anchor.get("color"), "anchor_size": anchor.get("size")}
    out = []
    for f in fields:
        classes = TEXT_TAG_CLASSES[f]
        v = said[f]
        if v is not None and v not in classes:
            raise ValueError(f"program_tags: {f} = {v!r} is not one of {classes} (program {program})")
        out.append(0 if v is None else classes.index(v) + 1)
    return out


def record_tags(records: Sequence, fields: Sequence[str] = tuple(TEXT_TAG_CLASSES), who: str = "record_tags"):
    """`program_tags` of every record's ``extra["program"]``: labels [N, len(fields)] long."""
    labels = []
    for i, r in enumerate(records):
        prog = r.extra.get("program") if isinstance(r.extra, dict) else None
        if prog is None:
            raise ValueError(f"{who}: record {i} ({r.image_path}, {r.expression!r}) has no extra['program'] "
                             f"(synthetic records from make_records carry one)")
        labels.append(program_tags(prog, fields))
    return torch.tensor(labels, dtype=torch.long).reshape(len(labels), len(fields))


class ExpressionTagDataset(torch.utils.data.Dataset):
    """One sample per expression: (token ids [L] long, labels [len(fields)] long) from synthetic records
    (`make_records`), tokenised once with ``tokenizer(texts) -> (ids [B, L], mask)``."""

    def __init__(self, records: Sequence, tokenizer: Callable, fields: Sequence[str] = tuple(TEXT_TAG_CLASSES)):
        bad = [f for f in fields if f not in TEXT_TAG_CLASSES]
        if bad:
            raise ValueError(f"ExpressionTagDataset: unknown fields {bad}; choose from {list(TEXT_TAG_CLASSES)}")
        self.fields = tuple(fields)
        self.ids, self.mask = tokenizer([r.expression for r in records])
        self.labels = record_tags(records, fields, "ExpressionTagDataset")

    @property
    def num_classes(self) -> Dict[str, int]:
        return {f: len(TEXT_TAG_CLASSES[f]) + 1 for f in self.fields}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.ids[i], self.mask[i], self.labels[i]


@torch.no_grad()
def text_tag_accuracy(encode: Callable, heads: nn.ModuleDict, dataset: ExpressionTagDataset,
                      batch_size: int = 256, device="cpu") -> Dict[str, float]:
    """Per field: accuracy over all expressions (the 'not said' class included)."""
    right = torch.zeros(len(dataset.fields))
    for s in range(0, len(dataset), batch_size):
        feats = encode(dataset.ids[s:s + batch_size].to(device), dataset.mask[s:s + batch_size].to(device))
        for j, f in enumerate(dataset.fields):
            right[j] += (heads[f](feats).argmax(-1).cpu() == dataset.labels[s:s + batch_size, j]).sum()
    return {f: float(right[j]) / max(len(dataset), 1) for j, f in enumerate(dataset.fields)}


def pretrain_text_tags(encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       params: Iterable[torch.nn.Parameter], dataset: ExpressionTagDataset, *, steps: int,
                       batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4, warmup_steps: int = 50,
                       seed: int = 0, device="cpu", val_dataset: Optional[ExpressionTagDataset] = None,
                       log: Optional[Callable[[str], None]] = None, log_every: int = 100) -> dict:
    """Train the text tower behind ``encode`` (ids [B, L], mask [B, L] -> pooled features [B, D]) to say what an
    expression says (`program_tags`): one linear head per field on the pooled feature, cross-entropy, AdamW with
    a linear warm-up then cosine decay to 0.  Returns {"heads", "history", "val" (with ``val_dataset``),
    "seconds"}."""
    if steps < 1:
        raise ValueError(f"pretrain_text_tags: steps must be >= 1, got {steps}")
    with torch.no_grad():
        dim = int(encode(dataset.ids[:1].to(device), dataset.mask[:1].to(device)).shape[-1])
    heads = nn.ModuleDict({f: nn.Linear(dim, n) for f, n in dataset.num_classes.items()}).to(device)

    def loss_fn(batch):
        ids, mask, lab = (t.to(device) for t in batch)
        feats = encode(ids, mask)
        return sum(F.cross_entropy(heads[f](feats), lab[:, j]) for j, f in enumerate(dataset.fields))

    history, seconds = train_steps(loss_fn, list(params) + list(heads.parameters()),
                                   _loader(dataset, batch_size, seed, "pretrain_text_tags", "expressions"),
                                   steps=steps, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                   name="text tag pretraining", log=log, log_every=log_every)
    out = {"heads": heads, "history": history, "seconds": seconds}
    if val_dataset is not None:
        out["val"] = text_tag_accuracy(encode, heads, val_dataset, device=device)
    return out


# ---------------------------------------------------------------------------- joint image-text (one tower)

class ImageTextDataset(torch.utils.data.Dataset):
    """One sample per expression: (image [3, H, W] after ``transform``, token ids [L] long, mask [L] bool with
    True = token, index) of synthetic records (`make_records`) and their images.  ``transform``: the method's
    deterministic evaluation transform; each image is transformed once, on first use, and kept in float16.
    ``match``: the image-text matching label of (text index, image index) for pairs of different records
    (e.g. `described_present`; None: such pairs never match)."""

    def __init__(self, records: Sequence, images: dict, transform: Callable, tokenizer: Callable,
                 match: Optional[Callable[[int, int], bool]] = None):
        from PIL import Image

        from ..data.dataset import GroundingDataset

        missing = [r.image_path for r in records if r.image_path not in images]
        if missing:
            raise ValueError(f"ImageTextDataset: no image for {len(missing)} records, e.g. {missing[:3]}")
        self.records = list(records)
        self._ds = GroundingDataset(self.records, transform, image_loader=lambda p, rec: Image.fromarray(images[p]))
        self.ids, self.mask = tokenizer([r.expression for r in self.records])
        self.match = match
        self._cache: Dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        path = self.records[i].image_path
        img = self._cache.get(path)
        if img is None:
            img = self._ds[i]["image"].to(torch.float16)
            self._cache[path] = img
        return img.float(), self.ids[i], self.mask[i], i


def described_present(records: Sequence) -> Callable[[int, int], bool]:
    """``match(i, j)``: does the image of record j hold a shape of the kind (and colour, when said) that the
    head noun phrase of record i's expression names?  Synthetic records (``extra["program"]``, ``extra["objects"]``);
    the exact image-text matching label of `pretrain_masked_text` for pairs of different scenes."""
    said, have = [], []
    for r in records:
        np_ = (r.extra.get("program") or {}).get("np") or {}
        said.append((np_.get("kind"), np_.get("color")))
        have.append({(o.get("category"), o.get("color")) for o in r.extra.get("objects", [])})

    def match(i: int, j: int) -> bool:
        kind, color = said[i]
        return any((kind is None or k == kind) and (color is None or c == color) for k, c in have[j])
    return match


def mask_tokens(ids: torch.Tensor, mask: torch.Tensor, mask_id: int, prob: float,
                generator: Optional[torch.Generator] = None):
    """Masked-language-modelling input: each real token but the first (<s>) and the last (</s>) of a row is
    replaced by ``mask_id`` with probability ``prob``, and at least one per row that has such a token.
    ids, mask [B, L] (mask True = token).  Returns (inputs [B, L], targets [B, L] = the original id where
    masked, -100 elsewhere)."""
    B, L = ids.shape
    inner = mask.bool().clone()
    inner[:, 0] = False
    last = (mask.long().sum(1) - 1).clamp_min(0)
    inner[torch.arange(B), last] = False
    r = torch.rand(ids.shape, generator=generator)
    chosen = inner & (r < prob)
    empty = ~chosen.any(1) & inner.any(1)
    if empty.any():
        pick = r.masked_fill(~inner, 2.0).argmin(1)
        chosen[empty, pick[empty]] = True
    return ids.masked_fill(chosen, mask_id), ids.masked_fill(~chosen, -100)


@torch.no_grad()
def masked_text_accuracy(joint: Callable, head: nn.Module, dataset: ImageTextDataset, mask_id: int,
                         prob: float = 0.5, seed: int = 0, batch_size: int = 128, shuffle_images: bool = False,
                         device="cpu") -> float:
    """Accuracy of the masked tokens of ``dataset`` (a fixed draw of masks from ``seed``).  With
    ``shuffle_images`` every expression is paired with another sample's image: the gap to the unshuffled
    accuracy is what the prediction takes from the image."""
    gen = torch.Generator().manual_seed(seed)
    perm_gen = torch.Generator().manual_seed(seed + 1)
    right = total = 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for img, ids, mask, _ in loader:
        inp, tgt = mask_tokens(ids, mask, mask_id, prob, gen)
        if shuffle_images:
            img = img[torch.randperm(len(img), generator=perm_gen)]
        pred = head(joint(img.to(device), inp.to(device), mask.to(device))).argmax(-1).cpu()
        on = tgt >= 0
        right += int((pred[on] == tgt[on]).sum())
        total += int(on.sum())
    return right / max(total, 1)


def pretrain_masked_text(joint: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple],
                         params: Iterable[torch.nn.Parameter], dataset: ImageTextDataset, *, steps: int,
                         vocab_size: int, mask_id: int, mask_prob: float = 0.5, itm_weight: float = 0.0,
                         batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4, warmup_steps: int = 100,
                         seed: int = 0, device="cpu", val_dataset: Optional[ImageTextDataset] = None,
                         log: Optional[Callable[[str], None]] = None, log_every: int = 100) -> dict:
    """Masked language modelling on image-text pairs, as BEiT-3 pretrains its joint (vision-language) mode:
    ``joint(images [B, 3, H, W], ids [B, L], mask [B, L]) -> (text features [B, L, D], pooled [B, D])`` of the
    one-tower model, a linear head to the ``vocab_size`` ids, cross-entropy on the tokens `mask_tokens` hides
    (``mask_prob`` of them, BEiT-3's 50% for image-text pairs).  A hidden colour or kind of a synthetic
    expression can only be recovered from the image, so this trains the attention between the modalities.
    ``itm_weight`` > 0 adds image-text matching on the pooled feature (the image CLS): every other sample of a
    batch gets the image of another sample, labelled ``dataset.match(text index, image index)`` (None: "no match"),
    binary cross-entropy.
    Returns {"head", "itm_head", "history", "seconds", and with ``val_dataset`` "val" / "val_shuffled_images"
    (`masked_text_accuracy`) and "val_itm" (matching accuracy)}."""
    with torch.no_grad():
        img0, ids0, mask0, _ = dataset[0]
        dim = int(joint(img0[None].to(device), ids0[None].to(device), mask0[None].to(device))[0].shape[-1])
    head = nn.Linear(dim, vocab_size).to(device)
    itm_head = nn.Linear(dim, 1).to(device)
    gen = torch.Generator().manual_seed(seed + 7)

    def pairs(img, index, g, match):
        """Every odd sample gets another sample's image (a derangement of those): labels 1 = matching pair."""
        B = len(img)
        neg = torch.arange(B) % 2 == 1
        idx = torch.arange(B)
        odd = idx[neg]
        if len(odd) > 1:
            shift = int(torch.randint(1, len(odd), (1,), generator=g))
            idx[neg] = odd.roll(shift)
        else:
            neg[:] = False
        label = (~neg).float()
        if match is not None:
            for b in torch.nonzero(neg).flatten().tolist():
                label[b] = float(match(int(index[b]), int(index[idx[b]])))
        return img[idx], label

    def loss_fn(batch):
        img, ids, mask, index = batch
        inp, tgt = mask_tokens(ids, mask, mask_id, mask_prob, gen)
        text, _ = joint(img.to(device), inp.to(device), mask.to(device))
        loss = F.cross_entropy(head(text).flatten(0, 1), tgt.to(device).flatten(), ignore_index=-100)
        if itm_weight > 0:
            pimg, label = pairs(img, index, gen, dataset.match)
            _, pooled = joint(pimg.to(device), ids.to(device), mask.to(device))
            loss = loss + itm_weight * F.binary_cross_entropy_with_logits(itm_head(pooled)[:, 0], label.to(device))
        return loss

    extra = list(itm_head.parameters()) if itm_weight > 0 else []
    history, seconds = train_steps(loss_fn, list(params) + list(head.parameters()) + extra,
                                   _loader(dataset, batch_size, seed, "pretrain_masked_text", "expressions"),
                                   steps=steps, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                   name="joint pretraining", log=log, log_every=log_every)
    out = {"head": head, "itm_head": itm_head, "history": history, "seconds": seconds}
    if val_dataset is not None:
        text_only = lambda *a: joint(*a)[0]  # noqa: E731
        out["val"] = masked_text_accuracy(text_only, head, val_dataset, mask_id, mask_prob, device=device)
        out["val_shuffled_images"] = masked_text_accuracy(text_only, head, val_dataset, mask_id, mask_prob,
                                                          shuffle_images=True, device=device)
        if itm_weight > 0:
            g = torch.Generator().manual_seed(seed + 11)
            right = total = 0
            with torch.no_grad():
                for img, ids, mask, index in torch.utils.data.DataLoader(val_dataset, batch_size=128):
                    pimg, label = pairs(img, index, g, val_dataset.match)
                    _, pooled = joint(pimg.to(device), ids.to(device), mask.to(device))
                    right += int(((itm_head(pooled)[:, 0] > 0).float().cpu() == label).sum())
                    total += len(label)
            out["val_itm"] = right / max(total, 1)
    return out


REFERENT_FIELDS = ("kind", "color", "size", "row", "col")  # of the one object an expression describes


def referent_tags(records: Sequence, grid: int, who: str = "referent_tags") -> torch.Tensor:
    """What the one object each synthetic record's expression describes looks like and where it is: labels
    [N, 5] long of `REFERENT_FIELDS` (kind / colour / size class index; row / col of its box centre on a
    ``grid`` x ``grid`` partition of the image), -100 (ignored) for no- and multi-target expressions."""
    out = []
    for i, r in enumerate(records):
        ex = r.extra if isinstance(r.extra, dict) else {}
        if "target_index" not in ex or "objects" not in ex:
            raise ValueError(f"{who}: record {i} ({r.image_path}, {r.expression!r}) has no extra['target_index'] / "
                             f"extra['objects'] (synthetic records from make_records carry them)")
        if len(ex["target_index"]) != 1:
            out.append([-100] * len(REFERENT_FIELDS))
            continue
        o = ex["objects"][ex["target_index"][0]]
        x0, y0, x1, y1 = o["box"]
        row = min(int((y0 + y1) / 2 / r.height * grid), grid - 1)
        col = min(int((x0 + x1) / 2 / r.width * grid), grid - 1)
        out.append([KINDS.index(o["category"]), list(COLORS).index(o["color"]), SIZES.index(o["size"]), row, col])
    return torch.tensor(out, dtype=torch.long).reshape(len(out), len(REFERENT_FIELDS))


@torch.no_grad()
def joint_tag_accuracy(pooled: Callable, heads: nn.ModuleDict, dataset: ImageTextDataset, grid: int = 0,
                       batch_size: int = 128, device="cpu") -> Dict[str, float]:
    """Accuracy of `pretrain_joint_tags` heads on ``dataset``: per text field (on the last read of ``pooled``) how
    often it says what the expression says, the 'not said' class included; with ``grid`` also per
    ``referent_<field>`` on the single-target expressions."""
    text = [f for f in TEXT_TAG_CLASSES if f in heads]
    labels = record_tags(dataset.records, text, "joint_tag_accuracy")
    ref = referent_tags(dataset.records, grid, "joint_tag_accuracy") if grid else None
    right: Dict[str, float] = {}
    for img, ids, mask, index in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = _reads(pooled(img.to(device), ids.to(device), mask.to(device)))[-1]
        for j, f in enumerate(text):
            right[f] = right.get(f, 0) + int((heads[f](x).argmax(-1).cpu() == labels[index, j]).sum())
        if ref is not None:
            for j, f in enumerate(REFERENT_FIELDS):
                right["referent_" + f] = right.get("referent_" + f, 0) + int(
                    (heads["referent_" + f](x).argmax(-1).cpu() == ref[index, j]).sum())
    n_ref = int((ref[:, 0] >= 0).sum()) if ref is not None else 0
    return {f: v / max(n_ref if f.startswith("referent_") else len(dataset), 1) for f, v in right.items()}


def pretrain_joint_tags(pooled: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                        params: Iterable[torch.nn.Parameter], dataset: ImageTextDataset, *, steps: int,
                        referent_weight: float = 0.0, grid: int = 0, batch_size: int = 32, lr: float = 3e-4,
                        weight_decay: float = 1e-4, warmup_steps: int = 100, seed: int = 0, device="cpu",
                        val_dataset: Optional[ImageTextDataset] = None, log: Optional[Callable[[str], None]] = None,
                        log_every: int = 100) -> dict:
    """Teach a one-tower model's image side to read the text and find what it describes.
    ``pooled(images, ids, mask) -> [B, D]`` (the image CLS of the joint forward, SimVG's object token; or a list
    of such reads, e.g. of several layers) must say what the paired expression says (`program_tags`, one linear
    head per field shared by all reads, cross-entropy); with ``referent_weight`` > 0 the last read must also say
    what the described object looks like and where it is (`referent_tags` on a ``grid``: one linear head per
    `REFERENT_FIELDS`).  The CLS can learn either only through its attention (to the text tokens, then to the
    patches of the described object), which is what SimVG's token branch needs (simvg/README.md, "Tiny preset").
    Returns {"heads", "history", "seconds", "val" (`joint_tag_accuracy` on ``val_dataset``, when given)}."""
    if referent_weight > 0 and grid < 1:
        raise ValueError("pretrain_joint_tags: referent_weight > 0 needs the grid size (e.g. 8 for 128 px / 16)")
    labels = record_tags(dataset.records, tuple(TEXT_TAG_CLASSES), "pretrain_joint_tags")
    ref = referent_tags(dataset.records, grid, "pretrain_joint_tags") if referent_weight > 0 else None
    with torch.no_grad():
        img0, ids0, mask0, _ = dataset[0]
        dim = int(_reads(pooled(img0[None].to(device), ids0[None].to(device), mask0[None].to(device)))[-1].shape[-1])
    sizes = {f: len(c) + 1 for f, c in TEXT_TAG_CLASSES.items()}
    if ref is not None:
        sizes.update({"referent_kind": len(KINDS), "referent_color": len(COLORS), "referent_size": len(SIZES),
                      "referent_row": grid, "referent_col": grid})
    heads = nn.ModuleDict({f: nn.Linear(dim, n) for f, n in sizes.items()}).to(device)

    def loss_fn(batch):
        img, ids, mask, index = batch
        reads = _reads(pooled(img.to(device), ids.to(device), mask.to(device)))
        lab = labels[index].to(device)
        loss = sum(F.cross_entropy(heads[f](x), lab[:, j]) for x in reads for j, f in enumerate(TEXT_TAG_CLASSES))
        if ref is not None:
            r = ref[index].to(device)
            if (r[:, 0] >= 0).any():
                loss = loss + referent_weight * sum(
                    F.cross_entropy(heads["referent_" + f](reads[-1]), r[:, j], ignore_index=-100)
                    for j, f in enumerate(REFERENT_FIELDS))
        return loss

    history, seconds = train_steps(loss_fn, list(params) + list(heads.parameters()),
                                   _loader(dataset, batch_size, seed, "pretrain_joint_tags", "expressions"),
                                   steps=steps, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                   name="joint tag pretraining", log=log, log_every=log_every)
    out = {"heads": heads, "history": history, "seconds": seconds}
    if val_dataset is not None:
        out["val"] = joint_tag_accuracy(pooled, heads, val_dataset, grid if ref is not None else 0, device=device)
    return out
