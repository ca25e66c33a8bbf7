"""vglaw: see vglaw/README.md."""
