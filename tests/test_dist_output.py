"""vgcore.dist.mute_stdout: a muted rank prints nothing, unmuting restores the very same stream."""
import io
import sys

from vgcore import dist


def test_mute_and_restore_stdout(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    dist.mute_stdout(True)
    dist.mute_stdout(True)  # idempotent: the real stream is remembered once
    print("from a non-main rank")
    assert sys.stdout is not stream
    dist.mute_stdout(False)
    dist.mute_stdout(False)
    assert sys.stdout is stream
    print("from rank 0")
    assert stream.getvalue() == "from rank 0\n"
