"""Shared test set-up: small shapes, CPU, and the reference fixtures in ../shared."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from invdiff import compiler

# Tests compile ~2200 small programs and run each once or twice; compiling is ~3/4 of the suite's
# time. LLVM -O0 without its expensive passes compiles them 10-35 % faster
# (benchmarks/results/compile_time_cpu_o0.md), and XLA:CPU's older kernel emitters (no MLIR
# pipeline per kernel) take the suite from 469 to 312 s on 2 cores, at run-time costs that short
# runs do not feel. (The library keeps the new emitters: at -O1 they compile its solver programs
# faster.) Set before JAX starts its backend, inherited by the tests' subprocesses; a user's
# XLA_FLAGS win.
_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# XLA aborts the process on a flag it does not know: the two XLA:CPU flags only with a jaxlib known
# to have them, as the library's own options (importing jax does not read XLA_FLAGS yet: its
# backend does, at the first computation)
if compiler._jaxlib_version() >= compiler.MIN_JAXLIB:
    _FLAGS += " --xla_cpu_emitter_verification_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", _FLAGS)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INVDIFF_SHARED", REPO.parent / "shared"))
ADM_FIXTURES = Path(os.environ.get("INVDIFF_FIXTURES", SHARED / "fixtures" / "adm"))


#: the most worker processes ``-n auto`` starts (pyproject.toml's addopts); each is a JAX process
MAX_WORKERS = 8


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core this process may run on (its CPU affinity, not the
    machine's count), at most :data:`MAX_WORKERS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """One full garbage collection here, then the heap frozen: pytest's last check for unraisable
    exceptions (at unconfigure) runs 5 more full collections, ~1 s each over a worker's heap of
    traced and compiled programs. They took so long that pytest-xdist's execnet, which gives a
    finished worker 5 s, sent it SIGINT, which landed in jax's gc callback (a
    PytestUnraisableExceptionWarning at the end of every full run). Garbage found by this
    collection is still reported."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def cpu_devices_env():
    """``make(n, **env)``: the environment for a child process with ``n`` virtual CPU devices,
    keeping this file's XLA_FLAGS (they cut the child's compile time by a third to a half)."""

    def make(n: int, **env: str) -> dict[str, str]:
        flags = f"--xla_force_host_platform_device_count={n} {os.environ.get('XLA_FLAGS', '')}".strip()
        return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, **env)

    return make


@pytest.fixture(scope="session")
def adm_fixtures() -> Path:
    if not (ADM_FIXTURES / "diffusion_io.npz").exists():
        pytest.skip(f"reference fixtures not found at {ADM_FIXTURES} (set INVDIFF_FIXTURES)")
    return ADM_FIXTURES
