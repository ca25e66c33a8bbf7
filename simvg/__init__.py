"""simvg: see simvg/README.md."""
