"""invdiff: zero-shot solvers for linear inverse problems with diffusion priors, in JAX.

The public names are listed in ``__all__``; see the README for a tour. On import, JAX's
persistent compilation cache is switched on in ``~/.cache/invdiff/jax`` (or
``$INVDIFF_CACHE_DIR``) so a second process does not pay for compilation again. Set
``INVDIFF_COMPILATION_CACHE=0`` to leave JAX's cache settings untouched.
"""

from __future__ import annotations

import os


def _configure_compilation_cache() -> None:
    if os.environ.get("INVDIFF_COMPILATION_CACHE", "1").lower() in ("0", "false", "off", "no"):
        return
    import jax

    if jax.config.jax_compilation_cache_dir:  # the user configured it already
        return
    cache_dir = os.environ.get("INVDIFF_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "invdiff", "jax"
    )
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError:
        return  # an unwritable home must not break imports; compilation just is not cached
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


_configure_compilation_cache()

from invdiff.guidance import Guided, guided  # noqa: E402
from invdiff.model import FunctionModel, Model  # noqa: E402
from invdiff.noise import NoiseSchedule  # noqa: E402
from invdiff.operator import (  # noqa: E402
    Composed,
    LinearFunction,
    LinearOperator,
    MatrixFree,
    PartialIsometry,
    SVDOperator,
    compose,
)
from invdiff.schedule import repaint_schedule  # noqa: E402
from invdiff.solve import Problem, Solution, Solver, Step, noised, precompile, solve  # noqa: E402
from invdiff.tiling import TiledModel, solve_any_size, tiled, tiled_model  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Composed",
    "FunctionModel",
    "Guided",
    "LinearFunction",
    "LinearOperator",
    "MatrixFree",
    "Model",
    "NoiseSchedule",
    "PartialIsometry",
    "Problem",
    "SVDOperator",
    "Solution",
    "Solver",
    "Step",
    "TiledModel",
    "compose",
    "guided",
    "load_model",
    "noised",
    "precompile",
    "repaint_schedule",
    "solve",
    "solve_any_size",
    "tiled",
    "tiled_model",
]


def load_model(name_or_path: str, preset: str | None = None, **flags):
    """Load a diffusion model: the bundled ``"emoji64"``, a guided-diffusion ``.pt`` file, or an
    orbax directory written by ``invdiff convert``. See :func:`invdiff.nets.load_model`."""
    from invdiff.nets import load_model as _load

    return _load(name_or_path, preset=preset, **flags)
