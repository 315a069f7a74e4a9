#!/usr/bin/env python3
"""Does a churned certificate directory slow the stage's file creation?

Usage: dir_churn.py DIR N ROUNDS [PAUSE_S]

Writes 2N files of 700 bytes into DIR/churned, then churns it ROUNDS
times as every certswap change does (create `.NAME.certswap-new`, rename
it over NAME), copies it to DIR/fresh (a directory written once), and
times one round of creations into each, alternating, twice. With PAUSE_S,
each timed round comes after a sync and that many seconds (an ext4
without a journal skips recently freed inodes for 60-360 s). Prints the
sizes of both directories and one line per timed round. Removes both.
"""

import os
import shutil
import sys
import time

base, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
churned, fresh = os.path.join(base, "churned"), os.path.join(base, "fresh")
for d in (churned, fresh):
    shutil.rmtree(d, ignore_errors=True)
os.makedirs(churned)
data = b"x" * 700
names = [f"s{i:05d}.bench.test.{ext}" for i in range(n) for ext in ("pem", "key")]
for name in names:
    with open(os.path.join(churned, name), "wb") as f:
        f.write(data)


def stage_round(d):
    """Create every staged file (timed), then rename each over its target."""
    t = time.perf_counter()
    for name in names:
        with open(os.path.join(d, f".{name}.certswap-new"), "wb") as f:
            f.write(data)
    took = time.perf_counter() - t
    for name in names:
        os.rename(os.path.join(d, f".{name}.certswap-new"), os.path.join(d, name))
    return took


for _ in range(rounds):
    stage_round(churned)
shutil.copytree(churned, fresh)
print(f"dir size: churned {os.stat(churned).st_size} B, fresh {os.stat(fresh).st_size} B", flush=True)
for d in (fresh, churned, fresh, churned):
    if pause:
        os.sync()
        time.sleep(pause)
    print(f"{os.path.basename(d)}: {len(names)} files created in {stage_round(d) * 1000:.0f} ms", flush=True)
for d in (churned, fresh):
    shutil.rmtree(d, ignore_errors=True)
