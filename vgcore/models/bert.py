"""BERT text encoder through ``transformers.BertModel``, plus the conversion of released BERT weight files.

* `bert_config(preset, **overrides)`: a ``transformers.BertConfig`` (``"base"`` = bert-base-uncased: 12 layers,
  hidden 768, 12 heads, FFN 3072, vocab 30522, 512 positions, LayerNorm eps 1e-12, erf GELU; ``"tiny"`` for
  CPU tests).  Nothing is downloaded.
* `build_bert(config)`: ``BertModel(config)`` (with its pooler, so the parameter names equal the released
  ``bert.*`` names minus the prefix), attention through ``scaled_dot_product_attention``.
* `bert_layer_mean(bert, ids, mask, num_layers)`: the mean of the last ``num_layers`` encoder layer outputs
  (the embedding output is not a layer), token types all zero, padding keys masked.  Masking adds the dtype
  minimum where pytorch-pretrained-bert adds -10000; both give exactly zero attention in float32.
* `convert_bert_state_dict(sd)`: Google-converted ``pytorch_model.bin`` files (pytorch-pretrained-bert: ``bert.``
  prefix, LayerNorm ``gamma``/``beta``, ``cls.*`` pre-training heads) and Hugging Face files (``bert.`` prefix or
  none, ``weight``/``bias``) -> ``BertModel`` keys, with a report of what was dropped and what no rule maps.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Tuple

import torch

__all__ = ["BERT_PRESETS", "bert_config", "build_bert", "bert_layer_mean", "convert_bert_state_dict",
           "is_bert_model_key", "load_bert_file"]

BERT_PRESETS: Dict[str, dict] = {
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
    "tiny": dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=128, max_position_embeddings=64, type_vocab_size=2),
}

_COMMON = dict(hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
               layer_norm_eps=1e-12, initializer_range=0.02, pad_token_id=0)


def bert_config(preset: str = "base", **overrides):
    """A ``transformers.BertConfig`` from a preset name plus overrides (any BertConfig field)."""
    from transformers import BertConfig

    if preset not in BERT_PRESETS:
        raise KeyError(f"unknown BERT preset {preset!r}; choose from {sorted(BERT_PRESETS)}")
    kw = {**_COMMON, **BERT_PRESETS[preset], **overrides}
    cfg = BertConfig(**kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_bert(config=None, add_pooling_layer: bool = True):
    """``transformers.BertModel`` from a BertConfig, a dict of BertConfig fields or a preset name."""
    from transformers import BertConfig, BertModel

    if config is None or isinstance(config, str):
        config = bert_config(config or "base")
    elif isinstance(config, Mapping):
        config = bert_config("base", **dict(config))
    elif not isinstance(config, BertConfig):
        raise TypeError(f"build_bert: expected a BertConfig, dict or preset name, got {type(config).__name__}")
    return BertModel(config, add_pooling_layer=add_pooling_layer)


def bert_layer_mean(bert, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_layers: int = 1) -> torch.Tensor:
    """[B, L] ids, [B, L] mask (True / 1 = real token) -> [B, L, hidden]: mean of the last ``num_layers``
    encoder layers' outputs."""
    n_layers = bert.config.num_hidden_layers
    if not 1 <= num_layers <= n_layers:
        raise ValueError(f"bert_layer_mean: num_layers must be in 1..{n_layers}, got {num_layers}")
    out = bert(input_ids=input_ids, attention_mask=attention_mask.long(),
               token_type_ids=torch.zeros_like(input_ids), output_hidden_states=True)
    hidden = out.hidden_states[1:]  # index 0 is the embedding output
    if num_layers == 1:
        return hidden[-1]
    return torch.stack(hidden[-num_layers:], 0).mean(0)


_MODEL_KEY = re.compile(
    r"^(embeddings\.(word_embeddings|position_embeddings|token_type_embeddings)\.weight"
    r"|embeddings\.LayerNorm\.(weight|bias)"
    r"|encoder\.layer\.\d+\.attention\.self\.(query|key|value)\.(weight|bias)"
    r"|encoder\.layer\.\d+\.attention\.output\.(dense|LayerNorm)\.(weight|bias)"
    r"|encoder\.layer\.\d+\.(intermediate|output)\.dense\.(weight|bias)"
    r"|encoder\.layer\.\d+\.output\.LayerNorm\.(weight|bias)"
    r"|pooler\.dense\.(weight|bias))$")

# dropped without complaint: pre-training heads and the non-persistent buffers some re-saves carry
_DROP = re.compile(r"^(cls\.|embeddings\.position_ids$|embeddings\.token_type_ids$)")


def is_bert_model_key(key: str) -> bool:
    """True when ``key`` names a parameter of ``transformers.BertModel`` (with pooler)."""
    return bool(_MODEL_KEY.match(key))


def convert_bert_state_dict(sd: Mapping[str, torch.Tensor], prefix: str = "bert."
                            ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """A released BERT state dict -> (``BertModel`` state dict, report).

    Rules, in order: strip a leading ``prefix`` (``bert.``); LayerNorm ``gamma`` -> ``weight``, ``beta`` ->
    ``bias`` (the legacy TF-converted names); drop ``cls.*`` and position / token-type id buffers.  The report
    holds ``dropped`` (keys deliberately left out) and ``unmapped`` (keys that are no BertModel parameter)."""
    out: Dict[str, torch.Tensor] = {}
    dropped, unmapped = [], []
    for key, value in sd.items():
        k = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if _DROP.match(k):
            dropped.append(key)
            continue
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
        if not is_bert_model_key(k):
            unmapped.append(key)
            continue
        if k in out:
            raise KeyError(f"convert_bert_state_dict: two keys map to {k!r} (one is {key!r})")
        out[k] = value
    return out, {"dropped": dropped, "unmapped": unmapped}


def load_bert_file(path) -> Dict[str, torch.Tensor]:
    """The tensors of a ``pytorch_model.bin`` / ``model.safetensors`` file (or a folder holding one)."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(p))
    return torch.load(p, map_location="cpu", weights_only=True)
