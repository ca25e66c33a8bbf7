"""vgcore.bench: the figures of one path (fields, peak memory, compile time only for compiled paths), the JSON
line layout the bench scripts print, and (slow) a whole bench script run on the tiny preset."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vgcore import bench

ROOT = Path(__file__).resolve().parents[1]


def _case():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))
    x = torch.randn(32, 64)
    return bench.Case(model=model, batch=x, images=32, forward=lambda m, b: {"y": m(b)},
                      loss=lambda out, b: out["y"].square().mean(),
                      optimizer=lambda m: torch.optim.AdamW(m.parameters(), 1e-3, fused=True), clip_max_norm=1.0)


@pytest.mark.parametrize("mode,path", [("train", "fp32"), ("train", "bf16"), ("infer", "bf16")])
def test_measure_reports_every_field(mode, path):
    r = bench.measure(_case(), mode, bench.PATHS[path], "cpu", iters=2, warmup=1)
    line = bench.figure("toy", r)
    assert list(line) == list(bench.FIELDS) == ["method", "mode", "path", "ms_per_step", "images_per_s", "peak_mb"]
    assert line["method"] == "toy" and line["mode"] == mode and line["path"] == path
    assert line["ms_per_step"] > 0 and line["images_per_s"] == pytest.approx(32 / (line["ms_per_step"] / 1000), rel=0.01)
    assert line["peak_mb"] is None or line["peak_mb"] >= 0
    assert r["compile_s"] is None
    json.dumps(line)


def test_default_paths():
    assert bench.default_paths("train", "cpu") == ["fp32", "bf16", "compile", "bf16+compile", "grad_ckpt",
                                                   "bf16+grad_ckpt"]
    assert bench.default_paths("infer", "cpu") == ["fp32", "bf16", "compile", "bf16+compile"]
    assert "fp16" in bench.default_paths("infer", "cuda")


def test_training_step_updates_the_weights():
    case = _case()
    before = [p.detach().clone() for p in case.model.parameters()]
    bench.measure(case, "train", bench.PATHS["fp32"], "cpu", iters=1, warmup=1)
    assert all(not torch.equal(a, b) for a, b in zip(before, case.model.parameters()))


@pytest.mark.slow
def test_bench_simvg_tiny_json_lines():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_simvg.py"), "--backbone", "tiny", "--batch", "2",
                          "--quick", "--threads", "1", "--modes", "infer_token", "--loader_batches", "1", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    lines = [json.loads(x) for x in out.strip().splitlines()]
    assert [(x["mode"], x["path"]) for x in lines] == [("infer_token", "fp32"), ("infer_token", "bf16"),
                                                       ("data", "1 worker")]
    assert all(list(x) == list(bench.FIELDS) and x["method"] == "simvg" for x in lines)
    assert all(x["images_per_s"] > 0 for x in lines)


def test_train_variant_modes_train_and_get_the_training_paths():
    assert bench.is_train("train") and bench.is_train("train_frozen") and not bench.is_train("infer_decoder")
    assert "grad_ckpt" in bench.default_paths("train_frozen", "cpu")
    case = _case()
    before = [p.detach().clone() for p in case.model.parameters()]
    bench.measure(case, "train_frozen", bench.PATHS["fp32"], "cpu", iters=1, warmup=1)
    assert all(not torch.equal(a, b) for a, b in zip(before, case.model.parameters()))


def test_upscale_records_scales_image_boxes_and_polygons(tmp_path):
    import numpy as np
    from PIL import Image

    from vgcore.data.sample import Record
    Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / "a.jpg")
    r = Record(str(tmp_path / "a.jpg"), "red", [[1, 2, 5, 6]], mask=[[1, 2, 5, 2, 5, 6]], height=10, width=20)
    out, = bench.upscale_records([r], factor=4)
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.size == (80, 40)
    np.testing.assert_allclose(out.boxes, [[4, 8, 20, 24]])
    assert out.mask == [[4, 8, 20, 8, 20, 24]] and (out.height, out.width) == (40, 80)


def _run_tiny(script, *args):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--batch", "2", "--quick", "--threads", "1",
                          "--loader_batches", "1", "--json", *args],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    lines = [json.loads(x) for x in out.strip().splitlines() if x.startswith("{")]
    assert all(list(x) == list(bench.FIELDS) for x in lines)
    assert all(x["images_per_s"] > 0 for x in lines)
    return [(x["method"], x["mode"], x["path"]) for x in lines]


def test_bench_resvg_tiny_json_lines():
    got = _run_tiny("bench_resvg.py", "--preset", "tiny", "--modes", "train_frozen", "infer", "--paths", "fp32",
                    "grad_ckpt")
    assert got == [("resvg", "train_frozen", "fp32"), ("resvg", "train_frozen", "grad_ckpt"),
                   ("resvg", "infer", "fp32"), ("resvg", "data", "1 worker")]


def test_bench_alvg_tiny_json_lines_beside_simvg():
    got = _run_tiny("bench_alvg.py", "--backbone", "tiny", "--modes", "train", "--paths", "grad_ckpt")
    assert got == [("alvg", "train", "grad_ckpt"), ("alvg", "data", "1 worker"),
                   ("simvg", "train", "grad_ckpt"), ("simvg", "data", "1 worker")]


def test_random_tokens_layouts():
    torch.manual_seed(0)
    ids, mask = bench.random_tokens(3, 20, 4, 100, real=12)
    assert ids.shape == (3, 20) and ids.dtype == torch.long and ((ids >= 4) & (ids < 100)).all()
    assert mask.dtype == torch.bool and mask[:, :12].all() and not mask[:, 12:].any()
    torch.manual_seed(0)
    assert torch.equal(ids, torch.randint(4, 100, (3, 20)))  # the same draw as a plain randint
    ids, mask = bench.random_tokens(2, 77, 300, 40000, real=10, start=49406, end=49407)
    assert (ids[:, 0] == 49406).all() and (ids[:, 9] == 49407).all() and (ids[:, 10:] == 0).all()
    assert ((ids[:, 1:9] >= 300) & (ids[:, 1:9] < 40000)).all()
    assert torch.equal(mask, ids != 0)
    with pytest.raises(ValueError):
        bench.random_tokens(2, 8, 1, 5, start=1)


def test_random_batch_fields_and_draw_order():
    ids, mask = bench.random_tokens(2, 8, 1, 50, real=3)
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.4]]).repeat(2, 1)
    torch.manual_seed(0)
    b = bench.random_batch(2, 16, "cpu", ids, mask, boxes, masks=lambda: (torch.rand(2, 16, 16) > 0.7).to(torch.uint8))
    torch.manual_seed(0)
    images, masks = torch.randn(2, 3, 16, 16), (torch.rand(2, 16, 16) > 0.7).to(torch.uint8)
    assert torch.equal(b.images, images) and torch.equal(b.masks, masks)  # images first, then the masks
    assert b.pixel_mask.shape == (2, 16, 16) and not b.pixel_mask.any()
    assert b.text_ids is ids and b.text_mask is mask and torch.equal(b.boxes, boxes)
    assert len(b.target_boxes) == 2 and torch.equal(torch.stack(b.target_boxes), boxes[:, None])
    assert b.num_targets.tolist() == [1, 1] and b.orig_size.tolist() == [[16, 16]] * 2
    assert b.affine.tolist() == [[1.0, 0.0, 1.0, 0.0]] * 2 and b.texts == ["x", "x"] and b.records == [None, None]
    assert bench.random_batch(2, 16, "cpu", ids, mask, boxes).masks is None


def test_synthetic_folder_and_grounding_loader():
    import argparse
    import os

    from vgcore.data.sample import Record
    a = argparse.Namespace(batch=2, loader_batches=2)
    tmp, cleanup = bench.synthetic_folder("toy", "seqtr", a, tokenizers=False)
    try:
        assert os.path.basename(tmp).startswith("bench_toy_data_")
        jpgs = [f for f in os.listdir(os.path.join(tmp, "images")) if f.endswith(".jpg")]
        assert jpgs and os.path.isdir(os.path.join(tmp, "seqtr"))
        recs = [Record(os.path.join(tmp, "images", jpgs[0]), "a thing", [[1, 2, 5, 6]])] * 3
        lc = bench.grounding_loader(recs, None, None, 2, "toy pipeline", cleanup, load_masks="box")
        assert lc.dataset.records is recs and lc.dataset.load_masks == "box"
        assert len(lc.dataset) == 3 and lc.batch_size == 2 and lc.label == "toy pipeline" and lc.cleanup is cleanup
    finally:
        cleanup()
    assert not os.path.exists(tmp)


def test_method_case_trains_through_the_method_optimizer():
    from types import SimpleNamespace
    built = []

    def build_optimizer(args, model, iters_per_epoch):
        built.append(iters_per_epoch)
        return torch.optim.SGD(model.parameters(), lr=args.lr), None, None

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    x = torch.randn(6, 4)
    case = bench.method_case(SimpleNamespace(build_optimizer=build_optimizer), SimpleNamespace(lr=0.1), model, x,
                             lambda out, b: {"loss": out.square().mean(), "other": torch.tensor(5.0)}, 0.5, "toy")
    assert case.images == 6 and case.clip_max_norm == 0.5 and case.label == "toy"
    assert torch.equal(case.forward(model, x), model(x))
    assert case.loss(case.forward(model, x), x).item() == pytest.approx(model(x).square().mean().item())
    before = model.weight.detach().clone()
    bench.measure(case, "train", bench.PATHS["fp32"], "cpu", iters=1, warmup=1)
    assert built == [1] and not torch.equal(before, model.weight)
    assert bench.method_case(None, None, model, (x, x), None, 0.0, "", images=6).images == 6
