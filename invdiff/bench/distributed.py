"""Several processes (several GPU hosts, a SLURM job): joining, splitting the images, waiting.

Each process runs its own share of the images on its local devices (:func:`share`) and writes
its own records shard; no collective runs inside a solve. Process 0 waits for the others
(:func:`barrier`), merges the shards and writes the tables.
"""

from __future__ import annotations

import os

import jax

#: Environment variables that mean "launched as one of several processes" (jax.distributed finds
#: the coordinator, the process count and the process id from them).
_LAUNCHERS = {"SLURM": ("SLURM_NTASKS", "SLURM_STEP_NODELIST"),
              "Open MPI": ("OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri")}


def detected_launcher() -> str | None:
    """The cluster launcher of a multi-process job (``SLURM``, ``Open MPI``), or None."""
    for name, (count, marker) in _LAUNCHERS.items():
        try:
            n = int(os.environ.get(count, "1"))
        except ValueError:
            continue
        if n > 1 and marker in os.environ:
            return name
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> tuple[int, int]:
    """Join the other processes of a multi-process run; returns (process index, process count).

    With ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and ``process_id``,
    calls :func:`jax.distributed.initialize` with them; without them, calls it without
    arguments when a multi-process launch is detected (SLURM with several tasks, Open MPI),
    where JAX reads them from the environment; otherwise runs as a single process. Must come
    before anything is computed with JAX. CPU processes exchange data through gloo.
    """
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    explicit = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(explicit):
        if not all(explicit):
            raise ValueError("--coordinator HOST:PORT, --num-processes N and --process-id I go together: give all "
                             "three (or none, under SLURM or Open MPI)")
        host, _, port = str(coordinator).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--coordinator must be HOST:PORT (process 0's address), got {coordinator!r}")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process-id must be in [0, {num_processes}) for --num-processes {num_processes}, got "
                             f"{process_id}")
        if num_processes == 1:
            return 0, 1
    elif detected_launcher() is None:
        return 0, 1
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a JAX without the option: CPU collectives are its default
        pass
    if any(explicit):
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()
    return jax.process_index(), jax.process_count()


def share(n: int, process: int, processes: int) -> list[int]:
    """The image indices of ``range(n)`` process ``process`` of ``processes`` runs (every processes-th)."""
    return list(range(process, n, processes))


def barrier(name: str) -> None:
    """Wait until every process got here (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


__all__ = ["barrier", "detected_launcher", "initialize", "share"]
