#!/usr/bin/env python3
"""Runs every libFuzzer target of a fuzz build for a given time and writes
a table (executions, coverage, crashes) into docs/reliability.md.

    CC=clang meson setup build-fuzz -Dfuzzers=true -Dnative=false
    ninja -C build-fuzz
    python3 tools/scripts/fuzz_campaign.py build-fuzz --seconds 1800 [--merge] [TARGET...]

Each target starts from its seed corpus (fuzz/corpus/NAME/) plus a working
corpus kept in <build>/fuzz-work/NAME/ across runs.  Crashing inputs are
saved to <build>/fuzz-work/crashes/.  --merge minimizes fuzz/corpus/NAME/
with libFuzzer's -merge=1: the named inputs (seeds and regression inputs
written on purpose) are all kept, and of the inputs the fuzzer found (named
by their SHA-1) only those that reach an edge the named ones and the
smaller found ones do not (-use_counters=0: new edges, not new hit
counts), so that `meson test` replays a small corpus that still reaches
every edge.  --minimize-only does that step alone on the committed
corpus, without fuzzing.  Targets run one at a time, or --jobs N at a
time (each target is one libFuzzer process on one core); the target is 10M executions or 30 minutes per target, whichever comes first
(--execs, --seconds).  Runs under `nice -n 19` (--nice); the table notes
the mean one-minute load average during each target's run.
"""
import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEGIN = "<!-- fuzz-table:begin -->"
END = "<!-- fuzz-table:end -->"


def is_found(fname):
    """Inputs libFuzzer saved are named by the SHA-1 of their bytes."""
    return re.fullmatch(r"[0-9a-f]{40}", fname) is not None


def loadavg():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def minimize(exe, seeds, work, nice):
    """Rewrites seeds/ as its named inputs plus the found inputs (old ones
    and work/) that add coverage to them; returns (files, bytes) after."""
    out = work + ".min"
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    found = work + ".found"
    shutil.rmtree(found, ignore_errors=True)
    os.makedirs(found)
    for f in os.listdir(seeds):
        dst = found if is_found(f) else out
        shutil.copy2(os.path.join(seeds, f), os.path.join(dst, f))
    p = subprocess.run(["nice", "-n", str(nice), exe, "-merge=1", "-use_counters=0", "-close_fd_mask=3",
                        "-rss_limit_mb=2048", "-timeout=20", out, found, work],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if p.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(found, ignore_errors=True)
        raise SystemExit("merge failed for %s:\n%s" % (exe, p.stdout[-2000:]))
    for f in os.listdir(seeds):
        if is_found(f):
            os.unlink(os.path.join(seeds, f))
    for f in os.listdir(out):
        if is_found(f):
            shutil.copy2(os.path.join(out, f), os.path.join(seeds, f))
    shutil.rmtree(out)
    shutil.rmtree(found)
    names = os.listdir(seeds)
    return len(names), sum(os.path.getsize(os.path.join(seeds, f)) for f in names)


def run_target(build, name, seconds, execs, merge, nice):
    exe = os.path.join(build, "fuzz", "fuzz_" + name)
    seeds = os.path.join(ROOT, "fuzz", "corpus", name)
    work = os.path.join(build, "fuzz-work", name)
    crashes = os.path.join(build, "fuzz-work", "crashes")
    os.makedirs(work, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    before = set(glob.glob(os.path.join(crashes, name + "-*")))
    cmd = ["nice", "-n", str(nice), exe, "-max_total_time=%d" % seconds, "-print_final_stats=1",
           "-close_fd_mask=3", "-rss_limit_mb=2048", "-timeout=20",
           "-artifact_prefix=" + os.path.join(crashes, name + "-"), work, seeds]
    if execs:
        cmd.insert(4, "-runs=%d" % execs)
    t0 = time.time()
    log = os.path.join(build, "fuzz-work", name + ".log")
    loads = [loadavg()]
    with open(log, "w") as lf:
        p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT)
        while p.poll() is None:
            time.sleep(1)
            if time.time() - t0 >= 15 * len(loads):
                loads.append(loadavg())
    wall = time.time() - t0
    loads.append(loadavg())
    out = open(log, errors="replace").read()
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
    covs = re.findall(r"cov: (\d+) ft: (\d+)", out)
    found = sorted(set(glob.glob(os.path.join(crashes, name + "-*"))) - before)
    before_corpus = (len(os.listdir(seeds)),
                     sum(os.path.getsize(os.path.join(seeds, f)) for f in os.listdir(seeds)))
    after_corpus = minimize(exe, seeds, work, nice) if merge else before_corpus
    return {
        "name": name,
        "execs": int(runs[-1]) if runs else 0,
        "cov": int(covs[-1][0]) if covs else 0,
        "ft": int(covs[-1][1]) if covs else 0,
        "crashes": len(found),
        "files": [os.path.basename(f) for f in found],
        "seconds": wall,
        "rc": p.returncode,
        "load": sum(loads) / len(loads),
        "corpus": after_corpus,
        "tail": out[-2000:] if p.returncode not in (0,) and not found else "",
    }


def write_table(rows, seconds, note):
    path = os.path.join(ROOT, "docs", "reliability.md")
    lines = [BEGIN, "",
             "| target | seconds | executions | exec/s | edges (cov) | features (ft) | crashes "
             "| load | corpus (files, KiB) |",
             "|--------|--------:|-----------:|-------:|------------:|--------------:|--------:"
             "|-----:|--------------------:|"]
    for r in rows:
        eps = r["execs"] / r["seconds"] if r["seconds"] else 0
        lines.append("| %s | %.0f | %s | %.0f | %d | %d | %d%s | %.1f | %d, %d |" % (
            r["name"], r["seconds"], f"{r['execs']:,}", eps, r["cov"], r["ft"], r["crashes"],
            (" (" + ", ".join(r["files"]) + ")") if r["files"] else "", r["load"],
            r["corpus"][0], (r["corpus"][1] + 1023) // 1024))
    lines += ["", note, "", END]
    text = open(path).read() if os.path.exists(path) else ""
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + "\n".join(lines) + text[b:]
    else:
        text += "\n" + "\n".join(lines) + "\n"
    open(path, "w").write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build")
    ap.add_argument("targets", nargs="*")
    ap.add_argument("--seconds", type=int, default=1800)
    ap.add_argument("--execs", type=int, default=10_000_000)
    ap.add_argument("--merge", action="store_true")
    ap.add_argument("--minimize-only", action="store_true")
    ap.add_argument("--nice", type=int, default=19)
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="targets run at the same time (default 1)")
    a = ap.parse_args()
    names = a.targets or sorted(os.path.basename(p)[len("fuzz_"):]
                                for p in glob.glob(os.path.join(a.build, "fuzz", "fuzz_*"))
                                if os.access(p, os.X_OK) and not p.endswith(".p"))
    if not names:
        sys.exit("no fuzz_* binaries in %s/fuzz (configure with CC=clang -Dfuzzers=true)" % a.build)
    if a.minimize_only:  # the committed corpus alone: an empty working corpus
        for n in names:
            work = os.path.join(a.build, "fuzz-work", "empty")
            shutil.rmtree(work, ignore_errors=True)
            os.makedirs(work)
            files, size = minimize(os.path.join(a.build, "fuzz", "fuzz_" + n),
                                   os.path.join(ROOT, "fuzz", "corpus", n), work, a.nice)
            print("%-12s corpus %d files, %d bytes" % (n, files, size), flush=True)
        return
    if a.jobs < 1:
        sys.exit("--jobs must be at least 1")
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.jobs) as pool:
        futures = [pool.submit(run_target, a.build, n, a.seconds, a.execs, a.merge, a.nice)
                   for n in names]
        for fut in concurrent.futures.as_completed(futures):
            rows.append(fut.result())
            r = rows[-1]
            print("%-12s %6.0fs %12d execs  cov %6d  ft %7d  crashes %d  load %.1f  corpus %d files" % (
                r["name"], r["seconds"], r["execs"], r["cov"], r["ft"], r["crashes"], r["load"],
                r["corpus"][0]), flush=True)
            if r["tail"]:
                print(r["tail"], file=sys.stderr)
    rows.sort(key=lambda r: r["name"])
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = ["?"]
    note = ("Run: `python3 tools/scripts/fuzz_campaign.py %s --seconds %d%s%s` (nice -n %d, %s "
            "at a time) on %d cores, load average %s at the end, %s; load: the mean "
            "one-minute load average during the target's run." % (
                a.build, a.seconds, " --merge" if a.merge else "",
                " --jobs %d" % a.jobs if a.jobs > 1 else "", a.nice,
                "one target" if a.jobs == 1 else "%d targets" % a.jobs, os.cpu_count() or 0,
                " ".join(load), time.strftime("%Y-%m-%d")))
    if not a.no_table:
        write_table(rows, a.seconds, note)
    sys.exit(1 if any(r["crashes"] for r in rows) else 0)


if __name__ == "__main__":
    main()
