"""Semantic-prior generation: ``<split>_fea.pth`` from a text-to-image model and an image encoder.

For every sample of a split list ``<split_root>/<dataset>/<dataset>_<split>.pth`` the query (the phrase of the
row) is turned into a prompt (``--prompt_template``, default the query itself), a local diffusers text-to-image
pipeline (any Stable Diffusion folder: ``model_index.json`` + components, loaded offline) draws
``--images_per_query`` images from it, an open_clip image encoder embeds them, and the prior feature of the row
is the mean of the L2-normalised image embeddings (``--no_normalize``: of the raw embeddings).  Row i of the
written ``<prior_root>/<split>_fea.pth`` ([N, D] float32) belongs to row i of the split list, which is what
`resvg.prior.attach_priors` checks when training or evaluating reads it.

The paper does not state the generator, its settings, the number of images per query, the encoder or the pooling;
the defaults here (50 steps, guidance 7.5, one image, mean of L2-normalised embeddings, D = 512 as the model's
prior MLP expects) are choices, all recorded in the work folder's ``settings.json``.

Determinism.  The noise of image k of a prompt comes from a CPU generator seeded with a hash of
(``--gen_seed``, prompt, k): the feature of a query depends on the query, not on its row, its shard or the GPU
that drew it (up to float rounding, which differs with the batch composition; the same flags give identical
bytes).  Identical prompts of a split are generated once and share their feature.

Resumable, sharded, N GPUs.  The distinct prompts (first-occurrence order) are cut into chunks of
``--chunk_size``; each finished chunk is written atomically to ``<work_dir>/chunk_<c>.pth`` (temporary file +
rename), so a killed run keeps every finished chunk and a rerun with the same flags computes only the rest.  A
chunk made with other settings or for other prompts is refused with its file named.  Chunk c belongs to shard
``c % num_shards``: under ``torchrun`` / ``torch.distributed.launch`` the shards are the ranks (one GPU each,
``cuda:<local_rank>``); ``--num_shards N --shard_id i`` runs one shard as an independent job.  The last step
merges the chunks into the prior file (rank 0, or whichever job finds every chunk present; ``--merge_only`` to
merge explicitly).

Command line (``python -m resvg.prior_gen --help``)::

    python -m resvg.prior_gen --dataset unc --split train val testA testB --split_root data \
        --generator stable-diffusion-v1-5/ --encoder ViT-B-16 --encoder_weights open_clip_vit_b16.bin
    torchrun --nproc_per_node 4 -m resvg.prior_gen ...            # 4 GPUs
    python -m resvg.prior_gen --write_tiny_models tiny/            # random tiny models for offline tests

``--reuse_split train`` copies the rows of prompts that also occur in another split with a prior file (e.g.
``new_train`` = ``train`` + augmented samples: only the augmented queries are generated).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import string
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # `python resvg/prior_gen.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from vgcore import dist
from vgcore.checkpoint import atomic_save, load_strict, unwrap
from vgcore.checkpoint.safe import UntrustedFileError, torch_load
from vgcore.data.errors import DataError
from vgcore.data.formats import transvg as transvg_fmt

from resvg.data import DATASET_SPLITS, check_split
from resvg.prior import prior_path, read_prior_file

__all__ = ["GenSettings", "PriorGenerator", "add_generation_args", "settings_from_args", "query_seed",
           "read_queries", "load_generator_pipeline", "load_image_encoder", "write_tiny_models", "generate_split",
           "merge_chunks", "get_args_parser", "main", "CHUNK_FORMAT"]

CHUNK_FORMAT = "resvg-prior-chunk/1"
OPENAI_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's TorchScript files


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class GenSettings:
    """Everything that decides the numbers of a prior feature (the batch size does not)."""
    generator: str
    encoder: str
    encoder_weights: str = ""
    images_per_query: int = 1
    steps: int = 50
    guidance_scale: float = 7.5
    height: Optional[int] = None
    width: Optional[int] = None
    seed: int = 0
    prompt_template: str = "{query}"
    normalize: bool = True
    dtype: str = "auto"

    def prompt(self, query: str) -> str:
        return self.prompt_template.format(query=query.strip())

    def fingerprint(self) -> dict:
        d = asdict(self)
        for k in ("generator", "encoder", "encoder_weights"):
            if d[k] and os.path.exists(d[k]):
                d[k] = os.path.abspath(d[k])
        return d


def add_generation_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The text-to-image + encoder flags (shared by ``python -m resvg.prior_gen`` and ``resvg/predict.py``)."""
    g = p.add_argument_group("semantic prior generation (text-to-image model + image encoder)")
    g.add_argument("--generator", default="",
                   help="local diffusers text-to-image folder (model_index.json + components, e.g. a Stable "
                        "Diffusion 1.x/2.x/XL folder); read offline, never from the hub")
    g.add_argument("--encoder", default="ViT-B-16",
                   help="open_clip architecture name (ViT-B-16, ViT-B-32, ViT-B-16-quickgelu for OpenAI weights, ...) "
                        "or an open_clip model-config .json file")
    g.add_argument("--encoder_weights", default="",
                   help="the encoder's weights: open_clip / OpenAI state dict (.bin / .pt / .pth / .safetensors), "
                        "loaded strictly")
    g.add_argument("--random_encoder", action="store_true",
                   help="allow a random-init encoder when --encoder_weights is not given (tests only: its "
                        "features carry no meaning)")
    g.add_argument("--encoder_trust_pickle", action="store_true",
                   help="unpickle --encoder_weights fully (e.g. OpenAI's TorchScript ViT-B-16.pt): trusted files only")
    g.add_argument("--images_per_query", type=int, default=1,
                   help="images drawn per query; their embeddings are averaged")
    g.add_argument("--steps", type=int, default=50, help="denoising steps")
    g.add_argument("--guidance_scale", type=float, default=7.5, help="classifier-free guidance scale")
    g.add_argument("--gen_height", type=int, default=None, help="image height (None: the pipeline's)")
    g.add_argument("--gen_width", type=int, default=None, help="image width (None: the pipeline's)")
    g.add_argument("--gen_seed", type=int, default=0, help="noise seed (hashed with the prompt and image index)")
    g.add_argument("--prompt_template", default="{query}",
                   help="prompt built from the query, e.g. 'a photo of {query}'")
    g.add_argument("--no_normalize", action="store_true",
                   help="average the raw image embeddings instead of L2-normalised ones")
    g.add_argument("--gen_dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="generator and encoder precision (auto: fp16 on CUDA, fp32 on CPU)")
    g.add_argument("--truncate_long_prompts", action="store_true",
                   help="let the generator's tokenizer cut prompts longer than its maximum instead of stopping "
                        "with the sample named")
    return g


def settings_from_args(args) -> GenSettings:
    if not args.generator:
        raise SystemExit("resvg prior: --generator (a local diffusers text-to-image folder) is required")
    if "{query}" not in args.prompt_template:
        raise SystemExit(f"resvg prior: --prompt_template {args.prompt_template!r} lacks the {{query}} field")
    if args.images_per_query < 1 or args.steps < 1:
        raise SystemExit("resvg prior: --images_per_query and --steps must be >= 1")
    return GenSettings(generator=args.generator, encoder=args.encoder, encoder_weights=args.encoder_weights,
                       images_per_query=args.images_per_query, steps=args.steps, guidance_scale=args.guidance_scale,
                       height=args.gen_height, width=args.gen_width, seed=args.gen_seed,
                       prompt_template=args.prompt_template, normalize=not args.no_normalize, dtype=args.gen_dtype)


def query_seed(seed: int, prompt: str, k: int) -> int:
    """Noise seed of image ``k`` of ``prompt``: a hash, so it depends on nothing else (row, batch, shard)."""
    h = hashlib.sha256(f"{int(seed)}\x00{prompt}\x00{int(k)}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


# ------------------------------------------------------------------------------------------------ models
def _quiet_hf() -> None:
    try:
        import diffusers
        import transformers
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001  (logging tweaks only)
        pass


def load_generator_pipeline(path: str, device: torch.device, dtype: torch.dtype):
    """A diffusers pipeline from a local folder (``local_files_only``: nothing is downloaded)."""
    try:
        import diffusers
    except ImportError:
        raise SystemExit("resvg prior: the text-to-image generator needs diffusers (pip install '.[prior]')") from None
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise SystemExit(f"resvg prior: --generator {path} is not a local diffusers pipeline folder "
                         f"(no model_index.json); save one with pipeline.save_pretrained(folder)")
    _quiet_hf()
    try:
        with warnings.catch_warnings():  # newer diffusers rename torch_dtype to dtype (FutureWarning)
            warnings.simplefilter("ignore", FutureWarning)
            pipe = diffusers.DiffusionPipeline.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"resvg prior: cannot load the text-to-image pipeline in {path}: {e}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _encoder_state_dict(path: str, trust_pickle: bool) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise SystemExit(f"resvg prior: --encoder_weights {path} not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return dict(load_file(path))
    try:
        obj = torch_load(path)
    except UntrustedFileError as e:
        if not trust_pickle:
            raise SystemExit(f"resvg prior: {e} (here: --encoder_trust_pickle)") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except RuntimeError:  # a TorchScript archive (OpenAI's released files)
            obj = torch.jit.load(path, map_location="cpu").state_dict()
    sd = unwrap(obj, what=path)
    return {k: v for k, v in sd.items() if k not in OPENAI_JIT_EXTRA_KEYS}


def load_image_encoder(spec: str, weights: str, device: torch.device, dtype: torch.dtype, *,
                       allow_random: bool = False, trust_pickle: bool = False):
    """(open_clip model, its eval preprocess, output width).  ``spec`` = an open_clip architecture name or a
    model-config .json (registered under its file stem); ``weights`` loaded strictly."""
    import open_clip

    name = spec
    if spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise SystemExit(f"resvg prior: --encoder config {spec} not found")
        open_clip.add_model_config(spec)
        name = Path(spec).stem
    if name not in open_clip.list_models():
        raise SystemExit(f"resvg prior: unknown open_clip architecture {name!r} (a name from "
                         f"open_clip.list_models(), or a model-config .json)")
    if not weights and not allow_random:
        raise SystemExit("resvg prior: --encoder_weights is required (a random encoder gives meaningless priors; "
                         "--random_encoder allows it for tests)")
    logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights loaded": they are loaded below
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    if weights:
        load_strict(model, _encoder_state_dict(weights, trust_pickle), what=weights)
    else:
        print(f"resvg prior: WARNING random-init {name} encoder (--random_encoder): test features only")
    model = model.eval().to(device=device, dtype=dtype)
    width = getattr(model.visual, "output_dim", None)
    if width is None:
        size = model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        with torch.no_grad():
            width = model.encode_image(torch.zeros(1, 3, *size, device=device, dtype=dtype)).shape[-1]
    return model, preprocess, int(width)


class PriorGenerator:
    """Text-to-image pipeline + image encoder: ``features(prompts)`` -> [n, D] float32 (CPU)."""

    def __init__(self, settings: GenSettings, device: torch.device, *, batch_size: int = 4,
                 allow_random_encoder: bool = False, encoder_trust_pickle: bool = False,
                 save_images: str = ""):
        self.settings, self.device, self.batch_size = settings, torch.device(device), max(1, int(batch_size))
        self.dtype = _dtype(settings.dtype, self.device)
        self.pipe = load_generator_pipeline(settings.generator, self.device, self.dtype)
        self.encoder, self.preprocess, self.width = load_image_encoder(
            settings.encoder, settings.encoder_weights, self.device, self.dtype,
            allow_random=allow_random_encoder, trust_pickle=encoder_trust_pickle)
        self.save_images = save_images
        tok = getattr(self.pipe, "tokenizer", None)
        self.max_prompt_tokens = int(tok.model_max_length) if tok is not None and tok.model_max_length < 10**6 else None

    def describe(self) -> str:
        s = self.settings
        return (f"{type(self.pipe).__name__} from {s.generator} ({s.steps} steps, guidance {s.guidance_scale}, "
                f"{s.images_per_query} image(s) per query, seed {s.seed}) + open_clip {s.encoder} "
                f"({s.encoder_weights or 'random init'}), {self.width}-d, "
                f"{'mean of L2-normalised' if s.normalize else 'mean of raw'} embeddings, {self.dtype}")

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.pipe.tokenizer(prompt, truncation=False).input_ids)

    def check_prompts(self, prompts: Sequence[str], where: Callable[[int], str]) -> None:
        """Every prompt must fit the generator's text encoder (the pipeline would silently cut it)."""
        if self.max_prompt_tokens is None:
            return
        for i, p in enumerate(prompts):
            n = self.prompt_tokens(p)
            if n > self.max_prompt_tokens:
                raise DataError(f"{where(i)}: prompt {p!r} has {n} tokens with start/end, more than the generator's "
                                f"maximum {self.max_prompt_tokens}; shorten --prompt_template or pass "
                                f"--truncate_long_prompts")

    @torch.no_grad()
    def features(self, prompts: Sequence[str], names: Optional[Sequence[str]] = None) -> torch.Tensor:
        s, k_img = self.settings, self.settings.images_per_query
        out = []
        for i in range(0, len(prompts), self.batch_size):
            batch = list(prompts[i:i + self.batch_size])
            gens = [torch.Generator("cpu").manual_seed(query_seed(s.seed, p, k)) for p in batch for k in range(k_img)]
            images = self.pipe(prompt=batch, num_images_per_prompt=k_img, generator=gens,
                               num_inference_steps=s.steps, guidance_scale=s.guidance_scale, height=s.height,
                               width=s.width, output_type="pil").images
            if len(images) != len(batch) * k_img:
                raise RuntimeError(f"resvg prior: the pipeline returned {len(images)} images for {len(batch)} "
                                   f"prompts x {k_img}")
            if self.save_images:
                os.makedirs(self.save_images, exist_ok=True)
                for j, im in enumerate(images):
                    name = names[i + j // k_img] if names is not None else f"{i + j // k_img:07d}"
                    im.save(os.path.join(self.save_images, f"{name}_{j % k_img}.png"))
            x = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
            emb = self.encoder.encode_image(x).float()
            if s.normalize:
                emb = torch.nn.functional.normalize(emb, dim=-1)
            out.append(emb.view(len(batch), k_img, -1).mean(1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.width)


# ------------------------------------------------------------------------------------------------ splits
def read_queries(split_root: str, dataset: str, split: str, trust_pickle: bool = False) -> Tuple[str, List[str]]:
    """(split file, the query of every row in file order).  Malformed rows raise `DataError` naming the file
    and the row."""
    check_split(dataset, split)
    if split == "trainval" and dataset != "referit":
        raise SystemExit(f"resvg prior: {dataset} has no trainval file (it is train + val, each with its own prior "
                         f"file): generate --split train val")
    path = transvg_fmt.split_path(split_root, dataset, split)
    data = transvg_fmt.load_pth(path, trust_pickle=trust_pickle)
    if not isinstance(data, (list, tuple)):
        raise DataError(f"{path}: expected a list of per-sample tuples, got {type(data).__name__}")
    fields, at = (3, 2) if dataset == "flickr" else (5, 3)
    queries = []
    for i, item in enumerate(data):
        if not isinstance(item, (list, tuple)) or len(item) != fields:
            got = f"{len(item)} fields" if isinstance(item, (list, tuple)) else type(item).__name__
            raise DataError(f"{path}: sample {i}: expected a {fields}-tuple, got {got}")
        q = item[at]
        if not isinstance(q, str) or not q.strip():
            what = "empty" if isinstance(q, str) else f"a {type(q).__name__}, not a str"
            raise DataError(f"{path}: sample {i} ({item[0]!r}): the query is {what}")
        queries.append(q)
    return path, queries


def _reuse_rows(args, settings: GenSettings) -> Tuple[Dict[str, np.ndarray], str]:
    """prompt -> prior row, from ``--reuse_split``'s split list and prior file."""
    if not args.reuse_split:
        return {}, ""
    sp, queries = read_queries(args.split_root, args.dataset, args.reuse_split, args.trust_pickle)
    fea = prior_path(_prior_root(args), args.reuse_split)
    rows = read_prior_file(fea, args.prior_dim)
    if rows.shape[0] != len(queries):
        raise DataError(f"{fea}: {rows.shape[0]} prior rows for the {len(queries)} samples of {sp} (--reuse_split)")
    out: Dict[str, np.ndarray] = {}
    for q, r in zip(queries, rows):
        out.setdefault(settings.prompt(q), r)
    return out, fea


def _prior_root(args) -> str:
    return args.prior_root or os.path.join(args.split_root, args.dataset)


def chunk_path(work_dir: str, c: int) -> str:
    return os.path.join(work_dir, f"chunk_{c:06d}.pth")


def _check_chunk(path: str, fingerprint: dict, prompts: List[str], width: Optional[int]) -> torch.Tensor:
    """The features of a finished chunk file; anything else about it is an error naming the file."""
    try:
        obj = torch_load(path)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: unreadable chunk file ({e}); delete it to recompute that chunk") from None
    if not isinstance(obj, dict) or obj.get("format") != CHUNK_FORMAT:
        raise DataError(f"{path}: not a prior chunk file ({CHUNK_FORMAT})")
    if obj.get("settings") != fingerprint:
        old = obj.get("settings") or {}
        diff = [f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in sorted(set(old) | set(fingerprint))
                if old.get(k) != fingerprint.get(k)]
        raise DataError(f"{path}: made with other settings ({'; '.join(diff)}); use another --work_dir or delete it")
    if obj.get("prompts") != prompts:
        raise DataError(f"{path}: made for other queries (the split list or --chunk_size changed); use another "
                        f"--work_dir or delete it")
    f = obj.get("features")
    if not torch.is_tensor(f) or f.dim() != 2 or f.shape[0] != len(prompts) or (width and f.shape[1] != width) \
            or not torch.isfinite(f).all():
        raise DataError(f"{path}: malformed features {tuple(f.shape) if torch.is_tensor(f) else type(f).__name__} "
                        f"for {len(prompts)} prompts; delete it to recompute that chunk")
    return f.float()


def _remove_stale_tmp(work_dir: str, mine: Sequence[int]) -> None:
    """Temporary files of this shard's chunks left by a kill mid-write (other shards may be writing theirs)."""
    own = {os.path.basename(chunk_path(work_dir, c)) for c in mine}
    for p in Path(work_dir).glob(".chunk_*.tmp"):
        m = re.match(r"\.(chunk_\d+\.pth)\.", p.name)
        if m and m.group(1) in own:
            p.unlink(missing_ok=True)


def merge_chunks(out: str, prompts_by_row: List[str], chunks: List[List[str]], work_dir: str, fingerprint: dict,
                 reuse: Dict[str, np.ndarray], width: int, split_file: str) -> str:
    """Stack the rows (chunk features, reused rows) into ``out`` [N, width] float32, written atomically."""
    feats: Dict[str, torch.Tensor] = {}
    missing = [c for c in range(len(chunks)) if not os.path.isfile(chunk_path(work_dir, c))]
    if missing:
        raise DataError(f"{work_dir}: {len(missing)} of {len(chunks)} chunks not finished (e.g. "
                        f"{os.path.basename(chunk_path(work_dir, missing[0]))}); run the missing shards first")
    for c, ps in enumerate(chunks):
        f = _check_chunk(chunk_path(work_dir, c), fingerprint, ps, width)
        feats.update(zip(ps, f))
    rows = torch.zeros(len(prompts_by_row), width)
    for i, p in enumerate(prompts_by_row):
        if p in feats:
            rows[i] = feats[p]
        elif p in reuse:
            rows[i] = torch.from_numpy(reuse[p])
        else:  # cannot happen unless the chunk plan and the split disagree
            raise DataError(f"{split_file}: sample {i}: no prior row for its prompt {p!r}")
    atomic_save(rows, out)
    back = read_prior_file(out, width)  # the reader training uses: shape, width, finiteness
    if back.shape[0] != len(prompts_by_row):
        raise DataError(f"{out}: wrote {back.shape[0]} rows for {len(prompts_by_row)} samples")
    return out


# ------------------------------------------------------------------------------------------------ run
def _shard(args) -> Tuple[int, int, torch.device, bool]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        info = dist.init_distributed(backend=args.dist_backend, device=args.device)
        return info.rank, info.world_size, info.device, True
    if not 0 <= args.shard_id < args.num_shards:
        raise SystemExit(f"resvg prior: --shard_id {args.shard_id} outside 0..{args.num_shards - 1}")
    dev = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return args.shard_id, args.num_shards, dev, False


@dataclass
class Plan:
    """What one split needs: its rows' prompts, the distinct prompts still to generate cut into chunks, the files."""
    split: str
    split_file: str
    queries: List[str]
    prompts: List[str]
    first_row: Dict[str, int]
    reuse: Dict[str, np.ndarray]
    reuse_file: str
    chunks: List[List[str]]
    work_dir: str
    fingerprint: dict
    out: str

    def where(self, i: int) -> str:
        return f"{self.split_file}: sample {i} ({self.queries[i]!r})"


def plan_split(args, split: str, settings: GenSettings) -> Plan:
    split_file, queries = read_queries(args.split_root, args.dataset, split, args.trust_pickle)
    prompts = [settings.prompt(q) for q in queries]
    first_row: Dict[str, int] = {}
    for i, p in enumerate(prompts):
        first_row.setdefault(p, i)
    reuse, reuse_file = _reuse_rows(args, settings)
    todo = [p for p in first_row if p not in reuse]
    cs = max(1, int(args.chunk_size))
    work_dir = args.work_dir or os.path.join(_prior_root(args), f"{split}_fea.parts")
    if args.work_dir and len(args.split) > 1:
        work_dir = os.path.join(args.work_dir, split)
    return Plan(split, split_file, queries, prompts, first_row, reuse, reuse_file,
                [todo[i:i + cs] for i in range(0, len(todo), cs)], work_dir,
                dict(settings.fingerprint(), chunk_size=cs, prior_dim=args.prior_dim),
                prior_path(_prior_root(args), split))


def check_prompt_lengths(generator: str, plan: Plan) -> None:
    """Every prompt must fit the generator's text encoder (its pipeline would cut it silently); reads only the
    pipeline's ``tokenizer`` folder, so every rank checks before any generation."""
    tok_dir = os.path.join(generator, "tokenizer")
    if not os.path.isdir(tok_dir):
        print(f"[prior] {generator} has no tokenizer folder: prompt lengths not checked", flush=True)
        return
    from transformers import AutoTokenizer

    _quiet_hf()
    tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    limit = int(tok.model_max_length)
    if limit >= 10 ** 6:
        return
    for p, i in plan.first_row.items():
        n = len(tok(p, truncation=False).input_ids)
        if n > limit:
            raise DataError(f"{plan.where(i)}: prompt {p!r} has {n} tokens with start/end, more than the "
                            f"generator's maximum {limit}; shorten the query or --prompt_template, or pass "
                            f"--truncate_long_prompts")


def generate_split(args, split: str, state: dict) -> Optional[str]:
    """One split: plan, compute this shard's missing chunks, merge when every chunk exists.  Returns the prior
    file written (None when chunks remain: other shards, or --stop_after_chunks)."""
    rank, world, device, distributed = state["shard"]
    settings = state["settings"]
    plan = plan_split(args, split, settings)
    chunks, work_dir = plan.chunks, plan.work_dir
    if not args.truncate_long_prompts:
        check_prompt_lengths(settings.generator, plan)
    os.makedirs(work_dir, exist_ok=True)
    if rank == 0:
        with open(os.path.join(work_dir, "settings.json"), "w") as f:
            json.dump(dict(plan.fingerprint, split_file=os.path.abspath(plan.split_file), rows=len(plan.prompts),
                           distinct_prompts=len(plan.first_row), reused=len(plan.first_row) - sum(map(len, chunks)),
                           reuse_file=plan.reuse_file), f, indent=1)
    mine = [c for c in range(len(chunks)) if c % world == rank]
    _remove_stale_tmp(work_dir, mine)
    todo = []
    for c in mine:
        if os.path.isfile(chunk_path(work_dir, c)):
            _check_chunk(chunk_path(work_dir, c), plan.fingerprint, chunks[c], args.prior_dim)
        else:
            todo.append(c)
    n_reused = len(plan.first_row) - sum(map(len, chunks))
    print(f"[prior] {args.dataset}/{split}: {len(plan.prompts)} rows, {len(plan.first_row)} distinct prompts"
          f"{f', {n_reused} reused from {plan.reuse_file}' if plan.reuse_file else ''}; {len(chunks)} chunks of "
          f"<= {args.chunk_size}; shard {rank}/{world}: {len(mine) - len(todo)} done, {len(todo)} to do", flush=True)
    for c in todo:
        if args.stop_after_chunks is not None and state["chunks_done"] >= args.stop_after_chunks:
            break
        gen = state.get("generator")
        if gen is None:
            gen = state["generator"] = PriorGenerator(
                settings, device, batch_size=args.batch_size, allow_random_encoder=args.random_encoder,
                encoder_trust_pickle=args.encoder_trust_pickle, save_images=args.save_images)
            print(f"[prior] {gen.describe()} on {device}", flush=True)
            if gen.width != args.prior_dim:
                raise SystemExit(f"resvg prior: the encoder gives {gen.width}-d features, --prior_dim is "
                                 f"{args.prior_dim} (the model's prior MLP input; ResVG-R50: 512)")
        t0 = time.time()
        f = gen.features(chunks[c], [f"row{plan.first_row[p]:07d}" for p in chunks[c]])
        atomic_save({"format": CHUNK_FORMAT, "settings": plan.fingerprint, "prompts": chunks[c],
                     "features": f.float().contiguous()}, chunk_path(work_dir, c))
        state["chunks_done"] += 1
        print(f"[prior] {split}: chunk {c + 1}/{len(chunks)} ({len(chunks[c])} prompts) {time.time() - t0:.1f} s",
              flush=True)
    if distributed:
        dist.barrier()
        if rank != 0:
            return None
    left = [c for c in range(len(chunks)) if not os.path.isfile(chunk_path(work_dir, c))]
    if left:
        why = (f"stopped after {args.stop_after_chunks} chunk(s) (--stop_after_chunks)"
               if args.stop_after_chunks is not None and state["chunks_done"] >= args.stop_after_chunks
               else "other shards still have chunks to do")
        print(f"[prior] {split}: {len(left)} chunk(s) left, {why}; rerun the same command (or --merge_only once "
              f"every shard is done)", flush=True)
        return None
    return _merge(plan, args.prior_dim)


def _merge(plan: Plan, width: int) -> str:
    merge_chunks(plan.out, plan.prompts, plan.chunks, plan.work_dir, plan.fingerprint, plan.reuse, width,
                 plan.split_file)
    print(f"[prior] wrote {plan.out}: [{len(plan.prompts)}, {width}] float32, row i = sample i of "
          f"{plan.split_file}", flush=True)
    return plan.out


# ------------------------------------------------------------------------------------------------ tiny models
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                             "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def write_tiny_models(out_dir, seed: int = 0, width: int = 32) -> Dict[str, str]:
    """Random tiny stand-ins written offline: ``tiny-sd/`` (a diffusers StableDiffusionPipeline: 2-level UNet,
    2-level VAE, 2-layer CLIP text encoder, character-level CLIP BPE tokenizer, DDIM scheduler; 16x16 images) and
    ``tiny-clip.json`` + ``tiny-clip.pt`` (an open_clip ViT, ``width``-d embeddings).  Returns the three paths."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    import open_clip

    _quiet_hf()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                    layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                    norm_num_groups=4, attention_head_dim=4)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                            norm_num_groups=4, sample_size=16)
        tok_dir = out / "tiny-sd-tokenizer-src"
        tok_dir.mkdir(exist_ok=True)
        chars = string.ascii_lowercase + string.digits + string.punctuation
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for suffix in ("", "</w>"):
            for ch in chars:
                vocab[ch + suffix] = len(vocab)
        (tok_dir / "vocab.json").write_text(json.dumps(vocab))
        (tok_dir / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per character
        tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                            num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77,
                                            bos_token_id=0, eos_token_id=1, pad_token_id=1))
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(str(out / "tiny-sd"))
        for p in tok_dir.iterdir():
            p.unlink()
        tok_dir.rmdir()
        cfg = json.loads(json.dumps(TINY_CLIP))
        cfg["embed_dim"] = int(width)
        (out / "tiny-clip.json").write_text(json.dumps(cfg, indent=1))
        open_clip.add_model_config(str(out / "tiny-clip.json"))
        logging.disable(logging.WARNING)
        try:
            clip = open_clip.create_model("tiny-clip", pretrained=None)
        finally:
            logging.disable(logging.NOTSET)
        torch.save(clip.state_dict(), out / "tiny-clip.pt")
    return {"generator": str(out / "tiny-sd"), "encoder": str(out / "tiny-clip.json"),
            "encoder_weights": str(out / "tiny-clip.pt")}


# ------------------------------------------------------------------------------------------------ command line
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("resvg.prior_gen", add_help=add_help,
                                description="ResVG semantic prior: <split>_fea.pth from a text-to-image model and "
                                            "an image encoder, row i = sample i of the split list",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="unc", choices=sorted(DATASET_SPLITS))
    g.add_argument("--split", nargs="+", default=["val"],
                   help="split(s) of the dataset, e.g. new_train val testA testB")
    g.add_argument("--split_root", default="./data", help="<split_root>/<dataset>/<dataset>_<split>.pth")
    g.add_argument("--prior_root", default="", help="where <split>_fea.pth is written (default <split_root>/<dataset>)")
    g.add_argument("--prior_dim", type=int, default=512, help="expected feature width (the model's prior_dim)")
    g.add_argument("--reuse_split", default="", help="copy the rows of prompts that also occur in this split "
                   "(its split list + prior file) instead of generating them")
    g.add_argument("--trust_pickle", action="store_true", help="unpickle split files fully: trusted files only")
    add_generation_args(p)
    g = p.add_argument_group("run (resumable, sharded)")
    g.add_argument("--batch_size", type=int, default=4, help="prompts per pipeline call")
    g.add_argument("--chunk_size", type=int, default=64, help="prompts per chunk file (the unit kept after a kill)")
    g.add_argument("--work_dir", default="", help="chunk files (default <prior_root>/<split>_fea.parts)")
    g.add_argument("--num_shards", type=int, default=1, help="independent jobs sharing the chunks (without torchrun)")
    g.add_argument("--shard_id", type=int, default=0, help="this job's shard, 0..num_shards-1")
    g.add_argument("--merge_only", action="store_true", help="only merge the finished chunks into the prior file")
    g.add_argument("--stop_after_chunks", type=int, default=None,
                   help="stop after this many chunks in total (continue by rerunning the command)")
    g.add_argument("--save_images", default="", help="also keep the generated images in this folder")
    g.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available; cuda:<local_rank> "
                   "under torchrun)")
    g.add_argument("--dist_backend", default=None, help="nccl | gloo (default: nccl on CUDA, gloo on CPU)")
    g = p.add_argument_group("offline test models")
    g.add_argument("--write_tiny_models", default="", metavar="DIR",
                   help="write a random tiny diffusers pipeline (DIR/tiny-sd) and open_clip encoder "
                        "(DIR/tiny-clip.json + .pt) and exit")
    g.add_argument("--tiny_width", type=int, default=32, help="embedding width of the tiny encoder (the tiny "
                   "ResVG preset's prior_dim)")
    return p


def main(argv=None) -> List[str]:
    args = get_args_parser().parse_args(argv)
    if args.write_tiny_models:
        paths = write_tiny_models(args.write_tiny_models, width=args.tiny_width)
        print(json.dumps(paths))
        return list(paths.values())
    settings = settings_from_args(args)
    if args.reuse_split and args.reuse_split in args.split:
        raise SystemExit(f"resvg prior: --reuse_split {args.reuse_split} is also in --split")
    state = {"shard": _shard(args), "settings": settings, "chunks_done": 0}
    written = []
    try:
        for split in args.split:
            if args.merge_only:
                if state["shard"][0] == 0:
                    written.append(_merge(plan_split(args, split, settings), args.prior_dim))
                continue
            out = generate_split(args, split, state)
            if out:
                written.append(out)
    finally:
        if state["shard"][3]:
            dist.destroy()
    return written


if __name__ == "__main__":
    main()
