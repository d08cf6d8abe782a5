#!/usr/bin/env python3
"""Small helpers for scripts/bench (standard library only).

    helpers.py free-port                 a free TCP port on 127.0.0.1
    helpers.py jwt SECRET ROLE           an HS256 token with {"role": ROLE}, valid 1 day
    helpers.py wrk FILE                  wrk --latency output -> "rps p50_ms p99_ms non2xx errors"
    helpers.py pgbench OUT LOGPREFIX     pgbench output + per-transaction logs -> "tps p50_ms p99_ms failed"
    helpers.py cpu OUTFILE PROXY_PID     samples CPU time per process group until SIGTERM,
                                         then writes "group=percent ..." (percent of one core)
"""
import base64
import glob
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt(secret, role):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"role": role, "sub": "scripts/bench", "exp": int(time.time()) + 86400}
    payload = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    print(f"{header}.{payload}.{b64url(sig)}")


def to_ms(value):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise SystemExit(f"unparsable wrk latency {value!r}")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(path):
    text = open(path).read()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    if not (rps and p50 and p99):
        raise SystemExit(f"cannot parse wrk output:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors:.*", text)
    err_count = 0
    if errors:
        err_count = sum(int(n) for n in re.findall(r"\d+", errors.group(0)))
    print(f"{float(rps.group(1)):.0f} {to_ms(p50.group(1)):.3f} {to_ms(p99.group(1)):.3f} "
          f"{int(non2xx.group(1)) if non2xx else 0} {err_count}")


def percentile(sorted_values, q):
    # Nearest-rank percentile, as wrk and HdrHistogram report it.
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def pgbench(out_path, log_prefix):
    text = open(out_path).read()
    tps = re.search(r"^tps = ([\d.]+)", text, re.M)
    if not tps:
        raise SystemExit(f"cannot parse pgbench output:\n{text}")
    failed = re.search(r"number of failed transactions: (\d+)", text)
    # Per-transaction log lines: client_id transaction_no latency_us script_no epoch epoch_us
    latencies = []
    for name in glob.glob(log_prefix + ".*"):
        with open(name) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():
                    latencies.append(int(fields[2]))
    if not latencies:
        raise SystemExit(f"no pgbench transaction logs at {log_prefix}.*")
    latencies.sort()
    print(f"{float(tps.group(1)):.0f} {percentile(latencies, 50) / 1000:.3f} "
          f"{percentile(latencies, 99) / 1000:.3f} {int(failed.group(1)) if failed else 0}")


def cpu(out_path, proxy_pid):
    """Samples utime+stime of every process once a second, grouped by what
    it is, and on SIGTERM writes each group's CPU use in percent of one core
    over the sampled window. A process first seen after the first sample
    counts from zero (it started during the window)."""
    tick = os.sysconf("SC_CLK_TCK")
    groups = {"pgrpc": lambda pid, comm: pid == proxy_pid,
              "postgres": lambda pid, comm: comm == "postgres",
              "wrk": lambda pid, comm: comm == "wrk",
              "pgbench": lambda pid, comm: comm == "pgbench"}
    first, last = {}, {}
    started = [None]
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))

    def sample(initial):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            pid = int(entry)
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            rest = stat[stat.rindex(")") + 2:].split()
            ticks = int(rest[11]) + int(rest[12])  # utime, stime
            for name, match in groups.items():
                if match(pid, comm):
                    key = (pid, name)
                    first.setdefault(key, ticks if initial else 0)
                    last[key] = ticks

    sample(True)
    started[0] = time.monotonic()
    while not stop[0]:
        time.sleep(0.5)
        sample(False)
    elapsed = time.monotonic() - started[0]
    usage = {name: 0 for name in groups}
    for (pid, name), ticks in last.items():
        usage[name] += ticks - first[(pid, name)]
    with open(out_path, "w") as f:
        f.write(" ".join(f"{name}={100.0 * t / tick / elapsed:.0f}" for name, t in usage.items() if t) + "\n")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "free-port":
        free_port()
    elif cmd == "jwt":
        jwt(*args)
    elif cmd == "wrk":
        wrk(*args)
    elif cmd == "pgbench":
        pgbench(*args)
    elif cmd == "cpu":
        cpu(args[0], int(args[1]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
