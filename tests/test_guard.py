"""invdiff.guard: outputs never replace users' files unasked; Ctrl-C is deferred to a safe point."""

from __future__ import annotations

import os
import signal

import pytest

from invdiff.guard import check_outputs, deferred_interrupts


def test_check_outputs_refuses_existing_duplicate_input_and_read_only_files(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=r"a\.png.*--overwrite"):
        check_outputs([a, b])
    assert check_outputs([a, b], overwrite=True) == [a, b]
    with pytest.raises(ValueError, match="same file"):
        check_outputs([b, tmp_path / "." / "b.png"], overwrite=True)
    with pytest.raises(ValueError, match="overwrite an input"):
        check_outputs([a], inputs=[a], overwrite=True)
    os.chmod(a, 0o444)
    if not os.access(a, os.W_OK):  # root can write anything: nothing to test then
        with pytest.raises(PermissionError, match="read-only"):
            check_outputs([a], overwrite=True)
    assert a.read_bytes() == b"mine"


def test_sigint_is_deferred_until_check():
    with deferred_interrupts() as state:
        os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread: sets the flag, raises nothing
        assert state.requested
        with pytest.raises(KeyboardInterrupt):
            state.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
