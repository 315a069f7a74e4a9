#!/usr/bin/env python3
"""Baseline (b) of scripts/bench: Python's stdlib ssl, 64 threads, one fresh
handshake per line of a targets file (`SNI@HOST:PORT`), the peer's leaf
fetched with getpeercert(binary_form=True), verification off.

Prints one line: `handshakes=N ok=N seconds=S`. Exit 1 if any failed.
"""

import hashlib
import socket
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor

THREADS = 64
TIMEOUT = 5.0


def parse(line):
    sni, _, addr = line.strip().rpartition("@")
    host, _, port = addr.rpartition(":")
    return sni or host, host, int(port)


def fetch(ctx, target):
    sni, host, port = target
    with socket.create_connection((host, port), timeout=TIMEOUT) as tcp:
        with ctx.wrap_socket(tcp, server_hostname=sni) as tls:
            der = tls.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: probe_py.py TARGETS_FILE")
    with open(sys.argv[1]) as f:
        targets = [parse(l) for l in f if l.strip() and not l.startswith("#")]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    started = time.monotonic()
    ok = 0
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for result in pool.map(lambda t: _safe(ctx, t), targets):
            ok += result is not None
    took = time.monotonic() - started
    print(f"handshakes={len(targets)} ok={ok} seconds={took:.3f}")
    sys.exit(0 if ok == len(targets) else 1)


def _safe(ctx, target):
    try:
        return fetch(ctx, target)
    except (OSError, ssl.SSLError):
        return None


if __name__ == "__main__":
    main()
