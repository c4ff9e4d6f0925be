"""A user-defined degradation in one file: a k x k circular box blur.

Write only the forward map; ``MatrixFree`` supplies Aᵀ (jax.linear_transpose) and the
pseudo-inverse and prox (conjugate gradients). ``check_operator`` verifies the contract.
Run: python examples/box_blur.py
"""

import jax
import jax.numpy as jnp
from flax import struct

from invdiff.operator import MatrixFree
from invdiff.testing import check_operator


class BoxBlur(MatrixFree):
    """Mean over a k x k window with wrap-around borders; x is (B, H, W, C)."""

    k: int = struct.field(pytree_node=False, default=3)

    def A(self, x: jax.Array) -> jax.Array:
        shifts = range(-(self.k // 2), self.k - self.k // 2)
        return sum(jnp.roll(x, (i, j), axis=(1, 2)) for i in shifts for j in shifts) / self.k**2


if __name__ == "__main__":
    errors = check_operator(BoxBlur(k=3, in_shape=(16, 16, 3)), (16, 16, 3))
    for name, err in errors.items():
        print(f"{name:40s} {err:.2e}")
