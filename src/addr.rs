//! Endpoints: the addresses servers listen on and clients connect to.
//!
//! One string names both the transport and the address, so the transport is
//! chosen by the address rather than by a class name (Python needs
//! `TCPServer`, `UDPServer`, `UnixStreamServer`, ...):
//!
//! | text | transport |
//! | --- | --- |
//! | `tcp://127.0.0.1:9999`, `tcp://[::1]:9999`, `127.0.0.1:9999`, `localhost:80` | TCP |
//! | `udp://0.0.0.0:53`, `udp://[::]:5353` | UDP |
//! | `unix:///run/x.sock` (also `unix:/run/x.sock`, `unix:rel.sock`) | Unix stream |
//! | `unix-dgram:///run/x.sock` | Unix datagram |
//!
//! A bare `HOST:PORT` means TCP. Host names are kept as written and resolved
//! when a socket is opened ([`Endpoint::resolve`]), so a name that resolves
//! to several addresses can be tried in turn by a client.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The four kinds of socket a server can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP: a reliable byte stream over IPv4 or IPv6.
    Tcp,
    /// UDP: datagrams over IPv4 or IPv6.
    Udp,
    /// A Unix-domain stream socket.
    Unix,
    /// A Unix-domain datagram socket.
    UnixDgram,
}

impl Transport {
    /// Stream transports have connections; datagram transports do not.
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Unix)
    }

    /// The URL scheme that names this transport.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Unix => "unix",
            Transport::UnixDgram => "unix-dgram",
        }
    }
}

/// A host (name or IP literal) and a port, as written by the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    /// The host part without brackets (`::1`, `127.0.0.1`, `localhost`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port; 0 asks the kernel for an ephemeral port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves the host to socket addresses (IP literals without a lookup).
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot resolve host \"{}\": {e}", self.host),
                )
            })?
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("host \"{}\" has no addresses", self.host),
            ));
        }
        Ok(addrs)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where a server listens or a client connects: a transport and an address.
///
/// ```
/// use sockserv::Endpoint;
/// let ep: Endpoint = "tcp://[::1]:9999".parse().unwrap();
/// assert_eq!(ep.to_string(), "tcp://[::1]:9999");
/// let bare: Endpoint = "127.0.0.1:9999".parse().unwrap();
/// assert_eq!(bare.to_string(), "tcp://127.0.0.1:9999");
/// assert!("udp://nowhere".parse::<Endpoint>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp(HostPort),
    Udp(HostPort),
    Unix(PathBuf),
    UnixDgram(PathBuf),
}

impl Endpoint {
    /// The endpoint for a resolved IP socket address.
    pub fn inet(transport: Transport, addr: SocketAddr) -> Endpoint {
        let hp = HostPort {
            host: addr.ip().to_string(),
            port: addr.port(),
        };
        match transport {
            Transport::Udp => Endpoint::Udp(hp),
            _ => Endpoint::Tcp(hp),
        }
    }

    /// The transport this endpoint names.
    pub fn transport(&self) -> Transport {
        match self {
            Endpoint::Tcp(_) => Transport::Tcp,
            Endpoint::Udp(_) => Transport::Udp,
            Endpoint::Unix(_) => Transport::Unix,
            Endpoint::UnixDgram(_) => Transport::UnixDgram,
        }
    }

    /// The host and port of an IP endpoint.
    pub fn host_port(&self) -> Option<&HostPort> {
        match self {
            Endpoint::Tcp(hp) | Endpoint::Udp(hp) => Some(hp),
            _ => None,
        }
    }

    /// The filesystem path of a Unix endpoint.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Endpoint::Unix(p) | Endpoint::UnixDgram(p) => Some(p),
            _ => None,
        }
    }

    /// Resolves an IP endpoint to socket addresses. Unix endpoints have none.
    pub fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match self.host_port() {
            Some(hp) => hp.resolve(),
            None => Ok(Vec::new()),
        }
    }
}

/// Why an endpoint string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseEndpointError {
    input: String,
    reason: String,
}

impl fmt::Display for ParseEndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid address \"{}\": {}", self.input, self.reason)
    }
}

impl std::error::Error for ParseEndpointError {}

fn parse_host_port(input: &str, rest: &str) -> Result<HostPort, ParseEndpointError> {
    let err = |reason: &str| ParseEndpointError {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
        let close = stripped
            .find(']')
            .ok_or_else(|| err("missing ']' after an IPv6 address"))?;
        let host = &stripped[..close];
        let after = &stripped[close + 1..];
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| err("expected HOST:PORT, e.g. [::1]:9999"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err("the part in [brackets] is not an IPv6 address"));
        }
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| err("expected HOST:PORT, e.g. 127.0.0.1:9999"))?;
        if host.contains(':') {
            return Err(err("an IPv6 address needs brackets, e.g. [::1]:9999"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(err(
            "the host is empty (use 0.0.0.0 or [::] for all addresses)",
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(err("the host has characters no host name can have"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| err("the port must be a number from 0 to 65535"))?;
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

fn parse_path(input: &str, rest: &str) -> Result<PathBuf, ParseEndpointError> {
    // `unix:///run/x.sock` (URL form, empty authority), `unix:/run/x.sock`
    // and `unix:relative.sock` all name a path.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(ParseEndpointError {
            input: input.to_string(),
            reason: "the socket path is empty".to_string(),
        });
    }
    // The kernel's `sockaddr_un` holds 108 bytes, the terminating NUL
    // included: a longer path cannot be bound or connected to, whatever
    // exists on disk, so it is the user's mistake, refused here.
    if path.len() >= MAX_UNIX_PATH {
        return Err(ParseEndpointError {
            input: input.to_string(),
            reason: format!(
                "the socket path is {} bytes long; a Unix socket path must be shorter than {MAX_UNIX_PATH} bytes (the kernel's limit, sun_path)",
                path.len()
            ),
        });
    }
    Ok(PathBuf::from(path))
}

/// Size of `sun_path` in the kernel's `sockaddr_un` on Linux: a Unix socket
/// path must be shorter (it is stored with a terminating NUL).
pub const MAX_UNIX_PATH: usize = 108;

impl FromStr for Endpoint {
    type Err = ParseEndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("tcp://") {
            return Ok(Endpoint::Tcp(parse_host_port(s, rest)?));
        }
        if let Some(rest) = s.strip_prefix("udp://") {
            return Ok(Endpoint::Udp(parse_host_port(s, rest)?));
        }
        if let Some(rest) = s.strip_prefix("unix-dgram:") {
            return Ok(Endpoint::UnixDgram(parse_path(s, rest)?));
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(parse_path(s, rest)?));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(ParseEndpointError {
                input: s.to_string(),
                reason: format!(
                    "unknown scheme \"{scheme}\": expected tcp://, udp://, unix:// or unix-dgram://"
                ),
            });
        }
        Ok(Endpoint::Tcp(parse_host_port(s, s)?))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(hp) => write!(f, "tcp://{hp}"),
            Endpoint::Udp(hp) => write!(f, "udp://{hp}"),
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::UnixDgram(p) => write!(f, "unix-dgram://{}", p.display()),
        }
    }
}

/// The address of a peer or of a local socket, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 or IPv6 address and port.
    Inet(SocketAddr),
    /// A Unix socket path; `None` for unnamed sockets (most clients).
    Unix(Option<PathBuf>),
}

impl Address {
    /// The IP address, for IP peers (what per-peer limits and access rules
    /// key on).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Address::Inet(a) => Some(a.ip()),
            Address::Unix(_) => None,
        }
    }

    pub(crate) fn from_unix(addr: &std::os::unix::net::SocketAddr) -> Address {
        Address::Unix(addr.as_pathname().map(Path::to_path_buf))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(a) => write!(f, "{a}"),
            Address::Unix(Some(p)) => write!(f, "{}", p.display()),
            Address::Unix(None) => write!(f, "(unnamed)"),
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::Inet(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for (input, printed) in [
            ("tcp://127.0.0.1:9999", "tcp://127.0.0.1:9999"),
            ("tcp://[::1]:9999", "tcp://[::1]:9999"),
            ("udp://0.0.0.0:53", "udp://0.0.0.0:53"),
            ("udp://[::]:0", "udp://[::]:0"),
            ("unix:///run/x.sock", "unix:///run/x.sock"),
            ("unix:/tmp/a.sock", "unix:///tmp/a.sock"),
            ("unix-dgram:///run/x.sock", "unix-dgram:///run/x.sock"),
            ("127.0.0.1:80", "tcp://127.0.0.1:80"),
            ("localhost:8080", "tcp://localhost:8080"),
        ] {
            let ep: Endpoint = input.parse().unwrap();
            assert_eq!(ep.to_string(), printed, "{input}");

            assert_eq!(printed.parse::<Endpoint>().unwrap(), ep);
        }
    }

    #[test]
    fn refuses_bad_addresses_with_a_reason() {
        for (input, needle) in [
            ("tcp://127.0.0.1", "HOST:PORT"),
            ("tcp://127.0.0.1:99999", "port"),
            ("tcp://::1:80", "brackets"),
            ("tcp://[::1:80", "]"),
            ("tcp://[nothex]:80", "IPv6"),
            ("ftp://host:1", "unknown scheme"),
            ("unix://", "empty"),
            (":80", "host is empty"),
            ("garbage", "HOST:PORT"),
        ] {
            let err = input.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn refuses_unix_paths_the_kernel_cannot_hold() {
        // 107 bytes and the NUL fill sun_path exactly.
        let longest = format!("/{}", "d".repeat(106));
        let ep: Endpoint = format!("unix://{longest}").parse().unwrap();
        assert_eq!(ep.path().unwrap().as_os_str().len(), 107);
        for input in [
            format!("unix:///{}", "d".repeat(107)),
            format!("unix-dgram:{}", "d".repeat(200)),
        ] {
            let err = input.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains("shorter than 108 bytes"), "{err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn resolves_literals_and_names() {
        let ep: Endpoint = "tcp://[::1]:7".parse().unwrap();
        assert_eq!(ep.resolve().unwrap(), vec!["[::1]:7".parse().unwrap()]);
        let ep: Endpoint = "localhost:7".parse().unwrap();
        assert!(ep.resolve().unwrap().iter().all(|a| a.ip().is_loopback()));
    }
}
