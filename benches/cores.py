#!/usr/bin/env python3
"""How many cores a CPU-bound process actually gets on this box right now,
for scripts/bench: time one busy loop alone, then one per core at once.
Other engineers' work in other cgroups (nice does not reach across them)
can leave a "2-core" VM with about one core for the benchmark.

Prints `effective_cores=X of N`.
"""

import multiprocessing as mp
import os
import time

LOOPS = 8_000_000


def spin(_):
    started = time.monotonic()
    x = 0
    for i in range(LOOPS):
        x += i * i
    return time.monotonic() - started


def main():
    n = os.cpu_count() or 1
    alone = spin(0)
    with mp.Pool(n) as pool:
        started = time.monotonic()
        pool.map(spin, range(n))
        together = time.monotonic() - started
    print(f"effective_cores={n * alone / together:.2f} of {n}")


if __name__ == "__main__":
    main()
