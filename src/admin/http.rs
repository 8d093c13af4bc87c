//! Requests to responses: the Host check, the routes, the query of
//! `/api/connections`. No I/O here — `mod.rs` runs the connections.

use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{json, metrics, page, Detail, Source};

/// What answering a request needs.
pub(crate) struct Ctx {
    pub(crate) source: Arc<dyn Source>,
    /// The address the admin listener is bound to.
    pub(crate) bound: SocketAddr,
    /// Answer any Host (the listener is public).
    pub(crate) any_host: bool,
}

pub(crate) type Body = Full<Bytes>;

/// Answers `req`. Never panics: a panic while answering (in the snapshot
/// source, say) becomes a 500.
pub(crate) fn respond<B>(ctx: &Ctx, req: &Request<B>) -> Response<Body> {
    match catch_unwind(AssertUnwindSafe(|| route(ctx, req))) {
        Ok(resp) => resp,
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the status source panicked\n",
        ),
    }
}

fn route<B>(ctx: &Ctx, req: &Request<B>) -> Response<Body> {
    if !ctx.any_host {
        let host = req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}"));
        let authority = req.uri().authority().map(|a| a.as_str());
        let ok = match (host, authority) {
            (None, None) => false,
            (Some(h), None) => host_allowed(h, &ctx.bound),
            (None, Some(a)) => host_allowed(a, &ctx.bound),
            (Some(h), Some(a)) => host_allowed(h, &ctx.bound) && host_allowed(a, &ctx.bound),
        };
        if !ok {
            return text(
                StatusCode::FORBIDDEN,
                "forbidden: the admin endpoint answers only to Host localhost, 127.0.0.1, [::1] or its own address\n",
            );
        }
    }

    let path = req.uri().path();
    let known = matches!(
        path,
        "/" | "/metrics" | "/healthz" | "/readyz" | "/api/stats" | "/api/connections"
    );
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET or HEAD\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }

    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let state = ctx.source.state();
            if state.is_accepting() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {}\n", state.name()),
                )
            }
        }
        "/metrics" => {
            let snap = ctx.source.snapshot(&Detail::COUNTERS);
            body(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                metrics::render(&snap).into(),
            )
        }
        "/api/stats" => {
            let snap = ctx.source.snapshot(&Detail::COUNTERS);
            body(StatusCode::OK, JSON, json::stats(&snap).into())
        }
        "/api/connections" => {
            let (limit, closed) = match connection_query(req.uri().query().unwrap_or("")) {
                Ok(q) => q,
                Err(msg) => return text(StatusCode::BAD_REQUEST, &msg),
            };
            let snap = ctx.source.snapshot(&Detail {
                connections: limit,
                closed,
            });
            body(
                StatusCode::OK,
                JSON,
                json::connections(&snap, limit, closed).into(),
            )
        }
        _ => {
            let mut r = body(StatusCode::OK, page::CONTENT_TYPE, page::HTML.into());
            r.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(page::CSP),
            );
            r
        }
    }
}

const JSON: &str = "application/json";

/// `limit` and `closed` of `/api/connections?limit=N&closed=N`, clamped to
/// their maximums; other parameters are ignored.
fn connection_query(query: &str) -> Result<(usize, usize), String> {
    let mut limit = json::DEFAULT_CONNECTIONS;
    let mut closed = json::DEFAULT_CLOSED;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "limit" => &mut limit,
            "closed" => &mut closed,
            _ => continue,
        };
        *slot = v
            .parse::<u64>()
            .map_err(|_| format!("bad request: {k} must be a whole number, not {v:?}\n"))?
            .try_into()
            .unwrap_or(usize::MAX);
    }
    Ok((
        limit.min(json::MAX_CONNECTIONS),
        closed.min(json::MAX_CLOSED),
    ))
}

/// True if `host` (a Host header or a URI authority: a name or an IP
/// literal, with or without a port) names this admin endpoint: `localhost`,
/// `127.0.0.1`, `[::1]` or the bound IP. Any port is accepted (a port
/// forward changes it); any other name is refused, which defeats DNS
/// rebinding (a page on an attacker's name resolving to 127.0.0.1).
pub(crate) fn host_allowed(host: &str, bound: &SocketAddr) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => {
            ip == IpAddr::from([127, 0, 0, 1])
                || ip == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                || ip == bound.ip()
        }
        Err(_) => false,
    }
}

/// The host part of `HOST[:PORT]` / `[V6][:PORT]`, or `None` if malformed.
fn host_name(host: &str) -> Option<&str> {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6, port)
    } else {
        match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    if name.is_empty() {
        return None;
    }
    Some(name)
}

fn body(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(bytes));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// A one-line plain-text response.
pub(crate) fn text(status: StatusCode, msg: &str) -> Response<Body> {
    body(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(msg.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{ServeState, Snapshot};

    fn bound() -> SocketAddr {
        "127.0.0.1:9100".parse().unwrap()
    }

    #[test]
    fn hosts() {
        let b = bound();
        for ok in [
            "localhost",
            "LOCALHOST:9100",
            "localhost.",
            "localhost:1",
            "127.0.0.1",
            "127.0.0.1:9100",
            "[::1]",
            "[::1]:9100",
        ] {
            assert!(host_allowed(ok, &b), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:9100",
            "localhost.evil.example",
            "127.0.0.2",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "localhost:",
            "localhost:abc",
            "localhost:123456",
            "127.0.0.1:9100:1",
            "[evil]:1",
            "0.0.0.0",
        ] {
            assert!(!host_allowed(bad, &b), "{bad}");
        }
        let other: SocketAddr = "127.0.0.5:1".parse().unwrap();
        assert!(host_allowed("127.0.0.5:1", &other));
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert!(host_allowed("[::1]:1", &v6));
    }

    #[test]
    fn queries() {
        assert_eq!(connection_query(""), Ok((500, 100)));
        assert_eq!(connection_query("limit=7"), Ok((7, 100)));
        assert_eq!(connection_query("limit=0&closed=3&x=y"), Ok((0, 3)));
        assert_eq!(connection_query("limit=99999999999999999999999").ok(), None);
        assert_eq!(connection_query("limit=1000000"), Ok((10_000, 100)));
        assert!(connection_query("limit=-1").is_err());
        assert!(connection_query("limit").is_err());
    }

    fn ctx(source: Arc<dyn Source>) -> Ctx {
        Ctx {
            source,
            bound: bound(),
            any_host: false,
        }
    }

    fn get(ctx: &Ctx, uri: &str, host: Option<&str>) -> Response<Body> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        respond(ctx, &b.body(()).unwrap())
    }

    #[test]
    fn routes() {
        let c = ctx(Arc::new(Snapshot::default));
        let host = Some("localhost:9100");
        assert_eq!(get(&c, "/healthz", host).status(), 200);
        assert_eq!(get(&c, "/readyz", host).status(), 200);
        assert_eq!(get(&c, "/metrics", host).status(), 200);
        assert_eq!(get(&c, "/api/stats", host).status(), 200);
        assert_eq!(get(&c, "/api/connections?limit=5", host).status(), 200);
        assert_eq!(get(&c, "/api/connections?limit=x", host).status(), 400);
        assert_eq!(get(&c, "/", host).status(), 200);
        assert_eq!(get(&c, "/nope", host).status(), 404);
        assert_eq!(get(&c, "/healthz", Some("evil.example")).status(), 403);
        assert_eq!(get(&c, "/healthz", None).status(), 403);
        assert_eq!(
            get(&c, "http://evil.example/healthz", Some("localhost")).status(),
            403
        );
        let post = Request::builder()
            .method("POST")
            .uri("/metrics")
            .header("host", "localhost")
            .body(())
            .unwrap();
        let r = respond(&c, &post);
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }

    #[test]
    fn readiness_follows_the_state_and_panics_are_500() {
        let draining = ctx(Arc::new(|| Snapshot {
            state: ServeState::Draining,
            ..Snapshot::default()
        }));
        assert_eq!(get(&draining, "/readyz", Some("localhost")).status(), 503);
        assert_eq!(get(&draining, "/healthz", Some("localhost")).status(), 200);
        let panicking = ctx(Arc::new(|| -> Snapshot { panic!("source bug") }));
        assert_eq!(get(&panicking, "/metrics", Some("localhost")).status(), 500);
    }
}
