"""Classifier-free guidance as a model wrapper: ``invdiff.guided(model, w)``.

Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance", eq. 6), with their w:

    ε̃(x_t, c) = (1 + w) ε(x_t, c) − w ε(x_t, ∅),

where ∅ is the model's learned null class (``model.null_label``). w = 0 is the conditional
model, w > 0 sharpens towards the class, w = −1 is the unconditional model. The wrapper is a
:class:`~invdiff.model.Model`, so every solver takes it unchanged (composition, as in optax).

Cost: the conditional and the unconditional prediction are one network call on a batch of
2B images (the inner model sees labels ``concat(c, ∅)``); ``nfe_per_call`` is twice the
inner model's, so ``Solution.nfe`` counts both evaluations.

Learned variance: the guided model reports the *conditional* prediction's v (as GLIDE and
guided-diffusion's CFG samplers do, which take the variance channels of the conditional half).
Guidance changes the mean, not the learned variance.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.model import Model

Array = jax.Array


class Guided(Model):
    """``model`` with classifier-free guidance of weight ``w`` (an array leaf: a sweep over w
    reuses the compiled program). ``w`` is a scalar or one weight per sample, shape (B,).
    Build it with :func:`guided`."""

    model: Model
    w: Array

    @property
    def null_label(self) -> int | None:
        return None  # the guided model needs a class; its inner model may run without one

    @property
    def nfe_per_call(self) -> int:
        return 2 * self.model.nfe_per_call

    def _both(self, x: Array, t: Array, label: Array) -> tuple[Array, Array, Array, Array | None]:
        """(w, ε(x, c), ε(x, ∅), v(x, c)) from one call of the inner model on 2B images."""
        b = np.shape(x)[0]
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        label = jnp.asarray(label)
        null = jnp.full((b,), self.model.null_label, label.dtype)
        eps, v = self.model.eps_and_v(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                                      jnp.concatenate([label, null]))
        w = jnp.asarray(self.w, x.dtype)
        w = w.reshape((-1,) + (1,) * (x.ndim - 1)) if w.ndim else w
        return w, eps[:b], eps[b:], None if v is None else v[:b]

    def eps(self, x: Array, t: Array, label: Array | None = None) -> Array:
        return self.eps_and_v(x, t, label)[0]

    def eps_and_v(self, x: Array, t: Array, label: Array | None = None) -> tuple[Array, Array | None]:
        self.check_input(tuple(np.shape(x)), label)
        w, eps_c, eps_u, v_c = self._both(x, t, label)
        return (1.0 + w) * eps_c - w * eps_u, v_c

    def check_input(self, x_shape: tuple[int, ...], label: Any = None) -> None:
        if label is None:
            raise ValueError("classifier-free guidance needs class labels: pass label=... (or use the "
                             "unguided model with label=None for unconditional restoration)")
        self.model.check_input(tuple(x_shape), label)
        if self.model.null_label is not None and not isinstance(label, jax.core.Tracer):
            lv = np.asarray(label)
            if lv.size and (lv == self.model.null_label).any():
                raise ValueError(f"label {self.model.null_label} is the null class: guide towards a real "
                                 f"class, or use the unguided model with label=None")
        w_shape = np.shape(self.w)
        if w_shape not in ((), (x_shape[0],)):
            raise ValueError(f"the guidance weight w must be a scalar or one weight per sample, shape "
                             f"({x_shape[0]},); got shape {w_shape}")


def guided(model: Model, w: float | Array) -> Guided:
    """``model`` with classifier-free guidance ε̃ = (1 + w) ε(x, c) − w ε(x, ∅).

    ``model`` must have a learned null class (``model.null_label`` not None, e.g. the bundled
    emoji64 v2); ``w`` is a float or an array of shape (B,). Pass class labels to the solver as
    usual (``solve(..., label=c)``). Each call costs two network evaluations, counted in
    ``Solution.nfe``.
    """
    if getattr(model, "null_label", None) is None:
        raise ValueError(f"classifier-free guidance needs a model with a learned null class (model.null_label); "
                         f"this {type(model).__name__} has none. Train or fine-tune it with label dropout "
                         f"(ADMConfig null_class=True), or use it without guidance")
    w = jnp.asarray(w, jnp.float32)
    if w.ndim > 1 or not bool(jnp.all(jnp.isfinite(w))):
        raise ValueError(f"the guidance weight w must be a finite scalar or a vector (B,), got {w!r}")
    return Guided(schedule=model.schedule, model=model, w=w, learned_variance=model.learned_variance,
                  data_range=model.data_range)
