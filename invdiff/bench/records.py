"""Results as JSON lines: appended and flushed per batch, resumable, one shard per process.

A run directory holds ``records.jsonl``; in a multi-process run every process appends to its
own shard ``records.pNNN.jsonl`` and process 0 merges the shards into ``records.jsonl`` at the
end. Every file is a sequence of JSON objects, one per line, each with a ``kind``:

* ``config`` (the first line): ``{"kind": "config", "format": 1, "config": {...}}``, what
  makes results comparable (model, data, steps, seed, metrics, ...). Files with another
  configuration are refused; nothing is mixed.
* ``run``: one per invocation (process 0): the solvers, operators and images planned, the
  processes, the batch size and the machine.
* ``result``: one per (solver, operator, image): ``solver``, ``operator``, ``image`` (its id)
  and ``index``, the metrics, ``nfe``, ``seconds``, ``seed`` and the solver ``settings``.

Appends are written with one ``write`` per batch, flushed and ``fsync``-ed. A process killed
while writing leaves at most an incomplete last line: readers skip it, and the process that
owns the file truncates it before appending again, so a kill loses at most the batch in
flight and never corrupts the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Version of the line format.
FORMAT = 1
#: The merged results of a run directory.
RECORDS = "records.jsonl"

Key = tuple[str, str, str]


def shard_path(out: Path, process: int) -> Path:
    """The file process ``process`` appends to in a multi-process run."""
    return Path(out) / f"records.p{process:03d}.jsonl"


def record_files(out: Path) -> list[Path]:
    """``records.jsonl`` and the shards in ``out`` that exist."""
    out = Path(out)
    files = [out / RECORDS] if (out / RECORDS).is_file() else []
    return files + sorted(out.glob("records.p[0-9][0-9][0-9].jsonl"))


def key(result: dict) -> Key:
    """What a result is about: (solver, operator, image id)."""
    return (result["solver"], result["operator"], result["image"])


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(v: Any) -> Any:
    """Plain JSON: numpy scalars and arrays to Python, NaN and infinities to null."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
        return jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def encode(obj: dict) -> bytes:
    return (json.dumps(jsonable(obj), allow_nan=False, ensure_ascii=False) + "\n").encode()


@dataclasses.dataclass
class Contents:
    """What one records file holds. ``valid_bytes``: the length of its complete lines;
    ``torn``: an incomplete last line (a process killed while writing) was skipped."""

    path: Path
    config: dict | None = None
    runs: list[dict] = dataclasses.field(default_factory=list)
    results: list[dict] = dataclasses.field(default_factory=list)
    valid_bytes: int = 0
    torn: bool = False


def read(path: Path) -> Contents:
    """Parse a records file; an incomplete last line is skipped, any other bad line raises."""
    path = Path(path)
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    c = Contents(path, torn=bool(tail.strip()))
    for n, line in enumerate(lines, start=1):
        c.valid_bytes += len(line) + 1
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            kind = obj["kind"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} line {n} is not a record (corrupted?): remove that line, or the file to "
                             f"start over") from None
        if n == 1 and kind != "config":
            raise ValueError(f"{path} does not start with a configuration line: it was not written by invdiff bench")
        if kind == "config":
            if obj.get("format") != FORMAT:
                raise ValueError(f"{path} has record format {obj.get('format')}, this invdiff reads {FORMAT}")
            c.config = obj["config"]
        elif kind == "run":
            c.runs.append(obj)
        elif kind == "result":
            c.results.append(obj)
    return c


def read_all(out: Path) -> tuple[dict | None, list[dict], list[dict]]:
    """``(config, runs, results)`` of a run directory: ``records.jsonl`` and any shards, results
    de-duplicated (the first of identical keys wins). Files must agree on the configuration."""
    files = [read(p) for p in record_files(out)]
    configs = [c for c in files if c.config is not None]
    for c in configs[1:]:
        diff = differences(c.config, configs[0].config)
        if diff:
            raise ValueError(f"{c.path} and {configs[0].path} hold different configurations ({'; '.join(diff)})")
    runs = [r for c in files for r in c.runs]
    seen: dict[Key, dict] = {}
    for c in files:
        for r in c.results:
            seen.setdefault(key(r), r)
    return (configs[0].config if configs else None), runs, list(seen.values())


def _short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
    return s if len(s) <= 60 else s[:57] + "..."


def differences(here: dict, there: dict, prefix: str = "") -> list[str]:
    """``"name: A here, B there"`` for every entry in which two configurations differ."""
    out = []
    for k in sorted(set(here) | set(there), key=str):
        a, b = here.get(k, "(none)"), there.get(k, "(none)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {_short(a)} here, {_short(b)} there")
    return out


class RecordStore:
    """The records file one process appends to, and what the run directory already holds.

    ``RecordStore(out, config, process, processes)`` writes ``records.jsonl`` in a single
    process and the shard :func:`shard_path` otherwise. :meth:`open` refuses a directory whose
    files hold another configuration, repairs a torn last line of this process's own file,
    writes the configuration line when the file is new, and returns the results already done
    (in every file of the directory, so a rerun with another number of processes resumes too).
    """

    def __init__(self, out: str | os.PathLike[str], config: dict, process: int = 0, processes: int = 1):
        self.out = Path(out)
        self.config = jsonable(config)
        self.process, self.processes = int(process), int(processes)
        self.path = self.out / RECORDS if self.processes == 1 else shard_path(self.out, self.process)
        self.written = 0  # results appended by this store

    def open(self) -> dict[Key, dict]:
        """Check, repair and start this process's file; returns the results done, by key."""
        files = [read(p) for p in record_files(self.out)]
        for c in files:
            if c.config is not None:
                diff = differences(self.config, c.config)
                if diff:
                    raise ValueError(
                        f"{c.path} holds results of another configuration ({'; '.join(diff)}); nothing is mixed: use "
                        f"another output directory, or the options of that run to resume it")
        own = next((c for c in files if c.path == self.path), None)
        if own is not None and own.torn:
            with open(self.path, "r+b") as f:
                f.truncate(own.valid_bytes)
            print(f"{self.path}: dropped an incomplete last line (a run was stopped while writing it)",
                  file=sys.stderr)
        if own is None or own.config is None:
            self._write([{"kind": "config", "format": FORMAT, "config": self.config, "created": now()}],
                        truncate=True)
        done: dict[Key, dict] = {}
        for c in files:
            for r in c.results:
                done.setdefault(key(r), r)
        return done

    def _write(self, objs: Iterable[dict], truncate: bool = False) -> None:
        data = b"".join(encode(o) for o in objs)
        with open(self.path, "wb" if truncate else "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def append(self, results: Sequence[dict]) -> None:
        """Append results (``kind`` is added), flushed to disk before returning."""
        self._write({"kind": "result", **r} for r in results)
        self.written += len(results)

    def add_run(self, run: dict) -> None:
        """Record one invocation in ``records.jsonl`` (process 0; after :meth:`open`)."""
        main = RecordStore(self.out, self.config)
        if main.path != self.path:
            main.open()
        main._write([{"kind": "run", **run}])

    def merge(self, operators: Sequence[str] = (), solvers: Sequence[str] = ()) -> None:
        """Process 0, after every process finished: rewrite ``records.jsonl`` with the results of
        all files (sorted by operator, solver, image index) and remove the shards."""
        from invdiff.images import atomic_write_bytes

        shards = [p for p in record_files(self.out) if p.name != RECORDS]
        if not shards:
            return
        config, runs, results = read_all(self.out)
        ops, sols = _order(operators, runs, "operators"), _order(solvers, runs, "solvers")
        results.sort(key=lambda r: (ops.get(r["operator"], len(ops)), r["operator"], sols.get(r["solver"], len(sols)),
                                    r["solver"], r.get("index", 0), r["image"]))
        header = {"kind": "config", "format": FORMAT, "config": config, "created": now()}
        atomic_write_bytes(self.out / RECORDS, b"".join(encode(o) for o in [header, *runs]
                                                       + [{"kind": "result", **r} for r in results]))
        for p in shards:
            p.unlink()


def _order(first: Sequence[str], runs: list[dict], field: str) -> dict[str, int]:
    names = list(first) + [n for r in runs for n in r.get(field, [])]
    return {n: i for i, n in enumerate(dict.fromkeys(names))}


__all__ = ["FORMAT", "RECORDS", "Contents", "RecordStore", "differences", "encode", "jsonable", "key", "read",
           "read_all", "record_files", "shard_path"]
