//! The Prometheus text exposition (format 0.0.4) of a [`Snapshot`].
//!
//! Every family is written with its `# HELP` and `# TYPE` lines, and every
//! series a listener can have is written from the start, at 0 when nothing
//! happened yet (each refusal reason, the usual accept errnos), so that a
//! dashboard or an alert never has to guess whether a missing series means 0.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::stats::{Counters, RefuseReason, Snapshot};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One per-listener counter family: its name, help, and how to read it.
struct PerListener {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    get: fn(&Counters) -> u64,
}

const PER_LISTENER: &[PerListener] = &[
    PerListener {
        name: "sockserv_connections_accepted_total",
        kind: "counter",
        help: "Connections accepted (refused ones included).",
        get: |c| c.accepted,
    },
    PerListener {
        name: "sockserv_connections_open",
        kind: "gauge",
        help: "Connections open now.",
        get: |c| c.open,
    },
    PerListener {
        name: "sockserv_received_bytes_total",
        kind: "counter",
        help: "Bytes read from peers.",
        get: |c| c.bytes_in,
    },
    PerListener {
        name: "sockserv_sent_bytes_total",
        kind: "counter",
        help: "Bytes written to peers.",
        get: |c| c.bytes_out,
    },
    PerListener {
        name: "sockserv_frames_decoded_total",
        kind: "counter",
        help: "Frames (messages) decoded from peers.",
        get: |c| c.frames_in,
    },
    PerListener {
        name: "sockserv_replies_sent_total",
        kind: "counter",
        help: "Replies sent to peers.",
        get: |c| c.replies_out,
    },
    PerListener {
        name: "sockserv_oversize_frames_total",
        kind: "counter",
        help: "Frames over the size limit.",
        get: |c| c.oversize,
    },
    PerListener {
        name: "sockserv_handler_errors_total",
        kind: "counter",
        help: "Handler calls that returned an error.",
        get: |c| c.handler_errors,
    },
    PerListener {
        name: "sockserv_handler_panics_total",
        kind: "counter",
        help: "Handler calls that panicked.",
        get: |c| c.handler_panics,
    },
];

/// Renders `snap` as Prometheus text.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::with_capacity(8192 + snap.listeners.len() * 4096);
    let labels = listener_labels(snap);

    family(
        &mut out,
        "sockserv_build_info",
        "gauge",
        "Build information; the value is always 1.",
    );
    let _ = writeln!(
        out,
        "sockserv_build_info{{version=\"{}\"}} 1",
        escape_label(env!("CARGO_PKG_VERSION"))
    );

    family(
        &mut out,
        "sockserv_drain_state",
        "gauge",
        "0 running (accepting), 1 draining (not accepting; open connections finish), 2 forced (cutting open connections).",
    );
    let _ = writeln!(out, "sockserv_drain_state {}", snap.state.gauge());

    family(
        &mut out,
        "sockserv_uptime_seconds",
        "gauge",
        "Seconds since the server started serving.",
    );
    let _ = writeln!(
        out,
        "sockserv_uptime_seconds {}",
        float(snap.uptime.as_secs_f64())
    );

    for f in PER_LISTENER {
        family(&mut out, f.name, f.kind, f.help);
        for (l, label) in snap.listeners.iter().zip(&labels) {
            let _ = writeln!(
                out,
                "{}{{listener=\"{label}\"}} {}",
                f.name,
                (f.get)(&l.counters)
            );
        }
    }

    family(
        &mut out,
        "sockserv_connections_refused_total",
        "counter",
        "Connections refused before a handler saw them, by reason: limit (server-wide connection limit), per_ip (per-source limit), verify (verify_request), rule (access rule), rate (rate limit).",
    );
    for (l, label) in snap.listeners.iter().zip(&labels) {
        for r in RefuseReason::ALL {
            let _ = writeln!(
                out,
                "sockserv_connections_refused_total{{listener=\"{label}\",reason=\"{}\"}} {}",
                r.name(),
                l.counters.refused.get(r)
            );
        }
    }

    family(
        &mut out,
        "sockserv_accept_errors_total",
        "counter",
        "Failed accept calls, by errno.",
    );
    for (l, label) in snap.listeners.iter().zip(&labels) {
        for (errno, n) in l.counters.accept_errors_reported() {
            let _ = writeln!(
                out,
                "sockserv_accept_errors_total{{listener=\"{label}\",errno=\"{}\"}} {n}",
                escape_label(&errno)
            );
        }
    }

    family(
        &mut out,
        "sockserv_handler_duration_seconds",
        "histogram",
        "How long handler calls took, in seconds.",
    );
    for (l, label) in snap.listeners.iter().zip(&labels) {
        let h = &l.counters.handler_duration;
        let cumulative = h.cumulative();
        for (i, n) in cumulative.iter().enumerate() {
            let le = match h.bounds.get(i) {
                Some(b) => float(*b),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "sockserv_handler_duration_seconds_bucket{{listener=\"{label}\",le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "sockserv_handler_duration_seconds_sum{{listener=\"{label}\"}} {}",
            float(h.sum_seconds)
        );
        // `_count` must equal the +Inf bucket; the buckets are the source.
        let _ = writeln!(
            out,
            "sockserv_handler_duration_seconds_count{{listener=\"{label}\"}} {}",
            cumulative.last().copied().unwrap_or(0)
        );
    }
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The `listener` label of each listener, escaped, and unique: a repeated
/// endpoint text gets `#INDEX` appended (two series with one label set
/// would make the exposition invalid).
fn listener_labels(snap: &Snapshot) -> Vec<String> {
    let mut seen = HashSet::new();
    snap.listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut text = l.endpoint.clone();
            if !seen.insert(text.clone()) {
                text = format!("{text}#{i}");
                seen.insert(text.clone());
            }
            escape_label(&text)
        })
        .collect()
}

/// A float as Prometheus writes it (`+Inf`, `-Inf`, `NaN` for the
/// non-finite).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub(crate) fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ListenerStats;
    use std::time::Duration;

    fn snap_with(endpoints: &[&str]) -> Snapshot {
        let mut s = Snapshot::default();
        for e in endpoints {
            s.listeners.push(ListenerStats {
                endpoint: e.to_string(),
                transport: "tcp",
                ..ListenerStats::default()
            });
        }
        s
    }

    #[test]
    fn every_family_is_there_at_zero() {
        let text = render(&snap_with(&["tcp://127.0.0.1:9999"]));
        for f in PER_LISTENER {
            assert!(
                text.contains(&format!(
                    "{}{{listener=\"tcp://127.0.0.1:9999\"}} 0\n",
                    f.name
                )),
                "{}",
                f.name
            );
        }
        for r in ["limit", "per_ip", "verify", "rule", "rate"] {
            assert!(text.contains(&format!(
                "sockserv_connections_refused_total{{listener=\"tcp://127.0.0.1:9999\",reason=\"{r}\"}} 0\n"
            )));
        }
        assert!(text.contains(
            "sockserv_accept_errors_total{listener=\"tcp://127.0.0.1:9999\",errno=\"EMFILE\"} 0\n"
        ));
        assert!(text.contains("le=\"0.00005\"} 0\n"));
        assert!(text.contains("le=\"+Inf\"} 0\n"));
        assert!(text.contains("sockserv_drain_state 0\n"));
        assert!(text.contains("sockserv_build_info{version=\""));
        // HELP and TYPE once per family.
        assert_eq!(
            text.matches("# TYPE sockserv_handler_duration_seconds histogram")
                .count(),
            1
        );
    }

    #[test]
    fn histogram_is_cumulative_and_count_matches_inf() {
        let mut s = snap_with(&["tcp://[::1]:1"]);
        let h = &mut s.listeners[0].counters.handler_duration;
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let text = render(&s);
        assert!(text.contains("listener=\"tcp://[::1]:1\",le=\"0.00005\"} 1\n"));
        assert!(text.contains("listener=\"tcp://[::1]:1\",le=\"0.005\"} 2\n"));
        assert!(text.contains("listener=\"tcp://[::1]:1\",le=\"10\"} 2\n"));
        assert!(text.contains("listener=\"tcp://[::1]:1\",le=\"+Inf\"} 3\n"));
        assert!(text
            .contains("sockserv_handler_duration_seconds_count{listener=\"tcp://[::1]:1\"} 3\n"));
    }

    #[test]
    fn labels_are_escaped_and_unique() {
        let text = render(&snap_with(&["unix:///tmp/a\"b\\c", "x", "x"]));
        assert!(text.contains("listener=\"unix:///tmp/a\\\"b\\\\c\""));
        assert!(text.contains("sockserv_connections_open{listener=\"x\"} 0\n"));
        assert!(text.contains("sockserv_connections_open{listener=\"x#2\"} 0\n"));
    }

    #[test]
    fn floats() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(2.5), "2.5");
        assert_eq!(float(1.0), "1");
    }
}
