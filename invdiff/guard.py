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

    * ``ValueError`` when two outputs map to one file, an output is one of ``inputs`` or an
      existing directory (never allowed, ``overwrite`` or not);
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
    folders = [p for p in existing if p.is_dir()]
    if folders:
        raise ValueError(f"output path(s) are existing directories: {_listing(folders)}; move them or choose "
                         f"another output directory")
    if existing and not overwrite:
        raise FileExistsError(f"{len(existing)} output file(s) exist already: {_listing(existing)}; "
                              f"pass {flag} to replace them, or choose another output directory")
    # read-only: no write permission bit at all (so the user's protection counts for root too),
    # or not writable by this user
    locked = [p for p in existing if p.is_file() and (not p.stat().st_mode & 0o222 or not os.access(p, os.W_OK))]
    if locked:
        raise PermissionError(f"output file(s) are read-only: {_listing(locked)}; make them writable or choose "
                              f"another output directory")
    return out


class Interrupted(KeyboardInterrupt):
    """Raised by :meth:`Interrupts.check` at a safe point after Ctrl-C. ``str()`` is the job's
    summary (what was written, what was not), which the command line prints before exiting
    with status 130."""


#: Temporary files being written (``invdiff.images.atomic_write_bytes`` registers them): a
#: second Ctrl-C removes them before the process ends, so nothing half-written is left.
TEMPORARY_FILES: set[str] = set()

#: The state of the innermost active :func:`deferred_interrupts` block (nested blocks share it).
_ACTIVE: list[Interrupts] = []


class Interrupts:
    """The state of :func:`deferred_interrupts`: ``requested`` becomes True at the first Ctrl-C."""

    def __init__(self) -> None:
        self.requested = False
        self.count = 0

    def check(self, summary: str = "") -> None:
        """Raise :class:`Interrupted` (a ``KeyboardInterrupt``) carrying ``summary`` if an
        interrupt was requested (call at a safe point, after finished work is written)."""
        if self.requested:
            raise Interrupted(summary)


def _stop_now() -> None:
    print("\ninterrupted again: stopping now", file=sys.stderr, flush=True)
    for tmp in list(TEMPORARY_FILES):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    os._exit(130)


@contextlib.contextmanager
def deferred_interrupts(message: str = "interrupt received: finishing the current batch, then stopping "
                                       "(Ctrl-C again to stop at once)") -> Iterator[Interrupts]:
    """Within the block, SIGINT sets ``state.requested`` instead of raising ``KeyboardInterrupt``.

    The job calls ``state.check(summary)`` at its safe points (after writing a finished batch),
    which raises :class:`Interrupted` for the command line to turn into exit status 130. A
    second Ctrl-C ends the process at once with status 130, removing any temporary file being
    written (results are written atomically, so no output is ever half-written).

    Both reactions are immediate even while the main thread is inside JAX's compiler or a
    running computation, where Python signal handlers cannot run (and where a
    ``KeyboardInterrupt`` used to crash JAX): the signal is noted by a watcher thread through
    :func:`signal.set_wakeup_fd`. Nested blocks share the outer block's state. Outside the
    main thread, where signals cannot be caught, or where SIGINT is ignored (a background job
    of a shell script), the block changes nothing.
    """
    if _ACTIVE:
        yield _ACTIVE[-1]
        return
    state = Interrupts()
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield state  # not ours to catch, or ignored on purpose (e.g. a background job of a shell script)
        return

    def note() -> None:  # one SIGINT: the first asks to stop, the second stops now
        state.count += 1
        state.requested = True
        if state.count >= 2:
            _stop_now()
        print(f"\n{message}", file=sys.stderr, flush=True)

    pipe: tuple[int, int] | None = None
    previous_fd = -1

    def handler(signum, frame):  # noqa: ARG001 (runs in the main thread at its next bytecode)
        state.requested = True
        if pipe is None:  # no watcher thread (no wakeup fd on this platform): count here
            note()

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # not the main interpreter, or signals unavailable
        yield state
        return
    try:
        pipe = os.pipe()
        os.set_blocking(pipe[1], False)
        previous_fd = signal.set_wakeup_fd(pipe[1], warn_on_full_buffer=False)
    except (ValueError, OSError):  # e.g. Windows, where the wakeup fd must be a socket
        if pipe is not None:
            os.close(pipe[0])
            os.close(pipe[1])
        pipe = None

    def watch(read_fd: int) -> None:  # counts SIGINTs as the C-level handler writes them to the pipe
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                return
            if previous_fd >= 0:  # keep feeding an outer wakeup fd (an asyncio loop, say)
                with contextlib.suppress(OSError):
                    os.write(previous_fd, data)
            for _ in range(data.count(bytes([signal.SIGINT]))):
                note()

    watcher = None
    if pipe is not None:
        watcher = threading.Thread(target=watch, args=(pipe[0],), name="invdiff-interrupts", daemon=True)
        watcher.start()
    _ACTIVE.append(state)
    try:
        yield state
    finally:
        _ACTIVE.pop()
        if pipe is not None:
            signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous)
        if watcher is not None:
            os.close(pipe[1])  # the watcher reads end-of-file and returns
            watcher.join(timeout=5)
            os.close(pipe[0])

__all__ = ["Interrupted", "Interrupts", "check_outputs", "deferred_interrupts"]
