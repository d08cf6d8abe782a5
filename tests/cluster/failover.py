#!/usr/bin/env python3
"""One failover round under load against the topology of scripts/cluster.

usage: tests/cluster/failover.py MODE   (run by scripts/test-cluster)

MODE is the fault:
  kill      SIGKILL of the primary's container (started again afterwards)
  postmaster SIGKILL of the primary's postmaster only (Patroni, alive,
            restarts it)
  switchover a planned switchover (patronictl switchover --force)
  netcut    every packet of the primary dropped (etcd, the other nodes and
            HAProxy) for 25 s
  pause     the primary frozen (docker pause) until another node leads
  dcs       the primary cut from the etcd members and from the other
            nodes (iptables in its network namespace), still reachable by
            HAProxy, for 25 s
  proxy     SIGKILL of proxy api1, under load through HAProxy's front, which
            must answer every call (JSON, never HTML, never dropped) within
            3 s; api1 is started again 5 s later
  etcd-one  SIGKILL of the etcd member that leads etcd, for 15 s
  etcd-all  SIGKILL of every etcd member for 15 s: with failsafe_mode and
            every Patroni member healthy, writes must not stop at all, and
            the primary stays the leader
  etcd-all-again  the same, run after etcd-all and a leader change
            (scripts/test-cluster runs it after switchover): the leader is
            then a node that answered the first outage's POST /failsafe as
            a replica. Debian's Patroni 3.0.2 took that stale state for the
            leader once etcd came back and demoted itself (6-8 s without
            writes); scripts/build-pg-image patches it.

It drives, through both proxies at once, consume_token on one budget,
sign_contract, finalize_receive, consume_token under Idempotency-Key, and
set_connection_status (whose events check the relay's per-aggregate
order), plus read-your-writes through HAProxy's front: a write, then a GET
sending back its X-Pgrpc-Lsn (or only the pgrpc_lsn cookie the write set),
which must see the write, served by a replica when one has it. Mid-run it
injects the fault. Then it checks, on the
new primary and at the test webhook, that no acknowledged write was lost,
nothing was over-spent or done twice, no answer was a 500, and the relay
delivered every event in per-aggregate order. It prints a report and exits
1 if any check failed.

Environment (set by scripts/test-cluster from scripts/cluster's defaults):
PGRPC_CLUSTER_NAME, PGRPC_CLUSTER_DIR, PGRPC_CLUSTER_PRIMARY_PORT,
PGRPC_CLUSTER_API_PORT, PGRPC_CLUSTER_API1_PORT, PGRPC_CLUSTER_API2_PORT,
PGRPC_CLUSTER_WEBHOOK_PORT,
PGRPC_FAILOVER_WARMUP (s, default 8), PGRPC_FAILOVER_AFTER (s of load after
writes recovered, default 10), PGRPC_FAILOVER_MAX_OUTAGE (s, default 45:
the run stops waiting for writes to come back), PGRPC_FAILOVER_WRITES_BACK
(s, default 15: writes must succeed again within this long after the
fault), PGRPC_FAILOVER_RESULTS (a file to which one JSON line with the
round's times is appended, for scripts/test-cluster's table),
PGRPC_FAILOVER_LOG_DIR (a directory: the round's logs of every PostgreSQL
node, etcd member, HAProxy and proxy are saved there, one file each, named
after the mode and the wall-clock time the round started).
Standard library only.
"""
import base64
import collections
import hashlib
import hmac
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid

ENV = os.environ
NAME = ENV.get("PGRPC_CLUSTER_NAME", "pgrpc-cluster")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATE_DIR = ENV.get("PGRPC_CLUSTER_DIR", os.path.join(ROOT, ".cluster"))
PRIMARY_PORT = int(ENV.get("PGRPC_CLUSTER_PRIMARY_PORT", "15432"))
API_PORTS = [int(ENV.get("PGRPC_CLUSTER_API1_PORT", "13001")),
             int(ENV.get("PGRPC_CLUSTER_API2_PORT", "13002"))]
FRONT_PORT = int(ENV.get("PGRPC_CLUSTER_API_PORT", "13000"))   # HAProxy, in front of both
WEBHOOK_PORT = int(ENV.get("PGRPC_CLUSTER_WEBHOOK_PORT", "13080"))
WARMUP = float(ENV.get("PGRPC_FAILOVER_WARMUP", "8"))
AFTER = float(ENV.get("PGRPC_FAILOVER_AFTER", "10"))
MAX_OUTAGE = float(ENV.get("PGRPC_FAILOVER_MAX_OUTAGE", "45"))
WRITES_BACK = float(ENV.get("PGRPC_FAILOVER_WRITES_BACK", "15"))
RESULTS = ENV.get("PGRPC_FAILOVER_RESULTS")
LOG_DIR = ENV.get("PGRPC_FAILOVER_LOG_DIR")
NODES = ["pg1", "pg2", "pg3"]
ETCDS = ["etcd1", "etcd2", "etcd3"]
MODES = ("kill", "pause", "dcs", "netcut", "postmaster", "switchover", "proxy", "etcd-one", "etcd-all",
         "etcd-all-again")
FRONT_BOUND = 3.0      # s: the longest a call through HAProxy's front may take around a proxy's loss
NO_GAP = 2.0           # s: the longest write gap that counts as none (etcd lost, every member healthy)
BUDGET = 4000          # tokens of the spent budget (site A)
PLAYERS = 10000        # contracts that may be signed in one round
REQUEST_TIMEOUT = 30

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def log(msg):
    # The wall clock too, to line the round up with the services' logs.
    wall = time.strftime("%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}"
    print(f"[{now():7.2f}s {wall}] {msg}", file=sys.stderr, flush=True)


def secrets():
    out = {}
    with open(os.path.join(STATE_DIR, "secrets.env")) as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            out[k] = v
    return out


SECRETS = secrets()
DB_URL = f"postgresql://postgres:{SECRETS['SUPERUSER_PASSWORD']}@127.0.0.1:{PRIMARY_PORT}/pgrpc"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims):
    claims = dict(claims, exp=int(time.time()) + 3600)
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRETS["JWT_SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


SERVICE = jwt({"role": "pgrpc_service", "sub": "failover-test"})


def sql(query, retries=30):
    """Rows of a query on the primary, as lists of strings (psql -At)."""
    last = ""
    for _ in range(retries):
        p = subprocess.run(["psql", "-X", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", DB_URL, "-c", query],
                           capture_output=True, text=True)
        if p.returncode == 0:
            return [line.split("\t") for line in p.stdout.splitlines() if line != ""]
        last = p.stderr.strip()
        time.sleep(1)
    raise RuntimeError(f"psql failed: {last}\n{query}")


def docker(*args, check=True):
    p = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def members(exclude=()):
    """patronictl list, asked of a running node not in `exclude`."""
    for n in NODES:
        if n in exclude:
            continue
        p = subprocess.run(["docker", "exec", f"{NAME}-{n}", "patronictl", "-c", "/cluster/patroni.yml",
                            "list", "-f", "json"], capture_output=True, text=True, timeout=20)
        if p.returncode == 0:
            try:
                return json.loads(p.stdout)
            except ValueError:
                pass
    return []


def leader(exclude=()):
    for m in members(exclude):
        if m["Role"] == "Leader" and m["State"] == "running":
            return m["Member"]
    return None


def container_ip(short):
    return docker("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{NAME}").IPAddress}}}}',
                  f"{NAME}-{short}").strip()


def netns(short, *cmd):
    """Runs the host's command (iptables) in the container's network namespace."""
    pid = docker("inspect", "--format", "{{.State.Pid}}", f"{NAME}-{short}").strip()
    p = subprocess.run(["nsenter", "-t", pid, "-n", *cmd], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"nsenter {short} {' '.join(cmd)}: {p.stderr.strip()}")


def cut_rules(others):
    """iptables commands that drop every packet between a container and the
    others (a partition: no answer, no refusal), for its own namespace."""
    cmds = []
    for o in others:
        ip = container_ip(o)
        cmds.append(f"iptables -I INPUT -s {ip} -j DROP && iptables -I OUTPUT -d {ip} -j DROP")
    return " && ".join(cmds)


def uncut(short):
    netns(short, "sh", "-c", "iptables -F INPUT && iptables -F OUTPUT")


def etcd_leader():
    """The etcd member that leads etcd's own cluster (etcd1 if unknown)."""
    eps = ",".join(f"http://{e}:2379" for e in ETCDS)
    p = subprocess.run(["docker", "exec", "-e", "ETCDCTL_API=3", f"{NAME}-etcd1", "etcdctl", f"--endpoints={eps}",
                        "endpoint", "status", "-w", "json"], capture_output=True, text=True, timeout=20)
    try:
        for st in json.loads(p.stdout):
            if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
                return st["Endpoint"].split("//")[1].split(":")[0]
    except (ValueError, KeyError, IndexError):
        pass
    return "etcd1"


def streaming(node):
    """How many standbys stream from the node (its pg_stat_replication)."""
    p = subprocess.run(["docker", "exec", "-u", "postgres", f"{NAME}-{node}", "psql", "-X", "-At", "-c",
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"],
                       capture_output=True, text=True, timeout=20)
    return int(p.stdout.strip()) if p.returncode == 0 and p.stdout.strip().isdigit() else -1


def wait_http(port, path, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def replica_reads():
    """pgrpc_reads_total{target="replica"} summed over both proxies."""
    total = 0
    for port in API_PORTS:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/metrics")
            for line in conn.getresponse().read().decode().splitlines():
                if line.startswith('pgrpc_reads_total{target="replica"'):
                    total += int(float(line.rsplit(" ", 1)[1]))
        except (OSError, ValueError):
            pass
    return total


# --- HTTP -------------------------------------------------------------------

class Client:
    """One keep-alive connection to one proxy, reopened after an error or
    after an idle spell (the proxy closes idle keep-alive connections)."""

    def __init__(self, port):
        self.port = port
        self.conn = None
        self.last = 0.0

    def call(self, fn, body, token=SERVICE, key=None, method="POST", extra=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if key:
            headers["Idempotency-Key"] = key
        headers.update(extra or {})
        if self.conn is None or time.monotonic() - self.last > 3:
            if self.conn is not None:
                self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        start = now()
        try:
            if method == "GET":
                query = "&".join(f"{k}={v}" for k, v in body.items())
                self.conn.request("GET", f"/rpc/{fn}?{query}", headers=headers)
            else:
                self.conn.request("POST", f"/rpc/{fn}", json.dumps(body), headers)
            r = self.conn.getresponse()
            data = r.read().decode()
            status = r.status
            hdrs = {}
            for k, v in r.getheaders():
                k = k.lower()
                hdrs[k] = f"{hdrs[k]}\n{v}" if k in hdrs else v
            if r.getheader("connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
        except (OSError, http.client.HTTPException) as e:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return Result(fn, self.port, start, now(), None, {}, repr(e), method)
        self.last = time.monotonic()
        return Result(fn, self.port, start, now(), status, hdrs, data, method)


class Result:
    def __init__(self, fn, port, start, end, status, headers, text, method="POST"):
        self.fn, self.port, self.start, self.end = fn, port, start, end
        self.status, self.headers, self.text = status, headers, text
        self.write = method != "GET"

    def json(self):
        return json.loads(self.text)

    def message(self):
        try:
            return self.json().get("message")
        except (ValueError, AttributeError):
            return None


# --- the round ----------------------------------------------------------------

class Round:
    def __init__(self, mode):
        self.mode = mode
        self.wall_start = time.time()
        self.tag = uuid.uuid4().hex[:8]
        self.lock = threading.Lock()
        self.results = []          # every answer
        self.violations = []
        self.stop = threading.Event()
        self.fault_at = None
        self.spend_acks = []       # `used` of every 200 of consume_token on site A
        self.small_acks = []       # the same on site C, whose small budget runs out after the fault
        self.small_go = threading.Event()
        self.signed_acked = set()  # player ids
        self.signed_409 = set()    # player ids refused as already signed after an unanswered try
        self.finalized_acked = set()
        self.idem = {}             # key -> first 200 body (or None while pending)
        self.status_acked = collections.defaultdict(list)  # connection id -> acked seqs
        self.ryw_checked = collections.Counter()           # reads after a write, by how the position was sent
        self.old_leader = None
        self.new_leader = None
        self.leader_at = None
        self.restored = []
        self.summary = []          # report lines, in the order they were found

    def violation(self, msg):
        with self.lock:
            self.violations.append(msg)
        log(f"VIOLATION: {msg}")

    def record(self, r, ok_statuses):
        with self.lock:
            self.results.append(r)
        if r.text.lstrip().startswith("<"):
            self.violation(f"{r.fn} via :{r.port} at {r.start:.2f}s: an HTML answer {r.status}: {r.text[:200]}")
        elif r.status is None:
            # The killed proxy refuses its direct clients until it is back:
            # expected. Through HAProxy's front, never.
            if not (self.mode == "proxy" and r.port == API_PORTS[0] and self.fault_at is not None):
                self.violation(f"{r.fn} via :{r.port} at {r.start:.2f}s: no HTTP answer ({r.text})")
        elif r.port == FRONT_PORT and r.status in (502, 503, 504):
            # HAProxy's own answers: the four-key JSON body and Retry-After.
            try:
                keys = set(r.json())
            except ValueError:
                keys = set()
            if keys != {"code", "message", "details", "hint"} or "retry-after" not in r.headers:
                self.violation(f"{r.fn} via the front: {r.status} that is not a JSON error with Retry-After: "
                               f"{r.headers} {r.text[:200]}")
        elif r.status == 503:
            if "retry-after" not in r.headers:
                self.violation(f"{r.fn} via :{r.port}: 503 without Retry-After: {r.text}")
        elif r.status not in ok_statuses:
            self.violation(f"{r.fn} via :{r.port} at {r.start:.2f}s: {r.status} {r.text[:300]}")

    # -- setup

    def setup(self):
        c = Client(API_PORTS[0])
        r = c.call("create_organization", {"name": f"failover-{self.tag}", "plan": "freemium"})
        assert r.status == 200, r.text
        org = r.json()["id"]
        sql(f"SELECT admin.set_token_allowance('freemium', 'alt_text', {BUDGET})")
        self.site_a = c.call("create_site", {"organization_id": org, "base_url": "https://a.test"}).json()["id"]
        self.site_b = c.call("create_site", {"organization_id": org, "base_url": "https://b.test"}).json()["id"]
        self.site_c = c.call("create_site", {"organization_id": org, "base_url": "https://c.test"}).json()["id"]
        self.site_d = c.call("create_site", {"organization_id": org, "base_url": "https://d.test"}).json()["id"]
        # Site D's counter exists before the small budget is set.
        c.call("consume_token", {"site_id": self.site_d, "token_type": "alt_text"})
        tenant = random.randint(10_000, 2_000_000_000)
        team = c.call("create_team", {"tenant_id": tenant, "name": "U12"}).json()["id"]
        parent = c.call("create_parent", {"tenant_id": tenant, "name": "Ann",
                                          "email": f"ann-{self.tag}@example.com"}).json()["id"]
        rows = sql(f"SELECT p.id, p.contract_token FROM generate_series(1, {PLAYERS}) g, "
                   f"api.create_player({tenant}, '{team}', 'p' || g, '{parent}') p")
        self.tenant = tenant
        self.players = {tok: pid for pid, tok in rows}
        self.tokens = list(self.players)
        r = c.call("connect_task_management", {
            "organization_id": org, "provider": "jira_cloud", "external_instance_id": self.tag,
            "instance_url": "https://jira.test", "display_name": "jira",
            "metadata": {"cloudId": str(uuid.uuid4())}})
        assert r.status == 200, r.text
        self.conns = [r.json()["id"]]
        self.outbox_start = int(sql("SELECT coalesce(max(id), 0) FROM private.outbox")[0][0])
        log(f"round {self.mode} ({self.tag}): {PLAYERS} players, budget {BUDGET}, outbox from id {self.outbox_start}")

    # -- workers

    def spend_worker(self, i, small=False):
        # The third spender goes through HAProxy's front, the others straight
        # to one proxy each.
        c = Client((API_PORTS + [FRONT_PORT])[i % 3])
        site, acks = (self.site_c, self.small_acks) if small else (self.site_a, self.spend_acks)
        if small:
            while not self.small_go.wait(0.5):
                if self.stop.is_set():
                    return
        while not self.stop.is_set():
            r = c.call("consume_token", {"site_id": site, "token_type": "alt_text"})
            self.record(r, {200, 429})
            if r.status == 200:
                with self.lock:
                    acks.append(r.json()["used"])
            elif r.status == 429:
                time.sleep(0.2)
            elif r.status != 200:
                time.sleep(0.1)

    def sign_worker(self, i):
        c = Client(API_PORTS[i % 2])
        retry = []   # tokens whose signing got no definite answer
        while not self.stop.is_set():
            if retry and (random.random() < 0.5 or not self.tokens):
                tok, again = retry.pop(), True
            else:
                with self.lock:
                    if not self.tokens:
                        break
                    tok, again = self.tokens.pop(), False
            r = c.call("sign_contract", {"contract_token": tok, "signature_ref": f"ref-{self.tag}"}, token=None)
            self.record(r, {200} | ({409} if again else set()))
            if r.status == 200:
                with self.lock:
                    self.signed_acked.add(r.json()["player_id"])
            elif r.status == 409 and again and r.message() == "contract_already_signed":
                with self.lock:
                    self.signed_409.add(self.players[tok])
            else:
                retry.append(tok)
                time.sleep(0.1)

    def finalize_worker(self, i):
        c = Client(API_PORTS[i % 2])
        retry = []
        while not self.stop.is_set():
            if retry and random.random() < 0.5:
                rid = retry.pop()
            else:
                rid = str(uuid.uuid4())
            r = c.call("finalize_receive", {"reservation_id": rid, "owner_email": f"owner-{self.tag}@example.com",
                                            "file_count": 1, "total_bytes": 10, "sender_label": self.tag})
            self.record(r, {200})
            if r.status == 200:
                with self.lock:
                    self.finalized_acked.add(rid)
            else:
                retry.append(rid)
                time.sleep(0.1)

    def idem_worker(self, i, port=None):
        c = Client(port or API_PORTS[i % 2])
        pending = []
        body = {"site_id": self.site_b, "token_type": "alt_text"}
        while not self.stop.is_set():
            key = pending.pop() if pending and random.random() < 0.5 else str(uuid.uuid4())
            with self.lock:
                self.idem.setdefault(key, None)
            r = c.call("consume_token", body, key=key)
            self.record(r, {200})
            if r.status == 200:
                with self.lock:
                    if self.idem[key] is None:
                        self.idem[key] = r.text
                    elif self.idem[key] != r.text:
                        self.violation(f"key {key}: two different 200 bodies: {self.idem[key]} / {r.text}")
            else:
                pending.append(key)
                time.sleep(0.1)

    def ryw_worker(self, i):
        """Read-your-writes through HAProxy's front: each write's position is
        sent back with the next read (the header, or only the cookie the
        write set), which must see the write."""
        c = Client(FRONT_PORT)
        body = {"site_id": self.site_d, "token_type": "alt_text"}
        n = 0
        while not self.stop.is_set():
            r = c.call("consume_token", body)
            self.record(r, {200, 429})
            if r.status != 200:
                time.sleep(0.2)
                continue
            used = r.json()["used"]
            lsn = r.headers.get("x-pgrpc-lsn")
            cookie = None
            for line in r.headers.get("set-cookie", "").split("\n"):
                if line.startswith("pgrpc_lsn="):
                    cookie = line.split(";", 1)[0]
            if lsn is None:
                self.violation("a write through the front without X-Pgrpc-Lsn (no replica configured?)")
                return
            n += 1
            extra = {"Cookie": cookie} if cookie and n % 2 else {"X-Pgrpc-Lsn": lsn}
            with self.lock:
                self.ryw_checked[("cookie" if "Cookie" in extra else "header")] += 1
            r = c.call("token_balance", body, method="GET", extra=extra)
            self.record(r, {200})
            if r.status == 200 and r.json()["used"] < used:
                self.violation(f"read-your-writes: wrote used={used}, then read {r.text} with {extra}")

    def status_worker(self, i):
        c = Client(API_PORTS[i % 2])
        conn = self.conns[0]
        seq = 0
        while not self.stop.is_set():
            seq += 1
            r = c.call("set_connection_status", {"connection_id": conn, "status": "error",
                                                 "error_message": f"seq-{seq:06d}"})
            self.record(r, {200})
            if r.status == 200:
                with self.lock:
                    self.status_acked[conn].append(seq)
            else:
                time.sleep(0.1)
            while not self.stop.is_set():
                r = c.call("set_connection_status", {"connection_id": conn, "status": "active"})
                self.record(r, {200})
                if r.status == 200:
                    break
                time.sleep(0.1)

    # -- the fault

    def inject(self):
        old = leader()
        if old is None:
            self.violation("no leader before the fault")
            return
        self.old_leader = old
        # Site C's budget: about six seconds of spending at the warm-up's
        # rate, so that it runs out after the failover, under concurrency.
        rate = len(self.spend_acks) / max(now() - self.load_start, 1)
        self.small_budget = max(50, int(rate * 6))
        sql(f"SELECT admin.set_token_allowance('freemium', 'alt_text', {self.small_budget})")
        self.small_go.set()
        mode = self.mode
        rules = cut_rules(ETCDS + [n for n in NODES if n != old]) if mode == "dcs" else None
        self.fault_at = now()
        if mode == "postmaster":
            log(f"SIGKILL to the postmaster of {NAME}-{old} (Patroni lives on)")
            docker("exec", f"{NAME}-{old}", "sh", "-c",
                   "kill -KILL \"$(head -n1 /var/lib/postgresql/data/pgdata/postmaster.pid)\"")
        elif mode == "netcut":
            log(f"cutting every packet of {NAME}-{old} (the primary): etcd, the nodes and HAProxy")
            netns(old, "sh", "-c", "iptables -I INPUT ! -i lo -j DROP && iptables -I OUTPUT ! -o lo -j DROP")
        elif mode == "switchover":
            log(f"switchover from {NAME}-{old}")
            other = next(n for n in NODES if n != old)
            docker("exec", f"{NAME}-{other}", "patronictl", "-c", "/cluster/patroni.yml",
                   "switchover", "--leader", old, "--force")
        elif mode == "kill":
            log(f"SIGKILL to {NAME}-{old} (the primary)")
            docker("kill", "-s", "KILL", f"{NAME}-{old}")
        elif mode == "pause":
            log(f"docker pause {NAME}-{old} (the primary)")
            docker("pause", f"{NAME}-{old}")
        elif mode == "dcs":
            log(f"cutting {NAME}-{old} (the primary) from etcd and the other nodes; HAProxy still reaches it")
            netns(old, "sh", "-c", rules)
        elif mode == "proxy":
            log(f"SIGKILL to {NAME}-api1")
            docker("kill", "-s", "KILL", f"{NAME}-api1")
        elif mode == "etcd-one":
            victim = etcd_leader()
            log(f"SIGKILL to {NAME}-{victim} (etcd's leader)")
            docker("kill", "-s", "KILL", f"{NAME}-{victim}")
            self.restored = [victim]
        elif mode in ("etcd-all", "etcd-all-again"):
            log("SIGKILL to every etcd member")
            for e in ETCDS:
                docker("kill", "-s", "KILL", f"{NAME}-{e}")
            self.restored = list(ETCDS)
        if mode in ("kill", "pause", "dcs", "netcut", "switchover"):
            deadline = time.monotonic() + 60
            new = None
            while time.monotonic() < deadline:
                new = leader(exclude=(old,))
                if new and new != old:
                    break
                time.sleep(0.5)
            self.new_leader = new
            self.leader_at = now()
            if not new or new == old:
                self.violation(f"no new leader 60 s after the fault on {old}")
            else:
                log(f"new leader {new}, {self.leader_at - self.fault_at:.1f}s after the fault")
        if mode == "pause":
            log(f"docker unpause {NAME}-{old}")
            docker("unpause", f"{NAME}-{old}")
        elif mode in ("dcs", "netcut"):
            time.sleep(max(0.0, self.fault_at + 25 - now()))
            log(f"reconnecting {NAME}-{old}")
            uncut(old)
        elif mode == "proxy":
            time.sleep(max(0.0, self.fault_at + 5 - now()))
            log(f"starting {NAME}-api1 again")
            docker("start", f"{NAME}-api1")
        elif mode.startswith("etcd"):
            time.sleep(max(0.0, self.fault_at + 15 - now()))
            log(f"starting {', '.join(self.restored)} again")
            for e in self.restored:
                docker("start", f"{NAME}-{e}")

    def first_write_after(self, t):
        writes = [r.end for r in self.results if r.status == 200 and r.write and r.start >= t]
        return min(writes) if writes else None

    def run(self):
        self.setup()
        workers = ([(self.spend_worker, i) for i in range(3)] +
                   [(lambda i: self.spend_worker(i, small=True), i) for i in range(2)] + [(self.sign_worker, i) for i in range(2)] +
                   [(self.finalize_worker, i) for i in range(2)] + [(self.idem_worker, i) for i in range(2)] +
                   [(self.status_worker, 0), (self.ryw_worker, 0),
                    (lambda i: self.idem_worker(i, FRONT_PORT), 0)])
        threads = [threading.Thread(target=f, args=(i,), daemon=True) for f, i in workers]
        self.load_start = now()
        for t in threads:
            t.start()
        time.sleep(WARMUP)
        before = len([r for r in self.results if r.status == 200])
        log(f"warm-up: {before} writes acknowledged; injecting the fault")
        self.inject()
        # Load goes on until writes are back, then AFTER seconds more.
        deadline = self.fault_at + MAX_OUTAGE
        while now() < deadline and self.first_write_after(self.fault_at + 0.5) is None:
            time.sleep(0.5)
        time.sleep(AFTER)
        self.stop.set()
        for t in threads:
            t.join(REQUEST_TIMEOUT + 5)
        self.load_end = now()
        log(f"load stopped: {len(self.results)} calls")

    # -- after the round

    def heal(self):
        """Everything comes back: the killed node is started again, the
        frozen or cut one must demote itself and rejoin; then every member
        streams (three members, a leader, a synchronous standby)."""
        old = self.old_leader
        if old is None:
            return
        if self.mode == "kill":
            docker("start", f"{NAME}-{old}")
        if self.mode == "proxy":
            wait_http(API_PORTS[0], "/ready", 60) or self.violation("api1 not ready 60 s after its restart")
        deadline = time.monotonic() + 120
        ms = {}
        while time.monotonic() < deadline:
            ms = {m["Member"]: m for m in members()}
            lead = [m for m in ms.values() if m["Role"] == "Leader" and m["State"] == "running"]
            rest = [m for m in ms.values() if m["Role"] != "Leader"]
            if (len(ms) == 3 and len(lead) == 1 and any(m["Role"] == "Sync Standby" for m in rest)
                    and all(m["State"] in ("running", "streaming") for m in rest)
                    and streaming(lead[0]["Member"]) == 2):
                log(f"healed: {lead[0]['Member']} leads on timeline {lead[0].get('TL')}, both others stream")
                if self.mode.startswith("etcd") and lead[0]["Member"] != old:
                    # Losing etcd alone must not cost the primary: once etcd
                    # is back without a leader key, the running primary
                    # takes it again and the replicas, which find it alive,
                    # do not race (Patroni 3.0.2 without the patch of
                    # scripts/build-pg-image demoted it here).
                    self.violation(f"the leader changed from {old} to {lead[0]['Member']} with only etcd lost")
                return
            time.sleep(1)
        self.violation(f"not healed within 120 s: {list(ms.values())}")

    def check_reload(self):
        """Each proxy's schema listener follows the new primary: a function
        created there after the failover is served once NOTIFY pgrst says so."""
        fn = f"failover_probe_{self.tag}"
        sql(f"CREATE FUNCTION api.{fn}() RETURNS text LANGUAGE sql AS $$ SELECT '{self.tag}' $$; "
            f"GRANT EXECUTE ON FUNCTION api.{fn}() TO pgrpc_service; NOTIFY pgrst, 'reload schema'")
        for port in API_PORTS:
            c = Client(port)
            deadline = time.monotonic() + 15
            r = None
            while time.monotonic() < deadline:
                r = c.call(fn, {})
                if r.status == 200:
                    break
                time.sleep(0.5)
            if r is None or r.status != 200 or r.json() != self.tag:
                self.violation(f"proxy :{port} did not reload its schema after the failover: "
                               f"{r.status if r else None} {r.text[:200] if r else ''}")
        sql(f"DROP FUNCTION api.{fn}()")

    def retry_keys(self):
        """Every key that never got a 200 is retried until it does; every key
        is then sent once more and must be replayed with its first body."""
        c = Client(API_PORTS[1])
        body = {"site_id": self.site_b, "token_type": "alt_text"}
        for key in list(self.idem):
            for _ in range(20):
                if self.idem[key] is not None:
                    break
                r = c.call("consume_token", body, key=key)
                self.record(r, {200})
                if r.status == 200:
                    self.idem[key] = r.text
                else:
                    time.sleep(1)
            if self.idem[key] is None:
                self.violation(f"key {key}: no 200 after retries")
        c = Client(API_PORTS[0])
        for key, first in self.idem.items():
            r = c.call("consume_token", body, key=key)
            self.record(r, {200})
            if r.status == 200:
                if r.headers.get("idempotent-replayed") != "true":
                    self.violation(f"key {key}: the retry was not a replay: {r.text}")
                elif first is not None and r.text != first:
                    self.violation(f"key {key}: replay {r.text} differs from the first answer {first}")

    def wait_relay(self):
        want = {int(r[0]) for r in sql(f"SELECT id FROM private.outbox WHERE id > {self.outbox_start}")}
        deadline = time.monotonic() + 120
        got = []
        while time.monotonic() < deadline:
            got = webhook_events(self.outbox_start)
            if want <= {e["event_id"] for e in got}:
                break
            time.sleep(1)
        self.outbox_ids = want
        self.delivered = got
        missing = want - {e["event_id"] for e in got}
        if missing:
            self.violation(f"the relay did not deliver {len(missing)} of {len(want)} events "
                           f"within 120 s (e.g. {sorted(missing)[:5]})")

    def check(self):
        # Budget: nothing over-spent, no acknowledged spend lost, no two spends
        # acknowledged with the same count.
        total, used = map(int, sql(f"SELECT total, used FROM private.tokens WHERE site_id = '{self.site_a}'")[0])
        acks = self.spend_acks
        self.summary.append(f"consume_token: {len(acks)} acknowledged, used {used} of {total}")
        if used > total:
            self.violation(f"over-spent: used {used} > total {total}")
        if used < len(acks):
            self.violation(f"lost spends: used {used} < {len(acks)} acknowledged")
        if len(set(acks)) != len(acks):
            self.violation("two spends were acknowledged with the same count")
        if acks and max(acks) > used:
            self.violation(f"an acknowledged count {max(acks)} exceeds used {used}")
        rows = sql(f"SELECT total, used FROM private.tokens WHERE site_id = '{self.site_c}'")
        total_c, used_c = map(int, rows[0]) if rows else (self.small_budget, 0)
        small = self.small_acks
        refused = sum(1 for r in self.results if r.status == 429)
        self.summary.append(f"consume_token on a budget of {total_c} running out after the fault: "
                            f"{len(small)} acknowledged, used {used_c}, {refused} refused with 429")
        if used_c > total_c or len(small) > total_c:
            self.violation(f"over-spent: used {used_c}, {len(small)} acknowledged, total {total_c}")
        if used_c < len(small) or len(set(small)) != len(small) or (small and max(small) > used_c):
            self.violation(f"lost or doubled spends on the small budget: used {used_c}, acknowledged {sorted(small)[-5:]}")

        # Contracts: every acknowledged signature is there; signed players and
        # contract.signed events match one to one.
        signed = {r[0] for r in sql(f"SELECT id FROM private.players WHERE tenant_id = {self.tenant} "
                                    "AND contract_status = 'signed'")}
        events = [r[0] for r in sql("SELECT o.aggregate_id FROM private.outbox o JOIN private.players p "
                                    "ON p.id::text = o.aggregate_id WHERE o.event_type = 'contract.signed' "
                                    f"AND p.tenant_id = {self.tenant}")]
        self.summary.append(f"sign_contract: {len(self.signed_acked)} acknowledged (+{len(self.signed_409)} "
                            f"confirmed by a 409 on retry), {len(signed)} signed, {len(events)} contract.signed events")
        if self.signed_acked - signed:
            self.violation(f"lost signatures: {len(self.signed_acked - signed)} acknowledged players are not signed")
        if self.signed_409 - signed:
            self.violation("a 409 contract_already_signed for a player that is not signed")
        if len(events) != len(set(events)) or set(events) != signed:
            self.violation(f"signed players ({len(signed)}) and contract.signed events ({len(events)}) differ")

        # Feed: every acknowledged finalization is there, each with one entry
        # and one event.
        entries = {r[0] for r in sql("SELECT reservation_id FROM private.receive_feed_entries "
                                     f"WHERE owner_email = 'owner-{self.tag}@example.com'")}
        ev = collections.Counter(r[0] for r in sql(
            "SELECT aggregate_id FROM private.outbox WHERE event_type = 'receive.finalized' "
            f"AND id > {self.outbox_start}"))
        self.summary.append(f"finalize_receive: {len(self.finalized_acked)} acknowledged, {len(entries)} entries")
        if self.finalized_acked - entries:
            self.violation(f"lost feed entries: {len(self.finalized_acked - entries)}")
        if any(ev[e] != 1 for e in entries) or set(ev) - entries:
            self.violation("a feed entry without exactly one receive.finalized event")

        # Idempotency keys: one effect each.
        used_b = sql(f"SELECT used FROM private.tokens WHERE site_id = '{self.site_b}'")
        used_b = int(used_b[0][0]) if used_b else 0
        bodies = [json.loads(b)["used"] for b in self.idem.values() if b]
        self.summary.append(f"Idempotency-Key: {len(self.idem)} keys, site used {used_b}")
        if used_b != len(self.idem):
            self.violation(f"Idempotency-Key: {len(self.idem)} keys had {used_b} effects")
        if len(set(bodies)) != len(bodies):
            self.violation("Idempotency-Key: two keys answered with the same count")

        # Status events: every acknowledged one exists.
        for conn, seqs in self.status_acked.items():
            have = {r[0] for r in sql("SELECT payload->>'error_message' FROM private.outbox WHERE "
                                      f"aggregate_id = '{conn}' AND event_type = "
                                      "'task_management.connection_status_changed'")}
            lost = [s for s in seqs if f"seq-{s:06d}" not in have]
            if lost:
                self.violation(f"lost status changes of {conn}: {lost[:5]}")
            self.summary.append(f"set_connection_status: {len(seqs)} acknowledged error transitions")

        # The relay: everything delivered (checked in wait_relay), nothing
        # that is not in the database, each aggregate in order, signed.
        ids = {e["event_id"] for e in self.delivered}
        if ids - self.outbox_ids:
            self.violation(f"delivered events that are not in the database: {sorted(ids - self.outbox_ids)[:5]}")
        if not all(e["signature_ok"] for e in self.delivered):
            self.violation("a delivery with a wrong signature")
        by_agg = collections.defaultdict(list)
        for e in self.delivered:
            by_agg[(e["aggregate_type"], e["aggregate_id"])].append(e)
        for agg, evs in by_agg.items():
            seen = []
            for e in evs:
                if e["event_id"] not in seen:
                    seen.append(e["event_id"])
            if seen != sorted(seen):
                self.violation(f"aggregate {agg} delivered out of order: {seen[:10]}")
            msgs = [e["payload"].get("error_message") for e in evs if e["event_type"].startswith("task_management")]
            firsts = list(dict.fromkeys(msgs))
            if firsts != sorted(firsts):
                self.violation(f"status events of {agg} delivered out of order")
        redelivered = len(self.delivered) - len(ids)
        self.summary.append(f"relay: {len(ids)} events delivered ({redelivered} redeliveries), "
                            f"{sum(1 for v in by_agg.values() if len({e['event_id'] for e in v}) > 1)} aggregates with several events")

    def report(self):
        statuses = collections.Counter((r.fn, r.status) for r in self.results)
        codes = collections.Counter(r.status for r in self.results)
        lines = [f"== round {self.mode}: {len(self.results)} calls, statuses {dict(sorted(codes.items(), key=str))}"]
        row = {"mode": self.mode, "writes_back": None, "gap": None, "front_max": None, "leader": None}
        if self.fault_at is not None:
            back = self.first_write_after(self.fault_at + 0.5)
            # The load's writes only: the retries after it are not load.
            end = getattr(self, "load_end", now())
            writes = sorted(r.end for r in self.results if r.status == 200 and r.write and r.start <= end)
            gaps = [(b - a, a, b) for a, b in zip(writes, writes[1:])]
            gap, gap_at, _ = max(gaps, default=(0, 0, 0))
            row["gap"] = round(gap, 1)
            # Writes are back at the end of the longest gap the fault
            # caused (one ending after it), if writes stopped at all.
            after = max((g for g in gaps if g[2] > self.fault_at), default=None)
            if after is not None and after[0] >= 1.0:
                back = after[2]
            lines.append(f"the longest write gap starts {gap_at - self.fault_at:+.1f}s from the fault")
            if self.leader_at is not None:
                row["leader"] = round(self.leader_at - self.fault_at, 1)
                lines.append(f"fault at {self.fault_at:.1f}s on {self.old_leader}; new leader "
                             f"{self.new_leader} after {self.leader_at - self.fault_at:.1f}s")
            if back is None:
                self.violation("writes never succeeded again")
            else:
                row["writes_back"] = round(back - self.fault_at, 1)
                lines.append(f"writes succeeded again {back - self.fault_at:.1f}s after the fault; "
                             f"longest time without a successful write: {gap:.1f}s")
                if back - self.fault_at > WRITES_BACK:
                    self.violation(f"writes came back {back - self.fault_at:.1f}s after the fault (> {WRITES_BACK:.0f}s)")
            if self.mode.startswith("etcd") and gap > NO_GAP:
                self.violation(f"a write gap of {gap:.1f}s with only etcd lost (> {NO_GAP:.0f}s)")
            front = [r for r in self.results if r.port == FRONT_PORT and self.fault_at - 1 <= r.start <= self.fault_at + 10]
            if front:
                slow = max(front, key=lambda r: r.end - r.start)
                row["front_max"] = round(slow.end - slow.start, 1)
                lines.append(f"through HAProxy's front around the fault: {len(front)} calls, the longest "
                             f"{slow.end - slow.start:.1f}s ({slow.fn} {slow.status})")
                if self.mode == "proxy" and slow.end - slow.start > FRONT_BOUND:
                    self.violation(f"a call through the front took {slow.end - slow.start:.1f}s around a proxy's "
                                   f"loss (> {FRONT_BOUND:.0f}s): {slow.fn} {slow.status} {slow.text[:100]}")
        lines += self.summary
        lines.append("per function: " + ", ".join(f"{fn} {st}: {n}" for (fn, st), n in sorted(statuses.items(), key=str)))
        errors = collections.Counter((r.status, r.message()) for r in self.results if r.status and r.status >= 400)
        lines.append("errors: " + (", ".join(f"{st} {m}: {n}" for (st, m), n in errors.most_common()) or "none"))
        for line in lines:
            print(line, flush=True)
        row["passed"] = not self.violations
        if RESULTS:
            with open(RESULTS, "a") as f:
                f.write(json.dumps(row) + "\n")


def webhook_events(after):
    conn = http.client.HTTPConnection("127.0.0.1", WEBHOOK_PORT, timeout=10)
    conn.request("GET", "/events")
    data = json.loads(conn.getresponse().read())
    conn.close()
    return [e for e in data if e["event_id"] > after]


def save_logs(rnd):
    """The round's container logs, for reading a slow or failed round."""
    os.makedirs(LOG_DIR, exist_ok=True)
    stamp = time.strftime("%H%M%S", time.gmtime(rnd.wall_start))
    for short in NODES + ETCDS + ["haproxy", "api1", "api2", "relay"]:
        p = subprocess.run(["docker", "logs", "--timestamps", "--since", str(int(rnd.wall_start) - 1),
                            f"{NAME}-{short}"], capture_output=True, text=True)
        with open(os.path.join(LOG_DIR, f"{stamp}-{rnd.mode}-{short}.log"), "w") as f:
            f.write(p.stdout + p.stderr)


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in MODES:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    rnd = Round(sys.argv[1])
    try:
        rnd.run()
        rnd.heal()
        rnd.check_reload()
        rnd.retry_keys()
        rnd.wait_relay()
        rnd.check()
        reads = replica_reads()
        rnd.summary.append(f"read-your-writes through the front: {dict(rnd.ryw_checked)} reads after a write; "
                           f"{reads} reads served by a replica so far (both proxies)")
        if not reads:
            rnd.violation("no read was served by a replica")
    except Exception as e:  # the report must come out whatever failed
        rnd.violation(f"the round stopped: {e!r}")
    rnd.report()
    if LOG_DIR:
        save_logs(rnd)
    if rnd.violations:
        print(f"FAILED: {len(rnd.violations)} violation(s):", flush=True)
        for v in rnd.violations[:50]:
            print(f"  - {v}", flush=True)
        return 1
    print(f"round {rnd.mode}: every check passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
