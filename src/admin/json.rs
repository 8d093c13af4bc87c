//! The JSON of `/api/stats` and `/api/connections`.
//!
//! Two fixed shapes written directly: a small writer instead of serde keeps
//! the `admin` feature to hyper alone. Strings are escaped per RFC 8259;
//! durations are seconds as numbers; a non-finite number is `null`.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use crate::stats::{ClosedConnection, ConnectionInfo, Counters, Snapshot, TcpInfo};

/// `/api/connections` returns this many open connections unless asked.
pub const DEFAULT_CONNECTIONS: usize = 500;
/// ... and never more than this many.
pub const MAX_CONNECTIONS: usize = 10_000;
/// `/api/connections` returns this many closed connections unless asked.
pub const DEFAULT_CLOSED: usize = 100;
/// ... and never more than this many.
pub const MAX_CLOSED: usize = 10_000;

/// A JSON text being written: values, with commas between them.
struct W {
    s: String,
    /// One entry per open object/array: does the next value need a comma?
    comma: Vec<bool>,
}

impl W {
    fn new(capacity: usize) -> W {
        W {
            s: String::with_capacity(capacity),
            comma: Vec::new(),
        }
    }

    fn sep(&mut self) {
        if let Some(c) = self.comma.last_mut() {
            if *c {
                self.s.push(',');
            }
            *c = true;
        }
    }

    fn key(&mut self, k: &str) -> &mut Self {
        self.sep();
        string(&mut self.s, k);
        self.s.push(':');
        // The value that follows needs no comma of its own.
        if let Some(c) = self.comma.last_mut() {
            *c = false;
        }
        self
    }

    fn after_value(&mut self) {
        if let Some(c) = self.comma.last_mut() {
            *c = true;
        }
    }

    fn obj(&mut self) -> &mut Self {
        self.sep();
        self.s.push('{');
        self.comma.push(false);
        self
    }

    fn arr(&mut self) -> &mut Self {
        self.sep();
        self.s.push('[');
        self.comma.push(false);
        self
    }

    fn end_obj(&mut self) -> &mut Self {
        self.comma.pop();
        self.s.push('}');
        self.after_value();
        self
    }

    fn end_arr(&mut self) -> &mut Self {
        self.comma.pop();
        self.s.push(']');
        self.after_value();
        self
    }

    fn str(&mut self, v: &str) -> &mut Self {
        self.sep();
        string(&mut self.s, v);
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.sep();
        let _ = write!(self.s, "{v}");
        self
    }

    fn f64(&mut self, v: f64) -> &mut Self {
        self.sep();
        if v.is_finite() {
            let _ = write!(self.s, "{v}");
        } else {
            self.s.push_str("null");
        }
        self
    }

    fn bool(&mut self, v: bool) -> &mut Self {
        self.sep();
        self.s.push_str(if v { "true" } else { "false" });
        self
    }

    fn null(&mut self) -> &mut Self {
        self.sep();
        self.s.push_str("null");
        self
    }

    fn secs(&mut self, d: Duration) -> &mut Self {
        self.f64(d.as_secs_f64())
    }

    fn kv_u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k).u64(v)
    }

    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k).str(v)
    }
}

/// Writes `v` as a JSON string.
fn string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn counters(w: &mut W, c: &Counters) {
    w.obj();
    w.kv_u64("accepted", c.accepted).kv_u64("open", c.open);
    w.key("refused").obj();
    for r in crate::stats::RefuseReason::ALL {
        w.kv_u64(r.name(), c.refused.get(r));
    }
    w.kv_u64("total", c.refused.total());
    w.end_obj();
    w.kv_u64("bytes_in", c.bytes_in)
        .kv_u64("bytes_out", c.bytes_out)
        .kv_u64("frames_in", c.frames_in)
        .kv_u64("replies_out", c.replies_out)
        .kv_u64("oversize", c.oversize)
        .kv_u64("handler_errors", c.handler_errors)
        .kv_u64("handler_panics", c.handler_panics);
    w.key("accept_errors").obj();
    for (name, n) in c.accept_errors_reported() {
        w.kv_u64(&name, n);
    }
    w.end_obj();
    let h = &c.handler_duration;
    w.key("handler_duration").obj();
    w.key("bounds").arr();
    for b in h.bounds {
        w.f64(*b);
    }
    w.end_arr();
    w.key("counts").arr();
    for i in 0..=h.bounds.len() {
        w.u64(h.counts.get(i).copied().unwrap_or(0));
    }
    w.end_arr();
    w.key("sum_seconds").f64(h.sum_seconds);
    w.kv_u64("count", h.count);
    w.end_obj();
    w.end_obj();
}

/// The body of `/api/stats`: state, uptime, totals and one entry per
/// listener.
pub fn stats(snap: &Snapshot) -> String {
    let mut w = W::new(2048 + snap.listeners.len() * 1024);
    w.obj();
    w.kv_str("version", env!("CARGO_PKG_VERSION"))
        .kv_str("state", snap.state.name())
        .key("accepting")
        .bool(snap.state.is_accepting());
    w.key("uptime_seconds").secs(snap.uptime);
    w.kv_u64("open_connections", snap.open_connections as u64);
    w.key("totals");
    counters(&mut w, &snap.totals());
    w.key("listeners").arr();
    for (i, l) in snap.listeners.iter().enumerate() {
        w.obj();
        w.kv_u64("index", i as u64)
            .kv_str("endpoint", &l.endpoint)
            .kv_str("transport", l.transport);
        w.key("counters");
        counters(&mut w, &l.counters);
        w.end_obj();
    }
    w.end_arr();
    w.end_obj();
    w.s
}

/// The open connections to show: at most `limit`, the most recently
/// active first (least idle; then the newest).
pub fn most_active(conns: &[ConnectionInfo], limit: usize) -> Vec<&ConnectionInfo> {
    let mut v: Vec<&ConnectionInfo> = conns.iter().collect();
    let order = |a: &&ConnectionInfo, b: &&ConnectionInfo| {
        a.idle.cmp(&b.idle).then_with(|| b.id.cmp(&a.id))
    };
    if v.len() > limit {
        if limit == 0 {
            return Vec::new();
        }
        v.select_nth_unstable_by(limit - 1, order);
        v.truncate(limit);
    }
    v.sort_unstable_by(order);
    v
}

fn tcp(w: &mut W, t: &TcpInfo) {
    w.obj();
    w.kv_u64("state", u64::from(t.state))
        .kv_u64("rtt_us", u64::from(t.rtt_us))
        .kv_u64("rttvar_us", u64::from(t.rttvar_us))
        .kv_u64("rto_us", u64::from(t.rto_us))
        .kv_u64("snd_mss", u64::from(t.snd_mss))
        .kv_u64("snd_cwnd", u64::from(t.snd_cwnd))
        .kv_u64("snd_ssthresh", u64::from(t.snd_ssthresh))
        .kv_u64("retransmits", u64::from(t.retransmits))
        .kv_u64("total_retrans", u64::from(t.total_retrans))
        .kv_u64("unacked", u64::from(t.unacked))
        .kv_u64("lost", u64::from(t.lost));
    let opt = |w: &mut W, k: &str, v: Option<u64>| match v {
        Some(v) => {
            w.kv_u64(k, v);
        }
        None => {
            w.key(k).null();
        }
    };
    opt(w, "min_rtt_us", t.min_rtt_us.map(u64::from));
    opt(w, "delivery_rate", t.delivery_rate);
    opt(w, "bytes_acked", t.bytes_acked);
    opt(w, "bytes_received", t.bytes_received);
    w.end_obj();
}

fn open_conn(w: &mut W, snap: &Snapshot, c: &ConnectionInfo) {
    w.obj();
    w.kv_u64("id", c.id)
        .kv_u64("listener", c.listener as u64)
        .kv_str("listener_endpoint", snap.listener_endpoint(c.listener))
        .kv_str("peer", &c.peer)
        .kv_str("local", &c.local);
    w.key("age_seconds").secs(c.age);
    w.key("idle_seconds").secs(c.idle);
    w.kv_u64("bytes_in", c.bytes_in)
        .kv_u64("bytes_out", c.bytes_out)
        .kv_u64("frames_in", c.frames_in)
        .kv_u64("frames_out", c.frames_out)
        .kv_str("state", c.state.name())
        .kv_str("state_label", c.state.label());
    w.key("tcp");
    match &c.tcp {
        Some(t) => tcp(w, t),
        None => {
            w.null();
        }
    }
    w.end_obj();
}

fn closed_conn(w: &mut W, snap: &Snapshot, c: &ClosedConnection) {
    w.obj();
    w.kv_u64("id", c.id)
        .kv_u64("listener", c.listener as u64)
        .kv_str("listener_endpoint", snap.listener_endpoint(c.listener))
        .kv_str("peer", &c.peer)
        .kv_str("local", &c.local);
    w.key("lifetime_seconds").secs(c.lifetime);
    w.kv_u64("bytes_in", c.bytes_in)
        .kv_u64("bytes_out", c.bytes_out)
        .kv_u64("frames_in", c.frames_in)
        .kv_u64("frames_out", c.frames_out)
        .kv_str("ended", c.ended.name())
        .kv_str("ended_label", c.ended.label());
    let at = c
        .closed_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    w.key("closed_at_unix").secs(at);
    w.end_obj();
}

/// The body of `/api/connections`: at most `limit` open connections (most
/// recently active first) with the true count, and at most `closed` of the
/// last closed ones (most recent first).
pub fn connections(snap: &Snapshot, limit: usize, closed: usize) -> String {
    let shown = most_active(&snap.connections, limit);
    let closed_shown = &snap.closed[..snap.closed.len().min(closed)];
    let mut w = W::new(512 + shown.len() * 420 + closed_shown.len() * 300);
    w.obj();
    w.kv_str("state", snap.state.name());
    // The true count: never less than what the snapshot lists.
    let open = snap.open_connections.max(snap.connections.len());
    w.kv_u64("open_connections", open as u64)
        .kv_u64("showing", shown.len() as u64)
        .kv_u64("limit", limit as u64);
    w.key("connections").arr();
    for c in shown {
        open_conn(&mut w, snap, c);
    }
    w.end_arr();
    w.key("closed").arr();
    for c in closed_shown {
        closed_conn(&mut w, snap, c);
    }
    w.end_arr();
    w.end_obj();
    w.s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        string(&mut s, "a\"b\\c\nd\u{1}é</script>");
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001é</script>\"");
    }

    #[test]
    fn commas_and_nesting() {
        let mut w = W::new(0);
        w.obj();
        w.kv_u64("a", 1);
        w.key("b").arr();
        w.u64(1).u64(2);
        w.obj().end_obj();
        w.end_arr();
        w.key("c").obj();
        w.key("d").null();
        w.end_obj();
        w.key("e").f64(f64::NAN);
        w.end_obj();
        assert_eq!(w.s, r#"{"a":1,"b":[1,2,{}],"c":{"d":null},"e":null}"#);
    }

    #[test]
    fn most_active_first_and_bounded() {
        let conns: Vec<ConnectionInfo> = (0..100u64)
            .map(|i| ConnectionInfo {
                id: i,
                idle: Duration::from_millis((i * 7919) % 100),
                ..ConnectionInfo::default()
            })
            .collect();
        let top = most_active(&conns, 10);
        assert_eq!(top.len(), 10);
        for pair in top.windows(2) {
            assert!(pair[0].idle <= pair[1].idle);
        }
        assert_eq!(top[0].idle, Duration::ZERO);
        assert_eq!(most_active(&conns, 0).len(), 0);
        assert_eq!(most_active(&conns, 1000).len(), 100);
    }
}
