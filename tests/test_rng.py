"""invdiff.rng: jax.random's values bit for bit, and jax.random itself where it cannot be."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invdiff import compiler, rng

#: the library's XLA:CPU configuration, whatever the suite's own XLA_FLAGS (conftest.py: LLVM -O0,
#: the older kernel emitters, with which XLA rounds some programs differently)
LIBRARY_OPTIONS = {**compiler.CPU_OPTIONS, "xla_cpu_use_fusion_emitters": True,
                   "xla_llvm_disable_expensive_passes": False}


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (7,), (3, 5, 5, 1), (1,)])
def test_normal_is_jax_random_normal_bit_for_bit(shape):
    for seed in (0, 123456789):
        key = jax.random.key(seed)
        want = jax.random.normal(key, shape)
        np.testing.assert_array_equal(rng.normal(key, shape), want)


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (4, 64, 64, 3)])
def test_normal_is_jax_random_normal_inside_a_program_with_invdiffs_options(shape):
    # compiled the same way, the same bits; at 4096 values and more XLA:CPU evaluates element-wise
    # work in YNNPACK with these options, which rounds differently from jax.random.normal called
    # outside a program (up to 3 ulp in ~6 % of the values: see invdiff/rng.py)
    if compiler.compiler_options() is None:
        pytest.skip("invdiff's XLA options are off here")
    key = jax.random.key(0)

    def program(f):
        return jax.jit(lambda k: f(k, shape) + 0, compiler_options=LIBRARY_OPTIONS)

    np.testing.assert_array_equal(program(rng.normal)(key), program(jax.random.normal)(key))


def test_normal_tails_and_erf_inv_branches_match():
    # 2**16 draws reach |z| > 4 (the erf_inv branch w >= 5) and the near-zero branch
    key = jax.random.key(7)
    want = np.asarray(jax.random.normal(key, (1 << 16,)))
    got = np.asarray(rng.normal(key, (1 << 16,)))
    assert np.abs(want).max() > 4
    np.testing.assert_array_equal(got, want)


def test_split_is_jax_random_split_for_typed_and_raw_keys():
    key = jax.random.key(3)
    for num in (1, 2, 20):
        np.testing.assert_array_equal(jax.random.key_data(rng.split(key, num)),
                                      jax.random.key_data(jax.random.split(key, num)))
    raw = jax.random.PRNGKey(3)
    got = rng.split(raw, 3)
    assert got.dtype == jnp.uint32 and got.shape == (3, 2)
    np.testing.assert_array_equal(got, jax.random.split(raw, 3))
    np.testing.assert_array_equal(rng.normal(raw, (4, 4)), jax.random.normal(raw, (4, 4)))


def test_under_vmap_like_jax_random():
    keys = jax.random.split(jax.random.key(5), 4)
    np.testing.assert_array_equal(jax.vmap(lambda k: rng.normal(k, (3, 3)))(keys),
                                  jax.vmap(lambda k: jax.random.normal(k, (3, 3)))(keys))


def test_other_keys_and_dtypes_go_to_jax_random():
    rbg = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(rng.normal(rbg, (5,)), jax.random.normal(rbg, (5,)))
    np.testing.assert_array_equal(jax.random.key_data(rng.split(rbg, 2)),
                                  jax.random.key_data(jax.random.split(rbg, 2)))
    key = jax.random.key(1)
    assert rng.normal(key, (4,), jnp.float16).dtype == jnp.float16
    np.testing.assert_array_equal(rng.normal(key, ()), jax.random.normal(key, ()))
