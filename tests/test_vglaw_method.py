"""VG-LAW on the method protocol: the module fills it, the official flags parse with their defaults, accumulation and
the warm-up + step schedule, the three parameter groups, the Batch paths of model and loss, masks carried through
the pipeline and mapped back to original resolution, and the metrics' closed-form values."""
import argparse

import numpy as np
import pytest
import torch

from vgcore import method as protocol
from vgcore.data.dataset import Collate, GroundingDataset
from vgcore.data.sample import Record
from vglaw import method
from vglaw.data import dataset_key, pipeline_transform
from vgcore.data.masks import masks_to_original
from vglaw.evaluation import VGLAWMetrics, make_postprocess
from vglaw.loss import VGLAWCriterion
from vglaw.model import build_model


def _train_args(*argv):
    args = protocol.train_parser(method).parse_args(list(argv))
    method.prepare(args)
    return args


def test_protocol_filled_and_official_defaults():
    assert protocol.check(method) == []
    a = _train_args()
    assert (a.batch_sum, a.law_type, a.lr_scheduler, a.max_epochs, a.drop_epochs, a.drop_rate, a.warmup_steps,
            a.clip_max_norm, a.weight_decay, a.max_len, a.mask_threshold, a.iou_threshold) == \
        (256, "svd", "step", 20, [10], 0.1, 8000, 0.15, 1e-4, 40, 0.35, 0.5)
    assert (a.lr_base, a.lr_visual, a.lr_lang, a.use_mask, a.translate, a.splitBy) == (1e-4, 1e-5, 1e-5, True, True, "unc")
    # an official script's command line parses (store_true style flags, ignored MindSpore flags)
    b = _train_args("--dataset=refcocog", "--splitBy=umd", "--batch_size=1", "--batch_sum=256", "--law_type=svd",
                    "--img_size=448", "--vit_model=vitdet_b_mrcnn", "--translate", "--lr_scheduler=step",
                    "--max_epochs=20", "--drop_epochs=10", "--log_freq=10", "--use_mask", "--mode_name=PYNATIVE",
                    "--experiment_name=x", "--lr_lang=1e-6", "--lr_visual=1e-6", "--lr_base=1e-5")
    assert (b.batch_size, b.img_size, b.lr_base, b.lr_lang, b.log_freq) == (1, 448, 1e-5, 1e-6, 10)
    e = protocol.eval_parser(method).parse_args(["--dataset", "refcocog", "--splitBy", "umd"])
    method.prepare(e)
    assert e.eval_sets == ["val", "test"]
    assert dataset_key("refcocog", "google") == "gref" and dataset_key("refclef", "unc") == "refclef"


def test_accumulation_groups_and_schedule():
    a = _train_args("--preset", "tiny", "--batch_size", "4", "--batch_sum", "32", "--warmup_steps", "16",
                    "--max_epochs", "4", "--drop_epochs", "2", "--lr_base", "1e-3", "--lr_visual", "1e-4",
                    "--lr_lang", "2e-4")
    assert method.accumulation(a) == 8                              # 32 / (4 x 1 process)
    with pytest.raises(SystemExit):
        method.accumulation(argparse.Namespace(batch_size=3, batch_sum=32))
    model = build_model({"preset": "tiny", "vocab_size": 50})
    opt, sched, ema = method.build_optimizer(a, model, iters_per_epoch=10)
    lrs = {g["group_name"]: g for g in opt.param_groups}
    assert all(n.startswith("visual_encoder.") for n in lrs[r"^visual_encoder\."]["param_names"])
    assert all(n.startswith("text_encoder.") for n in lrs[r"^text_encoder\."]["param_names"])
    assert {n.split(".")[0] for n in lrs["default"]["param_names"]} == {"weight_generator", "ada_gap", "bbox_pred",
                                                                        "up_sample"}
    assert opt.defaults["eps"] == 1e-6 and all(g["weight_decay"] == 1e-4 for g in opt.param_groups)
    base = lambda: [g["lr"] for g in opt.param_groups if g["group_name"] == "default"][0]  # noqa: E731
    seen = [base()]
    for _ in range(40):
        sched.step()
        seen.append(base())
    # warm-up: 16 batches = 2 optimizer steps from 0.01 x lr; x 0.1 from epoch 2 (step 20)
    assert seen[0] == pytest.approx(1e-5) and seen[1] == pytest.approx(1e-3 * (0.01 + 0.99 / 2))
    assert seen[2] == pytest.approx(1e-3) and seen[19] == pytest.approx(1e-3) and seen[20] == pytest.approx(1e-4)
    c = _train_args("--preset", "tiny", "--compat_constant_lr", "--batch_size", "4", "--batch_sum", "4")
    opt, sched, _ = method.build_optimizer(c, model, iters_per_epoch=10)
    before = [g["lr"] for g in opt.param_groups]
    for _ in range(30):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == before == [1e-5, 1e-5, 1e-4]


def _square_record(tmp_path, flip_text=False):
    from PIL import Image

    h, w = 60, 100
    img = np.zeros((h, w, 3), np.uint8)
    img[10:40, 50:90] = 255
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    poly = [[50, 10, 90, 10, 90, 40, 50, 40]]
    return Record(image_path=str(path), expression="the white box", boxes=np.array([[50, 10, 90, 40]], np.float32),
                  mask=poly, height=h, width=w)


def test_mask_follows_the_image_and_maps_back(tmp_path):
    rec = _square_record(tmp_path)
    assert method.load_masks(argparse.Namespace(task=None, use_mask=True), train=True)
    assert not method.load_masks(argparse.Namespace(task="rec", use_mask=True), train=False)
    ds = GroundingDataset([rec], pipeline_transform(128, train=False), load_masks=method.load_masks(
        argparse.Namespace(task="res", use_mask=False), train=False))
    batch = Collate(lambda t: (torch.ones(len(t), 4, dtype=torch.long), torch.ones(len(t), 4, dtype=torch.bool)))([ds[0]])
    assert batch.texts == ["the white box"] and type(batch.texts[0]) is str
    # long side 100 -> 128 (ratio 1.28), centred: the decoded mask resized (cv2 nearest) and pasted
    from vgcore.data.masks import decode_mask
    from vgcore.data.transforms import resize_mask

    nh = round(60 * 1.28)
    top = (128 - nh) // 2
    want = torch.zeros(128, 128, dtype=torch.uint8)
    want[top:top + nh] = torch.from_numpy(np.asarray(resize_mask(decode_mask(rec.mask, 60, 100), (nh, 128), "cv2")))
    assert torch.equal(batch.masks[0], want) and want.sum() > 1500
    # canvas logits of that mask -> original resolution: the decoded original mask, plus at most a one-pixel rim
    # (nearest up-sampling by 1.28, then bilinear sampling back at pixel centres)
    logits, valid = masks_to_original((batch.masks[:, None].float() * 20 - 10), batch)
    assert logits.shape == (1, 60, 100) and bool(valid.all())
    pred = logits[0] > 0
    gt = torch.from_numpy(decode_mask(rec.mask, 60, 100)).bool()
    inter, union = (pred & gt).sum().item(), (pred | gt).sum().item()
    assert inter == gt.sum().item() and inter / union > 0.94
    # ... and under a horizontal flip (negative sx) the mapping still lands on the original rectangle
    flipped = batch.affine.clone()
    flipped[:, 0], flipped[:, 1] = -flipped[:, 0], 128 - flipped[:, 1]
    batch.affine = flipped
    lf, _ = masks_to_original(batch.masks[:, None].float().flip(-1) * 20 - 10, batch)
    assert torch.equal(lf[0] > 0, pred)


def test_batch_paths_and_metrics(tmp_path):
    rec = _square_record(tmp_path)
    ds = GroundingDataset([rec, rec], pipeline_transform(128, train=False), load_masks=True)
    ids = torch.randint(5, 50, (2, 40))
    batch = Collate(lambda t: (ids, torch.ones(2, 40, dtype=torch.bool)))([ds[0], ds[1]])
    model = build_model({"preset": "tiny", "vocab_size": 50}).eval()
    with torch.no_grad():
        a = model(batch)
        b = model(batch.images, batch.text_ids, batch.text_mask.long())
    assert torch.equal(a["pred_box"], b["pred_box"]) and torch.equal(a["logit_mask"], b["logit_mask"])
    crit = VGLAWCriterion()
    la, lb = crit(a, batch), crit(a, batch.boxes, batch.masks)
    assert la.keys() == lb.keys() and all(torch.equal(la[k], lb[k]) for k in la)
    # perfect outputs: Prec@0.5 1, mIoU ~1; the canvas box IoU is exactly 1
    perfect = {"pred_box": batch.boxes.clone(), "logit_mask": batch.masks[:, None].float() * 20 - 10}
    acc = VGLAWMetrics(rec=True, res=True, canvas=True)
    acc.update(**make_postprocess(0.35, canvas=True)(perfect, batch))
    m = acc.all_reduce().compute()
    assert m["n"] == 2 and m["rec/acc@0.5"] == 1.0 and m["score"] == 1.0
    assert m["res/miou"] > 0.94 and m["res/pr@0.9"] == 1.0 and m["canvas/rec/miou"] == pytest.approx(1.0)
    assert m["canvas/res/miou"] == 1.0
    # an empty prediction: mask IoU 0, oIoU 0
    acc = VGLAWMetrics(rec=False, res=True)
    acc.update(**make_postprocess(0.35)({"logit_mask": torch.full((2, 1, 128, 128), -10.0)}, batch))
    m = acc.compute()
    assert (m["res/miou"], m["res/oiou"], m["score"]) == (0.0, 0.0, 0.0) and "rec/acc@0.5" not in m


def test_build_from_pretrained_path_and_load(tmp_path):
    """--pretrained_path: training starts from a whole saved model (strict), its compat switches kept; eval's
    `load` rebuilds it from the stored config and sets the task."""
    from vgcore.checkpoint import save_model
    from vgcore.engine import Logger

    (tmp_path / "tok").mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "circle"]
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    src = build_model({"preset": "tiny", "vocab_size": len(words), "task": "rec", "vit_ln_eps_1e5": True})
    save_model(tmp_path / "m.pth", src, src.cfg.to_dict())
    a = _train_args("--preset", "tiny", "--task", "rec", "--bert_model", str(tmp_path / "tok"),
                    "--pretrained_path", str(tmp_path / "m.pth"))
    model, crit = method.build(a, Logger(enabled=False))
    assert model.cfg.vit_ln_eps_1e5 and not model.cfg.pos_embed_tf_bicubic
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
    e = protocol.eval_parser(method).parse_args(["--pretrained_path", str(tmp_path / "m.pth")])
    method.prepare(e)
    loaded = method.load(e)
    assert e.task == "rec" and not hasattr(loaded, "up_sample")
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in loaded.state_dict().items())
    # a model of another task does not load into the flags' model: a clear error
    b = _train_args("--preset", "tiny", "--task", "both", "--bert_model", str(tmp_path / "tok"),
                    "--pretrained_path", str(tmp_path / "m.pth"))
    with pytest.raises(Exception, match="up_sample"):
        method.build(b, Logger(enabled=False))
