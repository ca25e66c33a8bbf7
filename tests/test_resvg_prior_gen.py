"""The semantic-prior pipeline (resvg/prior_gen.py) offline, with a random tiny diffusers pipeline and a tiny
open_clip encoder built from configs: the written <split>_fea.pth follows the split row by row and is what the
training data path reads; a run interrupted mid-way (or stopped) and resumed, and a run split into shards, give
the bytes of an uninterrupted run; stale chunks, over-long queries and bad rows are errors naming file and sample;
predict.py computes the prior of a new query on the fly or says what it falls back to."""
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from resvg import prior_gen  # noqa: E402
from resvg.prior_gen import GenSettings, PriorGenerator, main  # noqa: E402
from vgcore.data.errors import DataError  # noqa: E402

WIDTH = 32  # the tiny encoder's width = the tiny ResVG preset's prior_dim


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return prior_gen.write_tiny_models(tmp_path_factory.mktemp("tiny_models"), width=WIDTH)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from vgcore.synthetic.scenes import generate

    out = tmp_path_factory.mktemp("syn_prior")
    generate(out, num_train=10, num_val=7, num_test=2, seed=3, formats=("transvg",), verbose=False)
    d = out / "split" / "data" / "unc"
    val = torch.load(d / "unc_val.pth", weights_only=False)
    torch.save(val + [val[0], val[2]], d / "unc_test.pth")  # 9 rows, 7 distinct queries
    return out


def _split_dir(syn):
    return syn / "split" / "data" / "unc"


def _argv(tiny, syn, split, *extra):
    return ["--dataset", "unc", "--split", split, "--split_root", str(syn / "split" / "data"),
            "--generator", tiny["generator"], "--encoder", tiny["encoder"], "--encoder_weights",
            tiny["encoder_weights"], "--prior_dim", str(WIDTH), "--steps", "2", "--batch_size", "2",
            "--chunk_size", "3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def reference(tiny, syn, tmp_path_factory):
    """An uninterrupted run on the 9-row split: its prior file's rows."""
    root = tmp_path_factory.mktemp("ref")
    main(_argv(tiny, syn, "test", "--prior_root", str(root)))
    return torch.load(root / "test_fea.pth")


def test_rows_follow_the_split_and_the_training_reads_them(tiny, syn, reference, tmp_path):
    from resvg import method
    from resvg.prior import PRIOR_KEY
    from vgcore import method as protocol

    rows = reference
    assert rows.dtype == torch.float32 and rows.shape == (9, WIDTH) and torch.isfinite(rows).all()
    torch.testing.assert_close(rows[7], rows[0], rtol=0, atol=0)  # duplicated queries share their row
    torch.testing.assert_close(rows[8], rows[2], rtol=0, atol=0)
    assert (rows[:7, None] - rows[None, :7]).abs().sum(-1).fill_diagonal_(1).min() > 1e-4  # distinct queries differ
    # one image per query: the feature is one L2-normalised CLIP embedding
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(9), atol=1e-5, rtol=0)
    # row i is the feature of the query of sample i, as the generator computes it on its own
    data = torch.load(_split_dir(syn) / "unc_test.pth", weights_only=False)
    gen = PriorGenerator(GenSettings(generator=tiny["generator"], encoder=tiny["encoder"],
                                     encoder_weights=tiny["encoder_weights"], steps=2), torch.device("cpu"))
    torch.testing.assert_close(gen.features([data[4][3]])[0], rows[4], atol=1e-5, rtol=0)
    # the ResVG data path attaches row i to sample i
    torch.save(rows, tmp_path / "test_fea.pth")
    args = protocol.train_parser(method).parse_args(
        ["--model_preset", "tiny", "--split_root", str(syn / "split" / "data"), "--image_root", str(syn / "images"),
         "--bert_token_mode", str(syn / "tokenizers" / "vocab.txt"), "--prior_root", str(tmp_path)])
    args.model_config = method._args.model_config_from_args(args).to_dict()
    recs = method.records(args, "test", train=False)
    for r in recs:
        np.testing.assert_array_equal(r.extra[PRIOR_KEY], rows[r.extra["index"]].numpy())


def test_interrupted_or_stopped_runs_resume_to_the_same_bytes(tiny, syn, reference, tmp_path, monkeypatch):
    calls = []
    real = PriorGenerator.features

    def crash_on_second_chunk(self, prompts, names=None):
        calls.append(list(prompts))
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill in the middle of chunk 1
        return real(self, prompts, names)

    monkeypatch.setattr(PriorGenerator, "features", crash_on_second_chunk)
    argv = _argv(tiny, syn, "test", "--prior_root", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    parts = tmp_path / "test_fea.parts"
    assert sorted(p.name for p in parts.glob("chunk_*.pth")) == ["chunk_000000.pth"]
    assert not (tmp_path / "test_fea.pth").exists()
    (parts / ".chunk_000001.pth.abc123.tmp").write_bytes(b"half-written")  # what a SIGKILL mid-save leaves
    monkeypatch.setattr(PriorGenerator, "features",
                        lambda self, p, n=None: (calls.append(list(p)), real(self, p, n))[1])
    main(argv)
    assert len(calls) == 2 + 2  # resumed: chunks 1 and 2 only (7 distinct prompts, chunks of 3)
    assert not list(parts.glob(".*.tmp"))
    assert torch.equal(torch.load(tmp_path / "test_fea.pth"), reference)
    # --stop_after_chunks: a clean stop, continued by rerunning the same command
    other = tmp_path / "stop"
    main(_argv(tiny, syn, "test", "--prior_root", str(other), "--stop_after_chunks", "2"))
    assert not (other / "test_fea.pth").exists() and len(list((other / "test_fea.parts").glob("chunk_*"))) == 2
    main(_argv(tiny, syn, "test", "--prior_root", str(other)))
    assert torch.equal(torch.load(other / "test_fea.pth"), reference)


def test_shards_merge_to_the_same_bytes(tiny, syn, reference, tmp_path):
    shard = lambda i: _argv(tiny, syn, "test", "--prior_root", str(tmp_path), "--num_shards", "2",  # noqa: E731
                            "--shard_id", str(i))
    assert main(shard(1)) == []  # chunk 1 only; chunks 0 and 2 belong to shard 0
    with pytest.raises(DataError, match=r"2 of 3 chunks not finished \(e.g. chunk_000000.pth\)"):
        main(_argv(tiny, syn, "test", "--prior_root", str(tmp_path), "--merge_only"))
    assert main(shard(0)) == [str(tmp_path / "test_fea.pth")]  # the last shard merges
    assert torch.equal(torch.load(tmp_path / "test_fea.pth"), reference)
    # a rerun with other settings meets the finished chunks: refused, naming the chunk file and the change
    with pytest.raises(DataError, match=r"chunk_000000.pth: made with other settings \(seed: 0 -> 1\)"):
        main(_argv(tiny, syn, "test", "--prior_root", str(tmp_path), "--gen_seed", "1"))


def test_reuse_split_generates_only_the_new_queries(tiny, syn, reference, tmp_path, monkeypatch):
    """new_train = the rows of another split + new ones: --reuse_split copies the known rows."""
    d, root = _split_dir(syn), tmp_path / "data" / "unc"
    root.mkdir(parents=True)
    test = torch.load(d / "unc_test.pth", weights_only=False)
    new = test + [("aug_1.png", {"height": 10, "width": 10}, [0, 0, 5, 5], "the star on the left", None)]
    torch.save(new, root / "unc_new_train.pth")
    shutil.copy(d / "unc_test.pth", root / "unc_test.pth")
    torch.save(reference, root / "test_fea.pth")
    calls = []
    real = PriorGenerator.features
    monkeypatch.setattr(PriorGenerator, "features",
                        lambda self, p, n=None: (calls.append(list(p)), real(self, p, n))[1])
    argv = _argv(tiny, syn, "new_train", "--reuse_split", "test")
    argv[argv.index("--split_root") + 1] = str(tmp_path / "data")
    main(argv)
    assert calls == [["the star on the left"]]
    rows = torch.load(root / "new_train_fea.pth")
    assert rows.shape == (10, WIDTH) and torch.equal(rows[:9], reference)


def test_bad_queries_and_widths_are_named(tiny, syn, tmp_path):
    d = _split_dir(syn)
    val = torch.load(d / "unc_val.pth", weights_only=False)
    root = tmp_path / "data"
    (root / "unc").mkdir(parents=True)
    long = val[:2] + [val[2][:3] + ("the small red circle " * 5,) + val[2][4:]] + val[3:]
    torch.save(long, root / "unc" / "unc_val.pth")
    argv = _argv(tiny, syn, "val", "--prior_root", str(tmp_path / "p"))
    argv[argv.index("--split_root") + 1] = str(root)
    with pytest.raises(DataError,
                       match=r"unc_val.pth: sample 2 \('the small red circle.*has 87 tokens.*maximum 77"):
        main(argv)
    assert main(argv + ["--truncate_long_prompts"]) == [str(tmp_path / "p" / "val_fea.pth")]
    torch.save(val[:1] + [val[1][:3] + ("  ",) + val[1][4:]], root / "unc" / "unc_val.pth")
    with pytest.raises(DataError, match=r"unc_val.pth: sample 1 .*the query is empty"):
        main(argv)
    torch.save(val, root / "unc" / "unc_val.pth")
    wide = argv[:]
    wide[wide.index("--prior_dim") + 1] = "512"
    with pytest.raises(SystemExit, match=r"encoder gives 32-d features, --prior_dim is 512"):
        main(wide + ["--work_dir", str(tmp_path / "w512")])


def test_predict_computes_the_prior_on_the_fly_or_says_it_falls_back(tiny, syn, tmp_path, capsys):
    from resvg import predict
    from resvg.model import build_model
    from vgcore.checkpoint import save_model

    torch.manual_seed(0)
    model = build_model({"model_preset": "tiny"}).eval()
    ckpt = tmp_path / "m.pth"
    save_model(ckpt, model, model.cfg.to_dict())
    img = sorted((syn / "images").iterdir())[0]
    base = ["--checkpoint", str(ckpt), "--bert_token_mode", str(syn / "tokenizers" / "vocab.txt"), "--image",
            str(img), "--text", "the red circle", "--device", "cpu"]
    gen = ["--generator", tiny["generator"], "--encoder", tiny["encoder"], "--encoder_weights",
           tiny["encoder_weights"], "--steps", "2"]
    res = predict.main(predict.get_args_parser().parse_args(base + gen + ["--out", str(tmp_path / "a.png")]))
    saved = torch.load(tmp_path / "a_prior.pth")
    g = PriorGenerator(GenSettings(generator=tiny["generator"], encoder=tiny["encoder"],
                                   encoder_weights=tiny["encoder_weights"], steps=2), torch.device("cpu"))
    torch.testing.assert_close(saved, g.features(["the red circle"])[0], atol=0, rtol=0)
    assert "prior feature of 'the red circle' computed with StableDiffusionPipeline" in capsys.readouterr().out
    # the same box as predicting with the saved feature as --prior_file
    res2 = predict.main(predict.get_args_parser().parse_args(
        base + ["--prior_file", str(tmp_path / "a_prior.pth"), "--out", str(tmp_path / "b.png")]))
    np.testing.assert_allclose(res["box_xyxy"], res2["box_xyxy"], atol=1e-4)
    # neither: zeros, said so; a different box input
    predict.main(predict.get_args_parser().parse_args(base + ["--out", str(tmp_path / "c.png")]))
    out = capsys.readouterr().out
    assert "no --generator and no --prior_file" in out and "all-zero prior feature" in out
    long = base[:]
    long[long.index("--text") + 1] = "the red circle " * 7
    with pytest.raises(DataError, match=r"--text 'the red circle .*has 86 tokens.*maximum 77"):
        predict.main(predict.get_args_parser().parse_args(long + gen + ["--out", str(tmp_path / "e.png")]))
    with pytest.raises(SystemExit, match="not both"):
        predict.main(predict.get_args_parser().parse_args(
            base + gen + ["--prior_file", str(tmp_path / "a_prior.pth"), "--out", str(tmp_path / "d.png")]))


@pytest.mark.slow
def test_two_gloo_processes_under_torchrun_give_the_same_bytes(tiny, syn, reference, tmp_path):
    """N GPUs = N ranks sharing the chunks (here 2 CPU processes, gloo): rank 0 merges after the barrier."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "resvg.prior_gen", *_argv(tiny, syn, "test", "--prior_root", str(tmp_path))],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shard 0/2: 0 done, 2 to do" in r.stdout
    assert torch.equal(torch.load(tmp_path / "test_fea.pth"), reference)
