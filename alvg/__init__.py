"""alvg: see alvg/README.md."""
