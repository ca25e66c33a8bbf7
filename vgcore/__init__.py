"""vgcore: the shared library of the visual grounding codebase.

Datasets in every official format, box ops, metrics, tokenizers, DDP helpers and the training engine.
Submodules are imported lazily by name (``import vgcore.boxes``) so that ``import vgcore`` stays cheap.
"""
__version__ = "0.1.0"
