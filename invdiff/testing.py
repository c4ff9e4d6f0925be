"""``check_operator``: the property test every operator must pass, for users' own operators too.

    from invdiff.testing import check_operator
    errors = check_operator(MyBlur(in_shape=(16, 16, 3)), (16, 16, 3))

It draws random data and checks, each to ``atol + rtol · scale`` (norms per sample):

* shapes: ``y_shape``/``x_shape`` round trip and ``check_batch``;
* adjoint: <A x, y> = <x, Aᵀ y>, and Aᵀ equals ``jax.linear_transpose`` of A;
* the four Moore–Penrose conditions of ``pinv`` (Penrose 1955): A A⁺ A = A, A⁺ A A⁺ = A⁺,
  and the symmetry of A A⁺ and A⁺ A through <A A⁺ u, v> = <u, A A⁺ v>;
* ``prox``: for ρ > 0 the gradient Aᵀ(A x − y) + ρ (x − z) vanishes; for ρ = 0 and a
  consistent y, A x = y and x − z is orthogonal to the null space ((I − A⁺A)(x − z) = 0);
* ``AT_gram_inv``: Aᵀ (r² A Aᵀ + σ² I)⁻¹ y against a dense float64 solve (small problems) and,
  where an operator has a closed form, against the matrix-free conjugate gradients;
* declared structure: a partial isometry (``c()`` / ``partial_isometry_c()``): A Aᵀ A = c A;
  a co-isometry (``coisometry_c()``): A Aᵀ y = c y (which :func:`invdiff.compose` relies on);
* batches: the Jacobian has no cross-sample blocks (each sample's result depends only on
  that sample), and applying the operator to the batch equals
  ``vmap`` over samples of the operator applied to batch-1 slices (per-sample leaves, such
  as per-sample masks, are mapped along: an operator declares them with
  ``per_sample_axes(x_shape, batch)``, see ``operators.Inpainting``);
* for an :class:`~invdiff.operator.SVDOperator`: V is orthogonal (V Vᵀ x = x, Vᵀ V x̄ = x̄),
  A = U diag(s) Vᵀ and Aᵀ = V diag(s) Uᵀ, Ut is the adjoint of U, and U is an isometry on
  the support of s.

Everything is evaluated inside one compiled program (as solvers run operators), with XLA's
backend optimisation off (:data:`CHECK_COMPILER_OPTIONS`) to keep compilation short. A failure
raises AssertionError naming the property, the error and the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from invdiff.operator import Composed, ComposedSVD, LinearOperator, SVDOperator

Array = jax.Array

#: Dense float64 reference checks run when B · prod(x_shape) and B · prod(y_shape) are at most this.
DENSE_LIMIT = 2048
#: XLA options for the one compiled program of a check: no LLVM optimisation, which halves the
#: compile time of these tiny programs (the checks compare values, not speed).
CHECK_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _norms(a: Array) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.sqrt(np.sum(a.reshape(a.shape[0], -1) ** 2, axis=1))


class _Checker:
    def __init__(self, rtol: float, atol: float):
        self.rtol, self.atol = rtol, atol
        self.errors: dict[str, float] = {}

    def close(self, name: str, got, want, scale=None, hint: str = "") -> None:
        """Per sample: ||got − want|| <= atol + rtol · scale (scale defaults to ||want||)."""
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            raise AssertionError(f"{name}: shape {got.shape} != expected {want.shape}")
        diff = _norms(got - want) if got.ndim > 1 else np.abs(got - want)
        if scale is None:
            scale = np.maximum(_norms(want) if want.ndim > 1 else np.abs(want),
                               _norms(got) if got.ndim > 1 else np.abs(got))
        scale = np.broadcast_to(np.asarray(scale, np.float64), diff.shape)
        self.errors[name] = float(np.max(diff / np.maximum(scale, 1e-30)))
        bad = diff > self.atol + self.rtol * scale
        if np.any(bad):
            i = int(np.argmax(bad))
            raise AssertionError(
                f"{name} fails: sample {i} has error {diff[i]:.3g} (relative {diff[i] / max(scale[i], 1e-30):.3g}),"
                f" tolerance {self.atol:g} + {self.rtol:g} x {scale[i]:.3g}. {hint}".rstrip())


def _bdot(a: Array, b: Array) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum((a * b).reshape(a.shape[0], -1), axis=1)


def per_sample_axes(op: LinearOperator, x_shape: tuple[int, ...], batch: int):
    """The ``in_axes`` prefix that maps ``op``'s per-sample leaves along a batch (None: shared).

    Operators with per-sample leaves define ``per_sample_axes(x_shape, batch)``; compositions
    are handled here.
    """
    if isinstance(op, Composed):
        shared = {"svd": None} if isinstance(op, ComposedSVD) else {}  # a Separable: no per-sample leaves
        return op.replace(outer=per_sample_axes(op.outer, op.inner.y_shape(x_shape), batch),
                          inner=per_sample_axes(op.inner, x_shape, batch), **shared)
    method: Callable | None = getattr(op, "per_sample_axes", None)
    return method(x_shape, batch) if method is not None else None


def _quantities(op: LinearOperator, d: dict, x_shape: tuple[int, ...], batch: int,
                svd: bool, dense: bool) -> dict:
    """Everything the checks compare, computed in one compiled program (one compile per check)."""
    x, y, z, u, v, rho, r2, s2 = (d[k] for k in ("x", "y", "z", "u", "v", "rho", "r2", "s2"))
    bshape = (batch,) + (1,) * len(x_shape)
    q: dict = {}
    # Independent pinv / prox / AT_gram_inv calls are stacked on a new leading axis and
    # vmapped: one conjugate-gradient loop each instead of one per call (compile time).
    ax, aty = op.A(x), op.AT(y)
    py, pu, pv, p_ax, p_az = jax.vmap(op.pinv)(jnp.stack([y, u, v, ax, op.A(z)]))
    q.update(ax=ax, aty=aty, py=py)
    (q["lt"],) = jax.linear_transpose(op.A, jax.ShapeDtypeStruct(x.shape, x.dtype))(y)
    q["mp1"] = op.A(p_ax)
    q["app_u"], q["app_v"] = op.A(pu), op.A(pv)
    q["ppa_x"], q["ppa_z"] = p_ax, p_az
    xp, prox1b, x0 = jax.vmap(lambda yy, r: op.prox(z, yy, r))(
        jnp.stack([y, y, ax]), jnp.stack([rho, jnp.ones_like(rho), jnp.zeros_like(rho)]))
    q["prox1"] = op.prox(z, y, 1.0)
    q.update(xp=xp, at_resid=op.AT(op.A(xp) - y), prox1b=prox1b, x0=x0, ax0=op.A(x0))
    q["mp2"], q["pa_d"] = jax.vmap(op.pinv)(jnp.stack([op.A(py), op.A(x0 - z)]))
    q["aatax"] = op.A(op.AT(ax))
    q["aaty"] = op.A(aty)
    q["gram"], q["gram0"] = jax.vmap(lambda ss: op.AT_gram_inv(y, r2, ss))(jnp.stack([s2, 0 * s2]))
    q["gram_lhs"] = r2.reshape(bshape) * op.AT(op.A(q["gram"])) + s2.reshape(bshape) * q["gram"]
    if type(op).AT_gram_inv is not LinearOperator.AT_gram_inv:  # a closed form: against the matrix-free CG
        q["gram_cg"] = LinearOperator.AT_gram_inv(op, y, r2, s2)
    if dense:
        q["jac"] = jax.jacfwd(op.A)(x)
    axes = per_sample_axes(op, x_shape, batch)

    def one(method: str):
        return lambda o, *args: getattr(o, method)(*(a[None] for a in args))[0]

    q["vmap_A"] = jax.vmap(one("A"), in_axes=(axes, 0))(op, x)
    q["vmap_AT"] = jax.vmap(one("AT"), in_axes=(axes, 0))(op, y)
    q["vmap_pinv"] = jax.vmap(one("pinv"), in_axes=(axes, 0))(op, y)
    q["vmap_prox"] = jax.vmap(one("prox"), in_axes=(axes, 0, 0, 0))(op, z, y, rho)
    if svd:
        xbar, s = op.Vt(x), op.singulars()
        wbar = d["w"]
        try:
            fits = jnp.broadcast_shapes(jnp.shape(s), xbar.shape) == xbar.shape
        except ValueError:
            fits = False
        if not fits:
            raise AssertionError(f"SVD: singulars() of shape {tuple(jnp.shape(s))} does not broadcast "
                                 f"against Vt(x) of shape {tuple(xbar.shape)}")
        ybar = op.Ut(y)
        if tuple(ybar.shape) != tuple(xbar.shape):
            raise AssertionError(f"SVD: Ut(y) has shape {tuple(ybar.shape)}, the spectral shape is "
                                 f"{tuple(xbar.shape)}")
        support = jnp.broadcast_to(s > 0, wbar.shape).astype(wbar.dtype)
        q.update(xbar=xbar, vvt=op.V(xbar), vtv=op.Vt(op.V(wbar)), v_w=op.V(wbar), usv=op.U(s * xbar),
                 ybar=ybar, vsu=op.V(s * ybar), u_w=op.U(wbar),
                 utu=op.Ut(op.U(support * wbar)) * support, w_support=support * wbar)
    return q


def check_operator(op: LinearOperator, x_shape: tuple[int, ...], *, batch: int = 2,
                   key: Array | None = None, rtol: float = 1e-4, atol: float = 1e-6,
                   check_svd: bool = True, check_dense: bool = True) -> dict[str, float]:
    """Check the operator contract of ``op`` on inputs of trailing shape ``x_shape``.

    Args:
      op: the operator (any :class:`~invdiff.operator.LinearOperator`); it is bound to
        ``x_shape`` first (:meth:`~invdiff.operator.LinearOperator.bind`), as ``solve`` does.
      x_shape: one input's shape (no batch axis).
      batch: the batch size B; per-sample leaves (masks) must have B entries.
      key: PRNG key for the random test data (default ``jax.random.key(0)``).
      rtol, atol: each property holds per sample to ``atol + rtol · scale``.
      check_svd: run the SVD checks when ``op`` is an SVDOperator.
      check_dense: compare with dense float64 linear algebra on small problems
        (B · prod(x_shape) and B · prod(y_shape) at most ``DENSE_LIMIT``).

    Returns:
      ``{property name: largest relative error over the batch}``.

    Raises:
      AssertionError: naming the property that fails, its error and the tolerance.
    """
    x_shape = tuple(x_shape)
    op = op.bind(x_shape)
    key = jax.random.key(0) if key is None else key
    chk = _Checker(rtol, atol)

    # ---- shapes ------------------------------------------------------------------------
    y_shape = tuple(op.y_shape(x_shape))
    if tuple(op.x_shape(y_shape)) != x_shape:
        raise AssertionError(f"x_shape(y_shape(x_shape)) != x_shape: {x_shape} -> {y_shape} -> "
                             f"{tuple(op.x_shape(y_shape))}")
    op.check_batch(batch)
    ks = jax.random.split(key, 6)
    xs, ys = (batch,) + x_shape, (batch,) + y_shape
    d = {name: jax.random.normal(k, shape, jnp.float32)
         for name, k, shape in zip("xyzuv", ks[:5], (xs, ys, xs, ys, ys), strict=True)}
    d["rho"] = jnp.asarray(np.geomspace(0.3, 3.0, batch), jnp.float32)
    d["r2"] = jnp.asarray(np.linspace(1.0, 0.5, batch), jnp.float32)
    d["s2"] = jnp.asarray(np.linspace(0.1, 0.01, batch), jnp.float32)
    svd = check_svd and isinstance(op, SVDOperator)
    if svd:
        spectral = jax.eval_shape(op.Vt, jax.ShapeDtypeStruct(xs, jnp.float32))
        d["w"] = jax.random.normal(ks[5], spectral.shape, jnp.float32)
    n_x, n_y = math.prod(xs), math.prod(ys)
    dense = check_dense and n_x <= DENSE_LIMIT and n_y <= DENSE_LIMIT

    ax_shape = jax.eval_shape(op.A, d["x"]).shape
    aty_shape = jax.eval_shape(op.AT, d["y"]).shape
    if tuple(ax_shape) != ys or tuple(aty_shape) != xs:
        raise AssertionError(f"A(x) has shape {tuple(ax_shape)} (expected {ys}) and "
                             f"AT(y) {tuple(aty_shape)} (expected {xs})")
    run = jax.jit(_quantities, static_argnums=(2, 3, 4, 5), compiler_options=CHECK_COMPILER_OPTIONS)
    q = {k: np.asarray(a, np.float64) for k, a in run(op, d, x_shape, batch, svd, dense).items()}
    x, y, z, u, v, rho, r2, s2 = (np.asarray(d[k], np.float64)
                                  for k in ("x", "y", "z", "u", "v", "rho", "r2", "s2"))
    ax, aty, py = q["ax"], q["aty"], q["py"]

    # ---- adjoint -----------------------------------------------------------------------
    chk.close("adjoint <Ax,y> = <x,ATy>", _bdot(ax, y), _bdot(x, aty), scale=_norms(ax) * _norms(y),
              hint="AT is not the adjoint of A.")
    chk.close("AT = linear_transpose(A)", aty, q["lt"], hint="AT disagrees with jax.linear_transpose(A).")

    # ---- Moore–Penrose -----------------------------------------------------------------
    chk.close("MP1 A A+ A = A", q["mp1"], ax, hint="pinv is not a generalised inverse.")
    chk.close("MP2 A+ A A+ = A+", q["mp2"], py)
    chk.close("MP3 A A+ symmetric", _bdot(q["app_u"], v), _bdot(u, q["app_v"]),
              scale=_norms(u) * _norms(v), hint="A A+ is not an orthogonal projection.")
    chk.close("MP4 A+ A symmetric", _bdot(q["ppa_x"], z), _bdot(x, q["ppa_z"]),
              scale=_norms(x) * _norms(z), hint="A+ A is not an orthogonal projection.")

    # ---- prox --------------------------------------------------------------------------
    xp = q["xp"]
    rho_b = rho.reshape((batch,) + (1,) * len(x_shape))
    grad = q["at_resid"] + rho_b * (xp - z)
    scale = _norms(q["at_resid"]) + rho * (_norms(xp - z) + _norms(z)) + _norms(aty)
    chk.close("prox gradient = 0 (rho > 0)", grad, np.zeros_like(grad), scale=scale,
              hint="prox does not minimise ||y - Ax||^2 + rho ||x - z||^2.")
    chk.close("prox scalar rho = per-sample rho", q["prox1"], q["prox1b"])
    chk.close("prox rho=0: A x = y", q["ax0"], ax)
    dvec = q["x0"] - z
    chk.close("prox rho=0: x - z in row space", dvec - q["pa_d"], np.zeros_like(dvec),
              scale=_norms(dvec) + _norms(z), hint="prox(z, y, 0) is not the point of {Ax = y} nearest z.")

    # ---- declared partial isometry -----------------------------------------------------
    c = op.partial_isometry_c()
    if c is not None:
        chk.close("partial isometry A AT A = c A", q["aatax"], c * ax,
                  hint=f"the operator declares c = {c:g} but A A^T A != c A.")
    c = op.coisometry_c()
    if c is not None:
        chk.close("co-isometry A AT = c I", q["aaty"], c * y,
                  hint=f"the operator declares A A^T = {c:g} I, which does not hold.")

    # ---- AT_gram_inv, dense references and batch independence --------------------------
    chk.close("AT_gram_inv normal equations", q["gram_lhs"], aty)
    if "gram_cg" in q:
        chk.close("AT_gram_inv = matrix-free CG", q["gram"], q["gram_cg"],
                  hint="the closed form disagrees with conjugate gradients on (r2 AT A + s2 I) z = AT y.")
    if dense:
        jac = q["jac"].reshape(n_y, n_x)
        my, mx = n_y // batch, n_x // batch
        mats = []
        for i in range(batch):
            for j in range(batch):
                block = jac[i * my:(i + 1) * my, j * mx:(j + 1) * mx]
                if i == j:
                    mats.append(block)
                elif np.any(block != 0):
                    raise AssertionError(f"batch independence fails: sample {i} of A(x) depends on "
                                         f"sample {j} of x")
        chk.errors["batch independence"] = 0.0
        yb = y.reshape(batch, -1)
        want = [m.T @ np.linalg.solve(r2[i] * m @ m.T + s2[i] * np.eye(my), yb[i]) for i, m in enumerate(mats)]
        chk.close("AT_gram_inv = AT (r2 A AT + s2 I)^-1", q["gram"].reshape(batch, -1), np.stack(want),
                  hint="AT_gram_inv disagrees with a dense solve.")
        want0 = [np.linalg.pinv(m, rcond=1e-5) @ yb[i] / r2[i] for i, m in enumerate(mats)]
        chk.close("AT_gram_inv(s2=0) = A+ y / r2", q["gram0"].reshape(batch, -1), np.stack(want0))

    # ---- vmap invariance ---------------------------------------------------------------
    chk.close("vmap(A) over batch-1 slices = A", q["vmap_A"], ax,
              hint="per-sample parameters may not be used per sample (see per_sample_axes).")
    chk.close("vmap(AT) = AT", q["vmap_AT"], aty)
    chk.close("vmap(pinv) = pinv", q["vmap_pinv"], py)
    chk.close("vmap(prox) = prox", q["vmap_prox"], xp)

    # ---- SVD ---------------------------------------------------------------------------
    if svd:
        w = np.asarray(d["w"], np.float64)
        chk.close("SVD: V Vt x = x", q["vvt"], x, hint="V is not orthogonal.")
        chk.close("SVD: Vt V w = w", q["vtv"], w, hint="V is not orthogonal.")
        chk.close("SVD: <Vt x, w> = <x, V w>", _bdot(q["xbar"], w), _bdot(x, q["v_w"]),
                  scale=_norms(x) * _norms(w))
        chk.close("SVD: A = U diag(s) Vt", q["usv"], ax)
        chk.close("SVD: AT = V diag(s) Ut", q["vsu"], aty)
        chk.close("SVD: <Ut y, w> = <y, U w>", _bdot(q["ybar"], w), _bdot(y, q["u_w"]),
                  scale=_norms(y) * _norms(w), hint="Ut is not the adjoint of U.")
        chk.close("SVD: Ut U = I on the support of s", q["utu"], q["w_support"],
                  hint="U is not an isometry where s > 0.")
    return chk.errors
