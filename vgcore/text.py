"""Tokenizers behind one interface: ``ids, mask = tok(list_of_texts)``.

``ids``  LongTensor [B, L] (L = ``tok.max_len``, always padded to it), ``mask`` BoolTensor [B, L] with
**True = real token** (special tokens included, padding False).  Models whose convention is "True = pad"
(BEiT-3 padding_mask, HiVG) invert it themselves.

Three kinds (``build_tokenizer(kind, ...)``):

* ``"clip"``  -- CLIP BPE via open_clip's `SimpleTokenizer` (vocabulary shipped in the wheel, no download).
  [SOT] pieces [EOT], context 77 by default; longer texts are truncated and the last position is set back
  to EOT (``clip.tokenize(truncate=True)`` / open_clip behaviour).  pad 0; mask = ids != 0 as HiVG computes
  it (``mask_from_length=True`` instead marks exactly the first len positions -- differs only for texts
  containing the piece "!" without an end-of-word, whose id is 0).
* ``"bert"``  -- WordPiece via ``transformers.BertTokenizer(vocab_file, do_lower_case=True)`` (a vocab.txt
  or a folder holding one).  [CLS] pieces[:max_len-2] [SEP], zero padded (TransVG / ResVG / VG-LAW).
* ``"beit3"`` -- XLM-R sentencepiece as BEiT-3 / SimVG use it, through `sentencepiece` directly with the
  fairseq id layout that ``XLMRobertaTokenizer`` produces: <s> 0, <pad> 1, </s> 2, <unk> 3, ordinary piece
  id + 1 (sentencepiece id 0, its <unk>, maps to 3).  Text is first passed through SimVG's `clean_string`
  (lowercase; delete . , ' ! ? " ( ) * # : ; ; turn - and / into spaces); ids = [0] + pieces[:max_len-2] +
  [2] + [1]*pad, max_len 20.  An expression that yields no piece raises ValueError (SimVG raises too).
  The loaded model's size is checked: <= 5 pieces or fewer than ``min_vocab`` (default 1000) raises
  ValueError naming the file -- transformers 5.x silently builds such broken tokenizers from beit3.spm.
  ``vocab_size`` = pieces + 2 (= len(XLMRobertaTokenizer): fairseq offset + <mask>).

Asset helpers for offline tests and the synthetic dataset: `train_sentencepiece` and `build_wordpiece_vocab`.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

__all__ = [
    "Tokenizer", "ClipTokenizer", "BertWordPieceTokenizer", "Beit3Tokenizer", "build_tokenizer",
    "clean_string", "train_sentencepiece", "build_wordpiece_vocab", "TOKENIZER_KINDS",
]

TOKENIZER_KINDS = ("clip", "bert", "beit3")


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer offers.  ``__call__(texts) -> (ids [B, L] long, mask [B, L] bool, True = real)``."""

    name: str
    max_len: int
    pad_id: int
    vocab_size: int

    def __call__(self, texts: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]: ...


def _as_list(texts) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"tokenizer: text {i} is {type(t).__name__}, expected str")
    return texts


class _Rebuildable:
    """Pickle by constructor arguments (DataLoader workers, spawn): the wrapped library objects are rebuilt
    from the same files instead of being pickled."""

    _init_kwargs: dict

    def __getstate__(self):
        return {"_init_kwargs": self._init_kwargs}

    def __setstate__(self, state):
        self.__init__(**state["_init_kwargs"])


def _pad(seqs: List[List[int]], max_len: int, pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(seqs), max_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), max_len), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


# ------------------------------------------------------------------------------------------------ CLIP

def _open_clip_tokenizer_module():
    """open_clip's `tokenizer` module.  ``import open_clip`` pulls in the whole model zoo (torchvision, timm,
    transformers: several seconds); the tokenizer module itself only needs ftfy/regex/numpy/torch and has no
    relative imports, so when open_clip is not imported yet it is loaded on its own from the installed
    package files (same code, same BPE file).  Falls back to the normal import on any problem."""
    import importlib.util
    import sys

    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    name = "vgcore._open_clip_tokenizer"
    if name in sys.modules:
        return sys.modules[name]
    try:
        spec = importlib.util.find_spec("open_clip")
        path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
        mspec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[name] = mod
        mspec.loader.exec_module(mod)
        mod.SimpleTokenizer  # noqa: B018  (fail early if the layout changed)
        return mod
    except Exception:
        sys.modules.pop(name, None)
        import open_clip.tokenizer as mod

        return mod


class ClipTokenizer(_Rebuildable):
    """CLIP BPE (open_clip `SimpleTokenizer`): SOT 49406, EOT 49407, pad 0, vocab 49408."""

    name = "clip"

    def __init__(self, max_len: int = 77, bpe_path: Optional[str] = None, mask_from_length: bool = False):
        self._init_kwargs = dict(max_len=max_len, bpe_path=bpe_path, mask_from_length=mask_from_length)
        SimpleTokenizer = _open_clip_tokenizer_module().SimpleTokenizer

        kw = {"bpe_path": str(bpe_path)} if bpe_path else {}
        self._tok = SimpleTokenizer(context_length=max_len, **kw)
        self.max_len = int(max_len)
        self.pad_id = 0
        self.sot_id = self._tok.sot_token_id
        self.eot_id = self._tok.eot_token_id
        self.vocab_size = len(self._tok.encoder)
        self.mask_from_length = mask_from_length

    def encode(self, text: str) -> List[int]:
        """Full id list [SOT] + pieces + [EOT], truncated to max_len with EOT kept last."""
        s = [self.sot_id] + self._tok.encode(text) + [self.eot_id]
        if len(s) > self.max_len:
            s = s[: self.max_len]
            s[-1] = self.eot_id
        return s

    def __call__(self, texts):
        ids, mask = _pad([self.encode(t) for t in _as_list(texts)], self.max_len, self.pad_id)
        if not self.mask_from_length:
            mask = ids != self.pad_id
        return ids, mask


# ------------------------------------------------------------------------------------------------ BERT

def _resolve(path, names: Sequence[str], what: str) -> Path:
    if path is None:
        raise ValueError(f"{what}: vocab_file is required (a file, or a folder holding one of {list(names)})")
    p = Path(path)
    if p.is_dir():
        for n in names:
            if (p / n).is_file():
                return p / n
        raise FileNotFoundError(f"{what}: folder {p} holds none of {list(names)}")
    if not p.is_file():
        raise FileNotFoundError(f"{what}: vocabulary file {p} does not exist")
    return p


class BertWordPieceTokenizer(_Rebuildable):
    """BERT WordPiece from a local vocab.txt (lower-cased): [CLS] pieces [SEP], zero padded."""

    name = "bert"

    def __init__(self, vocab_file, max_len: int = 20, do_lower_case: bool = True):
        from transformers import BertTokenizer

        self._init_kwargs = dict(vocab_file=vocab_file, max_len=max_len, do_lower_case=do_lower_case)
        if max_len < 2:
            raise ValueError(f"bert tokenizer: max_len must be >= 2, got {max_len}")
        self.vocab_file = str(_resolve(vocab_file, ("vocab.txt",), "bert tokenizer"))
        self._tok = BertTokenizer(self.vocab_file, do_lower_case=do_lower_case)
        self.max_len = int(max_len)
        self.pad_id = int(self._tok.pad_token_id)
        self.cls_id = int(self._tok.cls_token_id)
        self.sep_id = int(self._tok.sep_token_id)
        self.unk_id = int(self._tok.unk_token_id)
        self.vocab_size = len(self._tok)

    def tokenize(self, text: str) -> List[str]:
        return self._tok.tokenize(text)

    def __call__(self, texts):
        texts = _as_list(texts)
        if not texts:
            return torch.zeros(0, self.max_len, dtype=torch.long), torch.zeros(0, self.max_len, dtype=torch.bool)
        out = self._tok(texts, padding="max_length", truncation=True, max_length=self.max_len,
                        return_tensors="pt", return_token_type_ids=False)
        return out["input_ids"].long(), out["attention_mask"].bool()


# ------------------------------------------------------------------------------------------------ BEiT-3

_CLEAN_DELETE = str.maketrans("", "", ".,'!?\"()*#:;")


def clean_string(text: str) -> str:
    """SimVG's expression cleaning: lowercase, delete . , ' ! ? " ( ) * # : ; and turn - and / into spaces."""
    return text.lower().translate(_CLEAN_DELETE).replace("-", " ").replace("/", " ")


class Beit3Tokenizer(_Rebuildable):
    """XLM-R sentencepiece with the fairseq offset, as SimVG feeds BEiT-3 (see module docstring)."""

    name = "beit3"
    BOS, PAD, EOS, UNK = 0, 1, 2, 3

    def __init__(self, vocab_file, max_len: int = 20, min_vocab: int = 1000, clean: bool = True,
                 allow_empty: bool = False):
        import sentencepiece as spm

        self._init_kwargs = dict(vocab_file=vocab_file, max_len=max_len, min_vocab=min_vocab, clean=clean,
                                 allow_empty=allow_empty)
        if max_len < 2:
            raise ValueError(f"beit3 tokenizer: max_len must be >= 2, got {max_len}")
        self.vocab_file = str(_resolve(vocab_file, ("beit3.spm", "sentencepiece.bpe.model", "spm.model"),
                                       "beit3 tokenizer"))
        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.vocab_file)
        except Exception as e:  # sentencepiece raises OSError / RuntimeError with terse messages
            raise ValueError(f"beit3 tokenizer: cannot load sentencepiece model {self.vocab_file}: {e}") from e
        n = self._sp.get_piece_size()
        if n <= 5 or n < min_vocab:
            raise ValueError(
                f"beit3 tokenizer: sentencepiece model {self.vocab_file} has only {n} pieces "
                f"(need > 5 and >= min_vocab={min_vocab}); this is not the BEiT-3/XLM-R vocabulary "
                f"(pass min_vocab explicitly for a small test model)")
        self.num_pieces = n
        self.max_len = int(max_len)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = self.PAD, self.BOS, self.EOS, self.UNK
        self.vocab_size = n + 2
        self.clean = clean
        self.allow_empty = allow_empty

    def piece_ids(self, text: str) -> List[int]:
        """Fairseq ids of the pieces of ``text`` (after cleaning), without BOS/EOS and untruncated."""
        t = clean_string(text) if self.clean else text
        return [self.UNK if i == 0 else i + 1 for i in self._sp.encode(t, out_type=int)]

    def encode(self, text: str) -> List[int]:
        ids = self.piece_ids(text)
        if not ids and not self.allow_empty:
            raise ValueError(f"beit3 tokenizer: expression {text!r} gives no token after cleaning")
        return [self.BOS] + ids[: self.max_len - 2] + [self.EOS]

    def __call__(self, texts):
        return _pad([self.encode(t) for t in _as_list(texts)], self.max_len, self.PAD)


# ------------------------------------------------------------------------------------------------ factory

_DEFAULT_LEN = {"clip": 77, "bert": 20, "beit3": 20}


def build_tokenizer(kind: str, max_len: Optional[int] = None, vocab_file=None, **kwargs) -> Tokenizer:
    """Build a tokenizer by kind.

    kind "clip":  max_len 77; vocab_file = optional BPE .txt.gz (default: the one in open_clip); kwargs:
                  mask_from_length.
    kind "bert":  max_len 20 (TransVG RefCOCO; pass 40 for RefCOCOg / ResVG / VG-LAW); vocab_file = vocab.txt
                  or its folder (required); kwargs: do_lower_case.
    kind "beit3": max_len 20; vocab_file = beit3.spm / sentencepiece.bpe.model or its folder (required);
                  kwargs: min_vocab (1000), clean (True), allow_empty (False).
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    n = int(max_len) if max_len is not None else _DEFAULT_LEN[kind]
    if kind == "clip":
        return ClipTokenizer(max_len=n, bpe_path=vocab_file, **kwargs)
    if kind == "bert":
        return BertWordPieceTokenizer(vocab_file, max_len=n, **kwargs)
    return Beit3Tokenizer(vocab_file, max_len=n, **kwargs)


# ------------------------------------------------------------------------------------------------ assets

def train_sentencepiece(sentences: Iterable[str], out_prefix, vocab_size: int = 1000, model_type: str = "unigram",
                        clean: bool = True, **trainer_kwargs) -> str:
    """Train a sentencepiece model with the XLM-R id layout (<unk> 0, <s> 1, </s> 2, no pad piece).

    ``sentences`` are cleaned with `clean_string` first (``clean=True``) so the pieces match what
    `Beit3Tokenizer` feeds the model.  ``vocab_size`` is a soft limit (``hard_vocab_limit=False``): small
    corpora give fewer pieces.  Writes ``<out_prefix>.model`` / ``.vocab`` and returns the .model path.
    """
    import sentencepiece as spm

    sents = [clean_string(s) if clean else s for s in sentences]
    sents = [s for s in sents if s.strip()]
    if not sents:
        raise ValueError("train_sentencepiece: no non-empty sentence")
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    kw = dict(model_type=model_type, hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=1,
              eos_id=2, pad_id=-1, minloglevel=2, num_threads=1)
    kw.update(trainer_kwargs)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sents), model_prefix=str(out_prefix),
                                   vocab_size=int(vocab_size), **kw)
    return str(out_prefix) + ".model"


def _basic_words(text: str, lowercase: bool) -> List[str]:
    """BERT-like basic tokenization: (lowercase + strip accents), split on whitespace and punctuation."""
    if lowercase:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return re.findall(r"[^\W_]+|[^\w\s]|_", text)


def build_wordpiece_vocab(sentences: Iterable[str], out_file, num_unused: int = 99, lowercase: bool = True,
                          min_freq: int = 1, max_words: Optional[int] = None) -> str:
    """Write a WordPiece vocab.txt from a corpus and return its path.

    Layout: [PAD], [unused0..num_unused-1], [UNK], [CLS], [SEP], [MASK], then whole words (frequency >=
    min_freq, most frequent first, ties alphabetical, at most max_words), then every single character seen
    and its "##" continuation.  With the default num_unused=99 the special ids equal bert-base-uncased's
    ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103).  Every character of the corpus is covered, so
    corpus text never maps to [UNK].
    """
    counts: Counter = Counter()
    chars = set()
    for s in sentences:
        words = _basic_words(s, lowercase)
        counts.update(words)
        for w in words:
            chars.update(w)
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(num_unused)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_freq]
    if max_words is not None:
        words = words[:max_words]
    seen = set(specials)
    vocab = list(specials)
    for tok in words + sorted(chars) + ["##" + c for c in sorted(chars)]:
        if tok not in seen:
            seen.add(tok)
            vocab.append(tok)
    out = Path(out_file)
    if out.is_dir():
        out = out / "vocab.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    return str(out)
