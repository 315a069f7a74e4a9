#!/usr/bin/env python3
"""Reload settle time for scripts/bench: send SIGHUP to an nginx master and
measure how long until every sampled name serves the expected leaf.

    settle.py PID SHA_FILE PORT [SAMPLE]

SHA_FILE has `NAME SHA256` lines (the leaves the reloaded config serves).
SAMPLE names (default 4, spread over the file, first and last included)
are probed together in rounds of fresh handshakes (Python ssl, one thread each,
verification off). Settle = from the signal to the end of the first round
in which every sampled name served its expected leaf, provided the next 2
rounds agree (old workers linger after a reload). nginx serves every name
from the same new workers, so a spread sample stands for all of them.

Prints `settle_seconds=S rounds=N`; exit 1 if not settled within 30 s.
"""

import hashlib
import os
import signal
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

LIMIT = 30.0
CONFIRM = 3


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: settle.py PID SHA_FILE PORT [SAMPLE]")
    pid, sha_file, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    sample = int(sys.argv[4]) if len(sys.argv) == 5 else 4
    with open(sha_file) as f:
        pairs = [l.split() for l in f if l.strip()]
    step = max(1, (len(pairs) - 1) // max(1, sample - 1))
    picked = pairs[::step][: sample - 1] + [pairs[-1]]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def served(name):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
                with ctx.wrap_socket(tcp, server_hostname=name) as tls:
                    return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
        except (OSError, ssl.SSLError):
            return None

    pool = ThreadPoolExecutor(max_workers=sample)
    started = time.monotonic()
    os.kill(pid, signal.SIGHUP)
    rounds, run, first_ok = 0, 0, None
    while time.monotonic() - started < LIMIT:
        got = list(pool.map(served, [n for n, _ in picked]))
        rounds += 1
        if all(g == want for g, (_, want) in zip(got, picked)):
            run += 1
            if first_ok is None:
                first_ok = time.monotonic() - started
            if run >= CONFIRM:
                print(f"settle_seconds={first_ok:.3f} rounds={rounds}")
                return
        else:
            run, first_ok = 0, None
            time.sleep(0.01)
    print(f"settle_seconds=timeout rounds={rounds}")
    sys.exit(1)


if __name__ == "__main__":
    main()
