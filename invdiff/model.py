"""The model contract: anything with ``.schedule`` and ``.eps(x, t, label=None)``.

A model crosses the jit boundary of :func:`invdiff.solve` as a PyTree: its arrays (network
weights, prior parameters) are leaves and its structure (architecture, functions) is static,
so new weights never recompile. ``t`` always holds *original* (un-respaced) timesteps, int32
of shape (B,).

Models whose network also predicts the variance (guided-diffusion's learned-range
"learn_sigma" models, 6 output channels) set ``learned_variance = True`` and implement
:meth:`Model.eps_and_v`, returning v ∈ [-1, 1] (the interpolation between log β' and log β̃).
Ancestral solvers use it; fixed-variance models use the posterior variance β̃.

Class-conditional models that learned a "no label" class report its id as ``null_label``
(None otherwise); :func:`invdiff.guided` wraps such a model with classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import struct

from invdiff.noise import NoiseSchedule

Array = jax.Array


class Model(struct.PyTreeNode):
    """Base class of diffusion priors. Subclasses set ``schedule`` and implement :meth:`eps`."""

    schedule: NoiseSchedule

    #: True when :meth:`eps_and_v` returns a learned variance interpolation v.
    learned_variance: bool = struct.field(pytree_node=False, default=False, kw_only=True)

    #: The range of clean data, e.g. (-1.0, 1.0) for image networks: solvers clip x̂0 to it
    #: (guided-diffusion's clip_denoised). None: unbounded (analytic priors).
    data_range: tuple[float, float] | None = struct.field(pytree_node=False, default=None, kw_only=True)

    @property
    def null_label(self) -> int | None:
        """The class id of a learned "no label" class, or None. When it is not None,
        ``label=None`` runs a class-conditional model unconditionally, and
        :func:`invdiff.guided` can apply classifier-free guidance to it."""
        return None

    @property
    def nfe_per_call(self) -> int:
        """Network evaluations one call of :meth:`eps` costs: 1, or more for wrappers (2 for
        classifier-free guidance, one per tile for a tiled model). ``Solution.nfe`` counts them."""
        return 1

    def eps(self, x: Array, t: Array, label: Array | None = None) -> Array:
        """The noise prediction ε̂(x_t, t), same shape as ``x``."""
        raise NotImplementedError

    def eps_and_v(self, x: Array, t: Array, label: Array | None = None) -> tuple[Array, Array | None]:
        """ε̂ and the variance interpolation v (None for fixed-variance models)."""
        return self.eps(x, t, label), None

    def check_input(self, x_shape: tuple[int, ...], label: Any = None) -> None:
        """Raise a clear ValueError when this model cannot take x of ``x_shape`` or ``label``.

        Called by :func:`invdiff.solve` before anything is compiled; ``x_shape`` includes the
        batch dimension. The default accepts anything and refuses labels.
        """
        if label is not None:
            raise ValueError(
                f"{type(self).__name__} is not class-conditional: call without label=..."
            )


class FunctionModel(Model):
    """Wrap ``eps_fn(x, t) -> eps`` (or ``eps_fn(x, t, label)``) as a model.

    ``var_fn(x, t)``, if given, returns the learned-range variance interpolation v ∈ [-1, 1].
    ``data_range=(-1.0, 1.0)`` makes solvers clip x̂0 to it, as for image networks.
    The functions are static parts of the PyTree: pass the same function objects to reuse
    compiled programs.
    """

    eps_fn: Callable[..., Array] = struct.field(pytree_node=False, kw_only=True)
    var_fn: Callable[..., Array] | None = struct.field(pytree_node=False, default=None, kw_only=True)
    class_conditional: bool = struct.field(pytree_node=False, default=False, kw_only=True)

    def __init__(self, eps_fn: Callable[..., Array], schedule: NoiseSchedule, *,
                 var_fn: Callable[..., Array] | None = None, class_conditional: bool = False,
                 learned_variance: bool | None = None, data_range: tuple[float, float] | None = None):
        object.__setattr__(self, "eps_fn", eps_fn)
        object.__setattr__(self, "schedule", schedule)
        object.__setattr__(self, "var_fn", var_fn)
        object.__setattr__(self, "class_conditional", class_conditional)
        object.__setattr__(self, "learned_variance", var_fn is not None)
        object.__setattr__(self, "data_range", data_range)

    def eps(self, x: Array, t: Array, label: Array | None = None) -> Array:
        if self.class_conditional:
            return self.eps_fn(x, t, label)
        return self.eps_fn(x, t)

    def eps_and_v(self, x: Array, t: Array, label: Array | None = None) -> tuple[Array, Array | None]:
        eps = self.eps(x, t, label)
        if self.var_fn is None:
            return eps, None
        v = self.var_fn(x, t, label) if self.class_conditional else self.var_fn(x, t)
        return eps, v

    def check_input(self, x_shape: tuple[int, ...], label: Any = None) -> None:
        if label is not None and not self.class_conditional:
            raise ValueError(
                "this FunctionModel is not class-conditional: call without label=..., or build it "
                "with class_conditional=True and an eps_fn(x, t, label)"
            )
