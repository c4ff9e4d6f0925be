"""Two real processes on 127.0.0.1, two virtual CPU devices each, joined by jax.distributed (gloo).

* ``invdiff.solve`` with the batch spread over the four devices of both processes gives the
  one-device result;
* ``invdiff bench`` splits the images over the processes, each appends to its own shard, and
  process 0 merges them: the merged records equal a single-process run's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from invdiff.bench import records, run_bench

REPO = Path(__file__).resolve().parents[1]

PRIOR = textwrap.dedent("""
    import jax.numpy as jnp, numpy as np, invdiff
    from invdiff.priors import Gaussian
    IMG = (8, 8, 3)
    PRIOR = Gaussian(0.3 * jnp.sin(jnp.arange(np.prod(IMG), dtype=jnp.float32)).reshape(IMG), var=0.1,
                     schedule=invdiff.NoiseSchedule.linear(1000))
""")

WORKER = textwrap.dedent("""
    import json, sys
    from invdiff.bench import distributed
    process, port, out, data = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    assert distributed.initialize(f"127.0.0.1:{port}", 2, process) == (process, 2)
    import jax, numpy as np
    assert jax.local_device_count() == 2 and jax.device_count() == 4
    """) + PRIOR + textwrap.dedent("""
    from operators import Inpainting, masks
    from solvers import DDNM
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3), minval=-1, maxval=1)
    op = Inpainting(masks.by_name("random", jax.random.key(2), 8, 8, n=4)[..., None])
    y = op.A(x)
    spread = invdiff.solve(DDNM(steps=3), PRIOR, op, y, key=jax.random.key(3), devices=jax.devices())
    mine = {s.index[0].start: np.asarray(s.data)[0].tolist() for s in spread.x.addressable_shards}
    from invdiff.bench import run_bench
    run_bench(["ddnm"], ["inpaint-random-noisy"], data=data, model=PRIOR, steps=3, batch_size=2, out=out,
              metrics=["psnr", "consistency"], progress=False, plots=False)
    print("RESULT" + json.dumps({"rows": mine, "devices": len(spread.x.sharding.device_set)}))
""")


# the same solve on one device, in this process
WORKER_ONE = textwrap.dedent("""
    import jax
    from operators import Inpainting, masks
    from solvers import DDNM
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3), minval=-1, maxval=1)
    op = Inpainting(masks.by_name("random", jax.random.key(2), 8, 8, n=4)[..., None])
    ONE = np.asarray(invdiff.solve(DDNM(steps=3), PRIOR, op, op.A(x), key=jax.random.key(3),
                                   devices=jax.local_devices()[:1]).x)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    ns: dict = {}
    exec(PRIOR, ns)
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    out = tmp_path / "two"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, str(out), str(data)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
    res = [json.loads(next(ln for ln in so.splitlines() if ln.startswith("RESULT"))[6:]) for so, _ in outs]

    # the batch of 4 was spread over all four devices, two rows per process, each equal to one device's
    assert all(r["devices"] == 4 for r in res)
    rows = {int(i): np.asarray(v) for r in res for i, v in r["rows"].items()}
    assert sorted(rows) == [0, 1, 2, 3] and sorted(res[0]["rows"]) == ["0", "1"]
    exec(WORKER_ONE, ns)
    for i, v in rows.items():
        np.testing.assert_allclose(v, ns["ONE"][i], atol=1e-5)

    # the merged records: no shard left, and the same results as one process with one device
    assert sorted(p.name for p in out.glob("records*")) == ["records.jsonl"]
    assert (out / "results.md").is_file()
    _, _, two = records.read_all(out)
    assert {r["process"] for r in two} == {0, 1}
    run_bench(["ddnm"], ["inpaint-random-noisy"], data=data, model=ns["PRIOR"], steps=3, batch_size=2,
              out=tmp_path / "one", metrics=["psnr", "consistency"], progress=False, plots=False)
    _, _, one = records.read_all(tmp_path / "one")
    assert len(one) == len(two) == 5
    by_key = {records.key(r): r for r in one}
    for r in two:
        ref = by_key[records.key(r)]
        assert (r["seed"], r["index"], r["nfe"]) == (ref["seed"], ref["index"], ref["nfe"])
        for m in ("psnr", "consistency"):
            assert r[m] == pytest.approx(ref[m], rel=1e-4, abs=1e-6), (records.key(r), m)
