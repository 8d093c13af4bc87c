#!/usr/bin/env python3
"""Side-by-side echo-server benchmark: sockserv against the usual references.

One command builds everything (sockserv in release, the peer servers in
bench/peers/), then for each scenario runs every server in turn, round after
round, with `sockserv bench --json` as the client, and reports medians:

    python3 bench/run.py                 # the full run (about 12 minutes)
    python3 bench/run.py --quick         # a smoke run (about 1 minute)
    python3 bench/run.py --servers tokio-echo,epoll,python --scenarios pp100

Why it is built this way (see bench/README.md for the details):

- The client and the server share this machine's cores, so one figure alone
  means little; servers alternate within each round (A B C, A B C, ...) so
  slow drifts of the machine hit all of them alike, and the medians of the
  rounds are compared, as ratios to tokio and to a minimal C server.
- The server's own CPU time (utime + stime from /proc/PID/stat, read just
  before and after the client runs) divided by the replies it sent is the
  cost per message; on a shared machine it is steadier than throughput,
  which the client's own cost caps.
- Every server is stopped, whatever happens (try/finally), and everything
  listens and connects on 127.0.0.1 only.

Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import re
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.path.join(ROOT, "bench", "peers")
OUT_DIR = os.path.join(ROOT, "target", "bench-peers")
SOCKSERV = os.path.join(ROOT, "target", "release", "sockserv")
DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Scenarios (the rows) and servers.


class Scenario:
    def __init__(self, key, title, kind, bench_args, tokio, floor):
        self.key = key  # name on the command line
        self.title = title  # name in the table
        self.kind = kind  # tcp, line, idle, udp or churn: which servers can take part
        self.bench_args = bench_args  # extra `sockserv bench` arguments
        self.tokio = tokio  # the server ratios are taken against
        self.floor = floor  # the C floor


def scenarios(idle_connections):
    return [
        Scenario("pp1", "ping-pong 64 B, 1 conn", "tcp", ["-c", "1"], "tokio-echo", "epoll"),
        Scenario("pp100", "ping-pong 64 B, 100 conns", "tcp", ["-c", "100"], "tokio-echo", "epoll"),
        Scenario("pp1000", "ping-pong 64 B, 1000 conns", "tcp", ["-c", "1000"], "tokio-echo", "epoll"),
        Scenario(
            "line32",
            "line echo, pipeline 32, 100 conns",
            "line",
            ["-c", "100", "--pipeline", "32", "--framing", "line"],
            "framed-lines",
            "epoll",
        ),
        Scenario(
            "idle",
            "%s mostly idle conns" % format(idle_connections, ","),
            "idle",
            # One request per connection per second: connections stay open
            # and each has seen traffic (so servers have set up whatever
            # they keep per connection), but they are idle nearly always.
            ["-c", str(idle_connections), "--rate", str(idle_connections)],
            "tokio-echo",
            "epoll",
        ),
        Scenario("udp", "UDP echo 64 B, 50 sockets", "udp", ["-c", "50"], "tokio-udp-echo", "c-udp"),
        Scenario(
            "churn",
            "connection churn, 64 B line, 50 clients",
            "churn",
            # Each client: connect, one 64-byte line, the reply, close. What
            # a server pays per connection (accept, setup, teardown) rather
            # than per message.
            ["--churn", "-c", "50"],
            "tokio-echo",
            "epoll",
        ),
    ]


class Server:
    def __init__(self, name, label, kinds, argv):
        self.name = name
        self.label = label
        self.kinds = kinds
        self._argv = argv  # function(scenario) -> argv list

    def argv(self, scenario):
        return self._argv(scenario)


def servers(modes, sockserv_extra, baseline=None):
    out = []
    if baseline:
        # An earlier sockserv build, side by side in the same run ("before").
        def baseline_argv(sc):
            scheme = "udp" if sc.kind == "udp" else "tcp"
            argv = [baseline, "serve", "--handler", "echo", "--mode", "async", "--nodelay"]
            if sc.kind == "line":
                argv += ["--framing", "line"]
            return argv + ["%s://%s:0" % (scheme, HOST)]

        out.append(Server("sockserv-before", "sockserv before (--baseline)", {"tcp", "line", "idle", "udp", "churn"}, baseline_argv))
    for mode in modes:

        def sockserv_argv(sc, mode=mode):
            scheme = "udp" if sc.kind == "udp" else "tcp"
            # "async:1" means --mode async --workers 1; "async+admin" also
            # serves the admin endpoint (and the harness scrapes it).
            spec, admin, _ = mode.partition("+admin")
            name, _, workers = spec.partition(":")
            argv = [SOCKSERV, "serve", "--handler", "echo", "--mode", name] + sockserv_extra
            if admin:
                argv += ["--admin", HOST + ":0"]
            if workers:
                argv += ["--workers", workers]
            if sc.kind == "line":
                argv += ["--framing", "line"]
            return argv + ["%s://%s:0" % (scheme, HOST)]

        out.append(Server("sockserv-" + mode, "sockserv %s" % mode, {"tcp", "line", "idle", "udp", "churn"}, sockserv_argv))
    bin_ = lambda name: os.path.join(OUT_DIR, "release", name)  # noqa: E731
    out += [
        Server("tokio-echo", "tokio echo example", {"tcp", "line", "idle", "churn"}, lambda sc: [bin_("tokio-echo"), HOST + ":0"]),
        Server("framed-lines", "tokio-util Framed<LinesCodec>", {"line"}, lambda sc: [bin_("framed-lines"), HOST + ":0"]),
        Server("tokio-udp-echo", "tokio UdpSocket loop", {"udp"}, lambda sc: [bin_("tokio-udp-echo"), HOST + ":0"]),
        Server("epoll", "C epoll, 1 thread", {"tcp", "line", "idle", "churn"}, lambda sc: [os.path.join(OUT_DIR, "epoll_echo"), HOST, "0"]),
        Server("c-udp", "C recvfrom/sendto", {"udp"}, lambda sc: [os.path.join(OUT_DIR, "udp_echo"), HOST, "0"]),
        Server("go", "Go net, goroutine per conn", {"tcp", "line", "idle", "churn"}, lambda sc: [os.path.join(OUT_DIR, "echo-go"), HOST, "0"]),
        Server(
            "python",
            "Python ThreadingTCPServer",
            {"tcp", "line", "idle", "churn"},
            lambda sc: [sys.executable, os.path.join(PEERS, "threading_echo.py"), HOST, "0"],
        ),
    ]
    return out


# ---------------------------------------------------------------------------
# Building.


def run_cmd(argv, what, timeout=1800, env=None, cwd=ROOT):
    """Runs a build step; returns True on success, logs the tail otherwise."""
    log("+ " + " ".join(shlex.quote(a) for a in argv))
    try:
        r = subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        log("warning: %s failed: %s" % (what, e))
        return False
    if r.returncode != 0:
        log("warning: %s failed (exit %d):\n%s" % (what, r.returncode, "\n".join(r.stdout.splitlines()[-15:])))
        return False
    return True


def find_go():
    for cand in (shutil.which("go"), "/usr/lib/go/bin/go"):
        if cand and os.path.exists(cand):
            return cand
    return None


def ensure_go():
    """Go is not part of the Rust machine: install Debian's golang-go."""
    go = find_go()
    if go:
        return go
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("warning: go is not installed and cannot be installed here (not root or no apt-get)")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "golang-go"]
    if not run_cmd(install, "apt-get install golang-go", timeout=900, env=env):
        run_cmd(["apt-get", "update", "-q"], "apt-get update", timeout=600, env=env)
        run_cmd(install, "apt-get install golang-go", timeout=900, env=env)
    return find_go()


def build(wanted):
    """Builds sockserv and the peers the run needs. Returns the set of
    server names that could not be built."""
    os.makedirs(OUT_DIR, exist_ok=True)
    failed = set()
    if not run_cmd(["cargo", "build", "--release", "-p", "sockserv-cli", "--bin", "sockserv"], "building sockserv"):
        sys.exit("bench/run.py: sockserv does not build; it is the client of every run")
    if wanted & {"tokio-echo", "framed-lines", "tokio-udp-echo"}:
        manifest = os.path.join(PEERS, "tokio-echo", "Cargo.toml")
        if not run_cmd(["cargo", "build", "--release", "--manifest-path", manifest, "--target-dir", OUT_DIR], "building the tokio peers"):
            failed |= {"tokio-echo", "framed-lines", "tokio-udp-echo"}
    for name, src, out in (("epoll", "epoll_echo.c", "epoll_echo"), ("c-udp", "udp_echo.c", "udp_echo")):
        if name in wanted:
            cc = shutil.which("gcc") or shutil.which("cc")
            if not cc or not run_cmd([cc, "-O2", "-o", os.path.join(OUT_DIR, out), os.path.join(PEERS, src)], "building " + src):
                failed.add(name)
    if "go" in wanted:
        go = ensure_go()
        env = dict(
            os.environ,
            GOCACHE=os.path.join(OUT_DIR, "go-cache"),
            GOPATH=os.path.join(OUT_DIR, "go-path"),
            GOTOOLCHAIN="local",
        )
        if not go or not run_cmd([go, "build", "-o", os.path.join(OUT_DIR, "echo-go"), os.path.join(PEERS, "echo.go")], "building echo.go", env=env):
            log("warning: skipping the Go server")
            failed.add("go")
    return failed


# ---------------------------------------------------------------------------
# Running one server and one client.

LISTENING = re.compile(r"listening\s+(?:[a-z-]+://)?(\[[^\]]*\]|[^\s:]+):(\d+)")


class Running:
    """A started server: its process and the address it listens on."""

    def __init__(self, argv, log_file):
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file)
        self.port = None
        self.scraping = None
        self._buf = b""
        try:
            deadline = time.monotonic() + 20
            line = self._line(deadline)
            m = LISTENING.search(line)
            if not m:
                raise RuntimeError("no 'listening ADDR' line from %s (got %r)" % (argv[0], line))
            self.port = int(m.group(2))
            if "--admin" in argv:
                # The admin endpoint's cost is measured with a scraper
                # polling it, as a Prometheus server would (every second).
                while True:
                    line = self._line(deadline)
                    if line.startswith("admin "):
                        break
                self.scraping = threading.Event()
                threading.Thread(target=self._scrape, args=(line.split()[1], self.scraping), daemon=True).start()
        except BaseException:
            # Not yet handed to the caller, so its finally cannot stop it.
            self.stop()
            raise

    def _scrape(self, url, stop):
        while not stop.wait(1.0):
            for path in ("/metrics", "/api/connections?limit=500"):
                try:
                    urllib.request.urlopen(url + path, timeout=2).read()
                except OSError:
                    pass

    def _line(self, deadline):
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("server did not start within 20 s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError("server exited before listening (exit %s)" % self.proc.wait())
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.scraping is not None:
            self.scraping.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout:
            self.proc.stdout.close()


def run_client(args, deadline_s, sample=None):
    """Runs `sockserv bench --json ARGS`; returns the parsed report. While it
    runs, calls `sample()` every 100 ms (used for the RSS of idle runs)."""
    argv = [SOCKSERV, "bench", "--json", "--no-progress"] + args
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + deadline_s
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("client ran past its %d s deadline" % deadline_s)
            if sample:
                sample()
            time.sleep(0.1)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode not in (0, 1) or not out.strip():
        raise RuntimeError("client failed (exit %d): %s" % (proc.returncode, err.strip()[-300:]))
    return json.loads(out)


def one_run(server, scenario, seconds, logf):
    """Starts `server`, loads it as `scenario` says, stops it. Returns a dict
    of figures, or one with an "error" key."""
    result = {"server": server.name, "scenario": scenario.key}
    running = None
    try:
        running = Running(server.argv(scenario), logf)
        scheme = "udp" if scenario.kind == "udp" else "tcp"
        addr = "%s://%s:%d" % (scheme, HOST, running.port)
        args = ["-d", "%gs" % seconds] + scenario.bench_args + [addr]
        if scenario.kind == "idle":
            time.sleep(0.3)  # let the runtime settle before the baseline
            base = running.rss_kib()
            peak = [base]

            def sample():
                try:
                    peak[0] = max(peak[0], running.rss_kib())
                except OSError:
                    pass

            report = run_client(args, seconds + 120, sample)
            sample()
            held = max(report["connected"], 1)
            result.update(base_kib=base, peak_kib=peak[0], per_conn_kib=(peak[0] - base) / held)
        elif scenario.kind == "churn":
            # The server's CPU over the whole client run, divided by every
            # connection the client opened in it (also those answered in
            # the grace after the measured window, which the CPU covers).
            cpu0 = running.cpu_seconds()
            report = run_client(args, seconds + 60)
            cpu1 = running.cpu_seconds()
            conns = max(report["connected"], 1)
            result["cpu_us_per_conn"] = (cpu1 - cpu0) / conns * 1e6
        else:
            cpu0 = running.cpu_seconds()
            report = run_client(args, seconds + 60)
            cpu1 = running.cpu_seconds()
            replies = max(report["requests"], 1)
            result["cpu_us_per_msg"] = (cpu1 - cpu0) / replies * 1e6
        lat = report.get("latency_us") or {}
        result.update(
            rps=report["rps"],
            requests=report["requests"],
            connected=report["connected"],
            errors=report["errors"]["total"],
            error_samples=report.get("error_samples", {}),
            p50_us=lat.get("p50"),
            p99_us=lat.get("p99"),
        )
    except Exception as e:  # noqa: BLE001 - one failed run must not end the benchmark
        result["error"] = str(e)
        log("  %s / %s: %s" % (server.name, scenario.key, e))
    finally:
        if running is not None:
            running.stop()
    return result


# ---------------------------------------------------------------------------
# Summaries and the report.


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(results):
    """Medians per (scenario, server)."""
    out = {}
    for r in results:
        out.setdefault((r["scenario"], r["server"]), []).append(r)
    summary = {}
    for key, runs in out.items():
        ok = [r for r in runs if "error" not in r]
        s = {"runs": len(runs), "failed": len(runs) - len(ok)}
        if not ok:
            s["error"] = runs[0].get("error", "failed")
        for field in ("rps", "cpu_us_per_msg", "cpu_us_per_conn", "p50_us", "p99_us", "per_conn_kib", "base_kib", "connected"):
            s[field] = median([r.get(field) for r in ok])
        s["errors"] = sum(r.get("errors", 0) for r in ok)
        samples = [m for r in ok for m in r.get("error_samples", {}).values()]
        s["error_sample"] = samples[0] if samples else None
        summary[key] = s
    return summary


def fmt_rate(v):
    if v is None:
        return "—"
    return "%.1fk" % (v / 1000) if v >= 1000 else "%.0f" % v


def fmt_us(v):
    if v is None:
        return "—"
    if v >= 10000:
        return "%.1f ms" % (v / 1000)
    if v >= 100:
        return "%.0f µs" % v
    return "%.1f µs" % v if v >= 10 else "%.2f µs" % v


def ratio(v, ref, floor=0.0):
    """v / ref as "1.23×"; a dash when there is no reference, or when it is
    under `floor` (a ratio to almost nothing says nothing)."""
    if v is None or not ref or ref < floor:
        return "—"
    return "%.2f×" % (v / ref)


def tables(summary, scen_list, server_list):
    names = {s.name: s.label for s in server_list}
    lines = [
        "| scenario | server | msgs/s | vs tokio | vs C | CPU/msg | vs tokio | vs C | p50 | p99 | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    idle = []
    churn = []
    for sc in scen_list:
        rows = [(srv, summary.get((sc.key, srv.name))) for srv in server_list]
        rows = [(srv, s) for srv, s in rows if s]
        if not rows:
            continue
        tok = summary.get((sc.key, sc.tokio), {})
        floor = summary.get((sc.key, sc.floor), {})
        for srv, s in rows:
            if "error" in s:
                failed = "failed: " + s["error"].replace("|", "/")[:80]
                if sc.kind == "churn":
                    churn.append("| " + " | ".join([names[srv.name], failed] + [""] * 7) + " |")
                    continue
                cells = [sc.title, names[srv.name], failed] + [""] * 8
                (idle if sc.kind == "idle" else lines).append("| " + " | ".join(cells) + " |")
                continue
            errs = str(s["errors"]) if s["errors"] else "0"
            if s["failed"]:
                errs += " (%d run%s failed)" % (s["failed"], "" if s["failed"] == 1 else "s")
            if sc.kind == "churn":
                churn.append(
                    "| %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                    % (
                        names[srv.name],
                        fmt_rate(s["rps"]),
                        ratio(s["rps"], tok.get("rps")),
                        ratio(s["rps"], floor.get("rps")),
                        fmt_us(s["cpu_us_per_conn"]),
                        ratio(s["cpu_us_per_conn"], tok.get("cpu_us_per_conn")),
                        ratio(s["cpu_us_per_conn"], floor.get("cpu_us_per_conn")),
                        fmt_us(s["p99_us"]),
                        errs,
                    )
                )
                continue
            if sc.kind == "idle":
                idle.append(
                    "| %s | %s | %s | %.1f MiB | %.1f KiB | %s | %s | %s |"
                    % (
                        names[srv.name],
                        format(int(s["connected"] or 0), ","),
                        fmt_rate(s["rps"]),
                        (s["base_kib"] or 0) / 1024,
                        s["per_conn_kib"] or 0,
                        ratio(s["per_conn_kib"], tok.get("per_conn_kib"), 0.5),
                        ratio(s["per_conn_kib"], floor.get("per_conn_kib"), 0.5),
                        errs,
                    )
                )
                continue
            lines.append(
                "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |"
                % (
                    sc.title,
                    names[srv.name],
                    fmt_rate(s["rps"]),
                    ratio(s["rps"], tok.get("rps")),
                    ratio(s["rps"], floor.get("rps")),
                    fmt_us(s["cpu_us_per_msg"]),
                    ratio(s["cpu_us_per_msg"], tok.get("cpu_us_per_msg")),
                    ratio(s["cpu_us_per_msg"], floor.get("cpu_us_per_msg")),
                    fmt_us(s["p50_us"]),
                    fmt_us(s["p99_us"]),
                    errs,
                )
            )
    # Each table only when it has rows (the main one also when nothing at
    # all does, so that an empty run still shows its header).
    sections = ["\n".join(lines)] if len(lines) > 2 or not (idle or churn) else []
    if idle:
        sections.append(
            "| server (idle connections) | held | msgs/s | idle RSS | RSS per conn | vs tokio | vs C | errors |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(idle)
        )
    if churn:
        sections.append(
            "| server (connection churn, 50 clients) | conns/s | vs tokio | vs C | CPU/conn | vs tokio | vs C | p99 | errors |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(churn)
        )
    return "\n\n".join(sections)


def machine():
    def sh(argv):
        try:
            return subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    rev = sh(["git", "-C", ROOT, "describe", "--always", "--dirty"]) or "no commit"
    return {"uname": sh(["uname", "-a"]), "nproc": sh(["nproc"]), "cpu": cpu, "git": rev}


def render(summary, scen_list, server_list, opts, started, elapsed, command):
    m = machine()
    notes = []
    for sc in scen_list:
        for srv in server_list:
            s = summary.get((sc.key, srv.name))
            if s and s.get("error_sample"):
                notes.append("- %s / %s: %s" % (sc.title, srv.label, s["error_sample"]))
    return "\n".join(
        [
            "Run on %s (%.0f s) with:" % (started.strftime("%Y-%m-%d %H:%M UTC"), elapsed),
            "",
            "    " + command,
            "",
            "- machine: `%s`" % m["uname"],
            "- CPUs: %s (`nproc`), %s" % (m["nproc"], m["cpu"]),
            "- sockserv: %s; client `sockserv bench` (one tokio thread) on the same cores as the server"
            % m["git"],
            "- %d round%s of %g s per server and scenario, servers alternating within each round; medians"
            % (opts.rounds, "" if opts.rounds == 1 else "s", opts.seconds),
            "- msgs/s: verified echoes per second; CPU/msg: server user+system CPU time over the run ÷ replies;"
            " CPU/conn (churn): the same ÷ connections opened;"
            " vs tokio / vs C: ratio to the tokio reference and to the C floor of the same scenario"
            " (msgs/s: higher is better; CPU/msg and RSS: lower is better)",
            "",
            tables(summary, scen_list, server_list),
        ]
        + (["", "First error seen per server:", ""] + notes if notes else [])
    )


def write_doc(path, body):
    """Replaces the text between the markers; creates the file if missing and
    leaves everything outside the markers as it was."""
    block = "%s\n%s\n%s" % (BEGIN, body, END)
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
            text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        text = (
            "# Benchmarks\n\n"
            "Echo servers side by side, measured by `bench/run.py` on one machine in one run\n"
            "(see `bench/README.md` for what each scenario and column means). Absolute figures\n"
            "vary from machine to machine; compare the ratios within one run.\n\n"
            "The section between the markers below is rewritten by every run of the harness;\n"
            "the rest of this file is left alone.\n\n" + block + "\n"
        )
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description="Benchmark sockserv's echo server against tokio, C, Go and Python echo servers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios: pp1 pp100 pp1000 line32 idle udp churn\n"
        "servers: sockserv-MODE (one per --sockserv-modes) tokio-echo framed-lines tokio-udp-echo epoll c-udp go python\n"
        "  ('sockserv' selects every sockserv mode)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    ap.add_argument("--seconds", type=float, default=5, help="seconds of load per run (default 5)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s, 1,000 idle connections")
    ap.add_argument(
        "--sockserv-modes",
        default="async,threads",
        help="sockserv serve --mode values, MODE or MODE:WORKERS (default async,threads)",
    )
    ap.add_argument(
        "--baseline",
        metavar="BIN",
        help="an earlier sockserv binary to run beside this one as server sockserv-before "
        "(--mode async), for before/after figures from one run",
    )
    ap.add_argument("--servers", help="comma-separated servers to run (default: all)")
    ap.add_argument("--scenarios", help="comma-separated scenarios to run (default: all)")
    ap.add_argument("--idle-connections", type=int, default=10000, help="connections held in the idle scenario (default 10000)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--no-write", action="store_true", help="print the table only; leave docs/BENCHMARKS.md alone")
    ap.add_argument("--doc", default=DOC, help="file to write the results into (default docs/BENCHMARKS.md)")
    ap.add_argument("--raw", help="also write every run's figures to this JSON file")
    opts = ap.parse_args()
    if opts.quick:
        opts.rounds, opts.seconds = 1, 1
        if opts.idle_connections == 10000:
            opts.idle_connections = 1000
    if opts.rounds < 1 or opts.seconds <= 0:
        ap.error("--rounds and --seconds must be positive")

    command = "python3 bench/run.py" + "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    modes = [m for m in opts.sockserv_modes.split(",") if m]
    scen_list = scenarios(opts.idle_connections)
    if opts.scenarios:
        keys = opts.scenarios.split(",")
        unknown = set(keys) - {s.key for s in scen_list}
        if unknown:
            ap.error("unknown scenario(s): %s" % ", ".join(sorted(unknown)))
        scen_list = [s for s in scen_list if s.key in keys]

    # sockserv serve leaves TCP_NODELAY off unless asked; every peer sets
    # it, so ask (when this build has the option).
    sockserv_extra = []
    server_list = servers(modes, sockserv_extra, opts.baseline)
    if opts.servers:
        keys = set(opts.servers.split(","))
        if "sockserv" in keys:
            keys |= {"sockserv-" + m for m in modes}
        unknown = keys - {s.name for s in server_list} - {"sockserv"}
        if unknown:
            ap.error("unknown server(s): %s" % ", ".join(sorted(unknown)))
        server_list = [s for s in server_list if s.name in keys]
    wanted = {s.name for s in server_list}
    kinds = {sc.kind for sc in scen_list}
    server_list = [s for s in server_list if s.kinds & kinds]

    # Thousands of connections: the servers inherit this limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    if not opts.no_build:
        failed = build(wanted)
        server_list = [s for s in server_list if s.name not in failed]
    if not os.path.exists(SOCKSERV):
        sys.exit("bench/run.py: %s is missing (build it, or drop --no-build)" % SOCKSERV)
    try:
        help_text = subprocess.run([SOCKSERV, "serve", "--help"], stdout=subprocess.PIPE, text=True, timeout=10).stdout
        if "--nodelay" in help_text:
            sockserv_extra.append("--nodelay")
    except (OSError, subprocess.TimeoutExpired):
        pass

    log_path = os.path.join(OUT_DIR, "servers.log")
    os.makedirs(OUT_DIR, exist_ok=True)
    results = []
    with open(log_path, "w") as logf:
        for sc in scen_list:
            members = [s for s in server_list if sc.kind in s.kinds]
            if not members:
                continue
            for rnd in range(opts.rounds):
                for srv in members:
                    log("[%s] round %d/%d: %s" % (sc.key, rnd + 1, opts.rounds, srv.name))
                    logf.write("=== %s %s round %d\n" % (sc.key, srv.name, rnd + 1))
                    logf.flush()
                    seconds = opts.seconds if sc.kind != "idle" else max(2.0, min(opts.seconds, 3.0))
                    results.append(one_run(srv, sc, seconds, logf))

    elapsed = time.monotonic() - t0
    summary = summarize(results)
    body = render(summary, scen_list, server_list, opts, started, elapsed, command)
    print(body)
    if opts.raw:
        with open(opts.raw, "w") as f:
            json.dump(results, f, indent=1)
    if not opts.no_write:
        write_doc(opts.doc, body)
        log("wrote %s" % os.path.relpath(opts.doc, ROOT))
    log("servers' output: %s; total %.0f s" % (os.path.relpath(log_path, ROOT), elapsed))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
