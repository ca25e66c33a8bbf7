"""vglaw: VG-LAW (CVPR'23), language-adaptive weight generation for multi-task visual grounding.

Modules: `vglaw.model` (config, `build_model`, the network), `vglaw.vit` (ViTDet backbone), `vglaw.law`
(adaptive qkv law types and the weight generator), `vglaw.loss` (criterion), `vglaw.convert` (official
MindSpore / detectron2 / BERT checkpoints), `vglaw.method` (the `vgcore.method` protocol: `vglaw.recipes` flags,
`vglaw.data` records and pipeline, `vglaw.evaluation` metrics) and the scripts train.py / eval.py / predict.py.
"""
