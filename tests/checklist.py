"""checklist.py -- the named checks of a Python test: check(cond, what)
prints ok/FAIL per check; done() exits 1 if any failed."""
import sys

fails = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        fails.append(what)


def done():
    sys.exit(1 if fails else 0)
