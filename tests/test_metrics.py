"""vgcore.metrics: REC / GREC / RES accumulators against hand-computed cases."""
import socket

import pytest
import torch

from vgcore.metrics import (GREC_MAIN_KEY, GRECAccumulator, PointingAccumulator, RECAccumulator, RESAccumulator,
                            argmax_cell_in_box, iou_xyxy)

K = GREC_MAIN_KEY


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def E(n=0):
    return torch.zeros(n, 4)


# ------------------------------------------------------------------------------------------------ REC

# IoUs: exactly 0.5, 1.0, 0.0, 0.25
REC_PRED = t([[0, 0, 2, 1], [0, 0, 4, 4], [10, 10, 12, 12], [0, 0, 1, 1]])
REC_GT = t([[0, 0, 1, 1], [0, 0, 4, 4], [0, 0, 1, 1], [0, 0, 2, 2]])


def test_iou_xyxy_values():
    assert iou_xyxy(REC_PRED, REC_GT).tolist() == [0.5, 1.0, 0.0, 0.25]


def test_rec_ge_vs_strict_and_miou():
    acc = RECAccumulator(thresholds=(0.5, 0.25))
    acc.update(REC_PRED, REC_GT)
    r = acc.compute()
    assert r["n"] == 4
    assert r["acc@0.5"] == pytest.approx(2 / 4)
    assert r["acc@0.25"] == pytest.approx(3 / 4)
    assert r["miou"] == pytest.approx((0.5 + 1 + 0 + 0.25) / 4)
    s = RECAccumulator(thresholds=(0.5, 0.25), strict=True).update(REC_PRED, REC_GT).compute()
    assert s["acc@0.5"] == pytest.approx(1 / 4)  # ResVG: IoU > 0.5, the exact-0.5 sample fails
    assert s["acc@0.25"] == pytest.approx(2 / 4)


def test_rec_groups_valid_and_batch_independence():
    groups = ["short", "long", "short", "long"]
    one = RECAccumulator().update(REC_PRED, REC_GT, group=groups).compute()
    assert one["acc@0.5/short"] == pytest.approx(1 / 2) and one["n/short"] == 2
    assert one["acc@0.5/long"] == pytest.approx(1 / 2) and one["miou/long"] == pytest.approx(0.625)
    # split into uneven batches: counts are summed (not a mean of batch means)
    acc = RECAccumulator()
    acc.update(REC_PRED[:1], REC_GT[:1], group=groups[:1])
    acc.update(REC_PRED[1:], REC_GT[1:], group=groups[1:])
    assert acc.compute() == pytest.approx(one)
    # valid mask: drop the 2nd sample (a padded duplicate)
    v = RECAccumulator().update(REC_PRED, REC_GT, group=groups, valid=torch.tensor([1, 0, 1, 1]).bool()).compute()
    assert v["n"] == 3 and v["acc@0.5"] == pytest.approx(1 / 3) and v["n/long"] == 1
    assert v["acc@0.5/long"] == 0.0


def test_rec_state_dict_merge_reset_and_all_reduce_noop():
    a = RECAccumulator().update(REC_PRED[:2], REC_GT[:2], group=["x", "y"])
    b = RECAccumulator().update(REC_PRED[2:], REC_GT[2:], group=["x", "z"])
    full = RECAccumulator().update(REC_PRED, REC_GT, group=["x", "y", "x", "z"]).compute()
    merged = RECAccumulator().load_state_dict(a.state_dict()).merge(b.state_dict())
    assert merged.compute() == pytest.approx(full)
    assert not torch.distributed.is_initialized()
    assert merged.all_reduce().all_reduce().compute() == pytest.approx(full)  # no-op, idempotent
    with pytest.raises(ValueError):
        merged.merge(RECAccumulator(strict=True))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        nan = RECAccumulator().update(t([[0, 0, float("nan"), 1], [0, 0, 1, 1]]), t([[0, 0, 1, 1]] * 2)).compute()
    assert nan["n"] == 2 and nan["acc@0.5"] == 0.5 and nan["miou"] == 0.5
    merged.reset()
    assert merged.compute()["n"] == 0 and merged.compute()["acc@0.5"] == 0.0


# ------------------------------------------------------------------------------------------------ GREC

def grec(preds, scores, gts, **kw):
    acc = GRECAccumulator(**kw)
    acc.update(preds, scores, gts)
    return acc.compute(), acc.match(preds, scores, gts)


def test_grec_no_target_cases():
    # sample 0: no-target, only a low-score prediction -> nothing kept -> correct, TP
    # sample 1: no-target, a confident prediction -> wrong, FN
    # (not 0.7 itself: float32(0.7) < 0.7, so the official code drops it too)
    r, m = grec([t([[0, 0, 5, 5]]), t([[0, 0, 5, 5]])], [t([0.69]), t([0.75])], [E(), E()])
    assert r[K] == pytest.approx(0.5) and r["n_acc"] == pytest.approx(0.5)
    assert (r["nt_tp"], r["nt_fn"], r["n_target"]) == (1, 1, 0)
    assert m["correct"].tolist() == [True, False]


def test_grec_targeted_cases():
    g2 = t([[0, 0, 10, 10], [20, 20, 30, 30]])
    preds = [
        t([[20, 20, 30, 30], [0, 0, 10, 10]]),            # all matched (order differs) -> correct
        t([[0, 0, 10, 10]]),                              # one GT missing -> F1 = 2/3
        t([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),  # extra prediction -> F1 = 4/5
        t([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]),  # extra one below score threshold -> correct
        t([[0, 0, 10, 10]]),                              # nothing kept on a targeted sample -> FP, wrong
    ]
    scores = [t([0.9, 0.8]), t([0.9]), t([0.9, 0.9, 0.75]), t([0.9, 0.9, 0.3]), t([0.1])]
    r, m = grec(preds, scores, [g2] * 5)
    assert m["f1"].tolist() == pytest.approx([1.0, 2 / 3, 0.8, 1.0, 0.0])
    assert m["correct"].tolist() == [True, False, False, True, False]
    assert m["matched"].tolist() == [2, 1, 2, 2, 0]
    assert r[K] == pytest.approx(2 / 5)
    assert r["t_acc"] == pytest.approx(4 / 5) and (r["t_tn"], r["t_fp"]) == (4, 1)
    assert r["n_acc"] == 0.0 and r["n_no_target"] == 0
    assert r["mean_f1"] == pytest.approx((1 + 2 / 3 + 0.8 + 1 + 0) / 5)


def test_grec_greedy_is_one_to_one():
    # two predictions both overlap one GT best; greedy takes the global max, then the other must match GT 2
    gt = t([[0, 0, 10, 10], [0, 0, 10, 12]])
    pred = t([[0, 0, 10, 11], [0, 0, 10, 10]])
    r, m = grec([pred], [t([0.9, 0.8])], [gt], use_giou=False)
    assert m["matched"].tolist() == [2] and r[K] == 1.0


def test_grec_giou_vs_iou_switch():
    # IoU = 1681/3319 = 0.5065 >= 0.5 but GIoU = IoU - 162/3481 = 0.4600 < 0.5
    pred, gt = t([[0, 0, 50, 50]]), t([[9, 9, 59, 59]])
    assert iou_xyxy(pred, gt).item() == pytest.approx(1681 / 3319)
    r_giou, _ = grec([pred], [t([0.9])], [gt])  # default use_giou=True, as the official code
    r_iou, _ = grec([pred], [t([0.9])], [gt], use_giou=False)
    assert r_giou[K] == 0.0 and r_iou[K] == 1.0


def test_grec_batch_averaged_differs_from_dataset_level():
    g = t([[0, 0, 10, 10]])
    ok = (t([[0, 0, 10, 10]]), t([0.9]), g)
    nt_ok = (t([[0, 0, 1, 1]]), t([0.1]), E())
    nt_bad = (t([[0, 0, 1, 1]]), t([0.9]), E())
    batch_a = [ok, ok, ok]          # 3 correct targeted samples, no no-target -> SimVG batch N_acc = 0
    batch_b = [nt_ok, nt_bad]       # TP and FN -> correct 1/2, N_acc 1/2
    ds = GRECAccumulator()
    ba = GRECAccumulator(batch_averaged=True)
    for batch in (batch_a, batch_b):
        cols = list(zip(*batch))
        ds.update(*cols)
        ba.update(*cols)
    rd, rb = ds.compute(), ba.compute()
    assert rd[K] == pytest.approx(4 / 5) and rd["n_acc"] == pytest.approx(1 / 2)
    assert rb[K] == pytest.approx((1 + 1 / 2) / 2) and rb["n_acc"] == pytest.approx((0 + 1 / 2) / 2)
    assert rb["n_batches"] == 2 and rb["t_acc"] == rd["t_acc"] == 1.0
    # state_dict round trip keeps the per-batch list
    assert GRECAccumulator(batch_averaged=True).merge(ba.state_dict()).compute() == pytest.approx(rb)


def test_grec_empty_prediction_lists_and_valid_mask():
    r, m = grec([E(), E()], [torch.zeros(0), torch.zeros(0)], [E(), t([[0, 0, 1, 1]])])
    assert m["correct"].tolist() == [True, False] and r[K] == 0.5
    acc = GRECAccumulator().update([E(), E()], [torch.zeros(0)] * 2, [E(), t([[0, 0, 1, 1]])],
                                   valid=torch.tensor([True, False]))
    assert acc.compute()[K] == 1.0 and acc.compute()["n"] == 1
    with pytest.raises(ValueError, match="sample 0"):
        GRECAccumulator().update([t([[0, 0, 1, 1]])], [torch.zeros(2)], [E()])


# ------------------------------------------------------------------------------------------------ RES

def test_res_miou_vs_oiou():
    p = torch.zeros(3, 4, 4, dtype=torch.bool)
    g = torch.zeros(3, 4, 4, dtype=torch.bool)
    p[0, 0, :] = True                 # 4 px
    g[0, 0, 2:] = True                # 2 px of them ...
    g[0, 1, :2] = True                # ... + 2 other px -> I = 2, U = 6, IoU 1/3
    p[1, :2, :] = True
    p[1, 2, :2] = True                # 10 px
    g[1, :2, :] = True                # 8 px inside -> I = 8, U = 10, IoU 0.8
    # sample 2: both empty -> IoU 0 (LAVT), adds nothing to I or U
    acc = RESAccumulator()
    acc.update(p[:2], g[:2])
    acc.update(p[2:], g[2:])
    r = acc.compute()
    assert r["n"] == 3
    assert r["miou"] == pytest.approx((1 / 3 + 0.8 + 0) / 3)
    assert r["oiou"] == pytest.approx(10 / 16)
    assert [r[f"pr@{x}"] for x in ("0.5", "0.6", "0.7", "0.8", "0.9")] == pytest.approx([1 / 3] * 4 + [0])
    # valid mask + all_reduce no-op + merge
    v = RESAccumulator().update(p, g, valid=torch.tensor([True, True, False])).all_reduce().compute()
    assert v["miou"] == pytest.approx((1 / 3 + 0.8) / 2) and v["oiou"] == pytest.approx(10 / 16)
    m = RESAccumulator().update(p[:1], g[:1]).merge(RESAccumulator().update(p[1:], g[1:]))
    assert m.compute() == pytest.approx(r)


# ------------------------------------------------------------------------------------------------ pointing

def test_argmax_cell_in_box_hand_cases():
    s = torch.zeros(4, 4, 4)
    s[0, 1, 2] = 5  # cell x [.5, .75], y [.25, .5]; a small box strictly inside it
    s[1, 3, 3] = 5  # bottom-right cell, box in the top-left quarter
    s[2, 0, 0], s[2, 2, 1] = 9, 5  # the best cell is ignored (padding): the runner-up touches the box
    s[3, 0, 1] = 5  # cell x [.25, .5]: a box starting exactly at its right edge shares no area
    boxes = t([[0.55, 0.30, 0.60, 0.35], [0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 0.5, 0.75], [0.5, 0.0, 0.9, 0.2]])
    ignore = torch.zeros(4, 16, dtype=torch.bool)
    ignore[2, 0] = True
    assert argmax_cell_in_box(s, boxes, ignore=ignore).tolist() == [True, False, True, False]
    assert argmax_cell_in_box(s.flatten(1), boxes, ignore=ignore).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="square"):
        argmax_cell_in_box(torch.zeros(1, 12), boxes[:1])


def test_pointing_accumulator_counts_valid_and_merge():
    a = PointingAccumulator("align_pointing")
    a.update(torch.tensor([True, False, True]), valid=torch.tensor([True, True, False]))
    a.update(torch.tensor([True]))
    assert a.compute() == {"align_pointing": pytest.approx(2 / 3)}
    b = PointingAccumulator("align_pointing").update(torch.tensor([False, False]))
    assert a.merge(b).compute()["align_pointing"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        a.merge(PointingAccumulator("other"))


# ------------------------------------------------------------------------------------------------ 2 ranks

def _worker(rank, world, port, q):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rec = RECAccumulator()
        idx = [0, 2] if rank == 0 else [1, 3]
        rec.update(REC_PRED[idx], REC_GT[idx], group=[f"g{rank}", "both"])
        res = RESAccumulator().update_counts(torch.tensor([2.0 + rank]), torch.tensor([4.0]))
        gr = GRECAccumulator(batch_averaged=True)
        gr.update([t([[0, 0, 1, 1]])], [t([0.9 if rank else 0.1])], [E()])
        q.put((rank, rec.all_reduce().compute(), res.all_reduce().compute(), gr.all_reduce().compute()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~15 s on 2 busy cores: two spawned interpreters each import torch
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_all_reduce_two_gloo_ranks():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    out = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    full = RECAccumulator().update(REC_PRED, REC_GT, group=["g0", "g1", "both", "both"]).compute()
    for rank, rec, res, gr in out:
        assert rec == pytest.approx(full)
        assert res["oiou"] == pytest.approx(5 / 8) and res["n"] == 2
        assert gr[K] == pytest.approx(0.5) and gr["n_batches"] == 2 and gr["n_acc"] == pytest.approx(0.5)
