#!/usr/bin/env python3
"""A certbot config dir with one lineage per site of a bench fixture.

Usage: certbot_store.py FIXTURE

FIXTURE is a dir examples/bench_pki wrote (`bench_pki DIR N PORT`). Writes
FIXTURE/le/{live,archive}/NAME for every site, the renewal in renew/ as
certbot lays it out (archive/NAME/fullchain1.pem ..., live/NAME/*.pem links),
and appends a `kind = "certbot"` [[source]] to FIXTURE/certswap.toml. Then
`certswap --config FIXTURE/certswap.toml status` reads every lineage and
matches it to its site, as each agent pass does (docs/performance.md, tenth
pass: hyperfine -N -i of that command).
"""
import os
import sys

fixture = sys.argv[1]
le = os.path.join(fixture, "le")
renew = os.path.join(fixture, "renew")
names = sorted(n[:-4] for n in os.listdir(renew) if n.endswith(".pem"))
for d in ("live", "archive"):
    os.makedirs(os.path.join(le, d), mode=0o700, exist_ok=True)
for name in names:
    archive = os.path.join(le, "archive", name)
    live = os.path.join(le, "live", name)
    os.makedirs(archive, mode=0o700, exist_ok=True)
    os.makedirs(live, mode=0o755, exist_ok=True)
    with open(os.path.join(renew, name + ".pem"), "rb") as f:
        full = f.read()
    with open(os.path.join(renew, name + ".key"), "rb") as f:
        key = f.read()
    for file, data, mode in (
        ("fullchain1.pem", full, 0o644),
        ("cert1.pem", full, 0o644),
        ("privkey1.pem", key, 0o600),
    ):
        path = os.path.join(archive, file)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    for link in ("fullchain", "cert", "privkey"):
        path = os.path.join(live, link + ".pem")
        if not os.path.lexists(path):
            os.symlink(f"../../archive/{name}/{link}1.pem", path)
with open(os.path.join(fixture, "certswap.toml"), "a") as f:
    f.write(f'\n[[source]]\nkind = "certbot"\npath = "{le}"\n')
print(f"{len(names)} lineages in {le}")
