"""Test helpers shared by SimVG and the methods built on it (ALVG): the tiny synthetic data set of the CLI
tests, the command-line flags that point a tiny run at it, and the BEiT-3 encoder configuration the golden
fixtures record."""
from __future__ import annotations

import importlib
from pathlib import Path


def tiny_synthetic(tmp_path_factory, name: str) -> Path:
    """24 train / 24 val / 12 test expressions (seed 3, SeqTR layout with the gRefCOCO-style split, JPEG)."""
    from vgcore.synthetic.scenes import generate
    out = tmp_path_factory.mktemp(name)
    generate(out, num_train=24, num_val=24, num_test=12, seed=3, formats=("seqtr",), grec=True,
             image_format="jpg", verbose=False)
    return out


def common(syn, out) -> list:
    """Flags of a tiny CPU run on ``syn`` writing to ``out``."""
    return ["--backbone", "tiny", "--data_root", str(syn / "seqtr"), "--image_root", str(syn / "images"),
            "--beit3_spm", str(syn / "tokenizers" / "spm.model"), "--device", "cpu", "--num_workers", "0",
            "--output_dir", str(out)]


def train_args(method: str, argv):
    """``<method>/train.py``'s parsed flags (no tensorboard)."""
    return importlib.import_module(f"{method}.train").get_args_parser().parse_args(argv + ["--tensorboard", "0"])


def run_eval(method: str, argv) -> dict:
    """``<method>/eval.py``'s main on ``argv``: {split: metrics}."""
    mod = importlib.import_module(f"{method}.eval")
    return mod.main(mod.get_args_parser().parse_args(argv))


def beit3_encoder_expected(bcfg) -> dict:
    """torchscale EncoderConfig entries: the architecture values our BEiT-3 implements; None = no effect on
    an eval forward."""
    fixed = dict(encoder_normalize_before=True, normalize_output=True, activation_fn="gelu", no_scale_embedding=True,
                 layernorm_embedding=False, moe_freq=0, moe_expert_count=0, use_xmoe=False, rel_pos_buckets=0,
                 max_rel_pos=0, deepnorm=False, subln=True, multiway=True, share_encoder_input_output_embed=False,
                 no_output_layer=True, xpos_rel_pos=False)
    unused = ("dropout", "drop_path_rate", "attention_dropout", "activation_dropout", "moe_top1_expert",
              "moe_gating_use_fp32", "moe_eval_capacity_token_fraction", "moe_second_expert_policy",
              "moe_normalize_gate_prob_before_dropping", "bert_init", "checkpoint_activations", "fsdp", "ddp_rank",
              "xpos_scale_base")
    return dict(fixed, **dict.fromkeys(unused), encoder_embed_dim=bcfg.embed_dim,
                encoder_attention_heads=bcfg.num_heads, encoder_ffn_embed_dim=bcfg.ffn_dim,
                encoder_layers=bcfg.num_layers, max_source_positions=bcfg.max_text_positions,
                layernorm_eps=bcfg.layernorm_eps, vocab_size=bcfg.vocab_size, img_size=bcfg.img_hw[0],
                patch_size=bcfg.patch_size, in_chans=bcfg.in_chans)
