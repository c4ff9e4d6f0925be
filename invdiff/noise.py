"""Discrete variance-preserving noise schedules and the shared step maths.

Conventions follow guided-diffusion (openai/guided-diffusion, gaussian_diffusion.py and
respace.py): timesteps t = 0 … T-1, ``alphas_cumprod[t] = prod_{s<=t} (1 - betas[s])`` and
ᾱ_{-1} = 1 for the clean image. Schedules are built in float64 NumPy so that respacing and
the per-step coefficients keep full precision; the jitted code only ever sees float32
coefficients gathered per transition (see :mod:`invdiff.schedule`).

The step functions at the bottom take those per-transition coefficients as scalars (or
arrays that broadcast against ``x``) and are pure: they are what every solver shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _linear_betas(num_timesteps: int) -> np.ndarray:
    # guided-diffusion's get_named_beta_schedule("linear"): scaled so any T matches T=1000.
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def _cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    # Nichol & Dhariwal 2021, eq. 17, with guided-diffusion's betas_for_alpha_bar loop.
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for i in range(num_timesteps):
        t1, t2 = i / num_timesteps, (i + 1) / num_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> np.ndarray:
    """The kept timesteps of a respaced chain, with guided-diffusion's ``space_timesteps`` semantics.

    ``section_counts`` is ``"250"`` (or ``250``): split the chain into one section and keep 250
    evenly strided steps; ``"10,15,20"``: three equal sections keeping 10, 15 and 20 steps;
    ``"ddim50"``: the integer stride DDIM uses (0, 20, 40, …). Returns a sorted int64 array.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                desired = int(spec[len("ddim") :])
            except ValueError:
                raise ValueError(f"unknown respacing {section_counts!r}: expected e.g. 'ddim50'") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return np.arange(0, num_timesteps, stride, dtype=np.int64)
            raise ValueError(
                f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}; "
                "use a plain count such as '50' instead"
            )
        try:
            counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"unknown respacing {section_counts!r}: expected a count ('250'), counts per section "
                "('10,15,20') or 'ddimN'"
            ) from None
    elif isinstance(section_counts, (int, np.integer)):
        counts = [int(section_counts)]
    else:
        counts = [int(c) for c in section_counts]
    size_per = num_timesteps // len(counts)
    extra = num_timesteps % len(counts)
    start_idx = 0
    all_steps: list[int] = []
    for i, section_count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if section_count < 1 or size < section_count:
            raise ValueError(f"cannot divide a section of {size} steps into {section_count} steps")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return np.array(sorted(set(all_steps)), dtype=np.int64)


class NoiseSchedule:
    """A discrete VP noise schedule: ``betas`` of shape (T,), float64 NumPy.

    Build one with :meth:`linear`, :meth:`cosine` or ``NoiseSchedule(betas=...)``. All derived
    quantities are float64 NumPy arrays; solvers gather float32 per-step coefficients from them
    outside of any jit. A schedule is a *static* PyTree (no leaves) compared by value, so two
    equal schedules share compiled programs.
    """

    __slots__ = ("betas", "_hash")

    def __init__(self, betas: np.ndarray):
        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 1:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas > 1):
            raise ValueError("betas must be finite and lie in (0, 1]")
        betas.setflags(write=False)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "_hash", hash(betas.tobytes()))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NoiseSchedule is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseSchedule) and (
            self is other or (self._hash == other._hash and np.array_equal(self.betas, other.betas)))

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.num_timesteps}, betas=[{self.betas[0]:.3g} … {self.betas[-1]:.3g}])"

    @classmethod
    def linear(cls, num_timesteps: int = 1000) -> NoiseSchedule:
        """Ho et al. 2020's linear betas, 1e-4 … 0.02 at T = 1000 (scaled by 1000/T otherwise)."""
        return cls(betas=_linear_betas(num_timesteps))

    @classmethod
    def cosine(cls, num_timesteps: int = 1000) -> NoiseSchedule:
        """Nichol & Dhariwal 2021's cosine schedule, betas capped at 0.999."""
        return cls(betas=_cosine_betas(num_timesteps))

    @classmethod
    def named(cls, name: str, num_timesteps: int = 1000) -> NoiseSchedule:
        """``"linear"`` or ``"cosine"``, as guided-diffusion's ``noise_schedule`` flag."""
        if name == "linear":
            return cls.linear(num_timesteps)
        if name == "cosine":
            return cls.cosine(num_timesteps)
        raise ValueError(f"unknown noise schedule {name!r}: choose 'linear' or 'cosine'")

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def posterior_variance(self) -> np.ndarray:
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        # The posterior variance is 0 at t = 0; guided-diffusion repeats the value of t = 1.
        pv = self.posterior_variance
        return np.log(np.append(pv[1], pv[1:])) if pv.size > 1 else np.log(self.betas)

    @property
    def posterior_mean_coef1(self) -> np.ndarray:
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> np.ndarray:
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas) / (1.0 - self.alphas_cumprod)

    def respace(self, section_counts: str | int | Sequence[int]) -> tuple[np.ndarray, NoiseSchedule]:
        """Keep a subset of timesteps: returns ``(use_timesteps, respaced_schedule)``.

        The respaced chain has beta'_i = 1 - ᾱ(τ_i) / ᾱ(τ_{i-1}) (ᾱ before the first kept
        step is 1), exactly guided-diffusion's ``SpacedDiffusion``. A network is still called
        with the original timestep τ_i.
        """
        use = space_timesteps(self.num_timesteps, section_counts)
        abar = self.alphas_cumprod[use]
        prev = np.append(1.0, abar[:-1])
        return use, NoiseSchedule(betas=1.0 - abar / prev)


# ----------------------------------------------------------------------------------------
# Pure step maths. ``abar_t`` / ``abar_s`` are ᾱ at the current and the next timestep of a
# transition (ᾱ_{-1} = 1); scalars or arrays broadcastable against x.


# ``omab`` arguments are 1 - ᾱ computed in float64 on the host: near t = 0, 1 - ᾱ in float32
# loses ~3 digits (ᾱ ≈ 0.9999), which guided-diffusion avoids the same way. They default to
# 1 - ᾱ when not given.


def _omab(abar: Array, omab: Array | None) -> Array:
    return 1.0 - abar if omab is None else omab


def x0_from_eps(x_t: Array, eps: Array, abar_t: Array, omab_t: Array | None = None) -> Array:
    """Tweedie's x0-prediction: (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)."""
    return (x_t - jnp.sqrt(_omab(abar_t, omab_t)) * eps) / jnp.sqrt(abar_t)


def eps_from_x0(x_t: Array, x0: Array, abar_t: Array, omab_t: Array | None = None) -> Array:
    """The noise that takes x0 to x_t: (x_t - sqrt(ᾱ_t) x0) / sqrt(1 - ᾱ_t)."""
    return (x_t - jnp.sqrt(abar_t) * x0) / jnp.sqrt(_omab(abar_t, omab_t))


def q_sample(x0: Array, noise: Array, abar_t: Array, omab_t: Array | None = None) -> Array:
    """The forward process: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε."""
    return jnp.sqrt(abar_t) * x0 + jnp.sqrt(_omab(abar_t, omab_t)) * noise


def q_posterior_mean(x0: Array, x_t: Array, abar_t: Array, abar_s: Array, omab_t: Array | None = None,
                     omab_s: Array | None = None, beta: Array | None = None) -> Array:
    """Mean of q(x_s | x_t, x0) for a (possibly respaced) transition t -> s."""
    omab_t, omab_s = _omab(abar_t, omab_t), _omab(abar_s, omab_s)
    beta = 1.0 - abar_t / abar_s if beta is None else beta
    coef1 = jnp.sqrt(abar_s) * beta / omab_t
    coef2 = jnp.sqrt(1.0 - beta) * omab_s / omab_t
    return coef1 * x0 + coef2 * x_t


def q_posterior_variance(abar_t: Array, abar_s: Array, omab_t: Array | None = None,
                         omab_s: Array | None = None, beta: Array | None = None) -> Array:
    """β̃ = (1 - ᾱ_s) / (1 - ᾱ_t) β'_t, the variance of q(x_s | x_t, x0)."""
    beta = 1.0 - abar_t / abar_s if beta is None else beta
    return _omab(abar_s, omab_s) / _omab(abar_t, omab_t) * beta


def learned_range_log_variance(v: Array, log_beta: Array, log_var_clipped: Array) -> Array:
    """guided-diffusion's LEARNED_RANGE: v ∈ [-1, 1] interpolates log β' and log β̃ (clipped)."""
    frac = (v + 1.0) / 2.0
    return frac * log_beta + (1.0 - frac) * log_var_clipped


def ddim_step(
    x0: Array, eps: Array, abar_t: Array, abar_s: Array, eta: Array, noise: Array,
    omab_t: Array | None = None, omab_s: Array | None = None, beta: Array | None = None,
) -> Array:
    """DDIM(η) (Song et al. 2021, eq. 12) from t to s given x̂0 and ε̂."""
    omab_t, omab_s = _omab(abar_t, omab_t), _omab(abar_s, omab_s)
    beta = 1.0 - abar_t / abar_s if beta is None else beta
    sigma = eta * jnp.sqrt(omab_s / omab_t * beta)
    dir_coef = jnp.sqrt(jnp.maximum(omab_s - sigma**2, 0.0))
    return jnp.sqrt(abar_s) * x0 + dir_coef * eps + sigma * noise


def renoise(x_s: Array, beta: Array, noise: Array) -> Array:
    """An up-step s -> t (t > s) of the forward chain, β = 1 - ᾱ_t/ᾱ_s: sqrt(1 - β) x_s + sqrt(β) z."""
    return jnp.sqrt(1.0 - beta) * x_s + jnp.sqrt(beta) * noise


jax.tree_util.register_static(NoiseSchedule)
