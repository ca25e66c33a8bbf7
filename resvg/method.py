"""ResVG's side of the method protocol (`vgcore.method`): flags, model + loss, data with the prior features,
strict-accuracy metrics, optimisation with the freeze schedule."""
from __future__ import annotations

import argparse
from typing import List

import torch

from vgcore import cli
from vgcore.checkpoint import load_model_file, load_strict
from vgcore.checkpoint.safe import torch_load
from vgcore.models.bert import load_bert_file
from vgcore.trainer import LoopConfig

from resvg import args as _args
from resvg import convert as _convert
from resvg import data, evaluation, training
from resvg.config import config_from_args, config_from_official
from resvg.loss import ResVGCriterion
from resvg.model import ResVG, build_model
from resvg.prior import read_prior_file

NAME = "ResVG"


def add_args(parser: argparse.ArgumentParser, mode: str) -> None:
    _args.add_args(parser, mode)
    cli.add_speed_args(parser, only=None if mode == "train" else ("compile",))


def _remember(args, model: ResVG) -> None:
    """The data side (records) needs the model's prior width and query length: kept in the flags as a dict."""
    args.model_config = model.cfg.to_dict()


def build(args, logger):
    """The model from the flags, its pretrained parts (``--load_weights_path`` DETR-R50, ``--bert_model``;
    nothing with ``--resume``), and the loss."""
    model = build_model(_args.model_config_from_args(args))
    if not args.resume:
        whole = False  # the file holds the whole model (BERT included)
        if args.load_weights_path:
            obj = load_model_file(args.load_weights_path)
            if _ours(obj):
                load_strict(model, obj["model"], what=args.load_weights_path)
                whole = True
                logger.info(f"every weight from {args.load_weights_path} (a ResVG checkpoint of ours: fine-tuning "
                            f"starts from it with a fresh optimizer and schedule)")
            else:
                rep = _convert.load_pretrained(model, obj["raw"])
                whole = rep["kind"] == "resvg"
                logger.info(f"{rep['kind']} weights from {args.load_weights_path} "
                            f"(dropped {len(rep['dropped'])} keys)")
        else:
            logger.info("WARNING: no --load_weights_path: ResNet, input_proj and visual encoder are random")
        if args.bert_model and whole:
            logger.info(f"--bert_model {args.bert_model} not loaded: {args.load_weights_path} holds BERT too")
        elif args.bert_model:
            rep = _convert.load_pretrained(model, load_bert_file(args.bert_model), kind="bert")
            logger.info(f"BERT weights from {args.bert_model} (dropped {len(rep['dropped'])} keys)")
        else:
            logger.info("WARNING: no --bert_model: BERT is random")
    _remember(args, model)
    cfg = model.cfg
    logger.info(f"ResVG {args.model_preset} on {args.dataset}: {cfg.img_size} px, max_query_len {cfg.max_query_len}, "
                f"freeze {list(cfg.freeze_modules)} for {cfg.freeze_epochs} epochs; lr groups: {training.GROUP_RULES}")
    for split in (*data.train_splits(args), args.val_split):
        logger.info("prior " + data.prior_source(args, split))
    criterion = ResVGCriterion(dict(weight_l1=args.bbox_loss_coef, weight_giou=args.giou_loss_coef,
                                    aux_loss=args.aux_loss))
    return model, criterion


def _ours(obj: dict) -> bool:
    """A loaded model file (``load_model_file``) is a ResVG checkpoint of ours or a resvg.convert output."""
    return isinstance(obj.get("config"), dict) and "backbone" in obj["config"]


def _model_from_file(args) -> ResVG:
    obj = load_model_file(args.checkpoint, trust_pickle=args.trust_pickle)
    sd = obj["model"]
    if _ours(obj):
        model = build_model(config_from_args(obj["config"]))
        load_strict(model, sd, what=args.checkpoint)
        return model
    if not any(k.startswith("trans_decoder.") for k in sd):
        raise SystemExit(f"resvg: {args.checkpoint} is neither a ResVG checkpoint of ours nor an official one")
    _, official = _convert.read_checkpoint(obj["raw"])
    ours, report = _convert.convert_any(sd, "resvg")
    cfg = config_from_official(official) if official.get("model_config") else \
        _args.model_config_from_args(args).to_dict()
    cfg.update(report["compat"])
    model = build_model(config_from_args(cfg))
    _convert.load_into(model, ours)
    return model


def load(args) -> ResVG:
    """The model of ``--checkpoint`` (its stored config builds it; an official file: its args), strictly
    loaded.  predict.py: the query's prior from ``--prior_file`` or zeros."""
    model = _model_from_file(args)
    if args.no_prior and model.cfg.prior_feature_content_query:
        raise SystemExit(f"resvg: {args.checkpoint} was trained with the semantic prior; --no_prior does not apply "
                         f"(use --prior_missing zeros for zero prior features)")
    _remember(args, model)
    if hasattr(args, "prior_file") and model.cfg.prior_feature_content_query:
        width = model.cfg.prior_dim
        if args.prior_file:
            rows = _prior_rows(args.prior_file, width)
            if not 0 <= args.prior_row < rows.shape[0]:
                raise SystemExit(f"resvg: --prior_row {args.prior_row} outside {args.prior_file} ({rows.shape[0]} rows)")
            model.default_prior = torch.from_numpy(rows[args.prior_row])
        elif args.prior_missing == "zeros":
            print("resvg: no --prior_file: the prior feature is zeros (content query = prior MLP of a zero vector)")
            model.default_prior = torch.zeros(width)
        else:
            raise SystemExit("resvg: --prior_file is required (--prior_missing error)")
    return model


def _check_query(args, tok) -> None:
    """predict.py: ``--text`` must fit the model's max_query_len with [CLS] and [SEP]."""
    n = len(tok.tokenize(args.text.lower()))
    if n > tok.max_len - 2:
        raise SystemExit(f"resvg: --text {args.text!r} has {n} WordPiece tokens, more than the model's "
                         f"max_query_len {tok.max_len} - 2 ([CLS], [SEP]); shorten it or pass "
                         f"--truncate_long_queries (the official silent truncation)")


def _prior_rows(path: str, width: int):
    """[N, width] rows of a prior file; a file holding one [width] vector is one row."""
    obj = torch_load(path, allow_numpy=True)
    if torch.is_tensor(obj) and obj.dim() == 1:
        obj = obj[None]
        if obj.shape[1] != width:
            raise SystemExit(f"resvg: {path} holds a {obj.shape[1]}-wide vector, the model's prior_dim is {width}")
        return obj.float().numpy()
    return read_prior_file(path, width)


def records(args, split: str, train: bool) -> list:
    """``split``'s records; the training split with ``--extra_train_splits`` appended."""
    splits = data.train_splits(args) if train and split == args.train_split else split
    return data.records(args, splits, config_from_args(args.model_config))


def pipeline(args, model: ResVG, train: bool):
    transform, tok = data.pipeline(args, model.cfg, train)
    if getattr(args, "text", None) is not None and not args.truncate_long_queries:  # predict.py's one query
        _check_query(args, tok)
    return transform, tok


def make_postprocess(args, model: ResVG, split: str):
    return evaluation.make_postprocess(getattr(args, "breakdown", None))


def make_accumulators(args):
    return evaluation.make_accumulators()


def build_optimizer(args, model: ResVG, iters_per_epoch: int):
    return training.build_optimizer(args, model, iters_per_epoch)


def loop_config(args) -> LoopConfig:
    return LoopConfig.from_cli(args, metric="acc@0.5", mode="max")


def predictions(args, model: ResVG, outputs: dict, batch) -> List[dict]:
    pred = batch.boxes_to_original(outputs["pred_boxes"][:, 0]).cpu().numpy()
    return [{"box_xyxy": p} for p in pred]


def format_metrics(args, split: str, m: dict) -> str:
    return evaluation.format_metrics(args.dataset, split, m)


def convert(argv=None) -> int:
    """Official ResVG / VLTVG, DETR-R50 and BERT checkpoints -> ours (``python -m resvg.convert --help``)."""
    return _convert.main(argv)
