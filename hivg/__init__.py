"""hivg: see hivg/README.md."""
