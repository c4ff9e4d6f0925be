"""Guards for the commands that write users' files: no silent overwrite, safe interruption.

* :func:`check_outputs` refuses, before any work, to replace files that already exist (unless
  the user asked for it) and to write two results to one name.
* :func:`deferred_interrupts` turns Ctrl-C (SIGINT) into a request that long jobs honour at a
  safe point — between batches, never inside JAX's compiler or a running computation — so that
  finished work is written before the process stops with exit status 130.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

#: How many clashing paths an error message lists before it says "and N more".
MAX_LISTED = 10


def _listing(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:MAX_LISTED])
    return shown + (f" and {len(paths) - MAX_LISTED} more" if len(paths) > MAX_LISTED else "")


def check_outputs(paths: Iterable[str | os.PathLike[str]], *, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike[str]] = (), flag: str = "--overwrite") -> list[Path]:
    """Refuse outputs that would lose a user's data; returns the paths as ``Path`` objects.

    Raises, listing the offending files:

    * ``ValueError`` when two outputs map to one file, or an output is one of ``inputs``
      (never allowed, ``overwrite`` or not);
    * ``FileExistsError`` when outputs already exist and ``overwrite`` is False (the message
      names ``flag``, the option that allows it);
    * ``PermissionError`` when an existing output is read-only (even with ``overwrite``).
    """
    out = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    dupes = []
    for p in out:
        r = p.resolve()
        if r in seen:
            dupes.append(p)
        seen[r] = p
    if dupes:
        raise ValueError(f"two results would be written to the same file: {_listing(dupes)}; rename the inputs "
                         f"or write them to different directories")
    protected = {Path(p).resolve() for p in inputs}
    hits = [p for p in out if p.resolve() in protected]
    if hits:
        raise ValueError(f"writing {_listing(hits)} would overwrite an input; choose another output directory")
    existing = [p for p in out if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) exist already: {_listing(existing)}; "
                              f"pass {flag} to replace them, or choose another output directory")
    locked = [p for p in existing if p.is_file() and not os.access(p, os.W_OK)]
    if locked:
        raise PermissionError(f"output file(s) are read-only: {_listing(locked)}; make them writable or choose "
                              f"another output directory")
    return out


class Interrupts:
    """The state of :func:`deferred_interrupts`: ``requested`` becomes True at the first Ctrl-C."""

    def __init__(self) -> None:
        self.requested = False
        self.count = 0

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if an interrupt was requested (call at a safe point)."""
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def deferred_interrupts(message: str = "interrupt received: stopping after the current batch "
                                       "(Ctrl-C again to stop at once)") -> Iterator[Interrupts]:
    """Within the block, SIGINT sets ``state.requested`` instead of raising ``KeyboardInterrupt``.

    The job calls ``state.check()`` at its safe points (after writing a finished batch), which
    raises ``KeyboardInterrupt`` for the command line to turn into exit status 130. A second
    Ctrl-C ends the process at once with status 130 (files are written atomically, so nothing
    is left half-written). Outside the main thread, or where signals cannot be caught, the
    block runs unguarded.
    """
    state = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):  # noqa: ARG001
        state.count += 1
        if state.count >= 2:
            print("\ninterrupted again: stopping now", file=sys.stderr, flush=True)
            os._exit(130)
        state.requested = True
        print(f"\n{message}", file=sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["Interrupts", "check_outputs", "deferred_interrupts"]
