"""invdiff.guard: outputs never replace users' files unasked; Ctrl-C is deferred to a safe point."""

from __future__ import annotations

import os
import signal

import pytest

from invdiff.guard import Interrupted, check_outputs, deferred_interrupts


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
    with pytest.raises(ValueError, match="existing directories"):
        check_outputs([tmp_path], overwrite=True)
    os.chmod(a, 0o444)
    with pytest.raises(PermissionError, match="read-only"):  # even for root: no write bit is a choice
        check_outputs([a], overwrite=True)
    assert a.read_bytes() == b"mine"


def test_sigint_is_deferred_until_check_and_nested_blocks_share_it():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    with deferred_interrupts() as state:
        os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread: sets the flag, raises nothing
        assert state.requested
        with deferred_interrupts() as inner:
            assert inner is state
        with pytest.raises(Interrupted, match="2 of 3 written") as info:
            state.check("2 of 3 written")
        assert isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGINT, previous)
