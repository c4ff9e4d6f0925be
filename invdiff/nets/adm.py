"""The ADM configuration (guided-diffusion create_model flags) and the model wrapper.

:class:`ADMConfig` holds exactly the flags of guided-diffusion's ``create_model`` /
``model_and_diffusion_defaults`` (script_util.py) that shape the network, plus
``in_channels``, ``num_classes`` (create_model hard-codes 1000) and the two diffusion flags
that define the noise schedule, and invdiff's ``null_class`` (a learned "no label" class for
classifier-free guidance; off for every guided-diffusion checkpoint). :class:`ADMModel` is an
:class:`invdiff.model.Model`: a PyTree whose only leaves are the network parameters, so it
crosses ``jax.jit`` without recompiling for new weights.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from invdiff import compiler
from invdiff.model import Model
from invdiff.nets.conv import PREPARED
from invdiff.nets.unet import (
    UNet,
    attention_ds,
    default_channel_mult,
    flax_module_to_torch,
    prepare_params,
)
from invdiff.noise import NoiseSchedule

Array = jax.Array

#: accepted for compatibility with guided-diffusion flag sets and ignored: mixed precision is
#: chosen with ``dtype=`` and gradient checkpointing has no effect on inference.
IGNORED_FLAGS = ("use_fp16", "use_checkpoint")

# Diffusion flags of model_and_diffusion_defaults that invdiff does not take, with a hint.
_REFUSED_FLAGS = {
    "timestep_respacing": "respacing is a sampling option: pass steps=... to the solver",
    "use_kl": "a training option; not used for sampling",
    "predict_xstart": "only epsilon-predicting checkpoints are supported",
    "rescale_timesteps": "only rescale_timesteps=False checkpoints are supported (the "
                         "guided-diffusion default)",
    "rescale_learned_sigmas": "a training option; not used for sampling",
    "sigma_small": "fixed small variance is chosen by the solver, not the model",
}


@dataclasses.dataclass(frozen=True)
class ADMConfig:
    """guided-diffusion ``create_model`` flags (frozen and hashable).

    Defaults are ``model_and_diffusion_defaults()``'s, except ``num_classes`` (1000 as
    create_model, overridable) and ``in_channels``. ``channel_mult`` is create_model's string
    ("" picks the default for ``image_size``, "1,2,2") or a tuple; ``attention_resolutions``
    is in pixels ("32,16,8"), converted to downsample factors ``image_size // res``.
    ``use_fp16`` and ``use_checkpoint`` are accepted and ignored.

    ``null_class`` (invdiff's, not guided-diffusion's; needs ``class_cond``) adds one row to
    the class embedding ``label_emb``: class id ``num_classes`` is the learned "no label" class
    of classifier-free guidance (Ho & Salimans 2022), trained by label dropout. Such a model
    runs unconditionally with ``label=None``. guided-diffusion checkpoints have no null class.
    """

    image_size: int = 64
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: str | tuple[float, ...] = ""
    learn_sigma: bool = False
    class_cond: bool = False
    num_classes: int = 1000
    attention_resolutions: str = "16,8"
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    dropout: float = 0.0
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    null_class: bool = False
    in_channels: int = 3
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    use_fp16: bool = False
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        cm = self.channel_mult
        if isinstance(cm, (int, float, np.integer, np.floating)) and not isinstance(cm, bool):
            cm = str(cm)  # a single level given on a command line: channel_mult=1
            object.__setattr__(self, "channel_mult", cm)
        if isinstance(cm, (list, tuple)):
            object.__setattr__(self, "channel_mult", tuple(cm))
        elif not isinstance(cm, str):
            raise TypeError(f"channel_mult must be a string like '1,2,2' or a tuple, got {cm!r}")
        ar = self.attention_resolutions
        if isinstance(ar, (int, np.integer)):
            ar = str(int(ar))
        elif isinstance(ar, (list, tuple)):
            ar = ",".join(str(int(r)) for r in ar)
        object.__setattr__(self, "attention_resolutions", ar)
        for name in ("image_size", "num_channels", "num_res_blocks", "num_classes",
                     "in_channels", "diffusion_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.null_class and not self.class_cond:
            raise ValueError("null_class=True adds a 'no label' class to a class-conditional model: "
                             "it needs class_cond=True")
        if self.noise_schedule not in ("linear", "cosine"):
            raise ValueError(
                f"noise_schedule must be 'linear' or 'cosine', got {self.noise_schedule!r}"
            )
        for r in self.attention_resolutions.split(","):
            if r.strip() and (not r.strip().isdigit() or self.image_size % int(r)):
                raise ValueError(
                    f"attention_resolutions={self.attention_resolutions!r}: each entry must be a "
                    f"resolution in pixels dividing image_size={self.image_size}, e.g. '32,16,8'"
                )
        mult = self.resolved_channel_mult
        if self.image_size % (2 ** (len(mult) - 1)):
            raise ValueError(
                f"image_size={self.image_size} is not divisible by 2**{len(mult) - 1} "
                f"(channel_mult {mult} down-samples {len(mult) - 1} times)"
            )
        for m in mult:
            if int(m * self.num_channels) % 32:
                raise ValueError(
                    f"every level's channel count must be a multiple of 32 (GroupNorm has 32 "
                    f"groups): num_channels={self.num_channels} × channel_mult {m} = "
                    f"{m * self.num_channels}"
                )

    # -- construction from flags ---------------------------------------------------------
    @classmethod
    def valid_flags(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_flags(cls, **flags: Any) -> ADMConfig:
        """Build from create_model flags; unknown flags raise TypeError naming them."""
        valid = cls.valid_flags()
        unknown = [k for k in flags if k not in valid]
        if unknown:
            hints = [f"{k}: {_REFUSED_FLAGS[k]}" for k in unknown if k in _REFUSED_FLAGS]
            raise TypeError(
                f"unknown ADM flag(s) {', '.join(map(repr, unknown))}. Valid flags: "
                f"{', '.join(valid)}." + (" " + "; ".join(hints) if hints else "")
            )
        return cls(**flags)

    def to_flags(self) -> dict[str, Any]:
        """The flags as a JSON-friendly dict (``ADMConfig.from_flags(**c.to_flags()) == c``)."""
        d = dataclasses.asdict(self)
        if isinstance(d["channel_mult"], tuple):
            d["channel_mult"] = list(d["channel_mult"])
        return d

    # -- derived ---------------------------------------------------------------------------
    @property
    def resolved_channel_mult(self) -> tuple[float, ...]:
        cm = self.channel_mult
        if isinstance(cm, str):
            if cm.strip() == "":
                return tuple(default_channel_mult(self.image_size))
            # create_model int-parses; fractional multipliers ("0.5,1,1") are also accepted
            return tuple(int(float(m)) if float(m).is_integer() else float(m)
                         for m in cm.split(","))
        return tuple(cm)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def label_count(self) -> int | None:
        """Rows of the class embedding: ``num_classes`` (+ 1 for the null class), or None."""
        if not self.class_cond:
            return None
        return self.num_classes + int(self.null_class)

    @property
    def null_label(self) -> int | None:
        """The class id of the learned "no label" class (``num_classes``), or None."""
        return self.num_classes if self.null_class else None

    def unet_kwargs(self) -> dict[str, Any]:
        """``UNetModel`` keyword arguments, as create_model computes them."""
        return dict(
            image_size=self.image_size, in_channels=self.in_channels,
            model_channels=self.num_channels, out_channels=self.out_channels,
            num_res_blocks=self.num_res_blocks,
            attention_resolutions=attention_ds(self.image_size, self.attention_resolutions),
            dropout=float(self.dropout), channel_mult=self.resolved_channel_mult,
            num_classes=self.label_count, num_heads=self.num_heads,
            num_head_channels=self.num_head_channels, num_heads_upsample=self.num_heads_upsample,
            use_scale_shift_norm=self.use_scale_shift_norm, resblock_updown=self.resblock_updown,
            use_new_attention_order=self.use_new_attention_order,
        )

    def unet(self, dtype: Any = jnp.float32, precision: Any = None, custom_vjp: bool = True) -> UNet:
        """The Flax module for this configuration (``custom_vjp``: see :attr:`UNet.custom_vjp`)."""
        return UNet(**self.unet_kwargs(), dtype=dtype, precision=precision, custom_vjp=custom_vjp)

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.named(self.noise_schedule, self.diffusion_steps)

    def describe(self) -> str:
        s = self.image_size
        kind = f"class-conditional ({self.num_classes} classes)" if self.class_cond else "unconditional"
        if self.null_class:
            kind = kind[:-1] + " + a null class)"
        return f"{s}x{s}x{self.in_channels} {kind} ADM"


def _top_level(module: Any, method_name: str) -> bool:
    return method_name == "__call__" and len(module.scope.path) == 1


def _apply_unet(params: Any, x: Array, t: Array, label: Array | None, prepared: Any = None, *,
                config: ADMConfig, dtype: Any, precision: Any = None, debug: bool = False) -> Any:
    """The UNet forward. ``debug=True`` also returns the ``intermediates`` collection with
    every attention block's weights and every top-level module's output. ``prepared``: see
    :meth:`ADMModel.with_prepared` (prepared without ``vjp``, the UNet is built without its
    VJP rules: :attr:`UNet.custom_vjp`)."""
    net = config.unet(dtype, precision, custom_vjp=prepared is None or _has_kernel_t(prepared))
    variables = {"params": params}
    if prepared is not None:
        variables[PREPARED] = prepared
    if debug:
        return net.apply(variables, x, t, label, mutable=["intermediates"],
                         capture_intermediates=_top_level)
    b = x.shape[0]
    chunk = cpu_chunk(x.shape, config.num_channels)
    if chunk == b:
        return net.apply(variables, x, t, label)
    split = functools.partial(jax.tree.map, lambda a: a.reshape((b // chunk, chunk) + a.shape[1:]))
    out = jax.lax.map(lambda xtl: net.apply(variables, *xtl), split((x, t, label)))
    return out.reshape((b,) + out.shape[2:])


#: The most activations (batch x height x width x ``num_channels``) one network pass takes on a
#: single-device CPU; larger batches run as a loop over chunks of the batch (:func:`cpu_chunk`).
CPU_CHUNK_ELEMENTS = 4 * 64 * 64 * 128
#: From batch ``2 * CPU_CHUNK_SAMPLES`` on, a CPU pass takes at most this many samples, on CPUs
#: with AVX-512 (:func:`cpu_has_avx512`).
CPU_CHUNK_SAMPLES = 8


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether this machine's CPU has AVX-512 (``avx512f`` in ``/proc/cpuinfo``; False where that
    file does not exist, as on macOS and Windows). Read once."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512f" in line.split()
    except OSError:
        pass
    return False


def cpu_chunk(x_shape: tuple[int, ...], num_channels: int) -> int:
    """Samples per network pass: the whole batch, except on a single-device CPU backend, where a
    pass takes the largest divisor of B (at least 1) such that

    * ``chunk x H x W x num_channels`` is within :data:`CPU_CHUNK_ELEMENTS`, and
    * on a CPU with AVX-512 (:func:`cpu_has_avx512`), from batch 16 (``2 * CPU_CHUNK_SAMPLES``)
      on, ``chunk`` <= :data:`CPU_CHUNK_SAMPLES`.

    The UNet treats samples independently: the values are the same up to float rounding
    (relative 2e-6 on a 128-channel ADM). Measured on 2-core AMD EPYCs (jax 0.10.2):

    * XLA:CPU's (YNNPACK's) convolutions run 20-25 % slower per sample once their activations
      outgrow the caches (a 3x3 128->128 convolution at 64x64: 160-180 GFLOP/s at batch 1 and 4,
      130-140 at batch 16; ``benchmarks/cpu_fusions.py``). The 128-channel ADM at 64x64 and batch
      16, in chunks of 4: forward 6.4 -> 5.5 s, forward + VJP 14.9 -> 13.4 s.
    * On a Zen 4 (AVX-512), the bundled model (32 channels) ran its 64x64 fusions 2-3.5x slower
      per sample at batch 16 than at 12, and its forward + VJP ~25 % slower per sample at 16 and
      32; batches of 12, 20 and 24 were not slow. Chunks of 8 avoid it (whole -> chunks): DPS,
      5 steps at batch 16, 6.8 -> 5.7 s and 7.2 -> 6.0 s (two runs); DDNM, 10 steps at 16,
      4.8 -> 4.1-4.3 s; the forward + VJP in a loop of 3 calls, 1067-1083 -> 821-834 ms.
    * On a Zen 3 (AVX2 only), the whole batch of 16 was faster (chunks of 8 -> whole): DPS, 5
      steps, 7.98 -> 7.18 s per solve and 21.1 -> 17.3 s for the first (the loop over chunks
      and its VJP compile ~4 s longer); the forward + VJP 1703 -> 1599 ms per call (medians,
      alternated in one process); DDNM and the forward alone as fast either way.

    With several devices the batch stays whole (it may be sharded across them)."""
    b, h, w = x_shape[:3]
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return b
    per = h * w * num_channels
    cap = CPU_CHUNK_SAMPLES if b >= 2 * CPU_CHUNK_SAMPLES and cpu_has_avx512() else b
    return max(d for d in range(1, cap + 1) if b % d == 0 and (d == 1 or d * per <= CPU_CHUNK_ELEMENTS))


_apply = compiler.jit(_apply_unet, static_argnames=("config", "dtype", "precision", "debug"))


#: On CPU, ``ADMModel.with_prepared`` computes the 3x3 stride-1 convolutions of float32 models
#: with at least this many base channels (``num_channels``) by Winograd's F(2x2, 3x3)
#: (:func:`invdiff.nets.conv.winograd_conv3`), in programs compiled without YNNPACK's
#: element-wise fusions (:data:`WINOGRAD_OPTIONS`). Measured on a 2-core AMD EPYC (jax 0.10.2),
#: both alternated in one process, weights as arguments, against the direct convolutions with
#: invdiff's usual options: the 128-channel ADM at 64x64 (``benchmarks/vs_torch.py``'s
#: ``adm128``) at batch 4, forward 1388 -> 1164 ms, forward + VJP 3058 -> 2418 ms; at batch 1,
#: 394 -> 322 and 835 -> 706 ms. The bundled model (32 channels) at batch 4: forward 91 -> 126
#: ms, forward + VJP 232 -> 263 ms, so not there. The first call (trace and compile) of the
#: 128-channel forward + VJP took 9.3 -> 12.2 s at batch 4, 7.5 -> 13.0 s at batch 1.
CPU_WINOGRAD_MIN_CHANNELS = 128
#: XLA:CPU options for programs that read Winograd kernels (:func:`invdiff.compiler.prefer_options`):
#: YNNPACK's element-wise fusions split the tile transforms into one pass per addition (the input
#: transform of a 4x64x64x128 image: 13 ms instead of 4).
WINOGRAD_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                    compiler.ynn_fusion_types(*(t for t in compiler.YNN_TYPES if t != "ELTWISE"))}

#: (vjp, winograd) -> (weak references to the last parameter set's leaves, its prepare_params tree)
_PREPARED: dict[tuple[bool, bool], tuple[list, Any]] = {}
#: held while with_prepared reads and fills _PREPARED (solves may be prepared in several threads,
#: e.g. invdiff.precompile in one while solve runs in another)
_PREPARED_LOCK = threading.RLock()


def _forget(key: tuple[bool, bool], entry: tuple) -> None:
    if _PREPARED.get(key) is entry:
        _PREPARED.pop(key, None)


def _on_this_cpu(a: Any) -> bool:
    """A concrete array numpy can read here: numpy's, or a jax array wholly in this process's
    CPU memory (not traced, not on another platform, not sharded across processes)."""
    if isinstance(a, np.ndarray):
        return True
    return (isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.is_fully_addressable
            and all(d.platform == "cpu" for d in a.devices()))


def _same_leaves(refs: list, leaves: list) -> bool:
    return len(refs) == len(leaves) and all(r() is a for r, a in zip(refs, leaves))


def _leaf_names(tree: Any) -> set:
    """The names of a (prepared) variable tree's leaves, e.g. {"bias_half", "kernel_t"}."""
    return {getattr(p[-1], "key", None) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


#: the prepared leaves of a tree prepared with ``vjp``: input-gradient kernels (direct or Winograd)
_VJP_KERNELS = frozenset({"kernel_t", "kernel_wt"})


def _has_kernel_t(tree: Any) -> bool:
    """Prepared with ``vjp``."""
    return bool(_leaf_names(tree) & _VJP_KERNELS)


def _dtype_key(dtype: Any) -> Any:
    return np.dtype(dtype)


class ADMModel(Model):
    """A guided-diffusion UNet with weights, as an :class:`invdiff.model.Model`.

    ``params`` is the Flax parameter tree (float32; the only PyTree leaves), ``config`` the
    :class:`ADMConfig` and ``dtype`` the compute dtype (both static). Build with
    :meth:`create`, :meth:`init_random` or :func:`invdiff.nets.load_model`.
    """

    params: Any = None
    config: ADMConfig = struct.field(pytree_node=False, kw_only=True)
    dtype: Any = struct.field(pytree_node=False, default=np.dtype("float32"), kw_only=True)
    #: matmul/conv precision passed to Flax (None: the backend default, which on recent
    #: NVIDIA GPUs is TF32 for float32; use "highest" for bit-faithful float32 there).
    precision: str | None = struct.field(pytree_node=False, default=None, kw_only=True)
    #: accept any image size divisible by the UNet's downsampling factor, not only
    #: ``config.image_size`` (the network is fully convolutional; attention attends to every
    #: position). Quality away from the trained size is measured in benchmarks/seams.py.
    any_size: bool = struct.field(pytree_node=False, default=False, kw_only=True)
    #: parameter-only quantities computed once on the host (:meth:`with_prepared`), or None
    prepared: Any = struct.field(default=None, kw_only=True)

    def with_prepared(self, *, vjp: bool = False, winograd: bool | None = None) -> ADMModel:
        """This model with :func:`invdiff.nets.unet.prepare_params` of its weights attached:
        quantities the network derives from its parameters alone (each norm's bias / 2, the
        upsampling convolutions' phase kernels), computed once with numpy instead of inside
        every compiled program (on CPU each was a kernel XLA generated and compiled; the phase
        kernels took the bundled model's DDNM program from 79 kernels to 70). ``vjp=True``
        adds every convolution kernel flipped and transposed for the input gradient, a second
        copy of the convolution weights (``solve`` asks for it for solvers with network VJPs,
        ``vjp_per_step``). The same values bit for bit; computed once per parameter set (the
        last one is cached). Weights on another platform than the CPU, sharded across
        processes, or traced, are returned unchanged; new ``params`` (``replace``) drop it.

        Without ``vjp`` the network is also traced without its written-out VJP rules
        (:attr:`~invdiff.nets.unet.UNet.custom_vjp` False): faster to compile, the same values.
        Differentiating it still gives correct input gradients, by autodiff (slower); the
        prepared quantities then count as inputs of their own, so take parameter gradients on
        a model without them (``replace(params=...)``, or the model as loaded).

        ``winograd`` (default: float32 models with at least :data:`CPU_WINOGRAD_MIN_CHANNELS`
        base channels) also prepares Winograd kernels for the 3x3 stride-1 convolutions, which
        the network then computes by Winograd's F(2x2, 3x3): equal up to float rounding (~1e-6
        relative), not bit for bit, and compiled with :data:`WINOGRAD_OPTIONS`. These hold 16/9
        the size of those convolutions' weights, twice with ``vjp`` (instead of one flipped
        copy)."""
        if winograd is None:
            winograd = self.dtype == np.float32 and self.config.num_channels >= CPU_WINOGRAD_MIN_CHANNELS
        if self.prepared is not None:
            names = _leaf_names(self.prepared)
            if (not vjp or names & _VJP_KERNELS) and ("kernel_w" in names) == winograd:
                return self
        leaves = jax.tree.leaves(self.params)
        if not leaves or not all(map(_on_this_cpu, leaves)):
            return self  # numpy cannot read them here
        with _PREPARED_LOCK:
            for key in [k for k, (refs, _) in _PREPARED.copy().items() if not _same_leaves(refs, leaves)]:
                _PREPARED.pop(key, None)  # one parameter set at a time
            key = (vjp, winograd)
            if key not in _PREPARED:
                unet = self.config.unet()
                tree = jax.device_put(prepare_params(self.params, vjp=vjp, upsampling=unet.upsampling_convs(),
                                                     winograd=winograd, strided=unet.strided_convs()))
                if winograd:
                    compiler.prefer_options(tree, **WINOGRAD_OPTIONS)
                entry = ([weakref.ref(a) for a in leaves], tree)
                _PREPARED[key] = entry
                weakref.finalize(leaves[0], _forget, key, entry)  # freed with the weights
            return dataclasses.replace(self, prepared=_PREPARED[key][1])

    @classmethod
    def create(cls, config: ADMConfig, params: Any, dtype: Any = jnp.float32,
               precision: str | None = None) -> ADMModel:
        """Wrap ``params`` (a Flax tree for ``config.unet()``); the schedule comes from the flags."""
        return cls(schedule=config.schedule(), params=params, config=config,
                   dtype=_dtype_key(dtype), precision=precision,
                   learned_variance=bool(config.learn_sigma), data_range=(-1.0, 1.0))

    @classmethod
    def init_random(cls, config: ADMConfig, key: Array, dtype: Any = jnp.float32) -> ADMModel:
        """Randomly initialised weights (Flax initialisers; not the original's zero-init)."""
        return cls.create(config, init_params(config, key), dtype)

    @property
    def null_label(self) -> int | None:
        """The class id of the learned "no label" class, or None (see ``ADMConfig.null_class``)."""
        return self.config.null_label

    def with_null_class(self) -> ADMModel:
        """This class-conditional model with a null class added, for fine-tuning with label
        dropout. The new ``label_emb`` row is the mean of the class rows: before any training
        the "unconditional" model is conditioned on the average class."""
        cfg = self.config
        if not cfg.class_cond or cfg.null_class:
            raise ValueError(f"with_null_class needs a class-conditional model without a null class; "
                             f"this is a {cfg.describe()}")
        emb = jnp.asarray(self.params["label_emb"]["embedding"])
        params = {**self.params, "label_emb": {"embedding": jnp.concatenate(
            [emb, emb.mean(axis=0, keepdims=True)])}}
        return ADMModel.create(dataclasses.replace(cfg, null_class=True), params, self.dtype,
                               self.precision)

    def _labels(self, label: Any, batch: int) -> Array | None:
        if label is None:
            return None if self.config.null_label is None else jnp.full(
                (batch,), self.config.null_label, jnp.int32)
        return jnp.asarray(label)

    # -- the Model contract ------------------------------------------------------------------
    def raw(self, x: Array, t: Array, label: Array | None = None) -> Array:
        """The network output, NHWC, all ``out_channels`` (ε first, then v for learn_sigma).
        ``label=None`` on a model with a null class runs it unconditionally."""
        self.check_input(tuple(np.shape(x)), label)
        b = np.shape(x)[0]
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        return _apply(self.params, x, t, self._labels(label, b), self.prepared, config=self.config,
                      dtype=self.dtype, precision=self.precision)

    def eps(self, x: Array, t: Array, label: Array | None = None) -> Array:
        c = self.config.in_channels
        return self.raw(x, t, label)[..., :c].astype(x.dtype)

    def eps_and_v(self, x: Array, t: Array, label: Array | None = None) -> tuple[Array, Array | None]:
        c = self.config.in_channels
        out = self.raw(x, t, label).astype(x.dtype)
        if self.config.learn_sigma:
            return out[..., :c], out[..., c:2 * c]
        return out, None

    def check_input(self, x_shape: tuple[int, ...], label: Any = None) -> None:
        """Clear ValueErrors for a wrong image shape or wrong labels (before compiling)."""
        cfg = self.config
        s, c = cfg.image_size, cfg.in_channels
        x_shape = tuple(x_shape)
        if self.any_size:
            f = 2 ** (len(cfg.resolved_channel_mult) - 1)
            if len(x_shape) != 4 or x_shape[3] != c or x_shape[1] % f or x_shape[2] % f or 0 in x_shape[1:3]:
                raise ValueError(
                    f"this model takes HxWx{c} images with H and W multiples of {f} (its UNet halves "
                    f"the size {f.bit_length() - 1} times): x must have shape (B, H, W, {c}) (NHWC), "
                    f"got shape {x_shape}; pad the image (invdiff.solve_any_size does)"
                )
        elif len(x_shape) != 4 or x_shape[1:] != (s, s, c):
            raise ValueError(
                f"this model takes {s}x{s}x{c} images: x must have shape (B, {s}, {s}, {c}) "
                f"(NHWC), got shape {x_shape}; for other sizes see invdiff.solve_any_size"
            )
        if not cfg.class_cond:
            if label is not None:
                raise ValueError(
                    f"this {cfg.describe()} is not class-conditional: call without label=..."
                )
            return
        if label is None:
            if cfg.null_class:
                return  # unconditional: the null class
            raise ValueError(
                f"this {cfg.describe()} needs class labels: it has no null class to run "
                f"unconditionally. Pass label=... with integer class ids of shape "
                f"({x_shape[0]},), each in [0, {cfg.num_classes})"
            )
        lshape = tuple(np.shape(label))
        if lshape != (x_shape[0],):
            raise ValueError(
                f"label must have shape (B,) = ({x_shape[0]},), one class id per image, got "
                f"shape {lshape}"
            )
        ldtype = label.dtype if hasattr(label, "dtype") else np.asarray(label).dtype
        if not jnp.issubdtype(ldtype, jnp.integer):
            raise ValueError(f"label must hold integer class ids, got dtype {ldtype}")
        if not isinstance(label, jax.core.Tracer):
            lv = np.asarray(label)
            n = cfg.label_count  # the null class's id, num_classes, is a valid label too
            if lv.size and (lv.min() < 0 or lv.max() >= n):
                null = f" ({cfg.num_classes}: the null class)" if cfg.null_class else ""
                raise ValueError(
                    f"labels must lie in [0, {n}){null} for this model, got values from "
                    f"{lv.min()} to {lv.max()}"
                )


def _replace(self: ADMModel, **updates: Any) -> ADMModel:
    """``dataclasses.replace``; new ``params`` drop the kernels derived from the old ones."""
    if "params" in updates and "prepared" not in updates:
        updates["prepared"] = None
    return dataclasses.replace(self, **updates)


ADMModel.replace = _replace  # type: ignore[method-assign]  # (flax.struct sets its own replace)


def device_params(tree: Any, dtype: Any = jnp.float32) -> Any:
    """The leaves of a parameter tree as jax arrays of ``dtype`` (None: each leaf's own): numpy
    leaves go to the default device in one ``jax.device_put``, jax arrays stay where they are
    (cast if needed). Loaders use it instead of ``jnp.asarray`` per leaf, which in jax 0.10
    compiles a small program per distinct shape: loading the bundled model compiled 48 of them
    (~0.5 s of each process's start-up)."""
    out = jax.device_put(jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a, dtype), tree))
    return out if dtype is None else jax.tree.map(lambda a: a if a.dtype == dtype else a.astype(dtype), out)


def init_params(config: ADMConfig, key: Array) -> Any:
    """Flax-initialised float32 parameters for ``config`` (batch-1 dummy input)."""
    s, c = config.image_size, config.in_channels
    x = jnp.zeros((1, s, s, c), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if config.class_cond else None
    return jax.jit(lambda k: config.unet().init(k, x, t, y)["params"])(key)


@functools.lru_cache(maxsize=32)
def abstract_params(config: ADMConfig) -> Any:
    """The parameter tree's shapes and dtypes (``jax.ShapeDtypeStruct`` leaves), no compute."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def _debug_run(model: ADMModel, x: Array, t: Array, label: Array | None) -> tuple[Array, Any]:
    model.check_input(tuple(np.shape(x)), label)
    t = jnp.broadcast_to(jnp.asarray(t), (np.shape(x)[0],))
    out, state = _apply(model.params, x, t, model._labels(label, np.shape(x)[0]),
                        config=model.config, dtype=model.dtype, precision=model.precision,
                        debug=True)
    return out, state.get("intermediates", {})


def attention_maps(model: ADMModel, x: Array, t: Array, label: Array | None = None
                   ) -> dict[str, Array]:
    """Every attention block's softmax weights, (B, heads, H·W, H·W), float32.

    Keys are the guided-diffusion module paths (``"input_blocks.3.1"``, ``"middle_block.1"``,
    ...). Row i holds where query position i (row-major over H×W) attends; rows sum to one.
    Runs the forward with the ``intermediates`` collection mutable, which is where
    :class:`~invdiff.nets.unet.AttentionBlock` sows its weights (the normal forward does not).
    """
    _, inter = _debug_run(model, x, t, label)
    return {flax_module_to_torch((k,)): v["attention"][0]
            for k, v in inter.items() if isinstance(v, Mapping) and "attention" in v}


def block_outputs(model: ADMModel, x: Array, t: Array, label: Array | None = None
                  ) -> dict[str, Array]:
    """Per-block probes for debugging a port: the output of every guided-diffusion top-level
    block (``"input_blocks.3"``, ``"middle_block"``, ``"output_blocks.0"``, NHWC), the time
    embedding (``"time_embed"``, before the label is added), the label embedding
    (``"label_emb"``) and the network output (``"out"``)."""
    out, inter = _debug_run(model, x, t, label)
    res: dict[str, Array] = {"out": out}
    last: dict[str, tuple[int, Array]] = {}
    for name, v in inter.items():
        if not isinstance(v, Mapping) or "__call__" not in v:
            continue
        value = v["__call__"][0]
        parts = name.split("_")
        if name.startswith(("input_blocks_", "output_blocks_")):
            block, sub = ".".join(["_".join(parts[:2]), parts[2]]), int(parts[3])
        elif name.startswith("middle_block_"):
            block, sub = "middle_block", int(parts[2])
        elif name == "time_embed_2":
            block, sub = "time_embed", 0
        elif name == "label_emb":
            block, sub = "label_emb", 0
        else:
            continue
        if block not in last or sub > last[block][0]:
            last[block] = (sub, value)
    res.update({k: v for k, (_, v) in last.items()})
    return res
