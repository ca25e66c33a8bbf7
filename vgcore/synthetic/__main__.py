"""``python -m vgcore.synthetic --out DIR ...``: write the synthetic dataset (see `vgcore.synthetic.scenes`)."""
from vgcore.synthetic.scenes import main

if __name__ == "__main__":
    main()
