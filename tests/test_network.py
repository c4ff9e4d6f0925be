"""The ADM UNet port against guided-diffusion's own numbers, plus loading and safety.

Fixtures: ../shared/fixtures/adm next to the repository (or $INVDIFF_FIXTURES, pointing at
that folder or its parent), made with openai/guided-diffusion at commit 22e0df8; see its
README. Tests that need them skip with a reason when they are absent.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invdiff.model import Model
from invdiff.nets import (
    PRESETS,
    ADMConfig,
    ADMModel,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    attention_maps,
    block_outputs,
    infer_flags,
    load_model,
    load_state_dict,
    preset_flags,
    save_model,
    unet,
)
from invdiff.nets.adm import abstract_params
from invdiff.nets.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL, load_pt
from invdiff.nets.unet import attention_ds, default_channel_mult


def _fixture_dir() -> Path | None:
    env = os.environ.get("INVDIFF_FIXTURES")
    cands = [Path(env), Path(env) / "adm"] if env else []
    cands.append(Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "adm")
    for c in cands:
        if (c / "configs.json").is_file():
            return c
    return None


FIX = _fixture_dir()
needs_fixtures = pytest.mark.skipif(
    FIX is None, reason="ADM fixtures not found: expected ../shared/fixtures/adm next to the "
    "repository, or set INVDIFF_FIXTURES to that folder"
)


def _flags(name: str) -> dict:
    cfg = json.loads((FIX / "configs.json").read_text())[name]
    flags = {k: v for k, v in cfg["script_util_create_model_equivalent"].items() if k != "NOTE"}
    if cfg["UNetModel_kwargs"]["num_classes"] is not None:
        flags["num_classes"] = cfg["UNetModel_kwargs"]["num_classes"]
    return flags


def _io(name: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIX / f"{name}_io.npz"))


def _inputs(io_: dict) -> tuple:
    x = jnp.asarray(io_["x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    t = jnp.asarray(io_["t"], jnp.int32)
    y = jnp.asarray(io_["y"], jnp.int32) if "y" in io_ else None
    return x, t, y


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


_MODELS: dict = {}


def _model(name: str, **extra) -> ADMModel:
    key = (name, tuple(sorted(extra.items())))
    if key not in _MODELS:
        file = "uncond" if name == "uncond_legacy" else name
        _MODELS[key] = load_model(FIX / f"{name}.pt", **{**_flags(file), **extra})
    return _MODELS[key]


# ---------------------------------------------------------------------------------------
# parity with guided-diffusion


@needs_fixtures
@pytest.mark.parametrize("name", ["uncond", "uncond_legacy", "cond_headch", "plain"])
def test_parity(name):
    file = "uncond" if name == "uncond_legacy" else name
    io_ = _io(file)
    x, t, y = _inputs(io_)
    out = np.asarray(_model(name).raw(x, t, y)).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    assert out.shape == io_["out_f64"].shape
    assert _rel(out, io_["out_f64"]) <= 1e-4
    np.testing.assert_allclose(out, io_["out_f32"], atol=1e-4)


@needs_fixtures
def test_block_probes():
    # Per-block probes: when parity fails, these name the first block that diverges.
    io_ = _io("cond_headch")
    x, t, y = _inputs(io_)
    probes = block_outputs(_model("cond_headch"), x, t, y)
    np.testing.assert_allclose(probes["time_embed"], io_["probe_time_embed_f64"], atol=1e-4)
    np.testing.assert_allclose(probes["label_emb"], io_["probe_label_emb_f64"], atol=1e-6)
    keys = sorted(k for k in io_ if k.startswith("probe_") and k.endswith("_chmean_f64"))
    assert len(keys) == 13
    for key in keys:
        block = key[len("probe_"):-len("_chmean_f64")]
        block = block.replace("input_blocks_", "input_blocks.").replace(
            "output_blocks_", "output_blocks.")
        got = np.asarray(probes[block], np.float64).mean(axis=(1, 2))
        assert _rel(got, io_[key]) <= 1e-4, f"block {block} diverges"
    out = np.asarray(probes["out"]).transpose(0, 3, 1, 2)
    assert _rel(out, io_["out_f64"]) <= 1e-4


@needs_fixtures
def test_new_attention_order():
    io_ = _io("cond_headch")
    model = _model("cond_headch", use_new_attention_order=True)
    x, t, y = _inputs(io_)
    out = np.asarray(model.raw(x, t, y)).transpose(0, 3, 1, 2)
    assert _rel(out, io_["out_f64_new_attention_order"]) <= 1e-4
    assert _rel(out, io_["out_f64"]) > 1e-2  # the order matters


@needs_fixtures
def test_eps_v_and_model_contract():
    io_ = _io("uncond")
    model = _model("uncond")
    x, t, _ = _inputs(io_)
    assert isinstance(model, Model) and model.learned_variance
    assert model.schedule.num_timesteps == 1000
    raw = model.raw(x, t)
    eps, v = model.eps_and_v(x, t)
    ref = io_["out_f64"].transpose(0, 2, 3, 1)
    assert raw.shape == (2, 32, 32, 6)
    assert _rel(eps, ref[..., :3]) <= 1e-4 and _rel(v, ref[..., 3:]) <= 1e-4
    np.testing.assert_array_equal(model.eps(x, t), eps)
    plain = _model("plain")
    e, v2 = plain.eps_and_v(x, t)
    assert v2 is None and e.shape == x.shape and not plain.learned_variance


@needs_fixtures
def test_legacy_equals_zip():
    a, b = load_state_dict(FIX / "uncond.pt"), load_state_dict(FIX / "uncond_legacy.pt")
    assert list(a) == list(b) and len(a) == 216
    for k in a:
        assert a[k].dtype == np.float32 and np.array_equal(a[k], b[k]), k
    keys = [ln.split("\t") for ln in (FIX / "uncond_keys.txt").read_text().splitlines() if ln]
    assert [k for k, _, _ in keys] == list(a)
    assert all(str(a[k].shape) == s for k, s, _ in keys)


@needs_fixtures
def test_infer_flags_from_tensors():
    f = infer_flags(load_state_dict(FIX / "cond_headch.pt"))
    assert f["num_channels"] == 32 and f["learn_sigma"] and f["class_cond"]
    assert f["num_classes"] == 10 and f["num_res_blocks"] == 1 and f["channel_mult"] == "1,2,2"
    assert f["attention_ds"] == (2, 4) and f["resblock_updown"] and f["use_scale_shift_norm"]
    p = infer_flags(load_state_dict(FIX / "plain.pt"))
    assert p["num_res_blocks"] == 2 and p["channel_mult"] == "1,2" and not p["learn_sigma"]
    assert p["attention_ds"] == (2,) and not p["resblock_updown"]
    assert not p["use_scale_shift_norm"]


# ---------------------------------------------------------------------------------------
# mismatches between flags and file


@needs_fixtures
@pytest.mark.parametrize("name, change, expect", [
    ("uncond", dict(learn_sigma=False), ["learn_sigma=True", "out.2.weight"]),
    ("uncond", dict(num_channels=64), ["num_channels=32", "shape mismatch"]),
    ("uncond", dict(class_cond=True, num_classes=10), ["class_cond=False", "label_emb"]),
    ("cond_headch", dict(class_cond=False), ["class_cond=True", "num_classes=10"]),
    ("cond_headch", dict(num_classes=1000), ["num_classes=10"]),
    ("plain", dict(num_res_blocks=1), ["num_res_blocks=2", "unexpected key"]),
    ("plain", dict(attention_resolutions="8"), ["attention_resolutions='16'"]),
])
def test_mismatch_errors_name_the_flag(name, change, expect):
    with pytest.raises(CheckpointMismatchError) as e:
        load_model(FIX / f"{name}.pt", **{**_flags(name), **change})
    msg = str(e.value)
    for piece in expect:
        assert piece in msg, msg
    assert msg.count("\n") < 12  # one compact error, long lists truncated


@needs_fixtures
def test_load_needs_a_description_and_checks_flags():
    with pytest.raises(ValueError, match="preset=") as e:
        load_model(FIX / "uncond.pt")
    assert "num_channels': 32" in str(e.value)  # suggests what the tensors say
    with pytest.raises(TypeError, match="unknown ADM flag.*num_chanels.*valid flags"
                       .replace("valid flags", "Valid flags")):
        load_model(FIX / "uncond.pt", num_chanels=32)
    with pytest.raises(TypeError, match="pass steps="):
        load_model(FIX / "uncond.pt", **_flags("uncond"), timestep_respacing="250")


def test_presets_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'imagenet512'.*imagenet256-uncond"):
        preset_flags("imagenet512")
    (tmp_path / "x.pt").touch()
    with pytest.raises(ValueError, match="unknown preset"):
        load_model(tmp_path / "x.pt", preset="nope")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt", preset="ffhq256")
    with pytest.raises(FileNotFoundError, match="Bundled models.*imagenet256-uncond"):
        load_model("no_such_model")
    with pytest.raises(FileNotFoundError, match="256x256_diffusion_uncond.pt"):
        load_model("imagenet256-uncond")
    with pytest.raises(FileNotFoundError, match="invdiff_model.json"):
        load_model(tmp_path)
    # every preset builds a consistent architecture
    for name in PRESETS:
        cfg = ADMConfig.from_flags(**preset_flags(name))
        assert cfg.image_size in (64, 128, 256)
    ffhq = ADMConfig.from_flags(**preset_flags("ffhq256"))
    assert ffhq.resolved_channel_mult == (1, 1, 2, 2, 4, 4)
    assert ffhq.unet_kwargs()["attention_resolutions"] == (16,)
    i64 = ADMConfig.from_flags(**preset_flags("imagenet64-cond"))
    assert i64.schedule().num_timesteps == 1000 and i64.noise_schedule == "cosine"
    assert i64.unet_kwargs()["attention_resolutions"] == (2, 4, 8)
    assert attention_ds(256, "32,16,8") == (8, 16, 32)
    assert ADMConfig(image_size=64, num_channels=64, channel_mult="0.5,1,2"
                     ).resolved_channel_mult == (0.5, 1, 2)
    np.savez(tmp_path / "arrays.npz", a=np.zeros(3))  # a zip, but not a torch checkpoint
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        load_model(tmp_path / "arrays.npz", preset="ffhq256")
    assert default_channel_mult(512)[0] == 0.5


# ---------------------------------------------------------------------------------------
# unsafe checkpoints


class _Evil:
    def __init__(self, marker: Path, fn):
        self.marker, self.fn = marker, fn

    def __reduce__(self):
        if self.fn == "system":
            return (os.system, (f"touch {self.marker}",))
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _zip_pt(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil/data.pkl", payload)
        z.writestr("evil/version", "3\n")


def _legacy_pt(path: Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL,
                    {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(payload)
        pickle.dump([], f, protocol=2)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("fn, protocol", [("system", 2), ("exec", 4), ("opcodes", 0)])
def test_booby_trapped_checkpoint_is_refused(tmp_path, fmt, fn, protocol):
    marker = tmp_path / "pwned"
    if fn == "opcodes":  # hand-written GLOBAL 'os' 'system'
        payload = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    else:
        # hidden inside an ordinary-looking state_dict
        payload = pickle.dumps({"time_embed.0.bias": [1.0], "x": _Evil(marker, fn)},
                               protocol=protocol)
    path = tmp_path / f"evil_{fmt}.pt"
    (_zip_pt if fmt == "zip" else _legacy_pt)(path, payload)
    with pytest.raises(UnsafeCheckpointError, match="Nothing from the file was executed"):
        load_pt(path)
    with pytest.raises(UnsafeCheckpointError):
        load_model(path, preset="ffhq256")
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, ValueError)


def test_build_cannot_modify_allowed_objects(tmp_path):
    # BUILD on an allowed rebuild function would alter it for later loads: refused.
    payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(N}X\x02\x00\x00\x00fn"
               b")stb.")
    path = tmp_path / "build.pt"
    _zip_pt(path, payload)
    with pytest.raises(UnsafeCheckpointError, match="set attribute"):
        load_pt(path)


class _Glob:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Call:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args


class _Pid:
    def __init__(self, *pid):
        self.pid = pid


def _emit(obj) -> bytes:
    """A tiny protocol-2 pickler for hand-built torch-like pickles (no torch needed)."""
    if isinstance(obj, _Glob):
        return f"c{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, _Call):
        return _emit(obj.fn) + _emit(tuple(obj.args)) + b"R"
    if isinstance(obj, _Pid):
        return _emit(tuple(obj.pid)) + b"Q"
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, str):
        raw = obj.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    if isinstance(obj, tuple):
        return b"(" + b"".join(_emit(v) for v in obj) + b"t"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_emit(k) + _emit(v) for k, v in obj.items()) + b"u"
    raise TypeError(obj)


def test_pt_reader_strides_dtypes_and_wrappers(tmp_path):
    # float16 transposed view, bfloat16 with a storage offset, float32 shared storage;
    # wrapped as {'ema': {'module.<key>': tensor}} in both formats.
    import ml_dtypes

    base = np.arange(12, dtype=np.float16)
    bf = np.arange(5, dtype=np.float32).astype(ml_dtypes.bfloat16)
    f32 = np.arange(6, dtype=np.float32)
    rebuild = _Glob("torch._utils", "_rebuild_tensor_v2")
    od = _Call(_Glob("collections", "OrderedDict"))

    def tensor(stype, key, numel, offset, size, stride):
        return _Call(rebuild, _Pid("storage", _Glob("torch", stype), key, "cpu", numel), offset,
                     size, stride, False, od)

    sd = {"module.a": tensor("HalfStorage", "0", 12, 0, (3, 4), (1, 3)),
          "module.b": tensor("BFloat16Storage", "1", 5, 2, (3,), (1,)),
          "module.c": _Call(_Glob("torch._utils", "_rebuild_parameter"),
                            tensor("FloatStorage", "2", 6, 0, (2, 3), (3, 1)), True, od),
          "module.d": tensor("FloatStorage", "2", 6, 3, (3,), (1,))}
    payload = b"\x80\x02" + _emit({"ema": sd, "step": 3}) + b"."
    with zipfile.ZipFile(tmp_path / "w.pt", "w") as z:
        z.writestr("w/data.pkl", payload)
        z.writestr("w/data/0", base.tobytes())
        z.writestr("w/data/1", bf.tobytes())
        z.writestr("w/data/2", f32.tobytes())
        z.writestr("w/byteorder", "little")
    with open(tmp_path / "legacy.pt", "wb") as f:
        for obj in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
            pickle.dump(obj, f, protocol=2)
        f.write(payload)
        pickle.dump(["0", "1", "2"], f, protocol=2)
        for arr in (base, bf, f32):
            f.write(struct.pack("<q", arr.size) + arr.tobytes())
    for name in ("w.pt", "legacy.pt"):
        out = load_state_dict(tmp_path / name)
        assert set(out) == {"a", "b", "c", "d"}, name
        np.testing.assert_array_equal(out["a"], base.reshape(4, 3).T)
        assert out["a"].dtype == np.float16
        np.testing.assert_array_equal(out["b"].astype(np.float32), [2, 3, 4])
        np.testing.assert_array_equal(out["c"], f32.reshape(2, 3))
        np.testing.assert_array_equal(out["d"], [3, 4, 5])


# ---------------------------------------------------------------------------------------
# inputs, jit/scan/vjp, dtypes, orbax, attention


@needs_fixtures
def test_bad_inputs_are_refused_before_compiling():
    u, c = _model("uncond"), _model("cond_headch")
    x = jnp.zeros((2, 32, 32, 3))
    t = jnp.array([3, 917])
    with pytest.raises(ValueError, match="takes 32x32x3 images.*got shape \\(2, 64, 64, 3\\)"):
        u.check_input((2, 64, 64, 3))
    with pytest.raises(ValueError, match="takes 32x32x3 images"):
        u.raw(jnp.zeros((2, 3, 32, 32)), t)  # NCHW by mistake
    with pytest.raises(ValueError, match="not class-conditional"):
        u.raw(x, t, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="needs class labels"):
        c.raw(x, t)
    with pytest.raises(ValueError, match=r"\[0, 10\).*12"):
        c.raw(x, t, jnp.array([1, 12]))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        c.check_input((2, 32, 32, 3), np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        c.raw(x, t, jnp.array([1]))
    with pytest.raises(ValueError, match="integer"):
        c.check_input((2, 32, 32, 3), jnp.array([1.0, 2.0]))


def _tiny(**kw) -> ADMModel:
    flags = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                 attention_resolutions="8", num_heads=2, learn_sigma=True, class_cond=True,
                 num_classes=10, resblock_updown=True)
    cfg = ADMConfig.from_flags(**{**flags, **kw})
    rng = np.random.default_rng(0)  # random weights without compiling Flax's initialisers
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), jnp.float32),
                          abstract_params(cfg))
    return ADMModel.create(cfg, params)


def test_model_as_jit_argument_scan_and_vjp():
    model = _tiny()
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    lab = jnp.array([3, 9])

    @jax.jit
    def run(m, x):
        def body(h, tt):  # a DPS-like step: a vector-Jacobian product through the network
            e, pull = jax.vjp(lambda z: m.eps(z, jnp.full((2,), tt, jnp.int32), lab), h)
            g = pull(jnp.ones_like(e))[0]
            return h - 0.1 * e - 0.01 * g, g
        h, gs = jax.lax.scan(body, x, jnp.array([999, 500]))
        return h, gs[-1]

    h, g = run(model, x)
    assert h.shape == x.shape and g.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
    # new weights, same config: no retrace
    other = model.replace(params=jax.tree.map(lambda a: a * 1.01, model.params))
    n = run._cache_size()
    run(other, x)
    assert run._cache_size() == n
    assert hash(model.config) == hash(ADMConfig.from_flags(**model.config.to_flags()))


def test_prepared_params_give_the_same_bits_and_never_go_stale():
    """``with_prepared`` (what ``solve`` uses: parameter-only quantities computed once with
    numpy, with ``vjp`` the convolutions' flipped kernels too): the network's output and its
    input gradient are the same bits (without ``vjp``, the forward ops alone and the gradient
    from autodiff, within float rounding); new weights drop what was derived from the old ones;
    it is computed once per parameter set and freed with it."""
    from invdiff import compiler
    from invdiff.nets import adm

    model = _tiny(image_size=8, channel_mult="1", attention_resolutions="")
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t, lab = jnp.array([999, 10]), jnp.array([3, 9])
    w = jax.random.normal(jax.random.key(2), x.shape)
    out_and_grad = compiler.jit(lambda m, x: jax.value_and_grad(lambda z: jnp.sum(w * m.eps(z, t, lab)))(x))
    prepared = model.with_prepared(vjp=True)
    n_conv = sum(np.ndim(a) == 4 for a in jax.tree.leaves(model.params))
    n_norm = sum(p[-1].key == "scale" for p, _ in jax.tree_util.tree_leaves_with_path(model.params))
    assert len(jax.tree.leaves(model.with_prepared().prepared)) == n_norm > 0  # bias / 2 only
    assert len(jax.tree.leaves(prepared.prepared)) == n_norm + n_conv > n_norm
    assert model.prepared is None and prepared.with_prepared(vjp=True) is prepared
    assert model.with_prepared(vjp=True).prepared is prepared.prepared  # cached per parameter set
    for a, b in zip(out_and_grad(prepared, x), out_and_grad(model, x), strict=True):
        np.testing.assert_array_equal(a, b)
    # without vjp: the plain forward ops (no VJP rules to trace), the same output up to float
    # rounding (the norms with VJP rules are nested programs, which XLA fuses differently);
    # autodiff still gives the input gradient
    forward_only = model.with_prepared()
    assert "custom_vjp" not in str(jax.make_jaxpr(forward_only.eps)(x, t, lab))
    assert "custom_vjp" in str(jax.make_jaxpr(prepared.eps)(x, t, lab))
    (out, grad), (want_out, want_grad) = out_and_grad(forward_only, x), out_and_grad(model, x)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-4)  # a sum of 384 terms of ~1
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6 * float(jnp.abs(want_grad).max()))
    # Winograd convolutions (with_prepared(winograd=True)): within float rounding
    for vjp in (True, False):
        winograd = model.with_prepared(vjp=vjp, winograd=True)
        if vjp:
            out, grad = out_and_grad(winograd, x)
            np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-5 * float(jnp.abs(want_grad).max()))
        else:
            out = jnp.sum(w * winograd.eps(x, t, lab))
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-4)  # a sum of 384 terms of ~1
    other = prepared.replace(params=jax.tree.map(lambda a: a * 1.01, model.params))
    assert other.prepared is None and other.with_prepared().prepared is not prepared.prepared
    del model, prepared, other
    gc.collect()
    assert not adm._PREPARED  # dropped with the weights they were derived from


@needs_fixtures
def test_bfloat16_close_to_float32():
    io_ = _io("uncond")
    x, t, _ = _inputs(io_)
    m16 = load_model(FIX / "uncond.pt", dtype=jnp.bfloat16, **_flags("uncond"))
    assert jax.tree.leaves(m16.params)[0].dtype == jnp.float32
    out = m16.raw(x, t)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert _rel(out, io_["out_f64"].transpose(0, 2, 3, 1)) < 5e-2


@needs_fixtures
def test_orbax_round_trip(tmp_path):
    model = _model("uncond")
    io_ = _io("uncond")
    x, t, _ = _inputs(io_)
    d = save_model(model, tmp_path / "m")
    assert (d / "invdiff_model.json").is_file()
    with pytest.raises(FileExistsError):
        save_model(model, d)
    back = load_model(d)
    assert back.config == model.config and back.learned_variance
    np.testing.assert_array_equal(back.raw(x, t), model.raw(x, t))


@needs_fixtures
def test_attention_maps():
    model = _model("cond_headch")
    io_ = _io("cond_headch")
    x, t, y = _inputs(io_)
    maps = attention_maps(model, x, t, y)
    # 4 heads of 16 channels at 16x16 (blocks .3/.output 2,3) and 8x8
    assert set(maps) == {"input_blocks.3.1", "input_blocks.5.1", "middle_block.1",
                         *(f"output_blocks.{i}.1" for i in range(4))}
    assert maps["input_blocks.3.1"].shape == (2, 4, 256, 256)
    assert maps["middle_block.1"].shape == (2, 4, 64, 64)
    for v in maps.values():
        np.testing.assert_allclose(np.asarray(v).sum(-1), 1.0, atol=1e-5)


def test_image_networks_declare_their_data_range():
    from invdiff.nets.adm import ADMConfig, ADMModel

    cfg = ADMConfig.from_flags(image_size=8, num_channels=32, channel_mult="1,2", num_res_blocks=1,
                               attention_resolutions="4")
    model = ADMModel.create(cfg, abstract_params_like(cfg))
    assert model.data_range == (-1.0, 1.0), "solvers clip x̂0 of image networks to [-1, 1]"


def abstract_params_like(cfg):
    return abstract_params(cfg)


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 8), (3, 2, 7)])
def test_conv_gradients_equal_lax(kernel, stride, size):
    """invdiff.nets.conv writes the input gradient out by hand (fast inside loops): same values."""
    from jax import lax

    from invdiff.nets.conv import conv

    x = jax.random.normal(jax.random.key(0), (2, size, size, 5))
    k = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 7))
    p = ((kernel // 2,) * 2,) * 2
    ref = lambda x, k: lax.conv_general_dilated(x, k, (stride,) * 2, p, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, k: conv(x, k, (stride,) * 2, p)
    w = jax.random.normal(jax.random.key(2), ref(x, k).shape)
    np.testing.assert_allclose(ours(x, k), ref(x, k))
    g_ref = jax.jit(jax.grad(lambda x, k: jnp.sum(w * ref(x, k)), (0, 1)))(x, k)
    g_ours = jax.jit(jax.grad(lambda x, k: jnp.sum(w * ours(x, k)), (0, 1)))(x, k)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(8, 6), (7, 5)])
def test_winograd_convolution_equals_lax_values_and_gradients(size):
    """``conv`` with Winograd kernels (F(2x2, 3x3), odd sizes padded and cropped) equals lax's 3x3
    SAME convolution up to float rounding: values, input gradient (by Winograd too) and kernel
    gradient."""
    from jax import lax

    from invdiff.nets.conv import conv, flip_kernel, winograd_conv3, winograd_kernel

    x = jax.random.normal(jax.random.key(0), (2, *size, 5))
    k = np.asarray(jax.random.normal(jax.random.key(1), (3, 3, 5, 7)))
    kw, kwt = winograd_kernel(k), winograd_kernel(flip_kernel(k))
    assert kw.shape == (16, 5, 7) and kw.dtype == np.float32
    p = ((1, 1), (1, 1))
    ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), p, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, k: conv(x, k, (1, 1), p, None, None, kw, kwt)
    np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(winograd_conv3(x, kw), ref(x, k), rtol=1e-5, atol=1e-5)
    w = jax.random.normal(jax.random.key(2), ref(x, k).shape)
    g_ref = jax.jit(jax.grad(lambda x, k: jnp.sum(w * ref(x, k)), (0, 1)))(x, k)
    g_ours = jax.jit(jax.grad(lambda x, k: jnp.sum(w * ours(x, k)), (0, 1)))(x, k)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3x3"):
        winograd_kernel(np.zeros((1, 1, 5, 7), np.float32))


def test_winograd_kernels_go_to_the_stride1_3x3_convolutions(monkeypatch):
    """``with_prepared(winograd=True)`` gives Winograd kernels to exactly the 3x3 stride-1
    convolutions that neither upsample nor stride (``UNet.strided_convs`` names the stride-2
    ones), with ``vjp`` their input gradient's instead of ``kernel_t``; programs reading them
    compile with ``WINOGRAD_OPTIONS``; float32 models from ``CPU_WINOGRAD_MIN_CHANNELS`` base
    channels on get them by default. (Values: test_prepared_params_give_the_same_bits...)"""
    from invdiff import compiler
    from invdiff.nets import adm
    from invdiff.nets.conv import Conv2d

    model = _tiny(image_size=8, channel_mult="1,2", attention_resolutions="", resblock_updown=False)
    net = model.config.unet()
    stride2 = set()

    def is_conv(m, _):
        if isinstance(m, Conv2d) and m.strides == 2:
            stride2.add(tuple(m.scope.path))
        return isinstance(m, Conv2d)

    _, seen = jax.eval_shape(lambda p: net.apply({"params": p}, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)),
                                                 jnp.zeros((1,), jnp.int32), capture_intermediates=is_conv,
                                                 mutable=["intermediates"]), model.params)
    convs = {}
    for path, _ in jax.tree_util.tree_leaves_with_path(seen["intermediates"]):
        keys = tuple(k.key for k in path if hasattr(k, "key"))[:-1]
        node = model.params
        for key in keys:
            node = node[key]
        if np.ndim(node.get("kernel")) == 4:  # (the attention blocks' 1x1 projections are dense)
            convs[keys] = node["kernel"].shape[:2]
    strided = set(net.strided_convs())
    assert strided == stride2 and strided <= set(convs)
    eligible = {p for p, ks in convs.items() if ks == (3, 3)} - strided - set(net.upsampling_convs())
    assert eligible and not unet._holders(model.with_prepared(vjp=True).prepared, "kernel_w")  # 32 channels
    for vjp in (False, True):
        prepared = model.with_prepared(vjp=vjp, winograd=True).prepared
        assert unet._holders(prepared, "kernel_w") == eligible
        assert unet._holders(prepared, "kernel_wt") == (eligible if vjp else set())
        assert not unet._holders(prepared, "kernel_t") & eligible
        assert compiler._overrides(jax.tree.leaves(prepared)) == tuple(sorted(adm.WINOGRAD_OPTIONS.items()))
    assert compiler._overrides(jax.tree.leaves(model)) == ()
    monkeypatch.setattr(adm, "CPU_WINOGRAD_MIN_CHANNELS", model.config.num_channels)
    assert unet._holders(model.with_prepared(vjp=True).prepared, "kernel_w") == eligible
    assert not unet._holders(model.replace(dtype=np.dtype(jnp.bfloat16)).with_prepared().prepared, "kernel_w")
    with pytest.raises(ValueError, match="no convolution kernel at the strided paths"):
        unet.prepare_params({}, strided=[("nowhere", "op")])


def _reference_group_norm(h, scale, bias, groups=32, eps=1e-5):
    b, *spatial, c = h.shape
    v = h.reshape(b, -1, groups, c // groups)
    mean = v.mean(axis=(1, 3), keepdims=True)
    var = jnp.square(v - mean).mean(axis=(1, 3), keepdims=True)
    xhat = ((v - mean) / jnp.sqrt(var + eps)).reshape(h.shape)
    shape = (-1,) + (1,) * len(spatial) + (c,)
    return xhat * scale.reshape(shape) + bias.reshape(shape)


@pytest.mark.parametrize("act", [False, True])
@pytest.mark.parametrize("per_sample", [False, True])
def test_group_norm_vjps_equal_autodiff(act, per_sample):
    """GroupNorm (and GroupNorm + SiLU) with their written-out VJPs: the values and the
    gradients with respect to the input and the affine parameters are autodiff's of a plain
    GroupNorm, for shared (C,) and per-sample (B, C) affines (a ResBlock's scale-shift), on
    inputs far from zero mean."""
    from invdiff.nets.unet import group_norm, group_norm_silu

    ks = jax.random.split(jax.random.key(3), 4)
    h = 3.0 + 2.0 * jax.random.normal(ks[0], (2, 5, 3, 64))
    shape = (2, 64) if per_sample else (64,)
    scale = 1 + 0.3 * jax.random.normal(ks[1], shape)
    bias = 0.5 * jax.random.normal(ks[2], shape)
    w = jax.random.normal(ks[3], h.shape)
    ours = (lambda *a: group_norm_silu(*a, 32, 1e-5)) if act else (lambda *a: group_norm(*a, 32, 1e-5))
    ref = (lambda *a: jax.nn.silu(_reference_group_norm(*a))) if act else _reference_group_norm
    np.testing.assert_allclose(jax.jit(ours)(h, scale, bias), ref(h, scale, bias), rtol=1e-5, atol=1e-5)
    grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(w * f(*a)), (0, 1, 2)))(h, scale, bias) for f in (ours, ref)]
    for a, b in zip(*grads):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_attention_softmax_vjp_equals_autodiff():
    from invdiff.nets.unet import softmax

    x = 5 * jax.random.normal(jax.random.key(0), (2, 3, 7, 7))
    w = jax.random.normal(jax.random.key(1), x.shape)
    np.testing.assert_allclose(softmax(x), jax.nn.softmax(x, axis=-1), rtol=1e-6, atol=1e-7)
    grads = [jax.grad(lambda x, f=f: jnp.sum(w * f(x)))(x) for f in (softmax, jax.nn.softmax)]
    np.testing.assert_allclose(*grads, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("updown", [False, True])
def test_upsampling_convs_names_every_upsampling_convolution(updown):
    """``UNet.upsampling_convs`` (which ``prepare_params`` gives phase kernels) lists exactly the
    ``Conv2d(upsample=True)`` modules the forward pass builds, attention blocks in between."""
    from invdiff.nets.conv import Conv2d

    cfg = ADMConfig.from_flags(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,1,2",
                               attention_resolutions="8,4", resblock_updown=updown)
    net = cfg.unet()
    params = abstract_params(cfg)
    is_up = lambda m, _: isinstance(m, Conv2d) and m.upsample
    _, seen = jax.eval_shape(lambda p: net.apply({"params": p}, jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,)),
                                                 capture_intermediates=is_up, mutable=["intermediates"]), params)
    # sow keeps each output as a tuple: one leaf per module
    found = unet._holders(jax.tree.map(lambda a: 0, seen["intermediates"], is_leaf=lambda v: isinstance(v, tuple)),
                         "__call__")
    assert found == set(net.upsampling_convs()) and len(found) == 2
    # with_prepared gives exactly those their phase kernels (numpy; nothing compiled)
    rng = np.random.default_rng(0)
    model = ADMModel.create(cfg, jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), params))
    for vjp in (False, True):
        prepared = jax.tree.map(np.asarray, model.with_prepared(vjp=vjp).prepared)
        assert unet._holders(prepared, "kernel_up") == found
    with pytest.raises(ValueError, match="no convolution kernel at the upsampling paths"):
        unet.prepare_params({}, upsampling=[("nowhere", "conv")])


def test_taps_conv_and_phase_interleave_equal_their_direct_forms():
    """``taps_conv`` (one product for all taps, then a shifted sum) equals lax's unpadded
    convolution; ``interleave_phases``' written-out VJP equals autodiff of its slices, bit for
    bit."""
    from jax import lax

    from invdiff.nets.conv import _interleave, interleave_phases, taps_conv, taps_matrix

    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 8))
    k = np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 8, 3)))
    ref = lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert taps_matrix(k).shape == (8, 18)
    np.testing.assert_array_equal(taps_matrix(k), taps_matrix(jnp.asarray(k)))
    np.testing.assert_allclose(taps_conv(x, taps_matrix(k), (2, 3)), ref, rtol=1e-5, atol=1e-5)
    y = jax.random.normal(jax.random.key(2), (2, 4, 6, 2, 2, 3))
    g = jax.random.normal(jax.random.key(3), (2, 6, 10, 3))
    for f in (interleave_phases, _interleave):
        assert f(y).shape == (2, 6, 10, 3)
    (a,), (b,) = (jax.vjp(f, y)[1](g) for f in (interleave_phases, _interleave))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [(4, 4), (5, 3)])
def test_upsampling_conv_equals_upsample_then_conv(size):
    """``Conv2d(upsample=True)`` (four 2x2 convolutions of the small image) equals a 3x3 conv
    of the nearest-neighbour upsampled image, values and both gradients."""
    from invdiff.nets.conv import PREPARED, Conv2d, flip_kernel, phase_kernel, taps_matrix

    x = jax.random.normal(jax.random.key(0), (2, *size, 6))
    params = Conv2d(7, 3).init(jax.random.key(1), x)
    up = lambda x: jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    ours = lambda p, x: Conv2d(7, 3, upsample=True).apply(p, x)
    ref = lambda p, x: Conv2d(7, 3).apply(p, up(x))
    assert ours(params, x).shape == (2, 2 * size[0], 2 * size[1], 7)
    np.testing.assert_allclose(ours(params, x), ref(params, x), rtol=1e-5, atol=1e-5)
    w = jax.random.normal(jax.random.key(2), ref(params, x).shape)
    grads = [jax.jit(jax.grad(lambda p, x, f=f: jnp.sum(w * f(p, x)), (0, 1)))(params, x) for f in (ours, ref)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # the phase kernel and its flip prepared with numpy (prepare_params): the same bits
    k = np.asarray(params["params"]["kernel"])
    np.testing.assert_array_equal(phase_kernel(k), phase_kernel(jnp.asarray(k)))
    prepared = {"params": params["params"], PREPARED: {"kernel_up": phase_kernel(k),
                                                       "kernel_t": taps_matrix(flip_kernel(phase_kernel(k)))}}
    value_and_grad = jax.jit(jax.value_and_grad(lambda v, x: jnp.sum(w * ours(v, x)), 1))
    for a, b in zip(value_and_grad(prepared, x), value_and_grad(params, x), strict=True):
        np.testing.assert_array_equal(a, b)
    from invdiff.nets.conv import conv

    with pytest.raises(ValueError, match="taps_matrix"):  # the input-gradient kernel in the wrong form
        jax.grad(lambda x: conv(x, phase_kernel(k), (1, 1), ((1, 1), (1, 1)), None,
                                flip_kernel(phase_kernel(k))).sum())(x)
    with pytest.raises(ValueError, match="3x3 stride-1"):
        Conv2d(7, 3, strides=2, upsample=True).init(jax.random.key(1), x)


def test_large_cpu_batches_run_in_chunks_with_the_same_values(monkeypatch):
    """On a single-device CPU, a batch whose activations exceed ``CPU_CHUNK_ELEMENTS``, or (on a
    CPU with AVX-512) of 16 samples or more, runs as a loop over chunks (the largest divisor of B
    that fits, at least 1; there, from batch 16 on, at most 8 samples): each sample's output is
    that of its chunk run on its own, within float rounding."""
    from invdiff.nets import adm

    per = 8 * 8 * 32  # H x W x num_channels of the model below
    batches = (1, 2, 3, 6, 7, 12, 16, 17, 20, 32)
    monkeypatch.setattr(adm, "cpu_has_avx512", lambda: True)
    assert [adm.cpu_chunk((b, 8, 8, 3), 32) for b in batches] == [1, 2, 3, 6, 7, 12, 8, 1, 5, 8]
    monkeypatch.setattr(adm, "cpu_has_avx512", lambda: False)
    assert [adm.cpu_chunk((b, 8, 8, 3), 32) for b in batches] == list(batches)
    monkeypatch.setattr(adm, "CPU_CHUNK_ELEMENTS", 2 * per)
    assert [adm.cpu_chunk((b, 8, 8, 3), 32) for b in batches] == [1, 2, 1, 2, 1, 2, 2, 1, 2, 2]
    with monkeypatch.context() as m:
        m.setattr(jax, "device_count", lambda: 4)  # several devices: the batch stays whole
        assert adm.cpu_chunk((6, 8, 8, 3), 32) == 6
    model = _tiny(image_size=8, channel_mult="1", attention_resolutions="").with_prepared()
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
    t, lab = jnp.arange(6) * 150, jnp.arange(6)
    traced = jax.jit(model.raw).trace(x, t, lab)
    assert "scan" in str(traced.jaxpr)  # the loop over chunks
    out = traced.lower().compile()(x, t, lab)
    for i in range(0, 6, 2):  # the chunks run as batches of 2 (no loop)
        np.testing.assert_allclose(out[i:i + 2], model.raw(x[i:i + 2], t[i:i + 2], lab[i:i + 2]), rtol=1e-5,
                                   atol=1e-5)
