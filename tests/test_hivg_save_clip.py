"""`hivg/eval.py --save_hilora_clip` writes <output_dir>/clip_lora_stage_with_bridge.pth in the official layout
({'model': model.clip.state_dict()} of the official code): the key set, shapes and dtypes of every official
configuration's CLIP entries, and a file that `hivg.convert.convert_clip` reads back with no unmapped key to
tensors equal to the model's (the --hi_lora_clip hand-over of the official base mixup script)."""
import json
from pathlib import Path

import pytest
import torch

from hivg import convert, method
from hivg.eval import get_args_parser
from hivg.model import build_model
from vgcore.checkpoint import save_model


def _fake(layout: dict) -> dict:
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in layout.items()}


def test_export_matches_every_official_layout(golden_dir):
    root = Path(golden_dir) / "hivg" / "full_keys"
    if not (root / "index.json").exists():
        pytest.skip("no hivg/full_keys fixtures")
    files = sorted(p for p in root.glob("*.json") if p.name != "index.json")
    assert len(files) == 20
    for path in files:
        layout = json.loads(path.read_text())
        sd, info = convert.convert_official({"model": _fake(layout)}, mixup="mixup" in path.name)
        with torch.device("meta"):
            model = build_model(info["config"])
        out = convert.export_hilora_clip(model.state_dict(), model.cfg.hi_lora_stage,
                                         mixup=model.cfg.mixup_pretrain)["model"]
        want = {k[len("clip."):]: (v["shape"], v["dtype"]) for k, v in layout.items() if k.startswith("clip.")}
        got = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in out.items()}
        assert got == want, path.name


@pytest.mark.parametrize("flags", [["--enable_adaptive_weights", "--hi_lora_stage", "2"],
                                   ["--mixup_pretrain", "--hi_lora_stage", "1"],
                                   ["--enable_adaptive_weights"]])
def test_save_hilora_clip_writes_the_file_and_converts_back(tmp_path, flags):
    torch.manual_seed(0)
    args = get_args_parser().parse_args(["--model", "tiny", *flags, "--eval_model", str(tmp_path / "m.pth"),
                                         "--save_hilora_clip", "--output_dir", str(tmp_path / "out"),
                                         "--device", "cpu"])
    model = build_model(method.model_config_from_args(args))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # LoRA B included, so no tensor is trivially zero
    save_model(tmp_path / "m.pth", model, model.cfg.to_dict())
    loaded = method.load(args)
    path = tmp_path / "out" / convert.HILORA_CLIP_FILE
    assert path.is_file()
    obj = torch.load(path, weights_only=True)
    stage = model.cfg.hi_lora_stage
    assert set(obj) == {"model"}
    depth = "base_model.model." * (stage + 1)
    assert all(k.startswith(depth) and not k.startswith(depth + "base_model.model.") for k in obj["model"])
    assert any(".lora_A.default.weight" in k for k in obj["model"])
    assert any(".cross_attn.q_proj." in k for k in obj["model"])
    back, info = convert.convert_clip(str(path), mixup=model.cfg.mixup_pretrain)  # raises on an unmapped key
    assert info["peft_depth"] == [stage + 1]
    dropped = {k for k in info["dropped"] if not k.endswith("position_ids")}
    assert len(info["dropped"]) - len(dropped) == 2
    # a mixup model's bypassed cross_gate / cross_adaptive_weights are written (as zeros) and dropped on reading
    assert all(".cross_gate." in k or ".cross_adaptive_weights." in k for k in dropped)
    assert bool(dropped) == model.cfg.mixup_pretrain
    zeros = [not v.any() for k, v in obj["model"].items() if k.split("base_model.model.")[-1] in dropped]
    assert len(zeros) == len(dropped) and all(zeros)
    own = {k: v for k, v in model.state_dict().items() if k.startswith(convert._OWN_CLIP_PREFIXES)}
    assert set(back) == set(own)
    for k, v in own.items():
        assert torch.equal(back[k], v), k
    # and it loads as the next stage's --hi_lora_clip: a fresh model then holds the same CLIP weights
    fresh = build_model(model.cfg.to_dict())
    convert.load_clip_into(fresh, back, reinit_ml_projection=False)
    fsd = fresh.state_dict()
    assert all(torch.equal(fsd[k], v) for k, v in own.items())
    assert loaded is not None
