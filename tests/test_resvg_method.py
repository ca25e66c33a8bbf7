"""ResVG on the method protocol, fast parts: official flag defaults, the prior files (reading, alignment, every bad
input named by file and sample), the query-length check, the freeze schedule, evaluation in original pixels."""
import numpy as np
import pytest
import torch

from resvg import data, evaluation, method
from resvg.model import boxes_to_original, build_model
from resvg.prior import PRIOR_KEY, batch_prior
from vgcore import method as protocol
from vgcore.data.dataset import Collate, GroundingDataset
from vgcore.data.errors import DataError

WIDTH = 32  # the tiny preset's prior_dim


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from vgcore.synthetic.scenes import generate

    out = tmp_path_factory.mktemp("syn")
    generate(out, num_train=12, num_val=5, num_test=2, seed=5, formats=("transvg",), verbose=False)
    return out


def _args(syn, tmp_path, *extra):
    base = ["--model_preset", "tiny", "--split_root", str(syn / "split" / "data"), "--image_root", str(syn / "images"),
            "--bert_token_mode", str(syn / "tokenizers" / "vocab.txt"), "--prior_root", str(tmp_path)]
    args = protocol.train_parser(method).parse_args(base + list(extra))
    args.model_config = method._args.model_config_from_args(args).to_dict()  # what method.build records
    return args


def _records(syn, tmp_path, split="val", *extra):
    args = _args(syn, tmp_path, *extra)
    return args, method.records(args, split, train=False)


def test_protocol_and_official_defaults():
    assert protocol.check(method) == []
    a = protocol.train_parser(method).parse_args([])
    assert (a.lr, a.lr_backbone, a.lr_vis_enc, a.lr_bert, a.weight_decay) == (1e-4, 1e-5, 1e-5, 1e-5, 1e-4)
    assert (a.epochs, a.lr_drop, a.batch_size, a.eval_batch_size, a.clip_max_norm) == (90, 60, 16, 32, 0.1)
    assert (a.freeze_epochs, a.freeze_modules) == (10, ["backbone", "input_proj", "trans_encoder", "bert"])
    assert (a.bbox_loss_coef, a.giou_loss_coef, a.aux_loss, a.seed) == (5.0, 2.0, True, 42)
    assert (a.dataset, a.train_split, a.val_split, a.model_preset) == ("unc", "new_train", "val", "r50")
    cfg = method._args.model_config_from_args(a)
    assert (cfg.img_size, cfg.max_query_len, cfg.prior_dim, cfg.freeze_epochs) == (640, 40, 512, 10)
    assert cfg.freeze_modules == ("backbone", "input_proj", "visual_encoder", "bert") and cfg.train_backbone
    assert protocol.train_parser(method).parse_args(["--test_split", "testA"]).val_split == "testA"
    e = protocol.eval_parser(method).parse_args(["--checkpoint", "x", "--test_split", "testA", "testB"])
    assert e.eval_sets == ["testA", "testB"]
    with pytest.raises(SystemExit):
        protocol.train_parser(method).parse_args(["--config", "configs/ResVG_R50_unc.py"])
    assert not method._args.model_config_from_args(
        protocol.train_parser(method).parse_args(["--no_prior"])).prior_feature_content_query
    with pytest.raises(DataError, match="no split 'testA'"):
        data.check_split("gref", "testA")


def _write(tmp_path, split, obj):
    torch.save(obj, tmp_path / f"{split}_fea.pth")


def test_prior_rows_follow_the_split_rows(syn, tmp_path):
    rows = torch.randn(5, WIDTH)
    _write(tmp_path, "val", rows)
    args, recs = _records(syn, tmp_path)
    assert [r.extra["index"] for r in recs] == list(range(5))
    for r in recs:
        np.testing.assert_array_equal(r.extra[PRIOR_KEY], rows[r.extra["index"]].numpy())
    # the collated batch carries them to the model: same boxes as forward_tensors with the rows stacked
    model = build_model(method._args.model_config_from_args(args)).eval()
    transform, tok = method.pipeline(args, model, False)
    ds = GroundingDataset(recs, transform, tok)
    batch = Collate(tok)([ds[i] for i in (3, 0, 4)])
    torch.testing.assert_close(batch_prior(batch), rows[[3, 0, 4]])
    with torch.no_grad():
        out = model(batch)["pred_boxes"]
        ref = model.forward_tensors(batch.images, batch.pixel_mask, batch.text_ids, batch.text_mask,
                                    rows[[3, 0, 4]])["pred_boxes"]
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("obj,match", [
    (torch.randn(4, WIDTH), r"4 prior rows for a split of 5 samples: sample 4 \("),
    (torch.randn(7, WIDTH), r"7 prior rows for a split of 5 samples \(2 more"),
    (torch.randn(5, WIDTH + 1), r"33 wide, the model's prior_dim is 32"),
    ([torch.randn(WIDTH)] * 2 + [None] + [torch.randn(WIDTH)] * 2, r"row 2 is missing"),
    ([torch.randn(WIDTH)] * 4 + [torch.randn(WIDTH - 1)], r"row 4 has width 31"),
    (torch.randn(5, WIDTH).index_fill_(0, torch.tensor([3]), float("nan")), r"prior row of sample 3 \(.*is not finite"),
    (torch.randn(5), r"expected a \[N, 32\] tensor"),
])
def test_bad_prior_files_name_the_file_and_sample(syn, tmp_path, obj, match):
    _write(tmp_path, "val", obj)
    with pytest.raises(DataError, match=match) as e:
        _records(syn, tmp_path)
    assert str(tmp_path / "val_fea.pth") in str(e.value)


def test_missing_prior_file_stops_or_falls_back_to_zeros(syn, tmp_path, capsys):
    with pytest.raises(DataError, match="val_fea.pth: prior feature file not found"):
        _records(syn, tmp_path)
    args, recs = _records(syn, tmp_path, "val", "--prior_missing", "zeros")
    assert all(not r.extra[PRIOR_KEY].any() for r in recs)
    assert "zero prior features" in capsys.readouterr().out
    assert "prior features are zeros" in data.prior_source(args, "val")
    args, recs = _records(syn, tmp_path, "val", "--no_prior")
    assert all(PRIOR_KEY not in r.extra for r in recs) and "VLTVG" in data.prior_source(args, "val")


def test_over_long_query_names_the_split_file_and_sample(syn, tmp_path):
    _write(tmp_path, "val", torch.randn(5, WIDTH))
    with pytest.raises(DataError, match=r"unc_val\.pth: sample 0 .* more than --max_query_len 4"):
        _records(syn, tmp_path, "val", "--max_query_len", "4")
    _, recs = _records(syn, tmp_path, "val", "--max_query_len", "4", "--truncate_long_queries")
    assert len(recs) == 5


def test_freeze_schedule_and_step_lr():
    args = protocol.train_parser(method).parse_args(["--model_preset", "tiny", "--freeze_epochs", "2",
                                                     "--lr_drop", "3"])
    model = build_model(method._args.model_config_from_args(args))
    opt, sched, ema = method.build_optimizer(args, model, 10)
    assert ema is None
    lrs = {g["group_name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {r"^backbone\.": 1e-5, r"^(visual_encoder|input_proj)\.": 1e-5, r"^bert\.": 1e-5, "default": 1e-4}
    n_groups = sum(len(g["params"]) for g in opt.param_groups)
    trainable = lambda m: {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    every = {"backbone", "input_proj", "visual_encoder", "bert", "bert_proj", "discriminative", "decoder", "bbox_embed"}
    assert trainable(model) == every  # nothing frozen before the first train(): DDP registers every parameter
    model.train()
    assert trainable(model) == every - {"backbone", "input_proj", "visual_encoder", "bert"}
    sched.step()
    model.train()
    assert "bert" not in trainable(model)
    sched.step()
    model.train()
    assert trainable(model) == every
    assert not any(p.requires_grad for p in model.bert.pooler.parameters())  # never trains
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    sched.step()
    assert opt.param_groups[-1]["lr"] == pytest.approx(1e-5) and sum(len(g["params"]) for g in opt.param_groups) == n_groups
    # resume: a fresh schedule loaded at epoch 1 freezes again
    model2 = build_model(method._args.model_config_from_args(args))
    opt2, sched2, _ = method.build_optimizer(args, model2, 10)
    sched2.load_state_dict({"last_step": 1, "base_lrs": sched.base_lrs, "interval": "epoch"})
    model2.train()
    assert "visual_encoder" not in trainable(model2)


def test_postprocess_matches_the_official_mapping_and_strict_rule(syn, tmp_path):
    _write(tmp_path, "val", torch.randn(5, WIDTH))
    args, recs = _records(syn, tmp_path)
    model = build_model(method._args.model_config_from_args(args))
    transform, tok = method.pipeline(args, model, False)
    ds = GroundingDataset(recs, transform, tok)
    batch = Collate(tok)([ds[i] for i in range(5)])
    # the ground truth box on the canvas, predicted back: exact boxes, hits
    pred = batch.boxes[:, None].clone()
    post = evaluation.make_postprocess()({"pred_boxes": pred}, batch)
    torch.testing.assert_close(post["pred_xyxy"], post["gt_xyxy"], atol=1e-3, rtol=0)
    # same numbers as the official PostProcess (xyxy*S - dxdy, clamp, / ratio, min orig size)
    aff = batch.affine
    dxdy, ratio = torch.stack([aff[:, 1], aff[:, 3]], 1), torch.stack([aff[:, 2], aff[:, 0]], 1)
    off = pred + torch.tensor([0.02, -0.01, 0.05, 0.03])
    ours = evaluation.make_postprocess()({"pred_boxes": off}, batch)["pred_xyxy"]
    torch.testing.assert_close(ours, boxes_to_original(off, batch.input_size, dxdy, ratio, batch.orig_size).float(),
                               atol=1e-3, rtol=0)
    acc = evaluation.make_accumulators()
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    acc.update(torch.tensor([[0.0, 0.0, 10.0, 5.0]]), gt)  # IoU exactly 0.5: a miss under IoU > 0.5
    acc.update(torch.tensor([[0.0, 0.0, 10.0, 5.01]]), gt)
    m = acc.compute()
    assert m["n"] == 2 and m["acc@0.5"] == 0.5
    assert "IoU > 0.5" in method.format_metrics(args, "val", m)


def test_load_ours_and_official_files_and_the_predict_prior(tmp_path):
    from resvg.convert import to_official_state_dict
    from vgcore.checkpoint import save_model

    torch.manual_seed(0)
    model = build_model({"model_preset": "tiny"}).eval()
    ours, official = tmp_path / "ours.pth", tmp_path / "official.pth"
    save_model(ours, model, model.cfg.to_dict())
    torch.save({"model": to_official_state_dict(model.state_dict()), "epoch": 3}, official)
    rows = torch.randn(3, WIDTH)
    torch.save(rows, tmp_path / "q_fea.pth")
    base = ["--model_preset", "tiny", "--image", "x.png", "--text", "t", "--bert_token_mode", "unused"]
    for path in (ours, official):
        args = protocol.predict_parser(method).parse_args(
            base + ["--checkpoint", str(path), "--prior_file", str(tmp_path / "q_fea.pth"), "--prior_row", "2"])
        loaded = method.load(args)
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
        torch.testing.assert_close(loaded.default_prior, rows[2])
        assert args.model_config["prior_dim"] == WIDTH
    args = protocol.predict_parser(method).parse_args(base + ["--checkpoint", str(ours)])
    assert not method.load(args).default_prior.any()  # no --prior_file: zeros (printed)
    with pytest.raises(SystemExit, match="trained with the semantic prior"):
        method.load(protocol.predict_parser(method).parse_args(base + ["--checkpoint", str(ours), "--no_prior"]))


def test_extra_train_splits_each_with_their_prior_file(syn, tmp_path):
    """--extra_train_splits appends split lists to the training split, each keeping its sample indices and
    reading its own prior file; a split named twice is refused."""
    rows = {s: torch.randn(n, WIDTH) for s, n in (("train", 12), ("testA", 2))}
    for s, r in rows.items():
        _write(tmp_path, s, r)
    args = _args(syn, tmp_path, "--train_split", "train", "--extra_train_splits", "testA")
    recs = method.records(args, "train", train=True)
    assert [r.split for r in recs] == ["train"] * 12 + ["testA"] * 2
    for r in recs:
        np.testing.assert_array_equal(r.extra[PRIOR_KEY], rows[r.split][r.extra["index"]].numpy())
    _write(tmp_path, "testA", torch.randn(3, WIDTH))  # the extra split's own file is checked against it
    with pytest.raises(DataError, match=r"testA_fea\.pth: 3 prior rows for a split of 2 samples"):
        method.records(args, "train", train=True)
    with pytest.raises(DataError, match=r"\['train'\] named twice"):
        method.records(_args(syn, tmp_path, "--train_split", "train", "--extra_train_splits", "train"), "train", True)


def test_breakdown_by_expression_type(syn, tmp_path):
    """--breakdown expr_type: the group of a record read back from a split file is its expression's program type
    (parsed from the text), the same as the generator's record; the report adds one line per type."""
    from vgcore.metrics import record_groups
    from vgcore.synthetic.scenes import expression_type, make_records

    made, _ = make_records(40, seed=5, split="val")
    assert [expression_type(r) for r in made] == [r.extra["expr_type"] for r in made]
    stripped = [r.replace(extra={}) for r in made]
    assert record_groups(stripped, "expr_type") == [r.extra["expr_type"] for r in made]
    assert record_groups(stripped, "none") is None
    words = [len(r.expression.split()) for r in made]
    assert record_groups(made, "expr_words") == [
        "words<=3" if n <= 3 else "words4-6" if n <= 6 else "words>=7" for n in words]
    with pytest.raises(ValueError, match="unknown breakdown 'colour'"):
        record_groups(made, "colour")
    assert expression_type(made[0].replace(expression="a dog on a sofa", extra={})) == "other"
    _write(tmp_path, "val", torch.randn(5, WIDTH))
    args, recs = _records(syn, tmp_path, "val", "--breakdown", "expr_type")
    model = build_model(method._args.model_config_from_args(args)).eval()
    transform, tok = method.pipeline(args, model, False)
    ds = GroundingDataset(recs, transform, tok)
    batch = Collate(tok)([ds[i] for i in range(5)])
    post = method.make_postprocess(args, model, "val")({"pred_boxes": batch.boxes[:, None].clone()}, batch)
    types = [expression_type(r) for r in recs]
    assert post["group"] == types
    acc = method.make_accumulators(args)
    acc.update(**post)
    m = acc.compute()
    for t in set(types):
        assert m[f"n/{t}"] == types.count(t) and m[f"acc@0.5/{t}"] == 1.0
    text = method.format_metrics(args, "val", m)
    assert all(f"{t}: n={types.count(t)}  acc@0.5 100.00" in text for t in set(types))


def test_predict_query_longer_than_the_model_takes(syn, tmp_path):
    from vgcore.checkpoint import save_model

    model = build_model({"model_preset": "tiny"})
    save_model(tmp_path / "m.pth", model, model.cfg.to_dict())
    base = ["--checkpoint", str(tmp_path / "m.pth"), "--image", "x.png", "--bert_token_mode",
            str(syn / "tokenizers" / "vocab.txt")]
    long = "the small red circle " * 6
    args = protocol.predict_parser(method).parse_args(base + ["--text", long])
    with pytest.raises(SystemExit, match=r"--text .* WordPiece tokens, more than the model's max_query_len 20"):
        method.pipeline(args, method.load(args), False)
    args = protocol.predict_parser(method).parse_args(base + ["--text", long, "--truncate_long_queries"])
    method.pipeline(args, method.load(args), False)


def test_fine_tune_from_a_whole_model(syn, tmp_path):
    """--load_weights_path with a whole ResVG model (ours or official) loads every weight strictly and leaves
    --bert_model alone (the file holds BERT too)."""
    import logging

    from resvg.convert import to_official_state_dict
    from vgcore.checkpoint import save_model

    torch.manual_seed(1)
    model = build_model({"model_preset": "tiny"})
    ours, official = tmp_path / "ours.pth", tmp_path / "official.pth"
    save_model(ours, model, model.cfg.to_dict())
    torch.save({"model": to_official_state_dict(model.state_dict()), "epoch": 3}, official)
    for path in (ours, official):
        args = _args(syn, tmp_path, "--load_weights_path", str(path), "--bert_model", str(tmp_path / "absent.bin"))
        built, _ = method.build(args, logging.getLogger("test"))
        for k, v in model.state_dict().items():
            assert torch.equal(built.state_dict()[k], v), k
    other = build_model({"model_preset": "tiny", "prior_dim": 16})
    save_model(tmp_path / "other.pth", other, other.cfg.to_dict())
    with pytest.raises(Exception, match="prior"):  # a model of another shape is refused, naming the keys
        method.build(_args(syn, tmp_path, "--load_weights_path", str(tmp_path / "other.pth")), logging.getLogger("t"))
