#!/usr/bin/env python3
"""Side-by-side benchmark of simian against HAProxy and nginx (see bench/README.md).

    python3 bench/run.py              # full run: 3 interleaved runs of 8 s, writes bench/RESULTS.md
    python3 bench/run.py --quick      # smoke test: 1 run of 3 s, prints the tables only

Python 3.11 standard library only. Run as root on a 2-vCPU machine: the proxy under test
is pinned alone on CPU 1, the load generator (wrk, bench/client.py) and the origin
(nginx, plus the Python upload sink) on CPU 0. `--cores 2` (part of the default run)
repeats the small-GET workload with 2 proxy threads and everything spread on both CPUs.
The tls-* workloads run simian, HAProxy and nginx terminating TLS (bench/tls.py).
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
import tls  # noqa: E402  (bench/tls.py)

REPO = os.path.dirname(BENCH)
CONF = os.path.join(BENCH, "conf")
CLIENT = os.path.join(BENCH, "client.py")
MIB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

TARGETS = ["direct", "simian", "haproxy", "haproxy-splice", "nginx"]
PROXIES = TARGETS[1:]
PLAIN_WORKLOADS = ["small", "close", "1m", "64m", "upload", "idle"]
WORKLOADS = PLAIN_WORKLOADS + tls.TLS_WORKLOADS
WORKLOADS_2CORES = ["small"]
WORKLOAD_TITLES = {
    "small": "small keep-alive GETs (wrk -c50)",
    "close": "`Connection: close` GETs (wrk -c50)",
    "1m": "1 MiB responses (wrk -c16)",
    "64m": "64 MiB responses (4 conns, 1 MiB reads)",
    "upload": "64 MiB uploads (4 conns)",
    "idle": "idle keep-alive client connections",
    **tls.WORKLOAD_TITLES,
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- /proc


def proc_children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(pid):
    """pid and all its descendants (nginx: master + workers)."""
    kids = proc_children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_split(pids):
    """(utime, stime) in seconds, summed over whole processes (all their threads,
    exited ones included): user space and kernel."""
    user = sys_ = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        user += int(fields[11])
        sys_ += int(fields[12])
    return user / CLK_TCK, sys_ / CLK_TCK


def cpu_seconds(pids):
    """utime+stime of each whole process (all its threads, exited ones included)."""
    return sum(cpu_split(pids))


def per_unit(m, cpu, units, key):
    """Proxy CPU per unit of work into m[key], and its user / kernel parts."""
    if cpu["proxy_cpu_s"] is not None and units:
        m[key] = cpu["proxy_cpu_s"] * 1e6 / units
        m[key + "_user"] = cpu["proxy_user_s"] * 1e6 / units
        m[key + "_sys"] = cpu["proxy_sys_s"] * 1e6 / units


def rss_bytes(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_busy_jiffies():
    """{cpu index: (busy, total)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                total = sum(v[:8])
                out[int(m.group(1))] = (total - idle, total)
    return out


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timewait_count():
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    m = re.search(r"\btw (\d+)", line)
                    return int(m.group(1)) if m else 0
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------- processes


class Server:
    def __init__(self, name, argv, port, cpus, work, http_check=True, env=None, tls=False):
        self.name, self.argv, self.port, self.cpus = name, argv, port, cpus
        self.work, self.http_check, self.env, self.tls = work, http_check, env, tls
        self.proc = None
        self.logpath = os.path.join(work, f"{name}.log")

    def start(self):
        logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(["taskset", "-c", self.cpus] + self.argv, stdin=subprocess.DEVNULL,
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=self.env)
        logf.close()
        wait_ready(self)

    def pids(self):
        return process_tree(self.proc.pid) if self.proc else []

    def stop(self):
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)  # the group we created with start_new_session
        except ProcessLookupError:
            return
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)


def http_probe(port, path="/small", timeout=1.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # keep-alive request, and we close first: the TIME_WAIT stays on our side, not on
        # the server's listening port (simian cannot bind a port with TIME_WAIT sockets)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b" ", 2)[1] if data.startswith(b"HTTP/1.") else None


def wait_ready(server, limit=20.0):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; log: {server.logpath}\n"
                               + tail(server.logpath))
        try:
            if server.http_check:
                st = tls.tls_get(server.port, "/small")[0] if server.tls else http_probe(server.port)
                if st == b"200":
                    return
                last = f"status {st!r}"
            else:
                socket.create_connection(("127.0.0.1", server.port), timeout=1.0).close()
                return
        except (OSError, ssl.SSLError) as e:
            last = str(e)
        time.sleep(0.05)
    raise RuntimeError(f"{server.name} not ready on port {server.port} after {limit}s ({last}); "
                       f"log: {server.logpath}\n" + tail(server.logpath))


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def port_free(port, strict=True):
    """strict: also free of TIME_WAIT sockets (bind without SO_REUSEADDR, as simian checks)."""
    s = socket.socket()
    try:
        if not strict:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def render(template, values):
    with open(os.path.join(CONF, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise RuntimeError(f"{template}: unfilled placeholders {left}")
    return text


# ---------------------------------------------------------------------------- setup


PACKAGES = {"haproxy": "haproxy", "nginx": "nginx-light", "wrk": "wrk", "taskset": "util-linux",
            "openssl": "openssl", "hey": "hey"}  # binary: Debian package (hey: TLS full handshakes)


def ensure_packages(args):
    missing = [b for b in PACKAGES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
    if not missing:
        return
    if args.no_install:
        sys.exit(f"missing: {missing} (and --no-install given)")
    log(f"installing {' '.join(PACKAGES.values())} (missing: {missing})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", *PACKAGES.values()], check=True, env=env)


def which(b):
    return shutil.which(b) or f"/usr/sbin/{b}"


def ensure_simian(args):
    if args.simian:
        return os.path.abspath(args.simian)
    path = os.path.join(REPO, "target", "release", "simian")
    if not args.no_build:
        log("cargo build -j2 --release (a no-op when up to date)")
        r = subprocess.run(["cargo", "build", "-j2", "--release", "--bin", "simian"], cwd=REPO)
        if r.returncode != 0:
            sys.exit("cargo build failed")
    if not os.path.exists(path):
        sys.exit(f"{path} not found (build it, or pass --simian PATH)")
    return path


def tune_system():
    try:
        with open("/proc/sys/net/ipv4/tcp_tw_reuse") as f:
            if f.read().strip() == "0":
                subprocess.run(["sysctl", "-w", "net.ipv4.tcp_tw_reuse=1"], check=False,
                               stdout=subprocess.DEVNULL)
    except OSError:
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def versions(simian_bin, desc=None):
    def out(argv):
        try:
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30)
            return r.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"? ({e})"
    v = {
        "haproxy": out([which("haproxy"), "-v"]).splitlines()[0],
        "nginx": out([which("nginx"), "-v"]).splitlines()[0],
        "wrk": out(["wrk", "--version"]).splitlines()[0],
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    rev = out(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"])
    dirty = out(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
    built = datetime.datetime.fromtimestamp(os.path.getmtime(simian_bin), datetime.timezone.utc)
    if desc:
        rev, dirty = desc, ""
    v["simian"] = (f"git {rev}{' (src/ has uncommitted changes)' if dirty else ''}, "
                   f"binary {os.path.relpath(simian_bin, REPO) if simian_bin.startswith(REPO) else simian_bin} "
                   f"built {built:%Y-%m-%d %H:%M} UTC")
    return v


class Bench:
    def __init__(self, args, simian_bin):
        self.args = args
        self.simian_bin = simian_bin
        self.work = tempfile.mkdtemp(prefix="simian-bench-")
        os.chmod(self.work, 0o755)  # nginx workers run as nobody: they must read www/
        b = args.port_base
        self.ports = {"origin1": b + 1, "origin2": b + 2, "origin3": b + 3, "sink": b + 4,
                      "direct": b + 1, "simian": b + 10, "haproxy": b + 11, "haproxy-splice": b + 12,
                      "nginx": b + 13}
        # the TLS proxies: "<target>-tls" (ECDSA P-256) and "<target>-tls-rsa" (RSA-2048)
        for i, t in enumerate(tls.TLS_TARGETS):
            self.ports[f"{t}-tls"] = b + 21 + i
            self.ports[f"{t}-tls-rsa"] = b + 24 + i
        for name in ("origin1", "origin2", "origin3", "sink"):
            if not port_free(self.ports[name], strict=False):
                sys.exit(f"port {self.ports[name]} ({name}) is in use: pick another --port-base")
        self.next_port = b + 100  # fresh ports for restarted proxies
        for name in PROXIES + [n for n in self.ports if "-tls" in n]:
            if not port_free(self.ports[name]):
                self.ports[name] = self.fresh_port()
        self.servers = {}
        self.cores = 1
        os.makedirs(os.path.join(self.work, "www"))
        for d in ("origin-tmp", "nginx-proxy-tmp", "nginx-tls-tmp", "nginx-tls-rsa-tmp"):
            os.makedirs(os.path.join(self.work, d))
        self._make_files()
        self.certs = self.client_conf = None
        if any(w in tls.TLS_WORKLOADS for w in args.workloads):
            self.certs = tls.make_certs(self.work)  # ECDSA P-256 and RSA-2048, made for this run
            self.client_conf = tls.write_client_openssl_conf(self.work)
        self.tls_info = {}

    def _make_files(self):
        block = os.urandom(MIB)
        with open(os.path.join(self.work, "www", "1m.bin"), "wb") as f:
            f.write(block)
        with open(os.path.join(self.work, "www", "64m.bin"), "wb") as f:
            for _ in range(64):
                f.write(block)

    # cpus: the proxy's and the load side's
    def proxy_cpus(self):
        return "1" if self.cores == 1 else "0,1"

    def load_cpus(self):
        return "0" if self.cores == 1 else "0,1"

    def values(self, port, threads):
        p = self.ports
        return {"WORK": self.work, "PORT": port, "THREADS": threads, "ORIGIN1": p["origin1"],
                "ORIGIN2": p["origin2"], "ORIGIN3": p["origin3"], "SINK": p["sink"],
                "ORIGIN_WORKERS": self.cores, "SPLICE": self.args.simian_splice,
                "HAPROXY_GLOBAL_EXTRA": "", "HAPROXY_DEFAULTS_EXTRA": "", "NAME": "nginx-proxy",
                "LISTEN_TLS": "", "SIMIAN_TLS": "", "HAPROXY_BIND_TLS": "", "NGINX_LISTEN_TLS": "",
                "NGINX_TLS": ""}

    def tls_values(self, name, port, threads):
        """values() plus the TLS lines of each template, for "<target>-tls[-rsa]"."""
        c = self.certs["rsa" if name.endswith("-rsa") else "ecdsa"]
        v = self.values(port, threads)
        v.update({"NAME": name, "LISTEN_TLS": " tls",
                  "SIMIAN_TLS": f"TLSCertificate {c['cert']} {c['key']}\nStatisticsURL {tls.STATS_PATH}\n",
                  "HAPROXY_BIND_TLS": f" ssl crt {c['combined']}", "NGINX_LISTEN_TLS": " ssl",
                  "NGINX_TLS": (f"        ssl_certificate {c['cert']};\n        ssl_certificate_key {c['key']};\n"
                                "        ssl_protocols TLSv1.2 TLSv1.3;\n")})
        return v

    def write_conf(self, name, template, values):
        path = os.path.join(self.work, name)
        with open(path, "w") as f:
            f.write(render(template, values))
        return path

    def make_server(self, name):
        threads = self.cores
        w = self.work
        if name == "origin":
            conf = self.write_conf("origin.conf", "origin-nginx.conf", self.values(0, threads))
            return Server("origin", [which("nginx"), "-c", conf, "-p", w], self.ports["origin1"],
                          self.load_cpus(), w)
        if name == "sink":
            return Server("sink", [sys.executable, CLIENT, "sink", "--port", str(self.ports["sink"])],
                          self.ports["sink"], self.load_cpus(), w, http_check=False)
        port = self.ports[name]
        cpus = self.proxy_cpus()
        if "-tls" in name:
            v = self.tls_values(name, port, threads)
            if name.startswith("simian"):
                conf = self.write_conf(f"{name}.conf", "simian.conf", v)
                return Server(name, [self.simian_bin, "-c", conf], port, cpus, w, tls=True)
            if name.startswith("haproxy"):
                conf = self.write_conf(f"{name}.cfg", "haproxy.cfg", v)
                return Server(name, [which("haproxy"), "-db", "-f", conf], port, cpus, w, tls=True)
            conf = self.write_conf(f"{name}.conf", "nginx-proxy.conf", v)
            return Server(name, [which("nginx"), "-c", conf, "-p", w], port, cpus, w, tls=True)
        if name == "simian":
            conf = self.write_conf("simian.conf", "simian.conf", self.values(port, threads))
            return Server(name, [self.simian_bin, "-c", conf], port, cpus, w)
        if name in ("haproxy", "haproxy-splice"):
            v = self.values(port, threads)
            if name == "haproxy-splice":
                v["HAPROXY_GLOBAL_EXTRA"] = "    maxpipes 500"
                v["HAPROXY_DEFAULTS_EXTRA"] = "    option splice-request\n    option splice-response"
            conf = self.write_conf(f"{name}.cfg", "haproxy.cfg", v)
            return Server(name, [which("haproxy"), "-db", "-f", conf], port, cpus, w)
        if name == "nginx":
            conf = self.write_conf("nginx-proxy.conf", "nginx-proxy.conf", self.values(port, threads))
            return Server(name, [which("nginx"), "-c", conf, "-p", w], port, cpus, w)
        raise ValueError(name)

    def start(self, name):
        s = self.make_server(name)
        self.servers[name] = s
        s.start()
        log(f"  started {name} (pid {s.proc.pid}, cpus {s.cpus}, port {s.port})")

    def restart(self, name):
        """Stops and starts a proxy on a fresh port: the old one may have sockets in TIME_WAIT
        (after `Connection: close` runs), and simian does not bind over them."""
        self.servers[name].stop()
        self.ports[name] = self.fresh_port()
        self.start(name)

    def fresh_port(self):
        while True:
            self.next_port += 1
            if port_free(self.next_port):
                return self.next_port

    def start_all(self, cores, targets, workloads=()):
        self.cores = cores
        if cores != 1:  # new processes on fresh ports, as in restart()
            for t in PROXIES:
                self.ports[t] = self.fresh_port()
        self.start("origin")
        if "sink" not in self.servers or self.servers["sink"].proc is None:
            self.start("sink")
        for t in targets:
            if t != "direct" and any(w in PLAIN_WORKLOADS for w in workloads):
                self.start(t)
        for name in self.tls_servers(targets, workloads):
            self.start(name)

    @staticmethod
    def tls_servers(targets, workloads):
        """The TLS proxies the workloads need: "<target>-tls", "<target>-tls-rsa"."""
        out = []
        for t in tls.TLS_TARGETS:
            if t not in targets:
                continue
            if any(w in tls.TLS_WORKLOADS and w != "tls-handshake-rsa" for w in workloads):
                out.append(f"{t}-tls")
            if "tls-handshake-rsa" in workloads:
                out.append(f"{t}-tls-rsa")
        return out

    def stop_all(self, keep_sink=False):
        for name, s in list(self.servers.items()):
            if keep_sink and name == "sink":
                continue
            s.stop()

    def port(self, target):
        return self.ports[target]

    def proxy_pids(self, target):
        return self.servers[target].pids() if target != "direct" else []

    def side_pids(self):
        return self.servers["origin"].pids() + self.servers["sink"].pids()

    # ------------------------------------------------------------------ measurement

    def measured(self, target, argv, timeout, env=None):
        """Runs a load-generator command pinned to the load CPUs, with CPU accounting.
        target: a key of self.servers ("simian", "nginx-tls"...) or "direct"."""
        proxy = self.proxy_pids(target)
        side = self.side_pids()
        (pu0, ps0), s0, c0, j0 = cpu_split(proxy), cpu_seconds(side), children_cpu(), cpu_busy_jiffies()
        t0 = time.monotonic()
        r = subprocess.run(["taskset", "-c", self.load_cpus()] + argv, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
        wall = time.monotonic() - t0
        (pu1, ps1), s1, c1, j1 = cpu_split(proxy), cpu_seconds(side), children_cpu(), cpu_busy_jiffies()
        proxy_cpu = (pu1 + ps1) - (pu0 + ps0)
        load_cpu = (s1 - s0) + (c1 - c0)
        busy = {c: 100.0 * (j1[c][0] - j0[c][0]) / max(1, j1[c][1] - j0[c][1]) for c in j1}
        total_busy_s = sum(j1[c][0] - j0[c][0] for c in j1) / CLK_TCK
        cpu = {
            "wall_s": wall,
            "proxy_cpu_s": proxy_cpu if target != "direct" else None,
            "proxy_user_s": pu1 - pu0,
            "proxy_sys_s": ps1 - ps0,
            "proxy_pct": 100.0 * proxy_cpu / wall if target != "direct" else None,
            "load_cpu_s": load_cpu,
            "load_pct": 100.0 * load_cpu / wall,
            "cpu0_pct": busy.get(0), "cpu1_pct": busy.get(1),
            "other_pct": 100.0 * max(0.0, total_busy_s - proxy_cpu - load_cpu) / wall,
        }
        return r, cpu

    def wrk(self, target, path, conns, extra=()):
        a = self.args
        threads = self.cores
        scheme, env = "http", None
        if "-tls" in target:  # wrk speaks TLS with the system's OpenSSL; X25519 forced
            scheme, env = "https", self.tls_env()
        url = f"{scheme}://127.0.0.1:{self.port(target)}{path}"
        argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{a.duration:g}s", "--latency", *extra, url]
        r, cpu = self.measured(target, argv, timeout=a.duration + 60, env=env)
        res = parse_wrk(r.stdout)
        if r.returncode != 0 or res.get("requests") is None:
            raise RuntimeError(f"wrk failed ({r.returncode}):\n{r.stdout}")
        res["raw"] = r.stdout
        return res, cpu

    def run_small(self, target):
        res, cpu = self.wrk(target, "/small", 50)
        m = {"rps": res["rps"], "p50_us": res["p50_us"], "p99_us": res["p99_us"],
             "errors": res["errors"], "requests": res["requests"]}
        if res.get("error_text"):
            m["error_text"] = res["error_text"]
        per_unit(m, cpu, res["requests"], "cpu_us_per_req")
        return m, cpu

    @staticmethod
    def drain_timewait():
        tw = timewait_count()
        if tw > 25000:  # tcp_tw_reuse lets connects reuse most of them; drain only the excess
            log(f"  {tw} sockets in TIME_WAIT: waiting up to 20 s for them to drain")
            deadline = time.monotonic() + 20
            while timewait_count() > 15000 and time.monotonic() < deadline:
                time.sleep(1)

    def run_close(self, target):
        self.drain_timewait()
        res, cpu = self.wrk(target, "/small", 50, extra=("-H", "Connection: close"))
        m = {"rps": res["rps"], "p50_us": res["p50_us"], "p99_us": res["p99_us"],
             "errors": res["errors"], "requests": res["requests"]}
        if res.get("error_text"):
            m["error_text"] = res["error_text"]
        per_unit(m, cpu, res["requests"], "cpu_us_per_req")
        return m, cpu

    def run_1m(self, target):
        res, cpu = self.wrk(target, "/1m.bin", 16)
        mib = res["requests"]  # complete 1 MiB responses
        m = {"mibps": mib / res["duration_s"], "errors": res["errors"], "requests": res["requests"]}
        if res.get("error_text"):
            m["error_text"] = res["error_text"]
        per_unit(m, cpu, mib, "cpu_us_per_mib")
        return m, cpu

    def run_client(self, target, argv, direct_port=None):
        a = self.args
        port = direct_port if target == "direct" and direct_port else self.port(target)
        env = None
        if "-tls" in target:
            argv, env = [*argv, "--tls"], self.tls_env()
        r, cpu = self.measured(target, [sys.executable, CLIENT, *argv, "--port", str(port),
                                        "--conns", "4", "--duration", f"{a.duration:g}"],
                               timeout=a.duration + 120, env=env)
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"client failed ({r.returncode}):\n{r.stdout}")
        mib = res["bytes"] / MIB
        m = {"mibps": res["mib_per_s"], "errors": len(res["errors"]), "responses": res["responses"]}
        if res["errors"]:
            m["error_text"] = res["errors"][:2]
        per_unit(m, cpu, mib, "cpu_us_per_mib")
        return m, cpu

    def run_64m(self, target):
        return self.run_client(target, ["get", "--path", "/64m.bin"])

    def run_upload(self, target):
        # direct: straight to the sink (the proxies route /upload to it)
        return self.run_client(target, ["post", "--path", "/upload", "--size", str(64 * MIB)],
                               direct_port=self.ports["sink"])

    def run_idle(self, target):
        n = self.args.idle_conns
        if target != "direct":
            self.restart(target)  # a fresh process: earlier workloads' buffers stay out of the count
            pids = self.proxy_pids(target)
        else:
            pids = self.servers["origin"].pids()
        time.sleep(0.5)
        before = rss_bytes(pids)
        extra, env = ([], None) if "-tls" not in target else (["--tls"], self.tls_env())
        p = subprocess.Popen(["taskset", "-c", self.load_cpus(), sys.executable, CLIENT, "idle",
                              "--port", str(self.port(target)), "--n", str(n), *extra],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        try:
            ready, _, _ = select.select([p.stdout], [], [], 180)
            line = p.stdout.readline().strip() if ready else "timeout"
            if not line.startswith("ready"):
                raise RuntimeError(f"idle client: {line}")
            time.sleep(1.0)
            after = rss_bytes(pids)
            fds = sum(len(os.listdir(f"/proc/{q}/fd")) for q in pids if os.path.exists(f"/proc/{q}/fd"))
        finally:
            p.stdin.close()
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        m = {"rss_per_conn": (after - before) / n, "rss_before_kib": before / 1024,
             "rss_after_kib": after / 1024, "fds": fds}
        return m, {}

    # ------------------------------------------------------------------ TLS workloads
    # The target is "simian", "haproxy" or "nginx"; the process measured is the TLS one,
    # "<target>-tls" (ECDSA P-256) or "<target>-tls-rsa", on the same CPU as the plain one.

    def tls_env(self):
        """The environment of OpenSSL-based load generators: X25519 only (tls.py)."""
        return dict(os.environ, OPENSSL_CONF=self.client_conf)

    def hs_counts(self, name):
        return tls.simian_handshakes(self.port(name)) if name.startswith("simian") else None

    def add_hs_counts(self, name, m, before, conns):
        """simian's own count of the handshakes of a run: full, resumed, failed. A load
        generator that stops at the deadline leaves up to `conns` connections mid-handshake
        (simian logs "closed before a ClientHello" or a reset): more than that is an error."""
        after = self.hs_counts(name)
        if not (before and after):
            return
        m["hs_full"] = after["success"] - before["success"] - 1  # the read of `after` was one
        m["hs_resumed"] = after["resumed"] - before["resumed"]
        m["hs_failed"] = after["failure"] - before["failure"]
        if m["hs_failed"] > conns:
            m["errors"] = (m.get("errors") or 0) + m["hs_failed"]
            m["error_text"] = (m.get("error_text", "") + f" {m['hs_failed']} failed handshakes (simian; "
                               f"see {name}.log)").strip()

    def run_handshakes(self, name):
        """hey -disable-keepalive: every GET on a new connection, a full handshake each
        (Go's client keeps no session cache), closed-loop with --tls-clients workers."""
        a = self.args
        self.drain_timewait()
        before = self.hs_counts(name)
        argv = ["hey", "-z", f"{a.duration:g}s", "-c", str(a.tls_clients), "-cpus", str(self.cores),
                "-disable-keepalive", "-host", tls.SNI, f"https://127.0.0.1:{self.port(name)}/small"]
        r, cpu = self.measured(name, argv, timeout=a.duration + 60)
        res = tls.parse_hey(r.stdout)
        if r.returncode != 0 or not res["total_s"]:
            raise RuntimeError(f"hey failed ({r.returncode}):\n{r.stdout[-3000:]}")
        m = {"rps": res["ok"] / res["total_s"], "p50_us": res["p50_us"], "p99_us": res["p99_us"],
             "errors": res["errors"], "requests": res["ok"]}
        if res.get("error_text"):
            m["error_text"] = res["error_text"]
        self.per_handshake(m, cpu, res["ok"])
        self.add_hs_counts(name, m, before, a.tls_clients)
        return m, cpu

    @staticmethod
    def per_handshake(m, cpu, n):
        per_unit(m, cpu, n, "cpu_us_per_req")
        if n:
            m["load_us_per_req"] = cpu["load_cpu_s"] * 1e6 / n

    def run_tls_handshake(self, target):
        return self.run_handshakes(f"{target}-tls")

    def run_tls_handshake_rsa(self, target):
        return self.run_handshakes(f"{target}-tls-rsa")

    def run_tls_resume(self, target):
        """wrk with `Connection: close`: wrk keeps each connection's SSL object and session
        across reconnects, so after its first handshake each connection resumes (TLS 1.3
        ticket). simian's counters show the split; tls_info checks resumption on each."""
        name = f"{target}-tls"
        self.drain_timewait()
        before = self.hs_counts(name)
        res, cpu = self.wrk(name, "/small", 50, extra=("-H", "Connection: close"))
        m = {"rps": res["rps"], "p50_us": res["p50_us"], "p99_us": res["p99_us"],
             "errors": res["errors"], "requests": res["requests"]}
        if res.get("error_text"):
            m["error_text"] = res["error_text"]
        self.per_handshake(m, cpu, res["requests"])
        self.add_hs_counts(name, m, before, 50)
        return m, cpu

    def run_tls_ka_small(self, target):
        return self.run_small(f"{target}-tls")

    def run_tls_64m(self, target):
        return self.run_64m(f"{target}-tls")

    def run_tls_idle(self, target):
        return self.run_idle(f"{target}-tls")

    def collect_tls_info(self, targets):
        """Once per run: what each TLS proxy negotiates with the load generators' OpenSSL
        settings and with OpenSSL's defaults, and whether tickets resume."""
        for t in tls.TLS_TARGETS:
            for suffix in ("-tls", "-tls-rsa"):
                name = t + suffix
                if name not in self.servers or self.servers[name].proc is None:
                    continue
                port = self.port(name)
                self.tls_info[name] = {
                    "bench client (X25519 forced)": tls.s_client(port, self.client_conf),
                    "openssl s_client defaults": tls.s_client(port),
                    "TLS 1.3 ticket resumes": tls.resumption_check(port),
                }
                log(f"  {name}: {self.tls_info[name]['bench client (X25519 forced)']}; "
                    f"resumption: {self.tls_info[name]['TLS 1.3 ticket resumes']}")

    def warmup(self, targets, workloads=()):
        a = self.args
        for name in self.tls_servers(targets, workloads):  # keep-alive GETs, then resumptions
            for extra in ((), ("-H", "Connection: close")):
                subprocess.run(["taskset", "-c", self.load_cpus(), "wrk", "-t1", "-c50", f"-d{a.warmup:g}s",
                                *extra, f"https://127.0.0.1:{self.port(name)}/small"], env=self.tls_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not any(w in PLAIN_WORKLOADS for w in workloads):
            return
        for t in targets:
            url = f"http://127.0.0.1:{self.port(t)}/small"
            subprocess.run(["taskset", "-c", self.load_cpus(), "wrk", f"-t{self.cores}", "-c50",
                            f"-d{a.warmup:g}s", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["taskset", "-c", self.load_cpus(), "wrk", "-t1", "-c16", f"-d{min(a.warmup, 1):g}s",
                            f"http://127.0.0.1:{self.port(t)}/1m.bin"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def run_phase(self, cores, workloads, targets):
        a = self.args
        log(f"== {cores} core(s): starting servers")
        self.start_all(cores, targets, workloads)
        self.warmup(targets, workloads)
        if any(w in tls.TLS_WORKLOADS for w in workloads):
            self.collect_tls_info(targets)
        tls_targets = [t for t in tls.TLS_TARGETS if t in targets]
        results = {w: {t: [] for t in (tls_targets if w in tls.TLS_WORKLOADS else targets)} for w in workloads}
        for rep in range(a.runs):
            for w in workloads:
                for t in results[w]:
                    fn = getattr(self, "run_" + w.replace("-", "_"))
                    try:
                        m, cpu = fn(t)
                        m.update({k: v for k, v in cpu.items()})
                    except Exception as e:  # one failed run must not lose the others
                        log(f"  ! {w} {t}: {e}")
                        m = {"failed": str(e)[:2000]}
                    results[w][t].append(m)
                    log(f"  [{cores}c run {rep + 1}/{a.runs}] {w:6} {t:15} {brief(w, m)}")
                    if "-tls" in t or w in tls.TLS_WORKLOADS:
                        name = f"{t}-tls-rsa" if w == "tls-handshake-rsa" else f"{t}-tls"
                        s = self.servers.get(name)
                        if s and s.proc and s.proc.poll() is not None:
                            log(f"  ! {name} exited with {s.proc.returncode}: restarting it\n{tail(s.logpath)}")
                            self.restart(name)
                    time.sleep(a.pause)
        self.stop_all(keep_sink=True)
        return results

    def cleanup(self):
        self.stop_all()
        if self.args.keep_work:
            log(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# ---------------------------------------------------------------------------- wrk output

UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def dur_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * UNITS_S[m.group(2)] * 1e6


def parse_wrk(out):
    res = {"requests": None, "errors": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", out)
    if m:
        res["requests"] = int(m.group(1))
        res["duration_s"] = float(m.group(2)) * UNITS_S[m.group(3)]
        res["rps"] = res["requests"] / res["duration_s"]
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[key] = dur_us(m.group(1)) if m else None
    detail = []
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] += sum(int(x) for x in m.groups())
        detail += [f"{k} {v}" for k, v in zip(("connect", "read", "write", "timeout"), m.groups()) if v != "0"]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["errors"] += int(m.group(1))
        detail.append(f"non-2xx {m.group(1)}")
    if detail:
        res["error_text"] = ", ".join(detail)
    return res


def brief(w, m):
    if "failed" in m:
        return "FAILED " + m["failed"].splitlines()[0][:120]
    parts = []
    for k, f in (("rps", "{:.0f} req/s"), ("mibps", "{:.0f} MiB/s"), ("p99_us", "p99 {:.0f}us"),
                 ("cpu_us_per_req", "{:.1f} us CPU/req"), ("cpu_us_per_mib", "{:.0f} us CPU/MiB"),
                 ("rss_per_conn", "{:.0f} B/conn"), ("proxy_pct", "proxy {:.0f}%"), ("load_pct", "load {:.0f}%"),
                 ("other_pct", "other {:.0f}%"), ("errors", "errors {}"), ("error_text", "({})"),
                 ("load_us_per_req", "load {:.0f} us CPU/req"), ("hs_full", "simian: {} full"),
                 ("hs_resumed", "{} resumed"), ("hs_failed", "{} failed handshakes")):
        if m.get(k) is not None and not (k == "errors" and m[k] == 0):
            parts.append(f.format(m[k]))
    return ", ".join(parts)


# ---------------------------------------------------------------------------- tables

# (workload, label, key, better, fmt, target) ; target: (op, bound, against)
ROWS = [
    ("small", "req/s", "rps", "high", "int", (">=", 1.0, "best")),
    ("small", "p50 latency (µs)", "p50_us", "low", "int", None),
    ("small", "p99 latency (µs)", "p99_us", "low", "int", ("<=", 1.0, "best")),
    ("small", "proxy CPU per request (µs)", "cpu_us_per_req", "low", "f1", ("<=", 0.8, "best")),
    ("small", "… of which user space (µs)", "cpu_us_per_req_user", "low", "f1", None),
    ("small", "… of which kernel (µs)", "cpu_us_per_req_sys", "low", "f1", None),
    ("close", "sessions/s", "rps", "high", "int", None),
    ("close", "proxy CPU per session (µs)", "cpu_us_per_req", "low", "f1", ("<=", 0.9, "best")),
    ("close", "… of which user space (µs)", "cpu_us_per_req_user", "low", "f1", None),
    ("close", "… of which kernel (µs)", "cpu_us_per_req_sys", "low", "f1", None),
    ("1m", "MiB/s", "mibps", "high", "int", None),
    ("1m", "proxy CPU per MiB (µs)", "cpu_us_per_mib", "low", "int", None),
    ("64m", "MiB/s", "mibps", "high", "int", (">=", 1.0, "haproxy-splice")),
    ("64m", "proxy CPU per MiB (µs)", "cpu_us_per_mib", "low", "int", ("<=", 0.85, "haproxy-splice")),
    ("64m", "… of which user space (µs)", "cpu_us_per_mib_user", "low", "int", None),
    ("64m", "… of which kernel (µs)", "cpu_us_per_mib_sys", "low", "int", None),
    ("upload", "MiB/s", "mibps", "high", "int", None),
    ("upload", "proxy CPU per MiB (µs)", "cpu_us_per_mib", "low", "int", None),
    ("idle", "RSS growth per connection (B)", "rss_per_conn", "low", "int", ("<=", 0.5, "best")),
]
UTIL_KEYS = ("proxy_pct", "load_pct", "cpu0_pct", "cpu1_pct", "other_pct")


def median_of(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None and "failed" not in r]
    return statistics.median(vals) if vals else None


def fmt(v, how):
    if v is None:
        return "–"
    if how == "int":
        return f"{v:,.0f}"
    if how == "f1":
        return f"{v:,.1f}"
    return f"{v:.2f}"


def best_haproxy(meds, better):
    cands = [(meds.get(t), t) for t in ("haproxy", "haproxy-splice") if meds.get(t) is not None]
    if not cands:
        return None, None
    return (max if better == "high" else min)(cands)


def tables(results, cores, targets, runs):
    """Markdown: the main table and the CPU-use table. Also returns the target checks."""
    lines, checks = [], []
    cols = [t for t in TARGETS if t in targets]
    head = ["workload", "metric"] + cols + ["simian ÷ best HAProxy", "nginx ÷ best HAProxy", "issue 8 target (simian)"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(cols) + 2) + ["---"]) + "|")
    first_key = {}
    for (w, _, key, *_rest) in ROWS:
        first_key.setdefault(w, key)
    for (w, label, key, better, how, target) in ROWS:
        if w not in results:
            continue
        meds = {t: median_of(results[w][t], key) for t in cols}
        if all(v is None for v in meds.values()):
            continue
        bv, bt = best_haproxy(meds, better)
        cells = []
        for t in cols:
            c = fmt(meds[t], how)
            nerr = sum(1 for r in results[w][t] if r.get("errors") or "failed" in r)
            if nerr and key == first_key[w]:  # flagged once per workload, on its first row
                c += f" ({nerr}/{len(results[w][t])} runs with errors: see raw runs)"
            if t == bt and "haproxy" in cols and "haproxy-splice" in cols:
                c = f"**{c}**"
            cells.append(c)
        ratio = {}
        for t in ("simian", "nginx"):
            ratio[t] = meds.get(t) / bv if bv and meds.get(t) is not None else None
        tcell = ""
        if target and meds.get("simian") is not None:
            op, bound, against = target
            ref = bv if against == "best" else meds.get(against)
            if ref:
                r = meds["simian"] / ref
                ok = r >= bound if op == ">=" else r <= bound
                name = "best HAProxy" if against == "best" else against
                if cores == 2 and w == "small" and key != "rps":
                    tcell = ""  # on two cores issue 8 only sets the req/s target
                else:
                    tcell = f"{r:.2f} {op} {bound} × {name}: {'met' if ok else 'NOT met'}"
                    checks.append((cores, w, label, r, op, bound, name, ok))
            if w == "64m" and key == "mibps" and meds.get("direct"):
                r = meds["simian"] / meds["direct"]
                ok = r >= 0.95
                tcell += f"; {r:.2f} >= 0.95 × direct: {'met' if ok else 'NOT met'}"
                checks.append((cores, w, label, r, ">=", 0.95, "direct", ok))
        lines.append("| " + " | ".join([WORKLOAD_TITLES[w], label] + cells +
                                         [fmt(ratio["simian"], "r"), fmt(ratio["nginx"], "r"), tcell]) + " |")
    table1 = "\n".join(lines)

    table2 = cpu_use_table(results, cols, [w for w in results if w in PLAIN_WORKLOADS])
    return table1, table2, checks


def cpu_use_table(results, cols, workloads):
    """CPU use: proxy / load side / per-CPU busy / others, medians, % of one core."""
    lines = ["| workload | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for w in workloads:
        if w in ("idle", "tls-idle"):
            continue
        cells = []
        for t in cols:
            med = {k: median_of(results[w][t], k) for k in UTIL_KEYS}
            parts = []
            if med["proxy_pct"] is not None:
                parts.append(f"proxy {med['proxy_pct']:.0f}")
            if med["load_pct"] is not None:
                parts.append(f"load {med['load_pct']:.0f}")
            if med["cpu0_pct"] is not None:
                parts.append(f"cpu0 {med['cpu0_pct']:.0f}")
            if med["cpu1_pct"] is not None:
                parts.append(f"cpu1 {med['cpu1_pct']:.0f}")
            if med["other_pct"] is not None:
                parts.append(f"others {med['other_pct']:.0f}")
            cells.append(" · ".join(parts) if parts else "–")
        lines.append(f"| {WORKLOAD_TITLES[w]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def saturation_notes(results, cores, workloads=None):
    """A rule-of-thumb reading of what saturated, from the CPU medians."""
    notes = []
    for w in (workloads if workloads is not None else [w for w in results if w in PLAIN_WORKLOADS]):
        if w in ("idle", "tls-idle"):
            continue
        per = []
        for t in PROXIES:
            if t not in results[w]:
                continue
            pp = median_of(results[w][t], "proxy_pct")
            if pp is None:
                continue
            lp = median_of(results[w][t], "load_pct")
            c0 = median_of(results[w][t], "cpu0_pct")
            c1 = median_of(results[w][t], "cpu1_pct")
            if pp is None:
                continue
            if cores == 1:
                if pp >= 90:
                    what = "proxy core (CPU 1)"
                elif (c0 or 0) >= 90 and lp >= 70:
                    what = "CPU 0 (load generator + origin)"
                elif (c1 or 0) >= 90:
                    what = "CPU 1, shared with other processes"
                else:
                    what = "neither core (latency / wake-ups)"
            else:
                what = "both cores" if (c0 or 0) >= 90 and (c1 or 0) >= 90 else "not CPU-bound"
            per.append(f"{t}: {what} (proxy {pp:.0f}%, load {lp:.0f}%)")
        if per:
            notes.append(f"- {WORKLOAD_TITLES[w]}: " + "; ".join(per))
    return "\n".join(notes)


# (workload, label, key, better, fmt); every TLS figure is given as simian ÷ HAProxy and
# simian ÷ nginx (the same certificate, key exchange group and TLS 1.3 suite on all three)
TLS_ROWS = []
for _w, _what in (("tls-handshake", "full handshakes/s"), ("tls-handshake-rsa", "full handshakes/s"),
                  ("tls-resume", "resumed handshakes/s")):
    TLS_ROWS += [
        (_w, _what, "rps", "high", "int"),
        (_w, "p99 latency (µs)", "p99_us", "low", "int"),
        (_w, "proxy CPU per handshake (µs)", "cpu_us_per_req", "low", "f1"),
        (_w, "… of which user space (µs)", "cpu_us_per_req_user", "low", "f1"),
        (_w, "… of which kernel (µs)", "cpu_us_per_req_sys", "low", "f1"),
        (_w, "load side CPU per handshake (µs)", "load_us_per_req", "low", "int"),
    ]
TLS_ROWS += [
    ("tls-ka-small", "req/s", "rps", "high", "int"),
    ("tls-ka-small", "p50 latency (µs)", "p50_us", "low", "int"),
    ("tls-ka-small", "p99 latency (µs)", "p99_us", "low", "int"),
    ("tls-ka-small", "proxy CPU per request (µs)", "cpu_us_per_req", "low", "f1"),
    ("tls-ka-small", "… of which user space (µs)", "cpu_us_per_req_user", "low", "f1"),
    ("tls-ka-small", "… of which kernel (µs)", "cpu_us_per_req_sys", "low", "f1"),
    ("tls-64m", "MiB/s", "mibps", "high", "int"),
    ("tls-64m", "proxy CPU per MiB (µs)", "cpu_us_per_mib", "low", "int"),
    ("tls-64m", "… of which user space (µs)", "cpu_us_per_mib_user", "low", "int"),
    ("tls-64m", "… of which kernel (µs)", "cpu_us_per_mib_sys", "low", "int"),
    ("tls-idle", "RSS growth per connection (B)", "rss_per_conn", "low", "int"),
]


def tls_tables(results):
    """Markdown: the TLS figures with simian ÷ HAProxy and simian ÷ nginx, then the
    handshakes as simian counted them."""
    cols = [t for t in tls.TLS_TARGETS if any(t in results[w] for w in results if w in tls.TLS_WORKLOADS)]
    head = ["workload", "metric"] + cols + ["simian ÷ HAProxy", "simian ÷ nginx"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(cols) + 2)) + "|"]
    first_key = {}
    for (w, _, key, *_rest) in TLS_ROWS:
        first_key.setdefault(w, key)
    for (w, label, key, better, how) in TLS_ROWS:
        if w not in results:
            continue
        meds = {t: median_of(results[w].get(t, []), key) for t in cols}
        if all(v is None for v in meds.values()):
            continue
        cells = []
        for t in cols:
            c = fmt(meds[t], how)
            runs = results[w].get(t, [])
            nerr = sum(1 for r in runs if r.get("errors") or "failed" in r)
            if nerr and key == first_key[w]:
                c += f" ({nerr}/{len(runs)} runs with errors: see raw runs)"
            cells.append(c)
        ratios = [fmt(meds["simian"] / meds[o], "r") if meds.get("simian") is not None and meds.get(o) else "–"
                  for o in ("haproxy", "nginx")]
        lines.append("| " + " | ".join([WORKLOAD_TITLES[w], label] + cells + ratios) + " |")
    counts = []
    for w in results:
        runs = [r for r in results[w].get("simian", []) if "hs_full" in r]
        if w in tls.TLS_WORKLOADS and runs:
            per = "; ".join(f"{r['hs_full']:,} full, {r['hs_resumed']:,} resumed, {r['hs_failed']:,} failed"
                            for r in runs)
            counts.append(f"- {WORKLOAD_TITLES[w]}: {per} (run by run)")
    return "\n".join(lines), "\n".join(counts)


def tls_section(results, info, lib_lines, clients):
    t1, counts = tls_tables(results)
    wls = [w for w in results if w in tls.TLS_WORKLOADS]
    cols = [t for t in tls.TLS_TARGETS if any(t in results[w] for w in wls)]
    out = ["## TLS: the same layout, each proxy terminating TLS (one core)", "",
           "Every proxy has the same self-signed ECDSA P-256 certificate made at start (RSA-2048 for "
           "the RSA row), TLS 1.2 and 1.3 enabled, tickets on (their defaults; nginx also needs "
           "`ssl_protocols TLSv1.2 TLSv1.3`, as 1.22 stops at 1.2 by default), and the same origin as "
           "above over plain HTTP. No direct or spliced-HAProxy column: the origin speaks plain "
           "HTTP, and TLS records cannot be spliced.", "",
           "TLS libraries: **Debian's HAProxy and nginx link OpenSSL 3.0**, whose handshakes are "
           "known to be slower than 1.1.1's and 3.x later releases'; simian uses rustls with aws-lc-rs.", ""]
    out += [f"- {l}" for l in lib_lines] + [""]
    out += ["Load generators and key exchange:", "",
            f"- full handshakes: `hey -disable-keepalive -c {clients} -cpus 1 -host bench.test` (Go crypto/tls, "
            "no session cache: every GET is a new TCP connection and a full TLS 1.3 handshake; the "
            "client sends `Connection: close`). Go offers X25519, P-256, P-384, P-521 with an X25519 key "
            "share and no post-quantum group, so X25519 is what every proxy negotiates (rustls would "
            "prefer X25519MLKEM768, but no client here offers it).",
            "- resumed handshakes: `wrk -c50 -H 'Connection: close'` over https: wrk keeps each "
            "connection's OpenSSL session across reconnects, so after its first handshake each of the "
            "50 connections resumes with a TLS 1.3 ticket (psk_dhe_ke: an X25519 exchange, no "
            "certificate signature).",
            f"- keep-alive GETs: wrk; 64 MiB and idle: bench/client.py (Python ssl). wrk, client.py "
            f"and the probes below run with an OPENSSL_CONF offering only the {tls.GROUP} group and "
            f"only {tls.CIPHERSUITE} for TLS 1.3 (HAProxy picks its own suite order otherwise).", "",
            "What each proxy negotiated (openssl s_client -brief), and whether a ticket resumed "
            "(Python ssl, session_reused):", ""]
    for name, d in info.items():
        out.append(f"- {name}: " + "; ".join(f"{k}: {v}" for k, v in d.items()))
    out += ["", t1, ""]
    if counts:
        out += ["Handshakes as simian counted them (`simian_tls_handshakes_total`), which tells full "
                "from resumed. \"failed\" up to the number of client connections are the handshakes the "
                "load generator cut short when it stopped (simian logs \"closed before a ClientHello\"); "
                "more would be flagged as errors in the table:", "", counts, ""]
    if any(w != "tls-idle" for w in wls):
        out += ["CPU use during the TLS runs (medians, % of one core; load = hey / wrk / client.py + origin):",
                "", cpu_use_table(results, cols, wls), "",
                "What saturated (rule of thumb: ≥90% busy):", "", saturation_notes(results, 1, wls), ""]
    return out


# ---------------------------------------------------------------------------- main


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run of 3 s per figure (smoke test); prints only")
    p.add_argument("--runs", type=int, help="runs per figure (median), default 3 (1 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per run, default 8 (3 with --quick)")
    p.add_argument("--cores", default="1,2",
                   help="'1' (proxy alone on CPU 1), '2' (2 threads, everything on both CPUs; small GETs), "
                        "or '1,2' (default: both)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"subset of {','.join(WORKLOADS)}")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    p.add_argument("--idle-conns", type=int, default=5000)
    p.add_argument("--tls-clients", type=int, default=50, help="hey workers for the full-handshake workloads")
    p.add_argument("--simian-splice", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--nice", type=int, default=0,
                   help="niceness for everything the benchmark starts (e.g. -10 on a machine busy with "
                        "other work, so that the scheduler gives the measured processes most of their CPU)")
    p.add_argument("--port-base", type=int, default=27000, help="ports BASE+1..BASE+13, and from BASE+101 for restarts, are used")
    p.add_argument("--output", help="markdown file to write (default bench/RESULTS.md; none with --quick)")
    p.add_argument("--note", default="", help="a line printed at the top of the results (e.g. machine busy)")
    p.add_argument("--simian", help="simian binary (default: target/release/simian, built with cargo)")
    p.add_argument("--simian-desc", help="what --simian was built from (reported instead of the repo's git rev)")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install missing tools")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary directory (configs, logs)")
    a = p.parse_args()
    a.runs = a.runs or (1 if a.quick else 3)
    a.duration = a.duration or (3.0 if a.quick else 8.0)
    a.warmup = 0.5 if a.quick else 1.0
    a.pause = 0.3 if a.quick else 1.0
    if a.output is None and not a.quick:
        a.output = os.path.join(BENCH, "RESULTS.md")
    a.cores = [int(c) for c in a.cores.split(",")]
    a.workloads = [w for w in a.workloads.split(",") if w]
    a.targets = [t for t in TARGETS if t in a.targets.split(",")]
    for w in a.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w}")
    if os.cpu_count() < 2:
        p.error("needs 2 CPUs")
    return a


def main():
    args = parse_args()
    command = "python3 bench/run.py" + "".join(" " + shlex.quote(x) for x in sys.argv[1:])
    started = datetime.datetime.now(datetime.timezone.utc)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    ensure_packages(args)
    simian_bin = ensure_simian(args)
    tune_system()
    if args.nice:
        os.nice(args.nice)  # inherited by every server and load generator started from here
    ver = versions(simian_bin, args.simian_desc)
    if any(w in tls.TLS_WORKLOADS for w in args.workloads):
        ver["tls"] = tls.version_lines(which("haproxy"), which("nginx"), REPO)
    bench = Bench(args, simian_bin)
    all_results = {}
    try:
        for cores in args.cores:
            wls = args.workloads if cores == 1 else [w for w in args.workloads if w in WORKLOADS_2CORES]
            if not wls:
                continue
            all_results[cores] = bench.run_phase(cores, wls, args.targets)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping everything")
        bench.cleanup()
        sys.exit(130)
    finally:
        bench.cleanup()

    finished = datetime.datetime.now(datetime.timezone.utc)
    md = report(args, command, ver, started, finished, all_results, bench.tls_info)
    print(md)
    if args.output:
        with open(args.output, "w") as f:
            f.write(md)
        log(f"written to {args.output}")


def report(args, command, ver, started, finished, all_results, tls_info=None):
    out = ["# simian vs HAProxy vs nginx: benchmark results", ""]
    if args.note:
        out += [f"**{args.note}**", ""]
    out += [
        f"- Date: {started:%Y-%m-%d %H:%M} – {finished:%H:%M} UTC",
        f"- Command: `{command}`",
        f"- simian: {ver['simian']}",
        f"- {ver['haproxy']}",
        f"- {ver['nginx']}",
        f"- {ver['wrk']}",
        f"- Linux {ver['kernel']}, {os.cpu_count()} vCPUs, Python {ver['python']}",
        *([f"- Everything ran at niceness {args.nice} (`--nice`)."] if args.nice else []),
        f"- Each figure: median of {args.runs} run(s) of {args.duration:g} s; in each round every workload runs "
        f"through the targets in turn ({', '.join(args.targets)}), so noise is spread over all of them.",
        "- Targets: direct = straight to the origin (the ceiling); simian (`Threads` = cores, "
        f"`Splice {args.simian_splice}`); haproxy (`http-reuse always`, keep-alive both sides, no logs, `option forwardfor` + X-Forwarded-Proto as simian sends); "
        "haproxy-splice (same + `option splice-request`/`splice-response`, `maxpipes 500`); "
        "nginx (upstream keepalive 64, HTTP/1.1, X-Forwarded-For/-Proto set, `proxy_buffering off`, `proxy_request_buffering off`).",
        "- CPU per request / per MiB: utime+stime of the whole proxy process (all threads, io_uring workers "
        "included; nginx master + workers) from /proc/PID/stat, over the run, divided by the work done.",
        "- **Bold**: the better of the two HAProxy setups for that figure, which the ratios use.",
        "",
    ]
    for cores, all_res in all_results.items():
        results = {w: r for w, r in all_res.items() if w in PLAIN_WORKLOADS}
        if not results:
            continue
        t1, t2, checks = tables(results, cores, args.targets, args.runs)
        if cores == 1:
            out += ["## One core: proxy alone on CPU 1, wrk / client / origin nginx / upload sink on CPU 0", ""]
        else:
            out += ["## Two cores (`--cores 2`): 2 proxy threads/workers, 2 origin workers, `wrk -t2`, "
                    "all on CPUs 0-1", ""]
        out += [t1, "",
                "CPU use during the runs (medians, % of one core): proxy = the proxy process; load = wrk or "
                "client.py + origin nginx + upload sink; cpu0 / cpu1 = whole-CPU busy; others = everything "
                "else on the machine (other people's builds and tests).", "", t2, "",
                "What saturated (rule of thumb: ≥90% busy):", "", saturation_notes(results, cores), ""]
        if checks:
            met = sum(1 for c in checks if c[-1])
            out += [f"Issue 8 targets in this table: {met} of {len(checks)} met.", ""]
    tls_results = {w: r for w, r in all_results.get(1, {}).items() if w in tls.TLS_WORKLOADS}
    if tls_results:
        out += tls_section(tls_results, tls_info or {}, ver.get("tls", []), args.tls_clients)
    out += ["## Raw runs", "", "<details><summary>every run (JSON)</summary>", "", "```json"]
    raw = {}
    for cores, results in all_results.items():
        raw[f"{cores}core"] = {w: {t: [{k: (round(v, 2) if isinstance(v, float) else v)
                                        for k, v in r.items() if k != "raw"} for r in runs]
                                   for t, runs in ts.items()} for w, ts in results.items()}
    out += [json.dumps(raw, indent=1, ensure_ascii=False), "```", "", "</details>", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
