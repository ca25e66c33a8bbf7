"""simvg/pretrain_tiny.py: the tiny BEiT-3's vision and text paths are tag-pretrained separately (each phase
touches its own experts only), the text path learns what the expressions say, and the written file is an
official-layout BEiT-3 checkpoint that simvg/train.py --backbone tiny --beit3_ckpt loads strictly."""
import pytest
import torch


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    from vgcore.synthetic.scenes import generate
    out = tmp_path_factory.mktemp("simvg_pre")
    generate(out, num_train=60, num_val=12, num_test=6, seed=3, formats=("seqtr",), image_format="jpg",
             verbose=False)
    return out


def test_pretrain_tiny_trains_each_path_and_train_loads_it(spm, tmp_path):
    import simvg.pretrain_tiny as pt
    from simvg.model import build_model
    from vgcore.synthetic.scenes import make_records
    from vgcore.models.beit3 import load_beit3_pretrained
    from vgcore.synthetic.tagpretrain import TEXT_TAG_CLASSES, ExpressionTagDataset
    from vgcore.text import build_tokenizer

    model_file = spm / "tokenizers" / "spm.model"
    out = tmp_path / "tiny_beit3.pth"
    summary = pt.main(pt.get_args_parser().parse_args(
        ["--beit3_spm", str(model_file), "--out", str(out), "--steps", "3", "--num_scenes", "8",
         "--val_scenes", "200", "--pretrain_batch_size", "4", "--text_steps", "150", "--text_records", "1500",
         "--joint_steps", "0", "--log_every", "50"]))
    acc = summary["val_text_tag_accuracy"]
    tok = build_tokenizer("beit3", max_len=20, vocab_file=str(model_file), min_vocab=1)
    vrecs, _ = make_records(200, seed=1, split="val")
    labels = ExpressionTagDataset(vrecs, tok).labels
    for f in ("kind", "expr_type", "dir"):
        base = float(labels[:, list(TEXT_TAG_CLASSES).index(f)].bincount().max()) / len(vrecs)
        assert acc[f] > min(base + 0.3, 0.95), (f, acc[f], base)

    raw = torch.load(out, weights_only=False)
    assert set(raw) == {"model", "args"} and all(k.startswith("beit3.") for k in raw["model"])
    init = build_model(dict(model_preset="tiny", vocab_size=tok.vocab_size)).beit3.state_dict()
    for k, v in raw["model"].items():
        name = k[len("beit3."):]
        changed = not torch.equal(v, init[name])
        if name.endswith("mask_token") or name.startswith("encoder.layer_norm.A."):
            assert not changed, name  # unused / after the residual features the image phase reads
        elif pt.vision_parameter(name) or pt.text_parameter(name):
            assert changed, name  # each phase trained its whole path
        assert not (pt.vision_parameter(name) and pt.text_parameter(name)), name
    assert all(pt.vision_parameter(n) or pt.text_parameter(n) or n.endswith("mask_token") for n in init)

    model = build_model(dict(model_preset="tiny", vocab_size=tok.vocab_size))
    load_beit3_pretrained(model.beit3, str(out))
    assert torch.equal(model.beit3.encoder.layers[0].ffn.A.fc1.weight,
                       raw["model"]["beit3.encoder.layers.0.ffn.A.fc1.weight"])
    wrong = build_model(dict(model_preset="tiny", vocab_size=tok.vocab_size + 7))
    with pytest.raises(RuntimeError, match="text_embed.weight"):
        load_beit3_pretrained(wrong.beit3, str(out))

    from simvg.train import get_args_parser, main
    common = ["--backbone", "tiny", "--data_root", str(spm / "seqtr"), "--image_root", str(spm / "images"),
              "--beit3_spm", str(model_file), "--device", "cpu", "--num_workers", "0", "--tensorboard", "0",
              "--epochs", "1", "--batch_size", "4", "--log_every", "1000", "--preset", "onestage",
              "--dataset", "refcoco"]
    main(get_args_parser().parse_args(common + ["--beit3_ckpt", str(out), "--output_dir", str(tmp_path / "run")]))
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"tiny BEiT-3 weights from {out}" in log
    # --lr_vis_enc_mult 0 freezes BEiT-3: the trained model keeps the pretrained backbone, the head moves
    main(get_args_parser().parse_args(common + ["--beit3_ckpt", str(out), "--output_dir", str(tmp_path / "frz"),
                                                "--lr_vis_enc_mult", "0"]))
    trained = torch.load(tmp_path / "frz" / "checkpoint.pth", weights_only=False)["model"]
    assert all(torch.equal(trained[k], v) for k, v in raw["model"].items())
    frz_log = (tmp_path / "frz" / "log.txt").read_text()
    assert "^beit3" in log and "^beit3" not in frz_log  # no optimizer group for the frozen backbone
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(get_args_parser().parse_args(common + ["--beit3_ckpt", str(tmp_path / "none.pth"),
                                                    "--output_dir", str(tmp_path / "run2")]))


def test_joint_phase_trains_both_experts_and_reports_image_use(spm, tmp_path):
    """--joint_objective mlm --joint_params all: masked language modelling on image-text pairs moves the experts
    of both modalities (the attention between them only exists in the joint forward) and reports the held-out
    masked-token accuracy with and without the matching images."""
    import simvg.pretrain_tiny as pt
    model_file = spm / "tokenizers" / "spm.model"
    base = ["--beit3_spm", str(model_file), "--steps", "2", "--num_scenes", "8", "--val_scenes", "16",
            "--pretrain_batch_size", "4", "--log_every", "50", "--fields", "kind,row", "--text_steps", "0"]
    pt.main(pt.get_args_parser().parse_args(base + ["--out", str(tmp_path / "a.pth"), "--joint_steps", "0"]))
    s = pt.main(pt.get_args_parser().parse_args(base + ["--out", str(tmp_path / "b.pth"), "--joint_steps", "3",
                                                       "--joint_records", "32", "--joint_batch_size", "8",
                                                       "--joint_objective", "mlm", "--joint_params", "all"]))
    assert 0.0 <= s["val_masked_text_accuracy_shuffled_images"] <= 1.0 and 0.0 <= s["val_masked_text_accuracy"] <= 1.0
    a = torch.load(tmp_path / "a.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "b.pth", weights_only=False)["model"]
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert "beit3.encoder.layers.0.self_attn.q_proj.A.weight" in moved
    assert "beit3.encoder.layers.0.self_attn.q_proj.B.weight" in moved
    assert "beit3.text_embed.weight" in moved and "beit3.vision_embed.mask_token" not in moved


def test_joint_cls_tag_phase_moves_only_attention_and_the_cls(spm, tmp_path):
    """The default joint phase (--joint_objective cls_tags --joint_params attention, referent tags on): the image
    CLS learns to say what the paired expression says and what its referent is; only the attention blocks and
    the CLS token move, the embeddings, FFNs and LayerNorms outside attention keep the image/text-phase values;
    the held-out per-field accuracy is reported."""
    import simvg.pretrain_tiny as pt
    from vgcore.synthetic.tagpretrain import REFERENT_FIELDS, TEXT_TAG_CLASSES
    model_file = spm / "tokenizers" / "spm.model"
    base = ["--beit3_spm", str(model_file), "--steps", "2", "--num_scenes", "8", "--val_scenes", "16",
            "--pretrain_batch_size", "4", "--log_every", "50", "--fields", "kind,row", "--text_steps", "0"]
    pt.main(pt.get_args_parser().parse_args(base + ["--out", str(tmp_path / "a.pth"), "--joint_steps", "0"]))
    s = pt.main(pt.get_args_parser().parse_args(base + ["--out", str(tmp_path / "b.pth"), "--joint_steps", "3",
                                                       "--joint_records", "32", "--joint_batch_size", "8"]))
    assert s["joint_objective"] == "cls_tags" and s["joint_params"] == "attention" and s["joint_lr"] == 1e-3
    assert s["joint_referent_weight"] == 1.0 and s["joint_cls_layers"] == "-2,output" and s["tag_layers"] == [-2, -1]
    acc = s["val_joint_tag_accuracy"]
    referent = {"referent_" + f for f in REFERENT_FIELDS}
    assert set(acc) == set(TEXT_TAG_CLASSES) | referent and all(0.0 <= v <= 1.0 for v in acc.values())
    a = torch.load(tmp_path / "a.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "b.pth", weights_only=False)["model"]
    moved = {k for k in a if not torch.equal(a[k], b[k])}
    assert "beit3.vision_embed.cls_token" in moved
    assert "beit3.encoder.layers.0.self_attn.q_proj.A.weight" in moved
    assert "beit3.encoder.layers.0.self_attn.q_proj.B.weight" in moved
    assert all(pt.attention_parameter(k[len("beit3."):]) for k in moved), sorted(moved)
    assert "beit3.text_embed.weight" not in moved and "beit3.encoder.layers.0.ffn.A.fc1.weight" not in moved
