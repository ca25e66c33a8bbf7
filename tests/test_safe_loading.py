"""No code execution from data: a pickle whose unpickling would run code (here: create a marker file) is refused
by every reader -- checkpoints (vgcore, HiVG / SimVG loaders and ``--eval_model`` / ``--load_from`` paths,
BEiT-3), the converters' command lines, TransVG split files and REFER ``refs(*).p`` -- and the marker never
appears.  Files official checkpoints really contain (argparse.Namespace args, numpy metrics, Counter milestones)
still load, and ``trust_pickle`` is the only way to full unpickling."""
import argparse
import collections
import pickle

import numpy as np
import pytest
import torch

from vgcore import checkpoint as ck
from vgcore.checkpoint import UntrustedFileError
from vgcore.data.errors import DataError


class Payload:
    """Unpickling calls ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def payload(tmp_path):
    marker = tmp_path / "MARKER_code_ran"
    w = {"w": torch.ones(2)}
    files = {
        # a checkpoint-looking file with the payload among the metadata
        "ckpt": ({"model": w, "args": Payload(marker), "epoch": 1}, torch.save, "ckpt.pth"),
        "official_simvg": ({"state_dict": w, "epoch": 1, "lr": Payload(marker)}, torch.save, "det_best.pth"),
        "split": ([("1.jpg", "", [0, 0, 1, 1], "a dog", Payload(marker))], torch.save, "unc_val.pth"),
    }
    out = {}
    for name, (obj, save, fname) in files.items():
        out[name] = tmp_path / fname
        save(obj, out[name])
    refs_dir = tmp_path / "refer" / "refcoco"
    refs_dir.mkdir(parents=True)
    with open(refs_dir / "refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 0, "sentences": [], "evil": Payload(marker)}], f, protocol=2)
    out["refer_root"] = tmp_path / "refer"
    out["marker"] = marker
    assert not marker.exists()
    return out


def _refused(fn, *args, match="--trust_pickle", exc=(UntrustedFileError, DataError), **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


def test_payload_is_real_under_full_unpickling(payload):
    ck.torch_load(payload["ckpt"], trust_pickle=True)  # the explicit opt-in really unpickles
    assert payload["marker"].exists()


def test_vgcore_readers_refuse(payload):
    p = payload["ckpt"]
    with pytest.raises(UntrustedFileError) as ei:
        ck.torch_load(p)
    msg = str(ei.value)
    assert str(p) in msg and "io.open" in msg and "--trust_pickle" in msg
    _refused(ck.load_model_file, p)
    _refused(ck.load_checkpoint, p)
    with pytest.raises(UntrustedFileError, match=r"io\.open"):
        ck.load_plain_pickle(payload["refer_root"] / "refcoco" / "refs(unc).p")
    assert not payload["marker"].exists()


def test_data_readers_refuse(payload):
    from vgcore.data.formats import refer, transvg
    _refused(transvg.read_split, payload["split"], "unc", match=r"unc_val\.pth: refused.*--trust_pickle")
    _refused(refer.read_refer, payload["refer_root"], "refcoco", "unc", match=r"refs\(unc\)\.p: refused.*io\.open")
    assert not payload["marker"].exists()


def test_hivg_loaders_refuse(payload, tmp_path):
    from hivg import convert
    from hivg.recipes import build_hivg
    from hivg.weights import load_pretrained
    from hivg.eval import get_args_parser
    from hivg.method import load as build_for_eval
    p = str(payload["ckpt"])
    args = get_args_parser().parse_args(["--eval_model", p, "--model", "tiny", "--enable_adaptive_weights"])
    _refused(build_for_eval, args)
    model = build_hivg(args)
    _refused(convert.convert_official, p, mixup=False)
    _refused(convert.convert_clip, p)
    _refused(convert.main, ["--src", p, "--dst", str(tmp_path / "out.pth")])
    for flag in ("clip_dir", "clip_model", "retrain", "hi_lora_retrain", "hi_lora_clip"):
        ns = argparse.Namespace(**dict(vars(args), clip_dir="", clip_model="", retrain="", hi_lora_retrain="",
                                       hi_lora_clip="", eval_model=""))
        setattr(ns, flag, p)
        _refused(load_pretrained, model, ns)
    assert not payload["marker"].exists() and not (tmp_path / "out.pth").exists()


def test_simvg_and_beit3_loaders_refuse(payload, tmp_path):
    from simvg import convert
    from simvg.weights import load_weights_into, read_weights
    from simvg.eval import get_args_parser
    from simvg.method import load as build_for_eval, prepare
    from simvg.model import build_model
    from vgcore.models.beit3 import load_beit3_pretrained
    for p in (str(payload["ckpt"]), str(payload["official_simvg"])):
        args = get_args_parser().parse_args(["--load_from", p, "--backbone", "tiny"])
        prepare(args)
        _refused(build_for_eval, args)
        _refused(read_weights, p)
        _refused(load_weights_into, None, p)
        _refused(convert.read_simvg_checkpoint, p)
        _refused(convert.main, ["--src", p, "--dst", str(tmp_path / "out.pth")])
        _refused(convert.convert_beit3_pretrained, p, None)
        _refused(load_beit3_pretrained, None, p)
    model = build_model({"preset": "tiny", "vocab_size": 100, "img_size": 64})
    _refused(model.load_pretrained_backbone, str(payload["ckpt"]))
    assert not payload["marker"].exists() and not (tmp_path / "out.pth").exists()


def test_what_official_checkpoints_contain_still_loads(tmp_path):
    """HiVG / TransVG-family: args as an argparse.Namespace; SimVG: numpy metrics, an LR scheduler's
    Counter milestones; split files: numpy arrays.  All plain data, read weights-only."""
    w = torch.arange(4.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(torch.optim.SGD([torch.nn.Parameter(w.clone())], lr=0.1), [3, 5])
    obj = {"model": {"clip.x": w}, "args": argparse.Namespace(mixup_pretrain=True, lr=1e-4, dataset="unc"),
           "epoch": 3, "d_acc": np.float64(0.81), "miou": np.float32(0.7), "scheduler": sched.state_dict()}
    torch.save(obj, tmp_path / "official.pth")
    got = ck.torch_load(tmp_path / "official.pth")
    assert got["args"].mixup_pretrain is True and got["d_acc"] == np.float64(0.81)
    assert got["scheduler"]["milestones"] == collections.Counter({3: 1, 5: 1})
    assert torch.equal(ck.load_model_file(tmp_path / "official.pth")["raw"]["model"]["clip.x"], w)
    # numpy arrays are not in the checkpoint safelist, only in the data-file one
    torch.save({"model": {"w": w}, "boxes": np.zeros((2, 4))}, tmp_path / "arr.pth")
    with pytest.raises(UntrustedFileError, match="numpy"):
        ck.torch_load(tmp_path / "arr.pth")
    assert ck.torch_load(tmp_path / "arr.pth", allow_numpy=True)["boxes"].shape == (2, 4)
    # plain pickles: numpy only on request
    with open(tmp_path / "d2.pkl", "wb") as f:
        pickle.dump({"model": {"w": np.arange(3.0)}, "__author__": "d2"}, f)
    with pytest.raises(UntrustedFileError, match="numpy"):
        ck.load_plain_pickle(tmp_path / "d2.pkl")
    np.testing.assert_array_equal(ck.load_plain_pickle(tmp_path / "d2.pkl", allow_numpy=True)["model"]["w"],
                                  np.arange(3.0))


def test_torchscript_archive_needs_trust(tmp_path):
    from hivg.convert import load_checkpoint_file
    lin = torch.nn.Linear(2, 3)
    torch.jit.save(torch.jit.script(lin), str(tmp_path / "ViT-tiny.pt"))
    with pytest.raises(UntrustedFileError, match=r"ViT-tiny\.pt: refused: a TorchScript archive.*--trust_pickle"):
        load_checkpoint_file(tmp_path / "ViT-tiny.pt")
    sd = load_checkpoint_file(tmp_path / "ViT-tiny.pt", trust_pickle=True)
    assert torch.equal(sd["weight"], lin.weight.detach())
