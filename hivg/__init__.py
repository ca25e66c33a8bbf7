"""hivg: HiVG (ACM MM'24) -- CLIP with a multi-layer adaptive cross-modal bridge and Hi LoRA (see hivg/README.md).

Entry points: `hivg.model.build_model`, `hivg.loss.HiVGCriterion`, `hivg.convert` (official checkpoints,
pretrained CLIP).  Submodules are imported on demand to keep ``import hivg`` cheap.
"""
