"""`GroundingDataset` (record -> transformed sample) and `Collate` (samples -> `Batch`).

Work split, so that the DataLoader never starves the model:

* ``GroundingDataset.__getitem__`` (runs in DataLoader worker processes): load the image
  (`vgcore.data.image.load_image`), decode the object mask if asked, run the transform pipeline of
  `vgcore.data.transforms` (which ends with a normalised tensor on the input canvas).
* ``Collate.__call__`` (also runs in the workers -- the DataLoader calls ``collate_fn`` there): stack,
  tokenize the whole batch in one call, convert every box to the model frame with one vectorised op.
  A class, not a closure, so it pickles into worker processes (spawn or fork).

Per-sample dict (what ``dataset[i]`` returns):
  image       float32 [3, H, W], normalised, on the input canvas
  pixel_mask  bool [H, W], True = padding
  boxes       float64 [N, 4], xyxy in input pixels (N = 0 no-target, N > 1 multi-target)
  mask        uint8 [H, W] object mask at input size, or None
  text        the expression after the transform (a flip may have swapped left/right)
  affine      float64 [4] (sx, ox, sy, oy): original pixels -> input pixels
  orig_size   (h, w) of the original image
  record      the untouched `Record`;  index: the dataset index

Batch targets (see `vgcore.data.sample.Batch`): ``boxes`` [B, 4] = normalised cxcywh of the (padded) input
of the first target, zeros for no-target samples; ``target_boxes`` = list of [N_i, 4]; ``num_targets`` [B].
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .sample import Batch, Record
from .transforms import Sample

__all__ = ["GroundingDataset", "Collate", "make_dataloader", "seed_worker"]


def _default_loader(path, record):
    from .image import load_image  # imported lazily: keeps `import vgcore.data.dataset` cheap

    return load_image(path, record)


class GroundingDataset(torch.utils.data.Dataset):
    """Records + transform -> per-sample dicts (see module docstring).

    records      a sequence of `Record` (boxes xyxy original pixels).
    transform    a callable on `vgcore.data.transforms.Sample` (e.g. ``build_transforms("hivg", train)``).
    tokenizer    kept for convenience (``dataset.collate`` builds a `Collate` with it); tokenization itself
                 happens batched, in `Collate`.
    load_masks   False: no mask.  True / "segmentation": decode ``record.mask`` (polygons or RLE) with
                 `vgcore.data.masks.decode_mask`.  "box": HiVG's box-shaped object mask
                 (`vgcore.data.masks.box_mask`) of ``record.extra["mask_box_xyxy"]`` when a reader stored the
                 untruncated box there, else of ``record.boxes`` (union over targets).
    on_error     "raise": a bad image / mask raises (with the record's key).  "skip": the sample comes back
                 as None and `Collate` drops it (the batch gets smaller); one warning per worker.  Use
                 "raise" for evaluation so no sample silently disappears from the metrics.
    image_loader optional ``(path, record) -> PIL RGB`` replacing `load_image` (tests, in-memory data).
    """

    def __init__(self, records: Sequence[Record], transform: Optional[Callable] = None, tokenizer=None,
                 load_masks=False, on_error: str = "raise", image_loader: Optional[Callable] = None):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if load_masks not in (False, True, "segmentation", "box"):
            raise ValueError(f"load_masks must be False, True, 'segmentation' or 'box', got {load_masks!r}")
        self.records = records
        self.transform = transform
        self.tokenizer = tokenizer
        self.load_masks = "segmentation" if load_masks is True else load_masks
        self.on_error = on_error
        self.image_loader = image_loader or _default_loader
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    @property
    def collate(self) -> "Collate":
        return Collate(self.tokenizer)

    def _mask(self, rec: Record, h: int, w: int):
        from . import masks as M

        if self.load_masks == "segmentation":
            return M.decode_mask(rec.mask, h, w)
        boxes = np.asarray(rec.extra.get("mask_box_xyxy", rec.boxes), dtype=np.float64).reshape(-1, 4)
        if boxes.shape[0] == 0:
            return np.zeros((h, w), dtype=np.uint8)
        return M.box_mask(boxes, h, w, fmt="xyxy").max(axis=0).astype(np.uint8)

    def load(self, index: int) -> dict:
        rec = self.records[index]
        img = self.image_loader(rec.image_path, rec)
        w, h = img.size
        mask = self._mask(rec, h, w) if self.load_masks else None
        s = Sample(image=img, boxes=torch.from_numpy(np.asarray(rec.boxes, dtype=np.float64)),
                   text=rec.expression, mask=mask)
        if self.transform is not None:
            s = self.transform(s)
        image = s.image
        if not torch.is_tensor(image):
            raise TypeError(f"sample {rec.key()}: the transform must end with ToTensorNormalize and a canvas "
                            f"step (got a {type(image).__name__} image)")
        pm = s.pixel_mask if s.pixel_mask is not None else torch.zeros(image.shape[-2:], dtype=torch.bool)
        m = s.mask
        if m is not None and not torch.is_tensor(m):
            m = torch.from_numpy(np.ascontiguousarray(m)).to(torch.uint8)
        return {"image": image, "pixel_mask": pm, "boxes": s.boxes.to(torch.float64), "mask": m, "text": s.text,
                "affine": torch.tensor(s.affine, dtype=torch.float64), "orig_size": (h, w), "record": rec,
                "index": index}

    def __getitem__(self, index: int):
        if self.on_error == "raise":
            return self.load(index)
        try:
            return self.load(index)
        except (OSError, ValueError) as e:  # DataError is a ValueError
            self.num_skipped += 1
            if self.num_skipped == 1:
                warnings.warn(f"GroundingDataset: skipping sample {index} ({self.records[index].key()}): {e} "
                              f"(on_error='skip'; further skips in this process are silent)")
            return None


def _stack_padded(tensors: list, fill) -> torch.Tensor:
    """Stack [..., H_i, W_i] tensors, padding bottom/right to the largest size with ``fill``."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) == 1:
        return torch.stack(tensors)
    H = max(t.shape[-2] for t in tensors)
    W = max(t.shape[-1] for t in tensors)
    out = tensors[0].new_full((len(tensors),) + tuple(tensors[0].shape[:-2]) + (H, W), fill)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
    return out


class Collate:
    """samples -> `Batch`.  ``tokenizer(texts) -> (ids [B, L] long, mask [B, L] bool True = real)``; without a
    tokenizer ``text_ids`` / ``text_mask`` are empty [B, 0].  None samples (on_error="skip") are dropped;
    a batch with no sample left collates to None.  Images of different sizes are padded bottom/right
    (pixel_mask True there), which leaves every affine valid."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def __call__(self, samples: list) -> Optional[Batch]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return None
        B = len(samples)
        images = _stack_padded([s["image"] for s in samples], 0.0)
        pixel_mask = _stack_padded([s["pixel_mask"] for s in samples], True)
        H, W = images.shape[-2:]

        counts = torch.tensor([s["boxes"].shape[0] for s in samples], dtype=torch.long)
        allb = torch.cat([s["boxes"].reshape(-1, 4) for s in samples]).to(torch.float64)
        cxcywh = torch.stack([(allb[:, 0] + allb[:, 2]) / 2 / W, (allb[:, 1] + allb[:, 3]) / 2 / H,
                              (allb[:, 2] - allb[:, 0]) / W, (allb[:, 3] - allb[:, 1]) / H], -1).float()
        target_boxes = list(cxcywh.split(counts.tolist()))
        first = torch.zeros(B, 4, dtype=torch.float32)
        has = counts > 0
        starts = torch.cumsum(counts, 0) - counts
        first[has] = cxcywh[starts[has]]

        masks = None
        if any(s["mask"] is not None for s in samples):
            ms = [s["mask"] if s["mask"] is not None else torch.zeros(s["image"].shape[-2:], dtype=torch.uint8)
                  for s in samples]
            masks = _stack_padded(ms, 0)

        texts = [s["text"] for s in samples]
        if self.tokenizer is not None:
            ids, tmask = self.tokenizer(texts)
            ids, tmask = torch.as_tensor(ids).long(), torch.as_tensor(tmask).bool()
        else:
            ids, tmask = torch.zeros(B, 0, dtype=torch.long), torch.zeros(B, 0, dtype=torch.bool)

        return Batch(
            images=images, pixel_mask=pixel_mask, text_ids=ids, text_mask=tmask, boxes=first,
            target_boxes=target_boxes, num_targets=counts,
            affine=torch.stack([s["affine"] for s in samples]).to(torch.float64),
            orig_size=torch.tensor([s["orig_size"] for s in samples], dtype=torch.long),
            texts=texts, records=[s["record"] for s in samples], masks=masks,
            extra={"index": torch.tensor([s["index"] for s in samples], dtype=torch.long)},
        )


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: torch already seeds ``random`` and torch per worker; seed numpy too."""
    np.random.seed(torch.initial_seed() % 2**32)


def make_dataloader(dataset, batch_size: int, shuffle: bool = False, num_workers: int = 2, sampler=None,
                    drop_last: bool = False, collate_fn: Optional[Callable] = None, generator=None,
                    prefetch_factor: int = 4, pin_memory: Optional[bool] = None):
    """A DataLoader set up not to starve the model: decoding, transforms, tokenization and collation all
    run in ``num_workers`` persistent worker processes with ``prefetch_factor`` batches queued each;
    pinned memory when CUDA is present."""
    if collate_fn is None:
        collate_fn = Collate(getattr(dataset, "tokenizer", None))
    kw = {}
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=seed_worker)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=num_workers, collate_fn=collate_fn, drop_last=drop_last, generator=generator,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory, **kw)
