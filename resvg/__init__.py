"""resvg: see resvg/README.md."""
