#!/usr/bin/env python3
"""Small helpers for scripts/bench (standard library only).

    helpers.py free-port                 a free TCP port on 127.0.0.1
    helpers.py jwt SECRET ROLE           an HS256 token with {"role": ROLE}, valid 1 day
    helpers.py wrk FILE                  wrk --latency output -> "rps p50_ms p99_ms non2xx errors"
    helpers.py pgbench OUT LOGPREFIX     pgbench output + per-transaction logs -> "tps p50_ms p99_ms failed"
    helpers.py cpu-per-request WRKFILE TICKS
                                         CPU microseconds per request: TICKS clock ticks
                                         over the requests wrk counted
    helpers.py cpu OUTFILE PROXY_PID POSTMASTER_PID [PEER_PID]
                                         samples CPU time per process group until SIGTERM,
                                         then writes "group NN%, ..." (percent of one core)
    helpers.py cpu-per-transaction PGBENCH_OUT TICKS_FILE
                                         this cluster's CPU microseconds per pgbench
                                         transaction, from the sampler's OUTFILE.ticks
    helpers.py same-response MODE A_FILE B_FILE
                                         exits non-zero, saying why, unless two JSON bodies
                                         are equal (MODE equal) or have the same keys and
                                         value types (MODE shape: values that change per call);
                                         B as [A] or [{"name": A}] passes too, with a note
    helpers.py floor-sql SCRIPT -D NAME=VALUE ...
                                         a pgbench pipeline script's statements with its
                                         variables as literals, NUL-separated (the floor's SQL)
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


def cpu_per_request(path, ticks):
    text = open(path).read()
    m = re.search(r"^\s*(\d+) requests in", text, re.M)
    if not m or int(m.group(1)) == 0:
        raise SystemExit(f"cannot find the request count in wrk output:\n{text}")
    seconds = int(ticks) / os.sysconf("SC_CLK_TCK")
    print(f"{seconds * 1e6 / int(m.group(1)):.1f}")


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


def machine_busy_ticks():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    return sum(fields[:8]) - fields[3] - fields[4]


def cpu(out_path, proxy_pid, postmaster_pid, peer_pid=None):
    """Samples utime+stime of every process twice a second and, on SIGTERM,
    writes the CPU use of each group over the sampled window, in percent of
    one core: this benchmark's processes (pgrpc, postgres = this cluster's
    postmaster and its children, wrk, pgbench), kernel threads (I/O
    writeback, for example), the busiest other processes by name (other
    PostgreSQL clusters, compilers, this sampler), and "rest", the busy time
    no sampled process accounts for (interrupts, processes that came and went
    between samples). A process first seen after the first sample counts
    from zero (it started during the window). OUTFILE.ready appears once
    the first sample is taken; OUTFILE.ticks gets "group ticks" lines."""
    tick = os.sysconf("SC_CLK_TCK")
    first, last, label = {}, {}, {}
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))

    def classify(pid, ppid, comm):
        if pid == proxy_pid:
            return "pgrpc"
        if pid == peer_pid:
            return "postrust"
        if postmaster_pid in (pid, ppid):
            return "postgres"
        if comm in ("wrk", "pgbench"):
            return comm
        if pid == 2 or ppid == 2:
            return "kernel threads"
        return "other " + comm

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
            if pid not in label:
                label[pid] = classify(pid, int(rest[1]), comm)
                first[pid] = ticks if initial else 0
            last[pid] = ticks

    busy_start = machine_busy_ticks()
    sample(True)
    started = time.monotonic()
    with open(out_path + ".ready", "w"):
        pass
    while not stop[0]:
        time.sleep(0.2)
        sample(False)
    elapsed = time.monotonic() - started
    busy = machine_busy_ticks() - busy_start
    usage = {}
    for pid, ticks in last.items():
        usage[label[pid]] = usage.get(label[pid], 0) + ticks - first[pid]
    percent = {name: 100.0 * t / tick / elapsed for name, t in usage.items()}
    ours = [n for n in ("pgrpc", "postrust", "postgres", "wrk", "pgbench", "kernel threads") if percent.get(n, 0) >= 0.5]
    others = sorted((n for n in percent if n.startswith("other ") and percent[n] >= 2),
                    key=lambda n: -percent[n])[:3]
    rest = 100.0 * max(0, busy - sum(usage.values())) / tick / elapsed
    parts = [f"{n} {percent[n]:.0f}%" for n in ours + others] + [f"rest {rest:.0f}%"]
    with open(out_path, "w") as f:
        f.write(", ".join(parts) + "\n")
    with open(out_path + ".ticks", "w") as f:
        for name, t in sorted(usage.items()):
            f.write(f"{name.replace(' ', '_')} {t}\n")


def cpu_per_transaction(pgbench_out, ticks_path):
    """PostgreSQL's CPU time (this cluster's processes, sampled every 0.2 s,
    so a backend's last fraction of a second before it exits may be missed)
    per transaction pgbench processed."""
    text = open(pgbench_out).read()
    m = re.search(r"number of transactions actually processed: (\d+)", text)
    ticks = 0
    for line in open(ticks_path):
        name, value = line.split()
        if name == "postgres":
            ticks = int(value)
    if not m or int(m.group(1)) == 0:
        print("nan")
        return
    print(f"{ticks / os.sysconf('SC_CLK_TCK') * 1e6 / int(m.group(1)):.0f}")


def shape(value):
    """The keys and value types of a JSON value, recursively."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def same_response(mode, a_path, b_path):
    try:
        a, b = (json.load(open(p)) for p in (a_path, b_path))
    except ValueError as e:
        raise SystemExit(f"not JSON: {e}")
    if mode == "shape":
        a, b = shape(a), shape(b)
    if a != b and isinstance(b, list) and len(b) == 1 and b[0] == a:
        # postrust 3.1.0 answers a function returning one composite value
        # as a one-element array: the same value in another envelope.
        print("same value, as a one-element array")
        return
    if a != b and unwrapped(b) == a:
        # postrust 3.1.0 answers some scalar functions as [{"name": value}]
        # (its schema cache does not see their return type): the same
        # function, arguments and value, in another envelope.
        print("same value, wrapped as [{name: value}]")
        return
    if a != b:
        raise SystemExit(f"{json.dumps(a)[:300]} != {json.dumps(b)[:300]}")


def unwrapped(value):
    """[{"name": v}] as v; anything else as it is."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and len(value[0]) == 1:
        return next(iter(value[0].values()))
    return value


def floor_sql(script, *defines):
    """The statements of a pgbench pipeline script with its -D variables as
    literals, NUL-separated, for examples/floor.rs (which binds nothing)."""
    values = {}
    pairs = iter(defines)
    for flag in pairs:
        if flag != "-D":
            raise SystemExit(f"floor-sql: expected -D, got {flag!r}")
        name, _, value = next(pairs).partition("=")
        values[name] = value
    names = sorted(values, key=len, reverse=True)
    pattern = re.compile(r"(?<![:\w]):(" + "|".join(map(re.escape, names)) + r")\b") if names else None

    def literal(m):
        return "'" + values[m.group(1)].replace("'", "''") + "'"

    out = []
    with open(script) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("\\"):
                continue
            statement = line[:-1] if line.endswith(";") else line
            for name in re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", statement):
                if name not in values:
                    raise SystemExit(f"floor-sql: :{name} has no -D value in {statement[:200]!r}")
            if pattern:
                statement = pattern.sub(literal, statement)
            out.append(statement)
    sys.stdout.write("\0".join(out))


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
    elif cmd == "cpu-per-request":
        cpu_per_request(*args)
    elif cmd == "cpu":
        cpu(args[0], int(args[1]), int(args[2]), int(args[3]) if len(args) > 3 else None)
    elif cmd == "cpu-per-transaction":
        cpu_per_transaction(*args)
    elif cmd == "same-response":
        same_response(*args)
    elif cmd == "floor-sql":
        floor_sql(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
