"""The CPU stand-in for real data and real weights (not part of the data layer).

* `vgcore.synthetic.scenes`: procedural scenes of shapes with referring expressions (attributes, spatial
  relations, same-kind distractors, multi- and no-target, masks), written in every official on-disk format;
  ``python -m vgcore.synthetic --out DIR`` writes a dataset.
* `vgcore.synthetic.tagpretrain`: tag pretraining of tiny image / text towers on synthetic scenes and
  expressions, the stand-in for the pretrained weights each paper starts from.
* `vgcore.synthetic.baselines`: trivial and noun-only baselines a tiny preset must beat.
"""
