"""The tiny preset's parts: the one-block-per-stage ResNet (vgcore.models.resnet ``resnet_tiny``), the BatchNorm ->
frozen-BN hand-over, and resvg/pretrain_tiny.py's files in DETR's and BERT's layouts, loaded by the same path as
the real weights (``--load_weights_path`` / ``--bert_model``)."""
import json

import pytest
import torch

from resvg.convert import load_pretrained
from resvg.model import build_model
from vgcore.models.bert import load_bert_file
from vgcore.models.resnet import ResNetBackbone, frozen_bn_state_dict


def test_tiny_resnet_layout_stride_and_frozen_stages():
    net = ResNetBackbone("resnet_tiny", dilation=True)
    feat, mask = net(torch.randn(2, 3, 128, 96), torch.zeros(2, 128, 96, dtype=torch.bool))
    assert feat.shape == (2, 256, 8, 6) and mask.shape == (2, 8, 6) and net.stride == 16
    assert ResNetBackbone("resnet_tiny")(torch.randn(1, 3, 128, 128))[0].shape == (1, 256, 4, 4)
    names = set(net.state_dict())
    for k in ("body.conv1.weight", "body.bn1.running_var", "body.layer1.0.conv2.weight",
              "body.layer2.0.downsample.0.weight", "body.layer4.0.downsample.1.running_mean"):
        assert k in names, k  # torchvision's names: the DETR rules of resvg.convert apply
    assert not any(k.endswith("num_batches_tracked") for k in names)
    assert {n.split(".")[1] for n in net.permanently_frozen()} == {"conv1", "layer1"}


def test_batchnorm_trunk_hands_over_to_frozen_bn():
    torch.manual_seed(0)
    bn = ResNetBackbone("resnet_tiny", dilation=True, frozen_bn=False,
                        train_layers=("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"))
    bn.train()
    for _ in range(3):  # running statistics away from their init
        bn(torch.randn(4, 3, 64, 64) * 2 + 1)
    with torch.no_grad():
        for m in bn.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    bn.eval()
    frozen = ResNetBackbone("resnet_tiny", dilation=True)
    frozen.load_state_dict(frozen_bn_state_dict(bn))  # strict: exactly the frozen layout
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x)[0], bn(x)[0], atol=1e-4, rtol=1e-4)


def test_pretrain_tiny_writes_files_the_model_loads(tmp_path):
    import resvg.pretrain_tiny as pt
    from vgcore.synthetic.scenes import generate

    data = tmp_path / "syn"
    generate(data, num_train=8, num_val=2, num_test=2, seed=2, formats=("transvg",), verbose=False)
    out = tmp_path / "pre"
    summary = pt.main(pt.get_args_parser().parse_args([
        "--vocab", str(data / "tokenizers" / "vocab.txt"), "--out_dir", str(out), "--steps", "3", "--num_scenes", "20",
        "--val_scenes", "4", "--batch_size", "4", "--text_steps", "3", "--text_records", "70", "--text_batch_size", "16",
        "--log_every", "1000"]))
    assert set(summary["visual"]["val"]) == {"kind", "color", "size", "row", "col"}
    assert json.loads((out / "pretrain_tiny.json").read_text())["text_steps"] == 3
    detr = torch.load(out / "detr_tiny.pth", weights_only=True)["model"]
    assert {k.split(".")[0] for k in detr} == {"backbone", "input_proj", "transformer"}
    assert any(k.startswith("transformer.encoder.layers.0.linear1.") for k in detr)
    model = build_model({"model_preset": "tiny"})
    rep = load_pretrained(model, str(out / "detr_tiny.pth"))
    assert rep["kind"] == "detr" and not rep["unmapped"]
    bert = load_bert_file(out / "bert_tiny.pth")
    assert load_pretrained(model, bert, kind="bert")["kind"] == "bert"
    # every tensor written is the tensor loaded: the export layouts are the inverse of resvg.convert's rules
    ref = build_model({"model_preset": "tiny"})
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    (tmp_path / "x").mkdir()
    torch.save({"model": pt.detr_layout(ref)}, tmp_path / "x" / "detr.pth")
    torch.save(pt.bert_layout(ref), tmp_path / "x" / "bert.pth")
    load_pretrained(model, str(tmp_path / "x" / "detr.pth"))
    load_pretrained(model, load_bert_file(tmp_path / "x" / "bert.pth"), kind="bert")
    got, want = model.state_dict(), ref.state_dict()
    for k in want:
        if k.split(".")[0] in ("backbone", "input_proj", "visual_encoder", "bert"):
            assert torch.equal(got[k], want[k]), k
    with pytest.raises(SystemExit):
        pt.get_args_parser().parse_args(["--vocab", "v", "--out_dir", "o", "--model_preset", "r50"])
