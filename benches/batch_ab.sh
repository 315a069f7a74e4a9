#!/usr/bin/env bash
# A/B of two certswap builds on 1,000-site (or N-site) batches, alternating
# on one kept bench fixture, optionally beside a busy loop: what
# docs/performance.md's busy A/Bs were measured with.
#
#   BENCH_KEEP=1 scripts/bench          # prints "bench: work dir kept: DIR"
#   benches/batch_ab.sh DIR PAIRS BIN_A BIN_B [busy]
#
# Each run installs a fresh renewal of every site (examples/bench_pki
# --renew, later each time) with `BIN --config DIR/certswap.toml -v
# install --batch`, order A B, B A, A B, ... Prints one line per run:
# the build, wall seconds, verified count and the batch's phases (ms).
# BIN_B may be a wrapper script (e.g. one that sets an environment
# variable before exec'ing a build). Starts the fixture's nginx and, with
# "busy", one shell busy loop at nice 0; stops both by their PIDs on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GEN=$ROOT/target/release/examples/bench_pki
[[ $# -ge 4 ]] || { echo "usage: $0 DIR PAIRS BIN_A BIN_B [busy]" >&2; exit 2; }
# The builds as absolute paths: the runs happen in the fixture.
exe() { if [[ $1 == */* ]]; then realpath "$1"; else command -v "$1"; fi; }
F=$(cd "$1" && pwd) PAIRS=$2 A=$(exe "$3") B=$(exe "$4") BUSY=${5:-}
[[ -x $A && -x $B ]] || { echo "BIN_A and BIN_B must be executables" >&2; exit 2; }
[[ $PAIRS =~ ^[0-9]+$ ]] || { echo "PAIRS must be a number" >&2; exit 2; }
[[ -x $GEN ]] || { echo "build first: cargo build --release --example bench_pki" >&2; exit 2; }
[[ -f $F/certswap.toml && -f $F/targets.txt ]] || { echo "$F: not a kept bench fixture" >&2; exit 2; }
cd "$F"
PORT=$(awk -F: 'NR == 1 { print $NF }' targets.txt)

NGINX_PID= BUSY_PID=
cleanup() {
    [[ -n $BUSY_PID ]] && kill "$BUSY_PID" 2>/dev/null
    [[ -n $NGINX_PID ]] && kill -QUIT "$NGINX_PID" 2>/dev/null
    wait 2>/dev/null || true
}
trap cleanup EXIT
/usr/sbin/nginx -p "$F/nginx" -c "$F/nginx/nginx.conf" -e "$F/nginx/logs/error.log" \
    -g 'daemon off;' >"$F/nginx/logs/stderr.log" 2>&1 &
NGINX_PID=$!
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$NGINX_PID" 2>/dev/null || { echo "nginx did not start" >&2; exit 2; }
    sleep 0.1
done

# Each renewal must end later than what is installed (certswap refuses an
# older one): start a day past the first site's installed notAfter.
cert=$(awk -F'"' '/^cert = / { print $2; exit }' certswap.toml)
end=$(date -d "$(openssl x509 -in "$cert" -noout -enddate | cut -d= -f2)" +%s)
days=$(((end - $(date +%s)) / 86400 + 1))
for i in $(seq $((2 * PAIRS))); do
    rm -rf "ab$i"
    "$GEN" --renew "$F" "ab$i" $((days + i)) >/dev/null
done
sleep 2
if [[ $BUSY == busy ]]; then
    timeout $((PAIRS * 60 + 60)) sh -c 'while :; do :; done' &
    BUSY_PID=$!
    sleep 1
fi

i=0
for p in $(seq "$PAIRS"); do
    order="A B"
    ((p % 2)) || order="B A"
    for w in $order; do
        i=$((i + 1))
        bin=$A
        [[ $w == B ]] && bin=$B
        t0=$(date +%s.%N)
        rc=0
        "$bin" --config certswap.toml -v install --batch "ab$i" --json >"ab$i.json" 2>"ab$i.err" || rc=$?
        t=$(awk "BEGIN { printf \"%.3f\", $(date +%s.%N) - $t0 }")
        phases=$(sed 's/\x1b\[[0-9;]*m//g' "ab$i.err" | sed -n 's/.*phase=\([a-z+-]*\) ms=\([0-9]*\).*/\1=\2/p' | tr '\n' ' ')
        verified=$(jq -s 'map(select(.result == "verified")) | length' "ab$i.json")
        echo "$w $t rc=$rc verified=$verified $phases"
        sleep 2
    done
done
