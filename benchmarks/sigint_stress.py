"""Ctrl-C stress test of ``invdiff restore``: SIGINT sent to real CLI runs at several moments.

Each try starts ``python -m invdiff.cli restore`` on three 64x64 images with the bundled model,
``--batch-size 1`` (three compiled calls; the first compiles) and a fresh, empty JAX
compilation cache (so every try really compiles), waits for a moment of the run, sends SIGINT
(twice for the "double" moments) and records:

* the exit status (130 expected; 139 / -11 is a segmentation fault);
* whether any file in the output directory is partial: a leftover temporary file or a result
  that does not decode completely;
* whether the results on disk match what the command said it wrote.

Moments (cycled over the tries): ``compile+Ns`` (N seconds after the progress bar says
"compiling": inside the first batch's tracing, then XLA's compilation, which takes ~10 s
on a 2-core CPU), ``sampling`` (once the bar says "sampling"), ``import`` (1 s after the
start, while Python imports jax), ``double-compile`` (a second SIGINT 0.5 s after the first,
during compilation: the process must stop at once).

    python benchmarks/sigint_stress.py                       # this checkout, 10 tries
    python benchmarks/sigint_stress.py --repo /path/to/other  # e.g. an older checkout, for comparison

Writes ``benchmarks/results/sigint_stress_<name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

MOMENTS = ("compile+0.2s", "compile+3s", "compile+6s", "compile+9s", "sampling", "import", "double-compile")


def _reader(stream, sink: list[str]) -> None:
    for chunk in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096), b""):
        sink.append(chunk.decode(errors="replace"))


def one_try(repo: Path, moment: str, model: str, steps: int, work: Path) -> dict:
    inputs = []
    for i in range(3):
        p = work / f"in{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
        inputs.append(p)
    out = work / "out"
    cache = work / "cache"
    env = dict(os.environ, INVDIFF_CACHE_DIR=str(cache), PYTHONPATH=str(repo))
    cmd = [sys.executable, "-m", "invdiff.cli", "restore", *map(str, inputs), "--operator", "colorize",
           "--label", "0", "--model", model, "--steps", str(steps), "--batch-size", "1", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list[str] = []
    threads = [threading.Thread(target=_reader, args=(s, sink), daemon=True)
               for s, sink in ((proc.stderr, err), (proc.stdout, []))]
    for t in threads:
        t.start()

    def wait_for(text: str, timeout: float = 300.0) -> bool:
        end = time.perf_counter() + timeout
        while time.perf_counter() < end and proc.poll() is None:
            if text in "".join(err):
                return True
            time.sleep(0.02)
        return False

    sent_at = None
    if moment == "import":
        time.sleep(1.0)
    elif moment.startswith(("compile", "double")):
        wait_for("compiling")
        time.sleep(float(moment.split("+")[1][:-1]) if "+" in moment else 0.2)
    elif moment == "sampling":
        wait_for("sampling")
    if proc.poll() is None:
        sent_at = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        if moment.startswith("double"):
            time.sleep(0.5)
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    end = time.perf_counter()
    for t in threads:
        t.join(timeout=5)
    text = "".join(err).replace("\r", "\n")
    files = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    temporary = [f for f in files if f.startswith(".") and f.endswith(".tmp")]
    broken = []
    for f in files:
        if f in temporary:
            continue
        try:
            with Image.open(out / f) as im:
                im.load()
        except Exception:  # noqa: BLE001 (any failure to decode is a partial file)
            broken.append(f)
    said = re.search(r"wrote (\d+) of", text)
    lines = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln]
    return dict(moment=moment, rc=rc, segfault=rc in (139, -11), traceback="Traceback" in text,
                seconds_total=round(end - t0, 2),
                seconds_after_signal=None if sent_at is None else round(end - sent_at, 2),
                written=[f for f in files if f not in temporary], temporary=temporary, broken=broken,
                said_written=None if said is None else int(said.group(1)),
                consistent=said is None or int(said.group(1)) == len([f for f in files if f not in temporary]),
                last_line=lines[-1] if lines else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                    help="the checkout whose invdiff.cli runs (default: this one)")
    ap.add_argument("--tries", type=int, default=10)
    ap.add_argument("--model", default="emoji64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--moments", default=",".join(MOMENTS),
                    help=f"comma-separated, cycled (default {','.join(MOMENTS)})")
    ap.add_argument("--name", default="cpu", help="results file suffix (default cpu)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    # children get SIGINT as in a terminal even when this script is a shell's background job
    # (which starts with SIGINT ignored, and an ignored signal stays ignored across exec)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    repo = Path(args.repo).resolve()
    rows = []
    moments = args.moments.split(",")
    if not set(moments) <= set(MOMENTS):
        ap.error(f"--moments: choose from {', '.join(MOMENTS)}")
    for i in range(args.tries):
        moment = moments[i % len(moments)]
        with tempfile.TemporaryDirectory() as tmp:
            r = one_try(repo, moment, args.model, args.steps, Path(tmp))
        rows.append(r)
        print(json.dumps(r), flush=True)
    # -2: ended by SIGINT itself (Python's exit for an uncaught KeyboardInterrupt); a shell shows 130
    ok = [r for r in rows if r["rc"] in (130, -2) and not r["temporary"] and not r["broken"] and r["consistent"]]
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    machine = f"{cpu}, {os.cpu_count()} cores"
    summary = dict(repo=str(repo), machine=machine, tries=len(rows), ok=len(ok),
                   segfaults=sum(r["segfault"] for r in rows),
                   partial=sum(bool(r["temporary"] or r["broken"]) for r in rows), rows=rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"sigint_stress_{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = [f"# SIGINT stress test of `invdiff restore` ({args.name})", "",
          f"`python benchmarks/sigint_stress.py --tries {args.tries} --steps {args.steps} --moments {args.moments} "
          f"--name {args.name}` on {machine} (shared machine, other jobs running). Checkout: {repo.name}. "
          f"Three 64x64 inputs, bundled model `{args.model}`, "
          "`--batch-size 1`, a fresh compilation cache per try.", "",
          f"**{len(ok)} of {len(rows)} tries clean** (exit 130, or -2 = ended by SIGINT, which a shell shows as "
          f"130; no partial file; the files on disk match the message); segfaults: {summary['segfaults']}; tries "
          f"with a partial file: {summary['partial']}; tries that printed a traceback: "
          f"{sum(r['traceback'] for r in rows)}. Exit -11 is a segmentation fault, -6 an abort.", "",
          "| # | moment | exit | s after SIGINT | written | temp files | broken | traceback | last line |",
          "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        last = re.sub(r"/tmp/[^/ ]+/", "", r["last_line"])[:110].replace("|", "/")
        md.append(f"| {i + 1} | {r['moment']} | {r['rc']} | {r['seconds_after_signal']} | {len(r['written'])} | "
                  f"{len(r['temporary'])} | {len(r['broken'])} | {'yes' if r['traceback'] else ''} | {last} |")
    (out / f"sigint_stress_{args.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[4:6]))


if __name__ == "__main__":
    main()
