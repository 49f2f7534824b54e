"""fusedoptim.distributed under mpirun: the checks live in tests/mpi_worker.py (see its doc),
launched here at 3 ranks (which also saves a sharded checkpoint) and at 2 ranks (which
also resumes from it: resharding 3 -> 2). Each launch has a timeout, so a hang fails the
test instead of stalling the run. Skipped when mpi4py or mpirun is absent."""

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

#: rank 0's line for the Muon checkpoint round trip (tests/mpi_worker.py, run_checkpoint)
MUON_ROUND_TRIP = "consolidate_state_dict/state_dict round trip, plain state_dict into ZeRO (Muon)"
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "mpi_worker.py")
TIMEOUT = 240


def _mpirun():
    pytest.importorskip("mpi4py")
    found = shutil.which("mpirun", path=os.path.dirname(sys.executable) + os.pathsep
                         + os.environ.get("PATH", ""))
    if found is None:
        pytest.skip("mpirun not found (pip install 'fusedoptim[mpi]' brings Open MPI's)")
    return found


def _launch(n, *args, expect_ok=True):
    cmd = [_mpirun(), "--oversubscribe", "-n", str(n)]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [sys.executable, "-m", "mpi4py", WORKER, *args]
    env = dict(os.environ)
    # One OpenMP thread per rank: the ranks share the machine's cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    # Open MPI busy-polls while it waits; with more ranks than free cores (CI's 2 shared
    # cores, --oversubscribe) that made every collective ~15 ms instead of ~0.2 ms here.
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpirun -n {n} did not finish in {TIMEOUT} s (a hang?)\n"
                    f"{e.stdout}\n{e.stderr}")
    if not expect_ok:
        return out
    assert out.returncode == 0, f"mpirun -n {n} failed:\n{out.stdout}\n{out.stderr}"
    assert "\ndone" in "\n" + out.stdout, out.stdout
    return out.stdout


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zero"))


def test_three_ranks(checkpoint_dir):
    out = _launch(3, checkpoint_dir, "save")
    for check in ("equivalence", "mismatched layout", "skip_nonfinite", "max_grad_norm",
                  "bad input", "int8 and int4 state", "bfloat16 params", "shards follow",
                  "None grads", "Prodigy: D from gathered sums",
                  "add_param_group",
                  "normal grads", "consolidate", "LAMB tensor 0 spans", "allreduce_",
                  "Muon bitwise", MUON_ROUND_TRIP):
        assert f"ok {check}" in out, out


def test_two_ranks_and_reshard_from_three(checkpoint_dir):
    if not os.path.exists(os.path.join(checkpoint_dir, "ref.pkl")):
        pytest.skip("needs the 3-rank run's checkpoint (test_three_ranks)")
    out = _launch(2, checkpoint_dir)
    for check in ("equivalence", "max_grad_norm", "None grads", "Prodigy: D from gathered sums",
                  "Muon bitwise", MUON_ROUND_TRIP):
        assert f"ok {check}" in out, out
    out = _launch(2, checkpoint_dir, "load")
    for name in ("AdamW", "Muon"):
        assert f"ok sharded checkpoint resharded 3 -> 2 ranks ({name})" in out, out


def test_a_dead_rank_fails_the_job_instead_of_hanging(tmp_path):
    t0 = time.monotonic()
    out = _launch(2, str(tmp_path), "die", expect_ok=False)
    assert out.returncode != 0 and "survived" not in out.stdout, out.stdout
    # Open MPI ends the job about 2 s after the rank exits; the bound leaves room for load.
    assert time.monotonic() - t0 < 60


def test_compare_distributed_matches_one_process(tmp_path):
    """The main job data-parallel: mpirun -n 2 fusedoptim compare --distributed (--zero 2)
    gives the single-process curves within float32 tolerance (each rank's grads are its
    half-batch mean, weighted; the sums differ from the whole batch's in rounding only)."""
    import json
    args = ["--dataset", "spirals", "--epochs", "2", "--no-plot", "--quiet", "--optimizers",
            "adamw,nesterov"]
    cmd = [_mpirun(), "--oversubscribe", "-n", "2"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    runs = {}
    for name, extra in (("one", None), ("allreduce", []), ("zero2", ["--zero", "2"])):
        out = str(tmp_path / f"{name}.json")
        env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_MCA_mpi_yield_when_idle="1")
        what = ([sys.executable, "-m", "fusedoptim", "compare"] if extra is None else
                cmd + [sys.executable, "-m", "mpi4py", "-m", "fusedoptim", "compare",
                       "--distributed", *extra])
        res = subprocess.run(what + args + ["--json", out], capture_output=True, text=True,
                             timeout=TIMEOUT, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        with open(out) as fh:
            runs[name] = json.load(fh)
    for name in ("allreduce", "zero2"):
        assert runs[name]["distributed"]["ranks"] == 2
        for opt, rec in runs["one"]["optimizers"].items():
            got = runs[name]["optimizers"][opt]
            np.testing.assert_allclose(got["history"]["train_loss"],
                                       rec["history"]["train_loss"], rtol=1e-5)
            assert got["state_bytes"] == rec["state_bytes"]


def test_import_without_mpi4py_says_what_to_install():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "try:\n    import fusedoptim.distributed\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ))
    assert 'pip install "fusedoptim[mpi]"' in out.stdout, out.stdout + out.stderr


def test_compare_distributed_bad_flags():
    from fusedoptim.demo import DemoError
    from fusedoptim.demo.compare import CompareConfig, run_compare
    for cfg, words in ((CompareConfig(zero=2, dataset="spirals"), "--zero needs --distributed"),
                       (CompareConfig(distributed=True, reference=True, dataset="spirals"),
                        "--reference does not run with --distributed")):
        with pytest.raises(DemoError, match=words):
            run_compare(cfg)
