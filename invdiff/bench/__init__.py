"""``invdiff bench``: solvers x operators over your images, resumable, on one or many processes.

:func:`run_bench` restores a set of images with every solver under every named degradation
(:mod:`operators.named`) and keeps one JSON line per (solver, operator, image) in
``OUT/records.jsonl``; the tables, plots and grids are rebuilt from those lines alone
(``invdiff bench --report OUT``). A rerun of the same command skips what is done.

:func:`run_bench` is :func:`~invdiff.bench.run.prepare` (every check, before compiling: a
:class:`~invdiff.bench.run.Setup`), :func:`~invdiff.bench.run.open_run` (the user's files
guarded, records opened, what is left) and :func:`~invdiff.bench.run.run_batches`, then the
merge and the report. The parts, each usable on its own (the studies build on them):

* :mod:`invdiff.bench.data` — :func:`~invdiff.bench.data.open_images` (a folder, an ``.npz``,
  an array or the bundled set) returns an :class:`~invdiff.bench.data.ImageSet`: stable ids,
  labels, ``read(indices)`` at the model's size, ``check()`` before compiling.
* :mod:`invdiff.bench.models` — :func:`~invdiff.bench.models.load` (a name, ``.pt`` + preset,
  orbax directory, or a model) with the dict that identifies it;
  :func:`~invdiff.bench.models.resolve_labels` (labels, ``--label``, the null class, or a
  clear error); :func:`~invdiff.bench.models.image_shape`.
* :mod:`invdiff.bench.cells` — :func:`~invdiff.bench.cells.measure` (per-image masks and
  noise from :func:`~invdiff.bench.cells.image_seed`), :func:`~invdiff.bench.cells.solve_each`
  (``solve`` with one key per image: results independent of batching),
  :func:`~invdiff.bench.cells.run_batch` (solve, time and score one measured batch).
* :mod:`invdiff.bench.records` — :class:`~invdiff.bench.records.RecordStore` (append with
  fsync, resume, refuse another configuration, one shard per process, merge) and
  :func:`~invdiff.bench.records.read_all`.
* :mod:`invdiff.bench.report` — :func:`~invdiff.bench.report.summarize` (mean ± 95 % CI),
  :func:`~invdiff.bench.report.write_report`, the plots and grids.
* :mod:`invdiff.bench.distributed` — :func:`~invdiff.bench.distributed.initialize`
  (``jax.distributed``: explicit or detected), :func:`~invdiff.bench.distributed.share`,
  :func:`~invdiff.bench.distributed.barrier`.
* :mod:`invdiff.bench.timing` — :func:`compile_clock` (compile seconds through
  :mod:`jax.monitoring`) and :func:`machine_info`.

Metrics come from the registry :data:`invdiff.metrics.METRICS` (add one with
:func:`invdiff.metrics.register`).
"""

from invdiff.bench.cli import CLI_STEPS, add_arguments, run_from_args
from invdiff.bench.run import DEFAULT_OPERATORS, DEFAULT_SOLVERS, run_bench
from invdiff.bench.timing import COMPILE_EVENTS, CompileClock, compile_clock, machine_info

__all__ = ["CLI_STEPS", "COMPILE_EVENTS", "DEFAULT_OPERATORS", "DEFAULT_SOLVERS", "CompileClock", "add_arguments",
           "compile_clock", "machine_info", "run_bench", "run_from_args"]
