#!/usr/bin/env python3
"""The agent's resident memory between two passes, for scripts/bench.

A pass's working set (every cert read, every handshake's answer, every
row) is live while it runs and given back after it (malloc_trim), so one
VmRSS read lands anywhere on a sawtooth: after 10 and after 100 passes the
same 1,000-site agent read 12.07 and 12.70 MB because the second read fell
inside a pass, while between passes it held 12.28-12.34 MB. This samples
VmRSS every 10 ms through one pass cycle — until the next pass has ended,
and 0.3 s after — and prints the lowest reading: what the agent keeps
between passes, which is what grows if anything leaks. (The highest
reading is no measure of a pass: this polls /metrics, whose answer at
10,000 sites is itself a 5 MB buffer.)

Usage: agent_rss.py PID METRICS_PORT TIMEOUT_S
Prints `rest_kb=N samples=N`; exit 1 if no pass ended in time.
"""

import sys
import time
import urllib.request

METRIC = "certswap_agent_last_pass_timestamp_seconds"


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def last_pass(port):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except Exception:
        return None
    for line in body.splitlines():
        if line.startswith(METRIC):
            return line.split()[1]
    return None


def main():
    pid, port, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    started = time.monotonic()
    # The pass that has ended last, as the agent says it now: an answer
    # that failed is no value to wait for a change from.
    first = last_pass(port)
    while first is None and time.monotonic() - started < timeout:
        time.sleep(0.1)
        first = last_pass(port)
    ended_at = None
    readings = []
    next_poll = 0.0
    while time.monotonic() - started < timeout:
        now = time.monotonic()
        readings.append(rss_kb(pid))
        if ended_at is None and now >= next_poll:
            next_poll = now + 0.1
            seen = last_pass(port)
            if seen is not None and seen != first:
                ended_at = now
        if ended_at is not None and now - ended_at >= 0.3:
            print(f"rest_kb={min(readings)} samples={len(readings)}")
            return 0
        time.sleep(0.01)
    print(f"no pass ended within {timeout} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
