"""invdiff bench: records per image, tables with confidence intervals, resumption, refusals, two processes.

One module-scoped run (two solvers x two inpainting operators that share a compiled program,
three images in batches of two) feeds most tests; the others reuse its compiled programs.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invdiff
from invdiff import bench, cli
from invdiff.bench import cells, distributed, models, records, report
from invdiff.priors import Gaussian

REPO = Path(__file__).resolve().parents[1]
IMG = (8, 8, 3)
OPS = ["inpaint-box", "inpaint-thick-noisy"]  # one compiled program per solver: the masks are data
SOLVERS = ["ddnm", "ilvr"]
STEPS = 3
PRIOR_SRC = """
import jax.numpy as jnp, numpy as np, invdiff
from invdiff.priors import Gaussian
PRIOR = Gaussian(0.3 * jnp.sin(jnp.arange(192, dtype=jnp.float32)).reshape(8, 8, 3), var=0.1,
                 schedule=invdiff.NoiseSchedule.linear(1000))
"""


def _prior() -> Gaussian:
    ns: dict = {}
    exec(PRIOR_SRC, ns)
    return ns["PRIOR"]


DATA = np.clip(np.asarray(_prior().sample(jax.random.key(0), 3)), -1.0, 1.0)


class _Counting:
    """Wraps cells.solve_each and records the batch size of every call."""

    def __init__(self, before=None):
        self.batches: list[int] = []
        self.solve_each = cells.solve_each
        self.before = before

    def __call__(self, solver, model, op, y, keys, **kw):
        if self.before:
            self.before(self)
        self.batches.append(int(y.shape[0]))
        return self.solve_each(solver, model, op, y, keys, **kw)


def _run(out, monkeypatch=None, counter=None, **kw):
    args = dict(data=DATA, model=_prior(), steps=STEPS, batch_size=2, out=out, progress=False)
    args.update(kw)
    solvers, ops = args.pop("solvers", SOLVERS), args.pop("operators", OPS)
    if monkeypatch is not None:
        monkeypatch.setattr(cells, "solve_each", counter or _Counting())
    return bench.run_bench(solvers, ops, **args)


def _results(out) -> list[dict]:
    return records.read_all(out)[2]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    counter = _Counting()
    with pytest.MonkeyPatch.context() as mp:
        res = _run(out, mp, counter)
    return out, res, counter.batches


def test_one_record_per_image_and_the_tables(small_run):
    out, res, batches = small_run
    assert batches == [2] * (2 * len(SOLVERS) * len(OPS))  # 3 images: a batch of 2, then 1 padded to 2
    lines = [json.loads(ln) for ln in (out / "records.jsonl").read_text().splitlines()]
    assert [ln["kind"] for ln in lines[:2]] == ["config", "run"]
    assert lines[0]["config"]["steps"] == STEPS and lines[0]["config"]["seed"] == 0
    results = [ln for ln in lines if ln["kind"] == "result"]
    assert sorted(records.key(r) for r in results) == sorted(
        (s, o, f"{i:06d}") for s in SOLVERS for o in OPS for i in range(3))
    for r in results:
        assert r["nfe"] == STEPS and r["vjp"] == 0 and r["batch"] == 2 and r["seconds"] >= 0
        assert r["settings"]["steps"] == STEPS and r["sigma_y"] == (0.05 if r["operator"].endswith("-noisy") else 0)
    # one seed per (operator, image), shared by the solvers; none repeats
    seeds = {(r["operator"], r["image"]): r["seed"] for r in results}
    assert all(r["seed"] == seeds[(r["operator"], r["image"])] for r in results)
    assert len(set(seeds.values())) == len(seeds)

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == report.fields(["psnr", "ssim", "consistency", "outside_mse"])
    assert [(r["operator"], r["solver"]) for r in rows] == [(o, s) for o in OPS for s in SOLVERS]
    for row in rows:  # mean ± t(0.975, n-1) s / sqrt(n), from the records
        v = np.array([r["psnr"] for r in results if (r["solver"], r["operator"]) == (row["solver"], row["operator"])])
        assert int(row["n"]) == 3
        assert float(row["psnr"]) == pytest.approx(v.mean(), rel=1e-5)
        assert float(row["psnr_ci95"]) == pytest.approx(4.303 * v.std(ddof=1) / math.sqrt(3), rel=1e-3)
    md = (out / "results.md").read_text()
    assert "jax " + jax.__version__ in md and "seed 0" in md and "steps: 3" in md and "INCOMPLETE" not in md
    assert "LPIPS: not measured (give --lpips-weights" in md
    assert md.count("| ddnm | ") == len(OPS)
    assert res["rows"][0]["psnr"] == pytest.approx(float(rows[0]["psnr"]), rel=1e-5)

    for op in OPS:
        for kind in ("quality", "grid"):
            assert (out / f"{kind}_{op}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "images/truth/000002.png").is_file() and (out / "images/inpaint-box/ilvr/000002.png").is_file()
    assert not any(p.name.startswith(".") for p in out.rglob("*"))  # no probe or temporary files left


def test_metrics_of_the_records(small_run):
    out, _, _ = small_run
    for r in _results(out):
        assert math.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1
        if (r["solver"], r["operator"]) == ("ddnm", "inpaint-box"):  # noiseless: DDNM keeps the known pixels
            assert r["consistency"] < 1e-4 and r["outside_mse"] < 1e-8
        if (r["solver"], r["operator"]) == ("ddnm", "inpaint-thick-noisy"):  # DDNM+ does not copy the noisy y
            assert r["consistency"] > 1e-3 and r["outside_mse"] > 1e-5


def test_each_image_draws_its_own_mask_from_its_own_seed():
    x = np.zeros((2,) + IMG, np.float32)
    ab = cells.measure("inpaint-thick", x, ["a", "b"], seed=0)
    ba = cells.measure("inpaint-thick", x, ["b", "a"], seed=0)
    assert not np.array_equal(ab.deg.mask[0], ab.deg.mask[1])
    np.testing.assert_array_equal(ab.deg.mask[::-1], ba.deg.mask)
    assert ab.seeds == ba.seeds[::-1] == (cells.image_seed(0, "inpaint-thick", "a"),
                                          cells.image_seed(0, "inpaint-thick", "b"))
    assert cells.image_seed(1, "inpaint-thick", "a") != ab.seeds[0]


def test_batch_size_does_not_change_the_results(small_run, tmp_path, monkeypatch):
    out, _, _ = small_run
    counter = _Counting()
    _run(tmp_path, monkeypatch, counter, solvers=["ddnm"], operators=["inpaint-thick-noisy"], batch_size=1,
         plots=False)
    assert counter.batches == [1, 1, 1]
    ref = {records.key(r): r for r in _results(out)}
    got = _results(tmp_path)
    assert len(got) == 3
    for r in got:
        want = ref[records.key(r)]
        assert r["seed"] == want["seed"]
        for m in ("psnr", "ssim", "consistency", "outside_mse"):
            assert r[m] == pytest.approx(want[m], rel=1e-5, abs=1e-7), m


def test_a_rerun_resumes_and_equals_one_run(small_run, tmp_path, monkeypatch, capfd):
    out, _, _ = small_run
    _run(tmp_path, monkeypatch, limit=2, plots=False)
    assert len(_results(tmp_path)) == len(SOLVERS) * len(OPS) * 2
    counter = _Counting()
    _run(tmp_path, monkeypatch, counter, limit=3, plots=False)
    assert counter.batches == [2] * (len(SOLVERS) * len(OPS))  # only image 2 of each cell was solved
    assert "8 results found, resuming; 4 to run" in capfd.readouterr().err
    ref = {records.key(r): r["psnr"] for r in _results(out)}
    got = {records.key(r): r["psnr"] for r in _results(tmp_path)}
    assert got.keys() == ref.keys() and all(got[k] == pytest.approx(ref[k], rel=1e-5) for k in ref)
    counter = _Counting()
    _run(tmp_path, monkeypatch, counter, limit=3, plots=False)  # nothing left to do
    assert counter.batches == []


def _no_solve(*a, **k):
    raise AssertionError("nothing may be solved")


def test_another_configuration_is_refused(small_run, monkeypatch):
    out, _, _ = small_run
    before = (out / "records.jsonl").read_bytes()
    monkeypatch.setattr(cells, "solve_each", _no_solve)
    with pytest.raises(ValueError, match="steps: 4 here, 3 there.*nothing is mixed"):
        _run(out, steps=4)
    with pytest.raises(ValueError, match="seed: 1 here, 0 there"):
        _run(out, seed=1)
    assert (out / "records.jsonl").read_bytes() == before


def test_a_torn_last_line_is_dropped_and_a_corrupt_one_refused(small_run, tmp_path, monkeypatch, capfd):
    out, _, _ = small_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    with open(run / "records.jsonl", "ab") as f:
        f.write(b'{"kind": "result", "solver": "dd')  # a process killed while writing
    monkeypatch.setattr(cells, "solve_each", _no_solve)
    _run(run, plots=False)  # everything is done: nothing is solved
    assert "dropped an incomplete last line" in capfd.readouterr().err
    assert (run / "records.jsonl").read_bytes().endswith(b"\n")
    assert len(_results(run)) == 12
    lines = (run / "records.jsonl").read_bytes().split(b"\n")
    lines[3] = lines[3][:20]
    (run / "records.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 4 is not a record"):
        _run(run, plots=False)


KILLED = PRIOR_SRC + textwrap.dedent("""
    import sys
    from invdiff.bench import run_bench
    run_bench(["ddnm"], ["inpaint-box"], data=sys.argv[1], model=PRIOR, steps=3, batch_size=1, out=sys.argv[2],
              progress=False, plots=False)
""")


def test_a_killed_run_loses_at_most_its_batch_and_resumes(tmp_path, monkeypatch):
    data = tmp_path / "data.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (400,) + IMG, dtype=np.uint8))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(data), str(out)], cwd=REPO, env=env,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            f = out / "records.jsonl"
            if f.exists() and f.read_bytes().count(b'"kind": "result"') >= 3:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    done = _results(out)  # every complete line parses
    assert 3 <= len(done) < 400
    counter = _Counting()
    _run(out, monkeypatch, counter, solvers=["ddnm"], operators=["inpaint-box"], data=data, batch_size=1,
         limit=len(done) + 2, plots=False, save_images=True)
    assert len(counter.batches) == 2
    results = _results(out)
    keys = [records.key(r) for r in results]
    assert len(keys) == len(set(keys)) >= len(done) + 2
    for r in results[-2:]:  # --save-images: every restoration of this run, beyond the grid's first images
        assert r["index"] >= 3 and (out / r["image_file"]).is_file()


def test_ctrl_c_stops_after_the_batch_is_recorded(small_run, tmp_path, monkeypatch, capfd):
    def interrupt(counter):
        if not counter.batches:
            signal.raise_signal(signal.SIGINT)

    # SIGINT as in a terminal (a background job, e.g. under nohup, starts with it ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path, monkeypatch, _Counting(before=interrupt), plots=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(_results(tmp_path)) == 2  # the batch in flight was finished and written
    assert "interrupted: 2 of 12 results" in capfd.readouterr().err
    assert "INCOMPLETE: 2 of 12" in (tmp_path / "results.md").read_text()


def test_the_users_files_are_not_replaced_without_overwrite(tmp_path, monkeypatch):
    (tmp_path / "results.md").write_text("my notes")
    monkeypatch.setattr(cells, "solve_each", _no_solve)
    with pytest.raises(FileExistsError, match="--overwrite"):
        _run(tmp_path, solvers=["ddnm"], operators=["inpaint-box"], limit=2)
    assert not (tmp_path / "records.jsonl").exists()
    monkeypatch.undo()
    _run(tmp_path, solvers=["ddnm"], operators=["inpaint-box"], limit=2, overwrite=True, plots=False)
    assert "invdiff bench" in (tmp_path / "results.md").read_text()


def test_report_rebuilds_everything_from_the_records(small_run, tmp_path):
    out, _, _ = small_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    built = [p for p in run.iterdir() if p.suffix in (".md", ".csv", ".json", ".png")]
    for p in built:
        p.unlink()
    assert cli.main(["bench", "--report", str(run)]) == 0
    assert (run / "results.csv").read_text() == (out / "results.csv").read_text()
    assert sorted(p.name for p in built) == sorted(p.name for p in run.iterdir() if p.suffix in (".md", ".csv",
                                                                                                  ".json", ".png"))


@pytest.mark.parametrize("solvers,operators,match", [
    (["ddnm", "nope"], ["sr2"], "repaint, ilvr, ddnm"),
    ([], ["sr2"], "no solvers"),
    (["ddnm"], ["sr2", "blur"], "valid names: inpaint-box"),
    (["ddnm"], ["inpaint-nope"], "box"),
    (["ddnm"], ["sr3"], "divisible"),
])
def test_bad_names_fail_before_any_work(tmp_path, monkeypatch, solvers, operators, match):
    monkeypatch.setattr(cells, "solve_each", _no_solve)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        _run(out, solvers=solvers, operators=operators)
    assert not out.exists()


def test_too_many_images_names_the_maximum(tmp_path):
    with pytest.raises(ValueError, match="at most 3"):
        _run(tmp_path, limit=4)
    with pytest.raises(ValueError, match="at most 10"):  # the bundled validation set
        bench.run_bench(["ddnm"], ["sr2"], limit=11, out=tmp_path, progress=False)


def test_labels_of_a_class_conditional_model(tmp_path, monkeypatch):
    monkeypatch.setattr(cells, "solve_each", _no_solve)
    cond = invdiff.FunctionModel(lambda x, t, label: jnp.zeros_like(x), invdiff.NoiseSchedule.linear(1000),
                                 class_conditional=True)
    with pytest.raises(ValueError, match="--labels FILE.csv"):
        _run(tmp_path, model=cond)
    images = bench.data.open_images(DATA)
    labels, how = models.resolve_labels(cond, images, label=2)
    assert labels.tolist() == [2, 2, 2] and "--label" in how

    class WithNullClass:  # issue 16's contract: a learned null class runs without labels
        class_conditional = True
        null_label = 10

    assert models.resolve_labels(WithNullClass(), images)[0] is None
    with pytest.raises(ValueError, match="not class-conditional"):
        models.resolve_labels(_prior(), images, label=1)


def test_cli_errors_are_one_line_before_compiling(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cells, "solve_each", _no_solve)
    (tmp_path / "empty").mkdir()
    assert cli.main(["bench", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invdiff bench: error: no png/jpg/jpeg images in") and err.count("\n") == 1
    assert cli.main(["bench", "--label", "3", "--model", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "no file or bundled model named 'nope'" in capsys.readouterr().err


def test_compile_clock_sees_a_fresh_compilation():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cos(x) ** 2)
    with bench.compile_clock() as c:
        jax.block_until_ready(f(jnp.arange(17.0)))
    assert c.seconds > 0
    with bench.compile_clock() as c2:
        jax.block_until_ready(f(jnp.arange(17.0)))  # cached in memory: nothing compiles
    assert c2.seconds == 0


def test_student_t_quantiles():
    for df, t in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (120, 1.980)]:
        assert report.t975(df) == pytest.approx(t, abs=1e-3)
    assert report.t975(10**5) == pytest.approx(1.95996, abs=1e-4)
    assert report.mean_ci([1.0, None, float("nan")]) [2] == 1


def test_cli_arguments_and_defaults():
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    a = p.parse_args([])
    assert a.solvers == list(bench.DEFAULT_SOLVERS) and a.operators == list(bench.DEFAULT_OPERATORS)
    assert (a.limit, a.steps, a.out, a.seed, a.model, a.repeat, a.data) == (None, 20, "invdiff-bench", 0, "emoji64",
                                                                            False, None)
    a = p.parse_args(["--solvers", "ddnm, ilvr", "--operators", "sr4-noisy", "--steps", "0", "--images", "3",
                      "--lpips-weights", "a.pth,l.pth", "--flag", "num_channels=64"])
    assert a.solvers == ["ddnm", "ilvr"] and a.operators == ["sr4-noisy"] and a.steps == 0 and a.limit == 3
    assert a.lpips_weights == ["a.pth", "l.pth"] and a.flag == ["num_channels=64"]
    for action in p._actions:
        if action.dest not in ("help", "repeat", "save_images", "overwrite", "quiet", "report"):
            assert "default" in action.help, action.dest


def test_processes_join_from_the_flags_or_the_launcher(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    distributed.initialize("10.0.0.1:1234", 4, 3)
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize("10.0.0.1:1234")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        distributed.initialize("10.0.0.1:1234", 2, 2)
    for k in ("SLURM_NTASKS", "SLURM_STEP_NODELIST", "OMPI_COMM_WORLD_SIZE", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize() == (0, 1) and len(calls) == 1  # a plain process stays alone
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu[01-02]")
    assert distributed.detected_launcher() == "SLURM"
    distributed.initialize()
    assert calls[-1] == {}  # JAX reads SLURM's variables itself
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_launcher() is None


# ---------------------------------------------------------------------------------------
# Two real processes on 127.0.0.1, two virtual CPU devices each, joined by jax.distributed (gloo).

WORKER = textwrap.dedent("""
    import json, sys
    from invdiff.bench import distributed
    process, port, out, data = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    assert distributed.initialize(f"127.0.0.1:{port}", 2, process) == (process, 2)  # before any computation
""") + PRIOR_SRC + textwrap.dedent("""
    import jax
    assert jax.local_device_count() == 2 and jax.device_count() == 4
    from operators import Inpainting, masks
    from solvers import DDNM
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 3), minval=-1, maxval=1)
    op = Inpainting(masks.by_name("random", jax.random.key(2), 8, 8, n=4)[..., None])
    spread = invdiff.solve(DDNM(steps=3), PRIOR, op, op.A(x), key=jax.random.key(3), devices=jax.devices())
    mine = {s.index[0].start: np.asarray(s.data)[0].tolist() for s in spread.x.addressable_shards}
    try:  # one image cannot cover the devices of both processes
        invdiff.solve(DDNM(steps=3), PRIOR, Inpainting(op.mask[0]), x[:1], key=jax.random.key(3), devices=jax.devices())
        refused = ""
    except ValueError as e:
        refused = str(e)
    from invdiff.bench import run_bench
    run_bench(["ddnm"], ["inpaint-thick-noisy"], data=data, model=PRIOR, steps=3, batch_size=2, out=out,
              progress=False, plots=False)
    one = None
    if process == 0:  # the same solve on one device
        one = np.asarray(invdiff.solve(DDNM(steps=3), PRIOR, op, op.A(x), key=jax.random.key(3),
                                       devices=jax.local_devices()[:1]).x).tolist()
    print("RESULT" + json.dumps({"rows": mine, "devices": len(spread.x.sharding.device_set), "one": one,
                                 "refused": refused}))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(small_run, tmp_path, cpu_devices_env):
    """solve spreads a batch over the devices of both processes; bench splits the images over the
    processes, each appends to its own shard and process 0 merges them: the records equal one process's."""
    data = tmp_path / "data.npz"
    np.savez(data, images=DATA)
    out = tmp_path / "two"
    env = cpu_devices_env(2, PYTHONPATH=str(REPO))  # two CPU devices each; results agree to rounding
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, str(out), str(data)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    res = [json.loads(next(ln for ln in o.splitlines() if ln.startswith("RESULT"))[6:]) for o, _ in outs]

    assert all(r["devices"] == 4 for r in res)  # the batch of 4 on all four devices, two rows per process
    assert all("leaving a process without work" in r["refused"] for r in res)
    assert sorted(res[0]["rows"]) == ["0", "1"] and sorted(res[1]["rows"]) == ["2", "3"]
    one = np.asarray(res[0]["one"])
    for r in res:
        for i, row in r["rows"].items():
            np.testing.assert_allclose(row, one[int(i)], atol=1e-5)

    assert sorted(p.name for p in out.glob("records*")) == ["records.jsonl"]  # shards merged
    assert (out / "results.md").is_file()
    two = _results(out)
    assert sorted((r["image"], r["process"], r["devices"]) for r in two) == [("000000", 0, 2), ("000001", 1, 2),
                                                                           ("000002", 0, 2)]
    ref = {records.key(r): r for r in _results(small_run[0])}
    for r in two:
        want = ref[records.key(r)]
        assert r["seed"] == want["seed"]
        for m in ("psnr", "ssim", "consistency", "outside_mse"):
            assert r[m] == pytest.approx(want[m], rel=1e-4, abs=1e-6), (records.key(r), m)
