#!/usr/bin/env bash
# scripts/soak.sh — a long run of mixed, partly hostile load against release
# builds of `sockserv serve`, sampling the servers' memory and descriptors.
#
# NOT run in CI. It takes SOAK_MINUTES (default 30) minutes and prints a
# table: one row at the start, one per minute, one at the end, then a
# summary (growth of RSS and descriptors, errors, graceful stop).
#
#   scripts/soak.sh                       # 30 minutes
#   SOAK_MINUTES=3 scripts/soak.sh        # a short run
#   SOAK_MODE=threads scripts/soak.sh     # the thread-per-connection strategy
#
# Two servers run (echo, line framing, mode SOAK_MODE):
#
#   A  the main server: --max-conns SOAK_MAX_CONNS (over-limit wait),
#      --read-timeout 5s, --write-timeout 5s, --max-frame 65536
#      (oversized lines close the connection), backlog 4096;
#   B  the same server under `prlimit --nofile=SOAK_NOFILE` (default 256),
#      no connection limit: the target of the descriptor-exhaustion bursts,
#      restarted gracefully (SIGTERM, same port) every SOAK_RESTART_EVERY
#      minutes (default 10; 0 = never).
#
# Load, every minute (offsets within the minute):
#
#   +0   `sockserv bench` ping-pong (10 connections, pipeline 1) and
#        pipelined (10 connections, pipeline 16) on A, ping-pong (4) on B,
#        45 s each — latency p99, requests/s and errors per minute;
#   +5   20 clients each send one 1 MiB line to A (over --max-frame): each
#        must be closed, and a normal request afterwards answered;
#   +10  2 non-readers write 64-byte lines to A and read nothing: how much
#        A takes before it stops reading, and when it cuts them
#        (--write-timeout 5s);
#   +20  a flood of SOAK_FLOOD (default 3000) connects to A, held 5 s: how
#        many are served at once (at most --max-conns minus the others);
#   +30  a burst of SOAK_BURST (default 600) connections to B, held 5 s
#        (B runs out of descriptors), then closed: time until B serves a
#        new client again;
#
# and all the time SOAK_SLOWLORIS (default 300) slowloris connections on A,
# each sending one byte a second of a line that never ends (reconnecting
# when A closes one).
#
# Columns of the table: A and B resident memory (MiB), open descriptors,
# threads and CPU (% of one core over the minute); ping-pong p99 (ms) and
# requests/s on A; pipelined requests/s on A; bench errors (A and B);
# slowloris connections open / closed by A so far; non-readers cut (of 2)
# and after how long; oversized lines closed (of 20); flood clients served
# (of SOAK_FLOOD); burst: served, seconds until B served again.
#
# Environment: SOAK_MINUTES, SOAK_MODE (async|threads|pool|sequential),
# SOAK_MAX_CONNS (1000), SOAK_NOFILE (256), SOAK_SLOWLORIS (300),
# SOAK_FLOOD (3000), SOAK_BURST (600), SOAK_RESTART_EVERY (10),
# SOCKSERV_BIN (default target/release/sockserv, built first unless
# SOAK_BUILD=0), SOAK_OUT (where logs and JSON go; default target/soak-DATE).
#
# Needs: Linux (/proc), python3, prlimit (util-linux). It stops by itself
# and kills every process it started, also on Ctrl-C.

set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_MINUTES=${SOAK_MINUTES:-30}
SOAK_MODE=${SOAK_MODE:-async}
SOAK_MAX_CONNS=${SOAK_MAX_CONNS:-1000}
SOAK_NOFILE=${SOAK_NOFILE:-256}
SOAK_SLOWLORIS=${SOAK_SLOWLORIS:-300}
SOAK_FLOOD=${SOAK_FLOOD:-3000}
SOAK_BURST=${SOAK_BURST:-600}
SOAK_RESTART_EVERY=${SOAK_RESTART_EVERY:-10}
SOAK_BUILD=${SOAK_BUILD:-1}
BIN=${SOCKSERV_BIN:-target/release/sockserv}
OUT=${SOAK_OUT:-target/soak-$(date +%Y%m%d-%H%M%S)}

for tool in python3 prlimit; do
  command -v "$tool" >/dev/null || { echo "soak: needs $tool" >&2; exit 2; }
done
if [ "$SOAK_BUILD" = 1 ] && [ -z "${SOCKSERV_BIN:-}" ]; then
  echo "soak: cargo build --release" >&2
  cargo build --release --quiet
fi
[ -x "$BIN" ] || { echo "soak: no binary at $BIN" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
HELPER="$OUT/soak_clients.py"

# Many sockets on the client side (floods, slowloris).
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then hard=65536; fi
ulimit -n "$hard"

# ---------------------------------------------------------------------------
# Cleanup: every background job of this shell (servers, benches, helpers).

A_PID=""
B_PID=""
cleanup() {
  local pids
  pids=$(jobs -pr)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 50); do
      [ -z "$(jobs -pr)" ] && break
      sleep 0.1
    done
    pids=$(jobs -pr)
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  fi
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------------------
# The client side, in Python (stdlib only).

cat >"$HELPER" <<'PY'
import errno, json, os, select, socket, sys, time

def proc(pid):
    d = {"t": time.time(), "pid": pid}
    try:
        with open(f"/proc/{pid}/status") as f:
            for l in f:
                if l.startswith("VmRSS:"):
                    d["rss_kib"] = int(l.split()[1])
                elif l.startswith("Threads:"):
                    d["threads"] = int(l.split()[1])
        d["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
        d["cpu_s"] = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        d["dead"] = True
    return d

def ping(host, port, timeout=2.0):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"soak-ping\n")
            got = b""
            while not got.endswith(b"\n"):
                d = s.recv(100)
                if not d:
                    return False
                got += d
            return got == b"soak-ping\n"
    except OSError:
        return False

def out(obj):
    print(json.dumps(obj), flush=True)

def slowloris(host, port, n, seconds, status_file):
    """n connections, one byte a second each, of a line that never ends.
    A connection the server closes is replaced at the next tick."""
    conns = {}  # fd -> [socket, opened_at, established]
    poller = select.poll()
    lifetimes = []
    failed_connects = 0
    reopen = 0
    def open_one():
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((host, port))
        conns[s.fileno()] = [s, time.time(), False]
        poller.register(s, select.POLLIN | select.POLLRDHUP)
    def close(fd):
        nonlocal failed_connects, reopen
        s, t, established = conns.pop(fd)
        poller.unregister(fd)
        s.close()
        if established:
            lifetimes.append(time.time() - t)
        else:
            failed_connects += 1
        reopen += 1
    for _ in range(n):
        open_one()
    end = time.time() + seconds
    tick = time.time()
    def status():
        lt = sorted(lifetimes)
        st = {"open": len(conns), "closed_by_server": len(lt), "failed_connects": failed_connects,
              "lifetime_min_s": round(lt[0], 2) if lt else None,
              "lifetime_median_s": round(lt[len(lt) // 2], 2) if lt else None}
        tmp = status_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, status_file)
    while time.time() < end:
        if time.time() >= tick:
            while reopen:
                reopen -= 1
                open_one()
            for fd in list(conns):
                try:
                    conns[fd][0].send(b"a")
                    conns[fd][2] = True
                except BlockingIOError:
                    pass
                except OSError:
                    close(fd)
            tick += 1.0
            status()
        for fd, ev in poller.poll(200):
            if fd not in conns:
                continue
            try:
                if conns[fd][0].recv(4096):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            close(fd)
    status()

def nonreader(host, port, max_seconds):
    """Writes 64-byte lines (up to 1 GB), reads nothing; then waits for the cut."""
    s = socket.create_connection((host, port), timeout=5)
    s.setblocking(False)
    chunk = (b"x" * 63 + b"\n") * 1024
    written, t0 = 0, time.time()
    last = t0
    res = {"written_mib": 0, "stalled_after_s": None, "cut_after_s": None, "error": None}
    while time.time() - t0 < max_seconds and written < (1 << 30):
        try:
            written += s.send(chunk)
            last = time.time()
        except BlockingIOError:
            if time.time() - last > 2.0:
                res["stalled_after_s"] = round(last - t0, 2)
                break
            select.select([], [s], [], 0.2)
        except OSError as e:
            res["error"] = str(e)
            break
    res["written_mib"] = round(written / 1048576, 1)
    if res["stalled_after_s"] is not None:
        p = select.poll()
        p.register(s, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        stall = t0 + res["stalled_after_s"]
        while time.time() - stall < 25:
            if p.poll(200):
                res["cut_after_s"] = round(time.time() - stall, 2)
                break
    s.close()
    out(res)

def oversize(host, port, n, size):
    """n connections each send one line of `size` bytes: each must be closed."""
    closed = 0
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=10)
        except OSError:
            continue
        s.settimeout(10)
        try:
            s.sendall(b"y" * size + b"\n")
            if s.recv(100) == b"":
                closed += 1
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except OSError:
            pass
        finally:
            s.close()
    out({"n": n, "closed": closed, "served_after": ping(host, port)})

def many(host, port, n, hold):
    """n non-blocking connects sending one line each; replies counted for
    `hold` seconds; then all closed. Returns (connected, served, failed)."""
    socks, state = {}, {}
    poller = select.poll()
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex((host, port))
        except OSError:
            s.close()
            continue
        socks[s.fileno()] = (s, f"hello {i}\n".encode())
        state[s.fileno()] = "connecting"
        poller.register(s, select.POLLOUT)
    end = time.time() + hold
    served = failed = 0
    bufs = {}
    while time.time() < end:
        for fd, ev in poller.poll(100):
            s, req = socks[fd]
            if state[fd] == "connecting":
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    state[fd] = "failed"; failed += 1; poller.unregister(fd); continue
                try:
                    s.send(req)
                except OSError:
                    state[fd] = "failed"; failed += 1; poller.unregister(fd); continue
                state[fd] = "waiting"
                poller.modify(fd, select.POLLIN)
                continue
            try:
                d = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if not d:
                state[fd] = "failed"; failed += 1; poller.unregister(fd); continue
            bufs[fd] = bufs.get(fd, b"") + d
            if bufs[fd] == req:
                state[fd] = "served"; served += 1; poller.unregister(fd)
    connected = sum(1 for v in state.values() if v != "connecting")
    for s, _ in socks.values():
        s.close()
    return connected, served, failed

def flood(host, port, n, hold):
    c, s, f = many(host, port, n, hold)
    out({"n": n, "connected": c, "served": s, "failed": f})

def burst(host, port, n, hold):
    c, s, f = many(host, port, n, hold)
    t = time.time()
    recover = None
    while time.time() - t < 15:
        if ping(host, port):
            recover = round(time.time() - t, 2)
            break
    out({"n": n, "connected": c, "served": s, "failed": f, "recover_s": recover})

def load(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None

def fmt(v, spec="{}"):
    return "-" if v is None else spec.format(v)

COLS = ["min", "A MiB", "A fds", "A thr", "A cpu%", "B MiB", "B fds", "B cpu%",
        "pp p99ms", "pp rps", "pipe rps", "errs", "slow open/closed",
        "nonrd cut", "oversz", "flood srv", "burst srv/rec s"]
WIDTHS = [5, 6, 6, 6, 6, 6, 6, 6, 8, 8, 9, 5, 16, 14, 7, 10, 15]

def header():
    return " ".join(c.rjust(w) for c, w in zip(COLS, WIDTHS))

def row(label, d, a_pid, b_pid, rows_file):
    """Samples both servers, reads the minute's results from d, appends
    the row to rows_file (JSON lines) and prints it."""
    prev = None
    if os.path.exists(rows_file):
        with open(rows_file) as f:
            lines = f.read().splitlines()
            if lines:
                prev = json.loads(lines[-1])
    a, b = proc(a_pid), proc(b_pid)
    def cpu(now, key):
        if not prev or key not in prev or "cpu_s" not in now or "cpu_s" not in prev[key]:
            return None
        if prev[key].get("pid") != now["pid"]:
            return None  # restarted
        dt = now["t"] - prev[key]["t"]
        return round(100 * (now["cpu_s"] - prev[key]["cpu_s"]) / dt, 1) if dt > 0 else None
    r = {"label": label, "A": a, "B": b, "A_cpu_pct": cpu(a, "A"), "B_cpu_pct": cpu(b, "B")}
    pp, pipe, bb = (load(os.path.join(d, x)) for x in ("pingpong.json", "pipelined.json", "bench_b.json"))
    r["pp_p99_ms"] = round(pp["latency_us"]["p99"] / 1000, 3) if pp else None
    r["pp_rps"] = round(pp["rps"]) if pp else None
    r["pipe_rps"] = round(pipe["rps"]) if pipe else None
    errs = [x["errors"]["total"] for x in (pp, pipe, bb) if x]
    r["errors"] = sum(errs) if errs else None
    r["slowloris"] = load(os.path.join(d, "..", "slowloris.json"))
    nr = [load(os.path.join(d, f"nonreader{i}.json")) for i in (1, 2)]
    nr = [x for x in nr if x]
    r["nonreaders"] = nr
    r["oversize"] = load(os.path.join(d, "oversize.json"))
    r["flood"] = load(os.path.join(d, "flood.json"))
    r["burst"] = load(os.path.join(d, "burst.json"))
    with open(rows_file, "a") as f:
        f.write(json.dumps(r) + "\n")
    print(render(r), flush=True)

def render(r):
    a, b = r["A"], r["B"]
    sl = r.get("slowloris")
    nr = r.get("nonreaders") or []
    cut = [x["cut_after_s"] for x in nr if x.get("cut_after_s") is not None]
    ov, fl, bu = r.get("oversize"), r.get("flood"), r.get("burst")
    cells = [
        r["label"],
        fmt(a.get("rss_kib") and round(a["rss_kib"] / 1024, 1)),
        fmt(a.get("fds")), fmt(a.get("threads")), fmt(r.get("A_cpu_pct")),
        fmt(b.get("rss_kib") and round(b["rss_kib"] / 1024, 1)),
        fmt(b.get("fds")), fmt(r.get("B_cpu_pct")),
        fmt(r.get("pp_p99_ms")), fmt(r.get("pp_rps")), fmt(r.get("pipe_rps")),
        fmt(r.get("errors")),
        f"{sl['open']}/{sl['closed_by_server']}" if sl else "-",
        f"{len(cut)}/{len(nr)} {max(cut) if cut else '-'}s" if nr else "-",
        f"{ov['closed']}/{ov['n']}" if ov else "-",
        f"{fl['served']}/{fl['n']}" if fl else "-",
        f"{bu['served']}/{fmt(bu['recover_s'])}" if bu else "-",
    ]
    return " ".join(str(c).rjust(w) for c, w in zip(cells, WIDTHS))

def summary(rows_file, stops_file, restarts_file):
    with open(rows_file) as f:
        rows = [json.loads(l) for l in f if l.strip()]
    print(header())
    for r in rows:
        print(render(r))
    first, last = rows[0], rows[-1]
    print()
    for k in ("A", "B"):
        f, l = first[k], last[k]
        if "rss_kib" in f and "rss_kib" in l:
            print(f"server {k}: RSS {f['rss_kib']/1024:.1f} -> {l['rss_kib']/1024:.1f} MiB "
                  f"(max {max(r[k].get('rss_kib', 0) for r in rows)/1024:.1f}); "
                  f"descriptors {f['fds']} -> {l['fds']} (max {max(r[k].get('fds', 0) for r in rows)}); "
                  f"threads {f['threads']} -> {l['threads']}")
    p99 = [r["pp_p99_ms"] for r in rows if r.get("pp_p99_ms") is not None]
    if p99:
        print(f"ping-pong p99 per minute: min {min(p99)} ms, max {max(p99)} ms")
    errs = sum(r.get("errors") or 0 for r in rows)
    print(f"bench errors in total: {errs}")
    ov = [r["oversize"] for r in rows if r.get("oversize")]
    if ov:
        print(f"oversized lines closed: {sum(o['closed'] for o in ov)}/{sum(o['n'] for o in ov)}; "
              f"served afterwards every time: {all(o['served_after'] for o in ov)}")
    nr = [x for r in rows for x in (r.get("nonreaders") or [])]
    if nr:
        cut = [x["cut_after_s"] for x in nr if x.get("cut_after_s") is not None]
        print(f"non-readers: {len(cut)}/{len(nr)} cut after stalling "
              f"({min(cut) if cut else '-'}..{max(cut) if cut else '-'} s); "
              f"accepted before stalling {min(x['written_mib'] for x in nr)}..{max(x['written_mib'] for x in nr)} MiB")
    fl = [r["flood"] for r in rows if r.get("flood")]
    if fl:
        print(f"floods: served at once {min(f['served'] for f in fl)}..{max(f['served'] for f in fl)} "
              f"of {fl[0]['n']} (failed {sum(f['failed'] for f in fl)})")
    bu = [r["burst"] for r in rows if r.get("burst")]
    if bu:
        rec = [b["recover_s"] for b in bu]
        print(f"bursts: served {min(b['served'] for b in bu)}..{max(b['served'] for b in bu)} of {bu[0]['n']}; "
              f"served again after {fmt(max([x for x in rec if x is not None], default=None))} s at worst; "
              f"never recovered: {sum(1 for x in rec if x is None)}")
    sl = last.get("slowloris")
    if sl:
        print(f"slowloris: {sl['open']} open, {sl['closed_by_server']} closed by the server "
              f"(lifetime min {sl['lifetime_min_s']} s, median {sl['lifetime_median_s']} s)")
    for path, what in ((restarts_file, "graceful restarts of B"), (stops_file, "final graceful stops")):
        if os.path.exists(path):
            with open(path) as f:
                for l in f:
                    print(f"{what}: {l.strip()}")

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "slowloris":
        slowloris(args[0], int(args[1]), int(args[2]), float(args[3]), args[4])
    elif cmd == "nonreader":
        nonreader(args[0], int(args[1]), float(args[2]))
    elif cmd == "oversize":
        oversize(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "flood":
        flood(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "burst":
        burst(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "ping":
        sys.exit(0 if ping(args[0], int(args[1])) else 1)
    elif cmd == "header":
        print(header())
    elif cmd == "row":
        row(args[0], args[1], int(args[2]), int(args[3]), args[4])
    elif cmd == "summary":
        summary(args[0], args[1], args[2])
    else:
        sys.exit(f"unknown command {cmd}")
PY

py() { python3 "$HELPER" "$@"; }

# ---------------------------------------------------------------------------
# Servers

# start_server NAME LOGPREFIX ADDR [prlimit args...] -- serve args...
# Sets ${NAME}_PID and ${NAME}_ADDR (tcp://127.0.0.1:PORT).
start_server() {
  local name=$1 addr=$2
  shift 2
  local pre=()
  while [ "$1" != -- ]; do pre+=("$1"); shift; done
  shift
  local log="$OUT/server-$name-$(date +%s%N).out"
  "${pre[@]}" "$BIN" serve --handler echo --framing line --mode "$SOAK_MODE" "$@" "$addr" \
    >"$log" 2>>"$OUT/server-$name.err" &
  local pid=$!
  local ep=""
  for _ in $(seq 200); do
    ep=$(awk '/^listening /{print $2; exit}' "$log" 2>/dev/null || true)
    [ -n "$ep" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$ep" ] || { echo "soak: server $name did not start; see $OUT/server-$name.err" >&2; exit 1; }
  printf -v "${name}_PID" '%s' "$pid"
  printf -v "${name}_ADDR" '%s' "$ep"
}

A_ARGS=(--max-conns "$SOAK_MAX_CONNS" --over-limit wait --read-timeout 5s --write-timeout 5s
  --max-frame 65536 --on-oversize close --backlog 4096)
B_ARGS=(--write-timeout 5s)
start_server A tcp://127.0.0.1:0 env -- "${A_ARGS[@]}"
start_server B tcp://127.0.0.1:0 prlimit --nofile="$SOAK_NOFILE:$SOAK_NOFILE" -- "${B_ARGS[@]}"
A_PORT=${A_ADDR##*:}
B_PORT=${B_ADDR##*:}
HOST=127.0.0.1

# stop_server NAME: SIGTERM, wait up to 20 s; sets STOPPED to
# "exit CODE after SECS s".
STOPPED=""
stop_server() {
  local pid_var="${1}_PID"
  local pid=${!pid_var}
  local t0 code
  t0=$(date +%s%N)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 400); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    code="killed (no exit within 20 s of SIGTERM)"
  else
    code=0
    wait "$pid" 2>/dev/null || code=$?
  fi
  STOPPED="exit $code after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}

echo "soak: $SOAK_MINUTES minute(s), mode $SOAK_MODE, binary $BIN"
echo "soak: A $A_ADDR (pid $A_PID, --max-conns $SOAK_MAX_CONNS), B $B_ADDR (pid $B_PID, nofile $SOAK_NOFILE)"
echo "soak: output in $OUT"
echo

TOTAL_S=$((SOAK_MINUTES * 60 + 30))
# (Background jobs run python3 itself, not the py function: a function in
# the background is a subshell, and killing it would leave python behind.)
python3 "$HELPER" slowloris "$HOST" "$A_PORT" "$SOAK_SLOWLORIS" "$TOTAL_S" "$OUT/slowloris.json" \
  >>"$OUT/slowloris.log" 2>&1 &

ROWS="$OUT/rows.jsonl"
: >"$ROWS"
mkdir -p "$OUT/start"
py header
py row start "$OUT/start" "$A_PID" "$B_PID" "$ROWS"

START=$(date +%s)
for m in $(seq 1 "$SOAK_MINUTES"); do
  d="$OUT/m$m"
  mkdir -p "$d"
  t0=$((START + (m - 1) * 60))
  at() { # at SECONDS: sleep until t0 + SECONDS
    local now
    now=$(date +%s)
    [ $((t0 + $1)) -gt "$now" ] && sleep $((t0 + $1 - now))
    return 0
  }
  pids=()
  timeout 55 "$BIN" bench "$A_ADDR" -c 10 --pipeline 1 -d 45s --framing line --json \
    >"$d/pingpong.json" 2>"$d/pingpong.err" & pids+=($!)
  timeout 55 "$BIN" bench "$A_ADDR" -c 10 --pipeline 16 -d 45s --framing line --json \
    >"$d/pipelined.json" 2>"$d/pipelined.err" & pids+=($!)
  timeout 55 "$BIN" bench "$B_ADDR" -c 4 --pipeline 1 -d 45s --framing line --json \
    >"$d/bench_b.json" 2>"$d/bench_b.err" & pids+=($!)
  at 5
  timeout 40 python3 "$HELPER" oversize "$HOST" "$A_PORT" 20 $((1 << 20)) \
    >"$d/oversize.json" 2>"$d/oversize.err" & pids+=($!)
  at 10
  for i in 1 2; do
    timeout 45 python3 "$HELPER" nonreader "$HOST" "$A_PORT" 20 \
      >"$d/nonreader$i.json" 2>"$d/nonreader$i.err" & pids+=($!)
  done
  at 20
  timeout 30 python3 "$HELPER" flood "$HOST" "$A_PORT" "$SOAK_FLOOD" 5 \
    >"$d/flood.json" 2>"$d/flood.err" & pids+=($!)
  at 30
  timeout 28 python3 "$HELPER" burst "$HOST" "$B_PORT" "$SOAK_BURST" 5 \
    >"$d/burst.json" 2>"$d/burst.err" & pids+=($!)
  for p in "${pids[@]}"; do wait "$p" || true; done
  py row "$m" "$d" "$A_PID" "$B_PID" "$ROWS"
  if [ "$SOAK_RESTART_EVERY" -gt 0 ] && [ $((m % SOAK_RESTART_EVERY)) -eq 0 ] \
     && [ "$m" -lt "$SOAK_MINUTES" ]; then
    stop_server B
    start_server B "tcp://127.0.0.1:$B_PORT" prlimit --nofile="$SOAK_NOFILE:$SOAK_NOFILE" -- "${B_ARGS[@]}"
    echo "after minute $m: $STOPPED, restarted as pid $B_PID" | tee -a "$OUT/restarts.txt"
  fi
  at 60
done

mkdir -p "$OUT/end"
py row end "$OUT/end" "$A_PID" "$B_PID" "$ROWS"
stop_server A
echo "A: $STOPPED (with $SOAK_SLOWLORIS slowloris connections open)" >"$OUT/stops.txt"
stop_server B
echo "B: $STOPPED" >>"$OUT/stops.txt"

echo
echo "== soak summary ($SOAK_MINUTES minute(s), mode $SOAK_MODE)"
py summary "$ROWS" "$OUT/stops.txt" "$OUT/restarts.txt" | tee "$OUT/summary.txt"
