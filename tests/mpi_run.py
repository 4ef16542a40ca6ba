#!/usr/bin/env python3
"""mpi_run.py -- runs tests/test_mpi.c under mpirun (suite 'mpi').

  mpi_run.py TEST_MPI compare NP   the comparison run on NP ranks
  mpi_run.py TEST_MPI kill-query   4 ranks query in a loop; rank 2 is killed
  mpi_run.py TEST_MPI kill-ingest  4 ranks ingest in a loop; rank 1 is killed,
                                   then every shard verifies, every listed
                                   document is whole

A kill is checked twice: with mpirun's default (the launcher ends the job)
and with orte_enable_recovery (the job goes on, so the survivors' own
deadline must end them, each with an error naming the timeout).  Either
way every process must be gone within BOUND seconds."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BOUND = 30.0


def mpirun(np_, extra=()):
    cmd = ["mpirun", "--oversubscribe", "-np", str(np_)]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + list(extra)


def run_compare(exe, np_, d):
    r = subprocess.run(mpirun(np_) + [exe, "compare", d], capture_output=True, text=True, timeout=600)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    if r.returncode != 0 or f"ok: {np_} ranks" not in r.stdout:
        sys.exit(f"compare on {np_} ranks failed (exit {r.returncode})")


def running(pid):
    """Whether pid is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_file(path, proc, limit=120):
    t0 = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            sys.exit(f"the job ended before it was running:\n{out}\n{err}")
        if time.time() - t0 > limit:
            proc.kill()
            sys.exit(f"{path} never appeared")
        time.sleep(0.05)


def run_kill(exe, mode, victim, d, recovery):
    extra = ["--mca", "orte_enable_recovery", "1"] if recovery else []
    proc = subprocess.Popen(mpirun(4, extra) + [exe, mode, d], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_file(os.path.join(d, "running"), proc)
    time.sleep(0.3)
    pid = int(open(os.path.join(d, f"pid-{victim}")).read())
    pids = [int(open(os.path.join(d, f"pid-{r}")).read()) for r in range(4)]
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    try:
        out, err = proc.communicate(timeout=BOUND)
    except subprocess.TimeoutExpired:
        proc.kill()
        for p in pids:
            if running(p):
                os.kill(p, signal.SIGKILL)
        sys.exit(f"{mode}: the job still ran {BOUND} s after rank {victim} was killed")
    # the launcher may return while its killed children still exit
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.time() - t0 > BOUND:
            break
        time.sleep(0.05)
    took = time.time() - t0
    print(f"{mode} (recovery={recovery}): rank {victim} killed, job ended after {took:.1f} s, "
          f"exit {proc.returncode}, all ranks gone")
    sys.stderr.write(err[-3000:])
    # (with recovery on, Open MPI 4.1's mpirun exits 0 even when ranks exit
    # non-zero: the ranks' own messages are what tells the failure)
    if proc.returncode == 0 and not recovery:
        sys.exit(f"{mode}: mpirun reported success after a rank was killed")
    if alive:
        sys.exit(f"{mode}: processes {alive} outlived the job")
    if recovery:
        # the survivors ended by their own deadline, each with a clear error
        for r in range(4):
            if r != victim and f"rank {r}: timed out" not in err:
                sys.exit(f"{mode}: rank {r} did not report the timeout:\n{err}")


def main():
    exe, what = sys.argv[1], sys.argv[2]
    if shutil.which("mpirun") is None:
        print("mpirun not found")
        sys.exit(77)
    base = tempfile.mkdtemp(prefix="msadb-mpi-")
    try:
        if what == "compare":
            run_compare(exe, int(sys.argv[3]), os.path.join(base, "s"))
        elif what == "kill-query":
            for recovery in (False, True):
                run_kill(exe, "serve", 2, os.path.join(base, f"q{int(recovery)}"), recovery)
        elif what == "kill-ingest":
            for recovery in (False, True):
                d = os.path.join(base, f"i{int(recovery)}")
                run_kill(exe, "ingest", 1, d, recovery)
                r = subprocess.run([exe, "check", d], capture_output=True, text=True, timeout=300)
                sys.stdout.write(r.stdout)
                sys.stderr.write(r.stderr)
                if r.returncode != 0:
                    sys.exit("after the kill: a shard fails verify or a document is not whole")
        else:
            sys.exit(2)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
