//! The PROXY protocol header, v1 (text) and v2 (binary), parsed without I/O.
//!
//! A proxy in front of a server (haproxy, a load balancer) can start each
//! connection it relays with a header naming the client it relays for.
//! [`parse`] reads that header out of the bytes a connection has received
//! so far. The caller appends what arrives and calls again while the answer
//! is [`Parsed::Incomplete`]; [`Parsed::Done`] says how many bytes the
//! header took, and every byte after those belongs to the application.
//! Nothing past the header is ever read, so it can arrive split anywhere,
//! one byte at a time, with application bytes in the same read.
//!
//! The rules, from the specification (haproxy's `doc/proxy-protocol.txt`):
//!
//! * The versions a listener accepts are configured ([`Versions`]), never
//!   guessed: a connection that does not start with an accepted header is
//!   an error, never passed through, so a client that reaches the server
//!   directly can neither pose as the proxy nor skip the header.
//! * It fails as soon as the first bytes cannot start a header (neither
//!   `PROXY ` nor the v2 signature), so a peer speaking another protocol is
//!   dropped at once. A header that never completes is the caller's to time
//!   out (the specification asks for at least 3 seconds).
//! * v1 is one line of at most 107 bytes, CRLF included; a bare LF is an
//!   error, and 107 bytes without a CRLF are an error.
//! * v2 is 16 bytes plus the length in bytes 15–16, and exactly that many
//!   bytes are consumed whatever the command and the family, LOCAL
//!   included. A header is at most [`MAX_HEADER_LEN`] bytes: with that many
//!   bytes the answer is never `Incomplete`, so a caller never buffers more.
//! * A v2 CRC32C TLV (type 0x03) is checked; other TLVs are returned as
//!   they are, in order.
//!
//! What a header says, as a [`ProxyHeader`]:
//!
//! | header | `command` | `source`, `destination` | `tlvs` |
//! | --- | --- | --- | --- |
//! | v1 `TCP4`, `TCP6` | `Proxy` | `Some(Address::Inet)` | none |
//! | v1 `UNKNOWN` (the rest of the line is ignored) | `Proxy` | `None` | none |
//! | v2 LOCAL (a proxy's own connection, e.g. a health check; family and address block skipped unread) | `Local` | `None` | none |
//! | v2 PROXY, `AF_INET` or `AF_INET6`, stream or datagram | `Proxy` | `Some(Address::Inet)` | after the addresses |
//! | v2 PROXY, `AF_UNIX`, stream or datagram | `Proxy` | `Some(Address::Unix)` | after the addresses |
//! | v2 PROXY, family or transport `UNSPEC` (block skipped unread) | `Proxy` | `None` | none |
//!
//! `None` addresses mean: use the connection's own addresses. A v2 Unix
//! path is the 108-byte `sun_path` up to its first NUL, or all 108 bytes if
//! it has none; an empty one (an unnamed socket, or a Linux abstract name,
//! which starts with a NUL) is `Address::Unix(None)`, as the server reports
//! such peers when it accepts them itself.
//!
//! A call costs at most a scan of 107 bytes while a v1 line is incomplete
//! and constant time while a v2 header is; the whole header is decoded
//! once, when it is complete.

use std::ffi::OsStr;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::addr::Address;

/// The longest v1 header, CRLF included.
pub const V1_MAX_LEN: usize = 107;

/// The longest header of either version: v2's 16 fixed bytes and a length
/// that is a `u16`.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";

/// How a v2 header starts.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version and command, family and transport, length.
const V2_FIXED_LEN: usize = 16;

/// The v2 TLV type of a CRC32C checksum of the whole header.
const PP2_TYPE_CRC32C: u8 = 0x03;

/// Which header versions a listener accepts. The caller configures it; a
/// connection must start with a header of an accepted version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// Only the text header.
    V1,
    /// Only the binary header.
    V2,
    /// Either.
    Both,
}

impl Versions {
    fn accepts(self, version: u8) -> bool {
        match self {
            Versions::V1 => version == 1,
            Versions::V2 => version == 2,
            Versions::Both => true,
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header: call again when more bytes have arrived.
    Incomplete,
    /// A whole header, in the first `consumed` bytes of the buffer. The
    /// bytes after them are the application's.
    Done {
        consumed: usize,
        header: ProxyHeader,
    },
}

/// Whether the connection is relayed or the proxy's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// v2 LOCAL: the proxy opened the connection itself (a health check);
    /// the connection's own addresses are the real ones.
    Local,
    /// v1, or v2 PROXY: the connection is relayed for the client named in
    /// the header.
    Proxy,
}

/// A decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    pub command: Command,
    /// The client the proxy relays for; `None` when the header names no
    /// address (LOCAL, v1 `UNKNOWN`, v2 `UNSPEC`).
    pub source: Option<Address>,
    /// The address the client connected to, on the proxy.
    pub destination: Option<Address>,
    /// v2 TLVs after the addresses, as (type, value), in header order.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

impl ProxyHeader {
    /// A header that names no address: use the connection's own.
    fn without_addresses(command: Command) -> ProxyHeader {
        ProxyHeader {
            command,
            source: None,
            destination: None,
            tlvs: Vec::new(),
        }
    }
}

/// Which of the two addresses (or ports) a v1 error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            End::Source => "source",
            End::Destination => "destination",
        })
    }
}

/// Why the bytes are not an acceptable PROXY header. The connection should
/// be closed; [`Display`](fmt::Display) is one line naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The first bytes are neither `PROXY ` nor the v2 signature.
    NotProxy,
    /// A header of a version (1 or 2) this listener does not accept.
    VersionNotAccepted(u8),
    /// No CRLF in the first 107 bytes of a v1 header.
    V1TooLong,
    /// A v1 line ends in LF without CR.
    V1BareLineFeed,
    /// A v1 protocol other than `TCP4`, `TCP6` and `UNKNOWN`.
    V1UnknownProtocol(String),
    /// A `TCP4` or `TCP6` line without exactly four single-space-separated
    /// fields after the protocol.
    V1FieldCount {
        protocol: &'static str,
        found: usize,
    },
    /// A v1 address that is not one of the protocol's family.
    V1BadAddress {
        end: End,
        protocol: &'static str,
        text: String,
    },
    /// A v1 port that is not a decimal 0–65535 without leading zeros.
    V1BadPort { end: End, text: String },
    /// A v2 version nibble other than 2.
    V2Version(u8),
    /// A v2 command nibble other than LOCAL (0) and PROXY (1).
    V2Command(u8),
    /// A v2 address family nibble above 3 (`AF_UNIX`).
    V2Family(u8),
    /// A v2 transport nibble above 2 (datagram).
    V2Transport(u8),
    /// A v2 length too short for the family's addresses.
    V2AddressTooShort {
        family: &'static str,
        needed: usize,
        len: usize,
    },
    /// A v2 TLV, starting at byte `offset` of the header, that runs past
    /// the header's end.
    V2TlvOverrun { offset: usize },
    /// A v2 CRC32C TLV whose value is not 4 bytes.
    V2ChecksumLength(usize),
    /// A v2 header whose CRC32C is not the one its TLV states.
    V2ChecksumMismatch { stated: u32, computed: u32 },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Text from the header is printed with `{:?}`: quoted, with control
        // characters escaped, so the message stays on one line.
        match self {
            ProxyError::NotProxy => write!(f, "not a PROXY protocol header"),
            ProxyError::VersionNotAccepted(version) => write!(
                f,
                "PROXY v{version} header, but only v{} is accepted",
                if *version == 1 { 2 } else { 1 }
            ),
            ProxyError::V1TooLong => {
                write!(f, "PROXY v1 header longer than {V1_MAX_LEN} bytes")
            }
            ProxyError::V1BareLineFeed => write!(f, "PROXY v1: line ends in LF without CR"),
            ProxyError::V1UnknownProtocol(text) => write!(
                f,
                "PROXY v1: unknown protocol {text:?} (expected TCP4, TCP6 or UNKNOWN)"
            ),
            ProxyError::V1FieldCount { protocol, found } => write!(
                f,
                "PROXY v1: {protocol} needs 4 fields after the protocol \
                 (two addresses, two ports), found {found}"
            ),
            ProxyError::V1BadAddress {
                end,
                protocol,
                text,
            } => write!(f, "PROXY v1: bad {protocol} {end} address {text:?}"),
            ProxyError::V1BadPort { end, text } => {
                write!(f, "PROXY v1: bad {end} port {text:?}")
            }
            ProxyError::V2Version(version) => {
                write!(f, "PROXY v2: unsupported version {version}")
            }
            ProxyError::V2Command(command) => {
                write!(f, "PROXY v2: unknown command {command:#x}")
            }
            ProxyError::V2Family(family) => {
                write!(f, "PROXY v2: unknown address family {family:#x}")
            }
            ProxyError::V2Transport(transport) => {
                write!(f, "PROXY v2: unknown transport protocol {transport:#x}")
            }
            ProxyError::V2AddressTooShort {
                family,
                needed,
                len,
            } => write!(
                f,
                "PROXY v2: {family} needs {needed} address bytes, the header has {len}"
            ),
            ProxyError::V2TlvOverrun { offset } => write!(
                f,
                "PROXY v2: the TLV at byte {offset} runs past the end of the header"
            ),
            ProxyError::V2ChecksumLength(len) => {
                write!(f, "PROXY v2: CRC32C TLV of {len} bytes, expected 4")
            }
            ProxyError::V2ChecksumMismatch { stated, computed } => write!(
                f,
                "PROXY v2: CRC32C mismatch (the TLV states {stated:#010x}, \
                 the header sums to {computed:#010x})"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Parses the PROXY header at the start of `buf`, everything the
/// connection has received so far. The module documentation has the rules.
pub fn parse(buf: &[u8], accept: Versions) -> Result<Parsed, ProxyError> {
    let (version, prefix_len) = if starts_like(buf, V1_PREFIX) {
        (1, V1_PREFIX.len())
    } else if starts_like(buf, V2_SIGNATURE) {
        (2, V2_SIGNATURE.len())
    } else {
        return Err(ProxyError::NotProxy);
    };
    // Until the whole prefix is there, it may still be either version's
    // (an empty buffer is a prefix of both).
    if buf.len() < prefix_len {
        return Ok(Parsed::Incomplete);
    }
    if !accept.accepts(version) {
        return Err(ProxyError::VersionNotAccepted(version));
    }
    if version == 1 {
        parse_v1(buf)
    } else {
        parse_v2(buf)
    }
}

/// True if `buf` and `prefix` agree on the bytes both have.
fn starts_like(buf: &[u8], prefix: &[u8]) -> bool {
    let n = buf.len().min(prefix.len());
    buf[..n] == prefix[..n]
}

/// `buf` starts with `PROXY `.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    // The prefix has no LF, so `lf >= 6` and the byte before it exists.
    if window[lf - 1] != b'\r' {
        return Err(ProxyError::V1BareLineFeed);
    }
    let header = parse_v1_line(&window[V1_PREFIX.len()..lf - 1])?;
    Ok(Parsed::Done {
        consumed: lf + 1,
        header,
    })
}

/// The line between `PROXY ` and the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let mut words = line.split(|&b| b == b' ');
    let (protocol, ipv6) = match words.next().unwrap_or_default() {
        // "The receiver must ignore anything presented before the CRLF."
        b"UNKNOWN" => return Ok(ProxyHeader::without_addresses(Command::Proxy)),
        b"TCP4" => ("TCP4", false),
        b"TCP6" => ("TCP6", true),
        other => return Err(ProxyError::V1UnknownProtocol(lossy(other))),
    };
    let fields: Vec<&[u8]> = words.collect();
    let &[source, destination, source_port, destination_port] = fields.as_slice() else {
        return Err(ProxyError::V1FieldCount {
            protocol,
            found: fields.len(),
        });
    };
    let source = SocketAddr::new(
        v1_ip(source, ipv6, End::Source, protocol)?,
        v1_port(source_port, End::Source)?,
    );
    let destination = SocketAddr::new(
        v1_ip(destination, ipv6, End::Destination, protocol)?,
        v1_port(destination_port, End::Destination)?,
    );
    Ok(ProxyHeader {
        command: Command::Proxy,
        source: Some(Address::Inet(source)),
        destination: Some(Address::Inet(destination)),
        tlvs: Vec::new(),
    })
}

/// An address of the protocol's family. std's parsers are as strict as the
/// specification: no leading zeros in IPv4, no zone in IPv6.
fn v1_ip(text: &[u8], ipv6: bool, end: End, protocol: &'static str) -> Result<IpAddr, ProxyError> {
    let text_str = std::str::from_utf8(text).ok();
    let ip = if ipv6 {
        text_str
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .map(IpAddr::V6)
    } else {
        text_str
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .map(IpAddr::V4)
    };
    ip.ok_or_else(|| ProxyError::V1BadAddress {
        end,
        protocol,
        text: lossy(text),
    })
}

/// A decimal port without sign or leading zeros (std's parser takes both).
fn v1_port(text: &[u8], end: End) -> Result<u16, ProxyError> {
    let bad = || ProxyError::V1BadPort {
        end,
        text: lossy(text),
    };
    let canonical = !text.is_empty()
        && text.iter().all(u8::is_ascii_digit)
        && (text[0] != b'0' || text.len() == 1);
    if !canonical {
        return Err(bad());
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A v2 address family with addresses to read (the high nibble of byte
/// 14; `AF_UNSPEC` has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Inet,
    Inet6,
    Unix,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Inet => "AF_INET",
            Family::Inet6 => "AF_INET6",
            Family::Unix => "AF_UNIX",
        }
    }

    /// Source and destination addresses (and ports for IP), in bytes.
    fn address_len(self) -> usize {
        match self {
            Family::Inet => 2 * 4 + 2 * 2,
            Family::Inet6 => 2 * 16 + 2 * 2,
            Family::Unix => 2 * 108,
        }
    }
}

/// `buf` starts with the 12-byte signature. Each fixed byte is checked as
/// soon as it is there.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // Byte 13: version (high nibble) and command (low nibble).
    let Some(&version_command) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    let version = version_command >> 4;
    if version != 2 {
        return Err(ProxyError::V2Version(version));
    }
    let command = match version_command & 0x0f {
        0x0 => Command::Local,
        0x1 => Command::Proxy,
        other => return Err(ProxyError::V2Command(other)),
    };

    // Byte 14: family and transport. LOCAL ignores both.
    let Some(&family_transport) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    let family = match command {
        Command::Local => None,
        Command::Proxy => v2_family(family_transport)?,
    };

    // Bytes 15-16: how many bytes follow, big-endian.
    let Some(&[len_high, len_low]) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let consumed = V2_FIXED_LEN + usize::from(u16::from_be_bytes([len_high, len_low]));
    let Some(whole) = buf.get(..consumed) else {
        return Ok(Parsed::Incomplete);
    };

    let header = match family {
        Some(family) => v2_proxy(whole, family)?,
        // LOCAL, or nothing specified: the block, addresses and TLVs alike,
        // is skipped unread.
        None => ProxyHeader::without_addresses(command),
    };
    Ok(Parsed::Done { consumed, header })
}

/// Byte 14 of a PROXY header: the address family (high nibble) and the
/// transport (low nibble: 0 unspecified, 1 stream, 2 datagram). `None` when
/// either is unspecified, so there is no address to read.
fn v2_family(family_transport: u8) -> Result<Option<Family>, ProxyError> {
    let family = match family_transport >> 4 {
        0x0 => None,
        0x1 => Some(Family::Inet),
        0x2 => Some(Family::Inet6),
        0x3 => Some(Family::Unix),
        other => return Err(ProxyError::V2Family(other)),
    };
    match family_transport & 0x0f {
        0x0 => Ok(None),
        0x1 | 0x2 => Ok(family),
        other => Err(ProxyError::V2Transport(other)),
    }
}

/// The addresses and TLVs of a v2 PROXY header; `whole` is the complete
/// header.
fn v2_proxy(whole: &[u8], family: Family) -> Result<ProxyHeader, ProxyError> {
    let block = &whole[V2_FIXED_LEN..];
    let needed = family.address_len();
    let Some(a) = block.get(..needed) else {
        return Err(ProxyError::V2AddressTooShort {
            family: family.name(),
            needed,
            len: block.len(),
        });
    };
    // Source address, destination address, then for IP the two ports.
    let (source, destination) = match family {
        Family::Inet => (
            inet(Ipv4Addr::from(array(&a[0..4])), &a[8..10]),
            inet(Ipv4Addr::from(array(&a[4..8])), &a[10..12]),
        ),
        Family::Inet6 => (
            inet(Ipv6Addr::from(array(&a[0..16])), &a[32..34]),
            inet(Ipv6Addr::from(array(&a[16..32])), &a[34..36]),
        ),
        Family::Unix => (unix(&a[..108]), unix(&a[108..])),
    };
    Ok(ProxyHeader {
        command: Command::Proxy,
        source: Some(source),
        destination: Some(destination),
        tlvs: v2_tlvs(whole, V2_FIXED_LEN + needed)?,
    })
}

/// The `N` bytes of `bytes` (exactly `N` long) as an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

fn inet(ip: impl Into<IpAddr>, port: &[u8]) -> Address {
    Address::Inet(SocketAddr::new(ip.into(), u16::from_be_bytes(array(port))))
}

/// A 108-byte `sun_path`: the bytes before the first NUL, or all of them
/// when there is none (a path of exactly 108 bytes is not terminated).
fn unix(sun_path: &[u8]) -> Address {
    let len = memchr::memchr(0, sun_path).unwrap_or(sun_path.len());
    if len == 0 {
        return Address::Unix(None);
    }
    Address::Unix(Some(PathBuf::from(OsStr::from_bytes(&sun_path[..len]))))
}

/// The TLVs from byte `start` of the header to its end: one type byte, a
/// big-endian u16 length, the value. A CRC32C TLV is checked.
fn v2_tlvs(whole: &[u8], start: usize) -> Result<Vec<(u8, Vec<u8>)>, ProxyError> {
    let mut tlvs = Vec::new();
    let mut at = start;
    while at < whole.len() {
        let overrun = ProxyError::V2TlvOverrun { offset: at };
        let Some(&[kind, len_high, len_low]) = whole.get(at..at + 3) else {
            return Err(overrun);
        };
        let value_start = at + 3;
        let value_end = value_start + usize::from(u16::from_be_bytes([len_high, len_low]));
        let Some(value) = whole.get(value_start..value_end) else {
            return Err(overrun);
        };
        if kind == PP2_TYPE_CRC32C {
            check_crc32c(whole, value_start, value)?;
        }
        tlvs.push((kind, value.to_vec()));
        at = value_end;
    }
    Ok(tlvs)
}

/// The CRC32C of the whole header, with the 4 bytes of the checksum at
/// `value_start` counted as zeros, must equal the value (big-endian).
fn check_crc32c(whole: &[u8], value_start: usize, value: &[u8]) -> Result<(), ProxyError> {
    let Ok(stated) = <[u8; 4]>::try_from(value) else {
        return Err(ProxyError::V2ChecksumLength(value.len()));
    };
    let stated = u32::from_be_bytes(stated);
    let mut crc = Crc32c::new();
    crc.update(&whole[..value_start]);
    crc.update(&[0; 4]);
    crc.update(&whole[value_start + 4..]);
    let computed = crc.finish();
    if computed == stated {
        Ok(())
    } else {
        Err(ProxyError::V2ChecksumMismatch { stated, computed })
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as RFC 4960
/// appendix B computes it; a table of 256 entries, built at compile time.
struct Crc32c(u32);

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC32C_TABLE[usize::from(self.0 as u8 ^ b)] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

/// The shortest header of either version: v1 `PROXY UNKNOWN\r\n` (15
/// bytes; v2 is at least 16). Reading this many bytes first never takes a
/// byte of the application's from a valid header.
pub const MIN_HEADER_LEN: usize = 15;

/// What to read next to get the header off a socket without taking one
/// byte past it — for a connection whose socket is handed on afterwards
/// (to a program per connection, whose stdin *is* the socket, or to a
/// stream handler), where bytes read past the header would be lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read at most this many bytes: all of them are header bytes.
    Read(usize),
    /// A v1 line without its end yet: peek (`MSG_PEEK`) at most this many
    /// bytes, then read exactly [`line_take`] of what the peek saw.
    Line(usize),
    /// The bytes held are exactly the header.
    Done(ProxyHeader),
}

/// The plan for a reader that holds `held`, the bytes of the header read so
/// far (and nothing after it). Exact lengths where the format gives them —
/// the 15 bytes no header is shorter than, v2's 16 fixed bytes, then its
/// length — and a peek for the end of a v1 line, which has none.
pub fn next_step(held: &[u8], accept: Versions) -> Result<Step, ProxyError> {
    match parse(held, accept)? {
        Parsed::Done { header, .. } => return Ok(Step::Done(header)),
        Parsed::Incomplete => {}
    }
    if held.len() < MIN_HEADER_LEN {
        return Ok(Step::Read(MIN_HEADER_LEN - held.len()));
    }
    if held.starts_with(V2_SIGNATURE) {
        let total = match held.get(14..16) {
            Some(&[high, low]) => V2_FIXED_LEN + usize::from(u16::from_be_bytes([high, low])),
            _ => V2_FIXED_LEN,
        };
        // `parse` is Incomplete, so `held` is shorter than `total`.
        return Ok(Step::Read(total.saturating_sub(held.len()).max(1)));
    }
    // v1, no LF yet in the bytes held (`parse` would have decided).
    Ok(Step::Line(V1_MAX_LEN.saturating_sub(held.len()).max(1)))
}

/// Of the bytes a peek saw while a v1 line is open, how many are the
/// line's: up to and including the first LF, or all of them. Taking all of
/// a peek without an LF is what keeps a peek loop from spinning on bytes it
/// has already seen (the next peek only sees new ones) — and a line split
/// across segments is never mistaken for a bad one (nginx#1400).
pub fn line_take(peeked: &[u8]) -> usize {
    memchr::memchr(b'\n', peeked).map_or(peeked.len(), |lf| lf + 1)
}

/// What a PROXY header said about a connection, for its handler:
/// [`Reply::proxy`](crate::handler::Reply::proxy) for message handlers,
/// [`Connection::proxy`](crate::Connection::proxy) and
/// [`AsyncConnection::proxy`](crate::AsyncConnection::proxy) for stream
/// handlers. `None` there when the listener does not take the PROXY
/// protocol.
///
/// The connection's peer address *is* [`client`](Self::client) already;
/// this adds the proxy's own address, the address the client connected to
/// on the proxy, and the v2 TLVs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    local: bool,
    client: Address,
    destination: Option<Address>,
    proxy: Address,
    tlvs: Vec<(u8, Vec<u8>)>,
}

impl ProxyInfo {
    /// The v2 TLV type of Application-Layer Protocol Negotiation: the
    /// protocol the client and the proxy agreed on (`h2`, `http/1.1`).
    pub const TLV_ALPN: u8 = 0x01;
    /// The v2 TLV type of the authority: the host name the client asked
    /// for (TLS SNI, HTTP `Host`).
    pub const TLV_AUTHORITY: u8 = 0x02;
    /// The v2 TLV type of a CRC32C of the header (checked when parsed).
    pub const TLV_CRC32C: u8 = PP2_TYPE_CRC32C;
    /// The v2 TLV type of an opaque identifier of the connection, at most
    /// 128 bytes (HAProxy's `unique-id`).
    pub const TLV_UNIQUE_ID: u8 = 0x05;

    /// A header received from `proxy` (the socket's peer). LOCAL (the
    /// proxy's health check) and headers without addresses (v1 `UNKNOWN`,
    /// v2 `UNSPEC`) keep the real endpoints, as the specification says.
    pub(crate) fn new(header: ProxyHeader, proxy: Address) -> ProxyInfo {
        let local = header.command == Command::Local;
        let (client, destination) = match (local, header.source) {
            (false, Some(source)) => (source, header.destination),
            _ => (proxy.clone(), None),
        };
        ProxyInfo {
            local,
            client,
            destination,
            proxy,
            tlvs: header.tlvs,
        }
    }

    /// The client the proxy relays for — the connection's peer address.
    /// The proxy's own address for a LOCAL connection or a header without
    /// addresses.
    pub fn client(&self) -> &Address {
        &self.client
    }

    /// The address the client connected to, on the proxy (`None` when the
    /// header names none).
    pub fn destination(&self) -> Option<&Address> {
        self.destination.as_ref()
    }

    /// The proxy: the socket's peer.
    pub fn proxy(&self) -> &Address {
        &self.proxy
    }

    /// True for v2 LOCAL: the proxy's own connection (a health check).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// True when the header named a client other than the proxy itself.
    pub fn is_relayed(&self) -> bool {
        self.client != self.proxy
    }

    /// The value of the first TLV of type `kind` (`TLV_*`).
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_slice())
    }

    /// Every TLV, as (type, value), in header order.
    pub fn tlvs(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.tlvs.iter().map(|(k, v)| (*k, v.as_slice()))
    }

    /// The authority TLV (0x02): the host name the client asked for, if
    /// the proxy sent it as UTF-8.
    pub fn authority(&self) -> Option<&str> {
        self.tlv(Self::TLV_AUTHORITY)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The ALPN TLV (0x01): the application protocol negotiated.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tlv(Self::TLV_ALPN)
    }

    /// The unique-id TLV (0x05).
    pub fn unique_id(&self) -> Option<&[u8]> {
        self.tlv(Self::TLV_UNIQUE_ID)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Versions; 3] = [Versions::V1, Versions::V2, Versions::Both];

    fn inet(text: &str) -> Option<Address> {
        Some(Address::Inet(text.parse().unwrap()))
    }

    fn unix_path(path: &[u8]) -> Option<Address> {
        Some(Address::Unix(Some(PathBuf::from(OsStr::from_bytes(path)))))
    }

    fn proxied(source: Option<Address>, destination: Option<Address>) -> ProxyHeader {
        ProxyHeader {
            command: Command::Proxy,
            source,
            destination,
            tlvs: Vec::new(),
        }
    }

    /// A v2 header: signature, the two command and family bytes, the
    /// length, `block`.
    fn v2(version_command: u8, family_transport: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(version_command);
        out.push(family_transport);
        out.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    /// Appends a CRC32C TLV that makes the v2 header `bytes` check out.
    fn with_crc32c(mut bytes: Vec<u8>) -> Vec<u8> {
        let len = u16::from_be_bytes([bytes[14], bytes[15]]) + 7;
        bytes[14..16].copy_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&tlv(PP2_TYPE_CRC32C, &[0; 4]));
        let mut crc = Crc32c::new();
        crc.update(&bytes);
        let at = bytes.len() - 4;
        bytes[at..].copy_from_slice(&crc.finish().to_be_bytes());
        bytes
    }

    fn ipv4_block(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        [&src[..], &dst, &sport.to_be_bytes(), &dport.to_be_bytes()].concat()
    }

    fn sun_path(path: &[u8]) -> [u8; 108] {
        let mut out = [0; 108];
        out[..path.len()].copy_from_slice(path);
        out
    }

    /// The header in `bytes` followed by application bytes: every shorter
    /// prefix is `Incomplete`, and every longer one is the header, having
    /// consumed exactly its bytes.
    fn assert_header(bytes: &[u8], accept: Versions, want: &ProxyHeader) {
        let mut stream = bytes.to_vec();
        stream.extend_from_slice(b"app\r\nPROXY UNKNOWN\r\n");
        for n in 0..bytes.len() {
            assert_eq!(
                parse(&stream[..n], accept),
                Ok(Parsed::Incomplete),
                "prefix of {n} bytes"
            );
        }
        for n in bytes.len()..=stream.len() {
            assert_eq!(
                parse(&stream[..n], accept),
                Ok(Parsed::Done {
                    consumed: bytes.len(),
                    header: want.clone()
                }),
                "prefix of {n} bytes"
            );
        }
    }

    fn assert_error(bytes: &[u8], accept: Versions, want: ProxyError) {
        assert_eq!(parse(bytes, accept), Err(want.clone()));
        let text = want.to_string();
        assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");
    }

    // ---- v1 ----

    #[test]
    fn v1_tcp4() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let want = proxied(inet("192.168.0.1:56324"), inet("192.168.0.11:443"));
        assert_header(line, Versions::V1, &want);
        assert_header(line, Versions::Both, &want);
    }

    #[test]
    fn v1_tcp6() {
        let line = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n";
        let want = proxied(inet("[2001:db8::1]:0"), inet("[::ffff:10.0.0.1]:65535"));
        assert_header(line, Versions::Both, &want);
        let longest = format!("PROXY TCP6 {0} {0} 65535 65535\r\n", ["ffff"; 8].join(":"));
        assert_eq!(longest.len(), 104);
        let ip = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        assert_header(
            longest.as_bytes(),
            Versions::V1,
            &proxied(inet(ip), inet(ip)),
        );
    }

    #[test]
    fn v1_unknown_ignores_the_rest_of_the_line() {
        let none = proxied(None, None);
        assert_header(b"PROXY UNKNOWN\r\n", Versions::V1, &none);
        assert_header(b"PROXY UNKNOWN 1.2.3.4 whatever\r\n", Versions::V1, &none);
        assert_header(b"PROXY UNKNOWN \xff\x00\r junk\r\n", Versions::Both, &none);
        // The worst case the specification lists: 107 bytes exactly.
        let longest = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            ["ffff"; 8].join(":")
        );
        assert_eq!(longest.len(), V1_MAX_LEN);
        assert_header(longest.as_bytes(), Versions::V1, &none);
    }

    #[test]
    fn v1_longer_than_107_bytes_is_refused_at_byte_107() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 1, b'x');
        assert_eq!(parse(&line, Versions::V1), Ok(Parsed::Incomplete));
        line.push(b'\r');
        assert_error(&line, Versions::V1, ProxyError::V1TooLong);
        line.push(b'\n');
        assert_error(&line, Versions::V1, ProxyError::V1TooLong);
        assert_eq!(
            ProxyError::V1TooLong.to_string(),
            "PROXY v1 header longer than 107 bytes"
        );
    }

    #[test]
    fn v1_needs_crlf() {
        assert_error(b"PROXY UNKNOWN\n", Versions::V1, ProxyError::V1BareLineFeed);
        assert_error(b"PROXY \n", Versions::V1, ProxyError::V1BareLineFeed);
        // A CR alone ends nothing: the line goes on.
        assert_eq!(
            parse(b"PROXY UNKNOWN\r", Versions::V1),
            Ok(Parsed::Incomplete)
        );
        assert_error(
            b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n",
            Versions::V1,
            ProxyError::V1BadAddress {
                end: End::Source,
                protocol: "TCP4",
                text: "1.2.3.4\r".into(),
            },
        );
    }

    #[test]
    fn v1_unknown_protocols() {
        for (line, word) in [
            (&b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], "UDP4"),
            (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "tcp4"),
            (b"PROXY UNKNOWNX\r\n", "UNKNOWNX"),
            (b"PROXY \r\n", ""),
            (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", ""),
        ] {
            assert_error(
                line,
                Versions::V1,
                ProxyError::V1UnknownProtocol(word.to_string()),
            );
        }
        assert_eq!(
            ProxyError::V1UnknownProtocol("UDP4".into()).to_string(),
            "PROXY v1: unknown protocol \"UDP4\" (expected TCP4, TCP6 or UNKNOWN)"
        );
    }

    #[test]
    fn v1_field_counts() {
        for (line, protocol, found) in [
            (&b"PROXY TCP4\r\n"[..], "TCP4", 0),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "TCP4", 3),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "TCP4", 5),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "TCP4", 5),
            (b"PROXY TCP6 ::1  ::1 1 2\r\n", "TCP6", 5),
        ] {
            assert_error(
                line,
                Versions::V1,
                ProxyError::V1FieldCount { protocol, found },
            );
        }
    }

    #[test]
    fn v1_bad_addresses() {
        for (line, end, protocol, text) in [
            (
                &b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n"[..],
                End::Source,
                "TCP4",
                "01.2.3.4",
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                End::Source,
                "TCP4",
                "1.2.3",
            ),
            (
                b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
                End::Destination,
                "TCP4",
                "::1",
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                End::Source,
                "TCP6",
                "1.2.3.4",
            ),
            (
                b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n",
                End::Destination,
                "TCP6",
                "fe80::1%eth0",
            ),
            (
                b"PROXY TCP4 \xff 5.6.7.8 1 2\r\n",
                End::Source,
                "TCP4",
                "\u{fffd}",
            ),
        ] {
            let want = ProxyError::V1BadAddress {
                end,
                protocol,
                text: text.to_string(),
            };
            assert_error(line, Versions::V1, want);
        }
        let e = ProxyError::V1BadAddress {
            end: End::Destination,
            protocol: "TCP4",
            text: "a\rb".into(),
        };
        assert_eq!(
            e.to_string(),
            "PROXY v1: bad TCP4 destination address \"a\\rb\""
        );
    }

    #[test]
    fn v1_bad_ports() {
        for (line, end, text) in [
            (
                &b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n"[..],
                End::Source,
                "99999",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                End::Source,
                "65536",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", End::Source, "01"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", End::Source, "+1"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
                End::Destination,
                "-2",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x10\r\n",
                End::Destination,
                "0x10",
            ),
            (b"PROXY TCP6 ::1 ::2 1 00\r\n", End::Destination, "00"),
        ] {
            let want = ProxyError::V1BadPort {
                end,
                text: text.to_string(),
            };
            assert_error(line, Versions::V1, want);
        }
        let e = ProxyError::V1BadPort {
            end: End::Source,
            text: "99999".into(),
        };
        assert_eq!(e.to_string(), "PROXY v1: bad source port \"99999\"");
    }

    // ---- v2 ----

    #[test]
    fn v2_inet_stream_and_datagram() {
        let block = ipv4_block([10, 0, 0, 1], [192, 168, 1, 2], 40000, 443);
        let want = proxied(inet("10.0.0.1:40000"), inet("192.168.1.2:443"));
        assert_header(&v2(0x21, 0x11, &block), Versions::V2, &want);
        assert_header(&v2(0x21, 0x12, &block), Versions::Both, &want);
    }

    #[test]
    fn v2_inet6() {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "::1".parse().unwrap();
        let block = [
            &src.octets()[..],
            &dst.octets(),
            &1u16.to_be_bytes(),
            &65535u16.to_be_bytes(),
        ]
        .concat();
        let want = proxied(inet("[2001:db8::7]:1"), inet("[::1]:65535"));
        assert_header(&v2(0x21, 0x21, &block), Versions::V2, &want);
        assert_header(&v2(0x21, 0x22, &block), Versions::V2, &want);
    }

    #[test]
    fn v2_unix_paths() {
        let full = [b'p'; 108];
        let mut trailing_garbage = sun_path(b"/run/b.sock");
        trailing_garbage[20..30].fill(b'z');
        let abstract_name = sun_path(b"\0hidden");
        for (src, dst, want_src, want_dst) in [
            (
                sun_path(b"/run/a.sock"),
                sun_path(b"/run/b.sock"),
                unix_path(b"/run/a.sock"),
                unix_path(b"/run/b.sock"),
            ),
            // 108 bytes, no NUL: the whole array is the path.
            (
                full,
                trailing_garbage,
                unix_path(&full),
                unix_path(b"/run/b.sock"),
            ),
            // Unnamed and abstract sockets have no path.
            (
                [0; 108],
                abstract_name,
                Some(Address::Unix(None)),
                Some(Address::Unix(None)),
            ),
            (
                sun_path(b"\xff\xfe"),
                sun_path(b"rel"),
                unix_path(b"\xff\xfe"),
                unix_path(b"rel"),
            ),
        ] {
            let block = [src, dst].concat();
            let want = proxied(want_src, want_dst);
            assert_header(&v2(0x21, 0x31, &block), Versions::V2, &want);
            assert_header(&v2(0x21, 0x32, &block), Versions::V2, &want);
        }
    }

    #[test]
    fn v2_unspecified_family_or_transport_skips_the_block() {
        let block = ipv4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        for family_transport in [0x00, 0x01, 0x02, 0x10, 0x20, 0x30] {
            assert_header(
                &v2(0x21, family_transport, &block),
                Versions::V2,
                &proxied(None, None),
            );
            // Not even a well-formed TLV list is required.
            assert_header(
                &v2(0x21, family_transport, &[0xff]),
                Versions::V2,
                &proxied(None, None),
            );
        }
    }

    #[test]
    fn v2_local_skips_exactly_len_bytes() {
        let local = ProxyHeader::without_addresses(Command::Local);
        assert_header(&v2(0x20, 0x00, &[]), Versions::V2, &local);
        // Addresses, TLVs, or bytes that are neither: skipped unread.
        let block = [
            ipv4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2),
            tlv(0x01, b"h2"),
        ]
        .concat();
        assert_header(&v2(0x20, 0x11, &block), Versions::V2, &local);
        assert_header(&v2(0x20, 0x00, &[1, 2, 3]), Versions::Both, &local);
        // LOCAL ignores the family byte, even values PROXY refuses.
        assert_header(&v2(0x20, 0xff, b"\r\n"), Versions::V2, &local);
    }

    #[test]
    fn v2_tlvs_in_order() {
        let block = [
            ipv4_block([1, 2, 3, 4], [5, 6, 7, 8], 1000, 80),
            tlv(0x01, b"h2"),
            tlv(0x02, b"example.com"),
            tlv(0x04, b""),
            tlv(0xe0, &[0xab; 300]),
        ]
        .concat();
        let mut want = proxied(inet("1.2.3.4:1000"), inet("5.6.7.8:80"));
        want.tlvs = vec![
            (0x01, b"h2".to_vec()),
            (0x02, b"example.com".to_vec()),
            (0x04, Vec::new()),
            (0xe0, vec![0xab; 300]),
        ];
        assert_header(&v2(0x21, 0x11, &block), Versions::V2, &want);

        let unix_block = [[0; 108], [0; 108]].concat();
        let mut want = proxied(Some(Address::Unix(None)), Some(Address::Unix(None)));
        want.tlvs = vec![(0x05, b"id".to_vec())];
        let bytes = v2(0x21, 0x31, &[unix_block, tlv(0x05, b"id")].concat());
        assert_header(&bytes, Versions::V2, &want);
    }

    #[test]
    fn v2_tlv_overrun() {
        let addresses = ipv4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
        let at = V2_FIXED_LEN + addresses.len();
        for tail in [
            &[0x01][..],
            &[0x01, 0x00],
            &[0x01, 0x00, 0x01],
            &[0x01, 0x00, 0x05, b'a', b'b'],
        ] {
            let bytes = v2(0x21, 0x11, &[&addresses[..], tail].concat());
            assert_error(
                &bytes,
                Versions::V2,
                ProxyError::V2TlvOverrun { offset: at },
            );
        }
        // The second TLV is the one that overruns.
        let tail = [tlv(0x01, b"x"), vec![0x02, 0xff, 0xff]].concat();
        let bytes = v2(0x21, 0x11, &[&addresses[..], &tail].concat());
        assert_error(
            &bytes,
            Versions::V2,
            ProxyError::V2TlvOverrun { offset: at + 4 },
        );
    }

    #[test]
    fn crc32c_matches_the_known_check_value() {
        let mut crc = Crc32c::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xE306_9283);
    }

    #[test]
    fn v2_crc32c_is_checked() {
        let block = [
            ipv4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2),
            tlv(0x02, b"host"),
        ]
        .concat();
        let good = with_crc32c(v2(0x21, 0x11, &block));
        let stated = u32::from_be_bytes(good[good.len() - 4..].try_into().unwrap());
        let mut want = proxied(inet("1.2.3.4:1"), inet("5.6.7.8:2"));
        want.tlvs = vec![
            (0x02, b"host".to_vec()),
            (PP2_TYPE_CRC32C, stated.to_be_bytes().to_vec()),
        ];
        assert_header(&good, Versions::V2, &want);

        // A changed byte is caught, the signature's included. (One that
        // turns the command into LOCAL, or the family or transport into
        // UNSPEC, is not: the block, checksum included, is then skipped
        // unread.)
        for at in [0, 11, 16, 20, good.len() - 9, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            match parse(&bad, Versions::V2) {
                Err(ProxyError::V2ChecksumMismatch { .. }) | Err(ProxyError::NotProxy) => {}
                other => panic!("byte {at} changed: {other:?}"),
            }
        }
        let mut bad = good.clone();
        bad[20] ^= 1;
        let Err(e) = parse(&bad, Versions::V2) else {
            panic!("accepted")
        };
        assert!(
            e.to_string().starts_with("PROXY v2: CRC32C mismatch"),
            "{e}"
        );

        for len in [0, 3, 5] {
            let bytes = v2(
                0x21,
                0x11,
                &[&block[..], &tlv(0x03, &vec![0; len])].concat(),
            );
            assert_error(&bytes, Versions::V2, ProxyError::V2ChecksumLength(len));
        }
    }

    #[test]
    fn v2_address_block_too_short() {
        for (family_transport, family, needed) in [
            (0x11, "AF_INET", 12),
            (0x22, "AF_INET6", 36),
            (0x31, "AF_UNIX", 216),
        ] {
            for len in [0, 5, needed - 1] {
                assert_error(
                    &v2(0x21, family_transport, &vec![0; len]),
                    Versions::V2,
                    ProxyError::V2AddressTooShort {
                        family,
                        needed,
                        len,
                    },
                );
            }
        }
        let e = ProxyError::V2AddressTooShort {
            family: "AF_INET",
            needed: 12,
            len: 5,
        };
        assert_eq!(
            e.to_string(),
            "PROXY v2: AF_INET needs 12 address bytes, the header has 5"
        );
    }

    #[test]
    fn v2_fixed_bytes_fail_as_soon_as_they_arrive() {
        let sig = V2_SIGNATURE.to_vec();
        for (version_command, want) in [
            (0x11, ProxyError::V2Version(1)),
            (0x31, ProxyError::V2Version(3)),
            (0x01, ProxyError::V2Version(0)),
            (0x22, ProxyError::V2Command(2)),
            (0x2f, ProxyError::V2Command(0xf)),
        ] {
            assert_error(&[&sig[..], &[version_command]].concat(), Versions::V2, want);
        }
        assert_eq!(
            ProxyError::V2Version(3).to_string(),
            "PROXY v2: unsupported version 3"
        );
        for (family_transport, want) in [
            (0x41, ProxyError::V2Family(4)),
            (0xf0, ProxyError::V2Family(0xf)),
            (0x13, ProxyError::V2Transport(3)),
            (0x0f, ProxyError::V2Transport(0xf)),
        ] {
            let bytes = [&sig[..], &[0x21, family_transport]].concat();
            assert_error(&bytes, Versions::Both, want.clone());
            // The same once the whole header is there.
            assert_error(&v2(0x21, family_transport, &[0; 12]), Versions::V2, want);
        }
    }

    #[test]
    fn v2_longest_header() {
        let block = vec![0x55; usize::from(u16::MAX)];
        let bytes = v2(0x20, 0x00, &block);
        assert_eq!(bytes.len(), MAX_HEADER_LEN);
        assert_eq!(
            parse(&bytes[..MAX_HEADER_LEN - 1], Versions::V2),
            Ok(Parsed::Incomplete)
        );
        let mut stream = bytes.clone();
        stream.extend_from_slice(b"after");
        assert_eq!(
            parse(&stream, Versions::V2),
            Ok(Parsed::Done {
                consumed: MAX_HEADER_LEN,
                header: ProxyHeader::without_addresses(Command::Local),
            })
        );
    }

    // ---- which bytes can start a header ----

    #[test]
    fn not_a_header_fails_at_the_first_byte_that_cannot_start_one() {
        for accept in ALL {
            for bytes in [
                &b"G"[..],
                b"GET / HTTP/1.1\r\n",
                b"\x16\x03\x01",
                b"PROXX",
                b"PROXY\r\n",
                b"proxy ",
                b" PROXY ",
                b"\r\n\r\n\0\r\nQUIX",
                b"\r\n\r\n\x01",
                b"\n",
            ] {
                assert_error(bytes, accept, ProxyError::NotProxy);
            }
            assert_eq!(parse(b"", accept), Ok(Parsed::Incomplete));
        }
        assert_eq!(
            ProxyError::NotProxy.to_string(),
            "not a PROXY protocol header"
        );
    }

    #[test]
    fn prefixes_of_an_accepted_header_wait() {
        for n in 0..V1_PREFIX.len() {
            for accept in ALL {
                assert_eq!(parse(&V1_PREFIX[..n], accept), Ok(Parsed::Incomplete));
            }
        }
        for n in 0..V2_SIGNATURE.len() {
            for accept in ALL {
                assert_eq!(parse(&V2_SIGNATURE[..n], accept), Ok(Parsed::Incomplete));
            }
        }
    }

    #[test]
    fn only_the_configured_versions_are_accepted() {
        assert_error(b"PROXY ", Versions::V2, ProxyError::VersionNotAccepted(1));
        assert_error(
            b"PROXY UNKNOWN\r\n",
            Versions::V2,
            ProxyError::VersionNotAccepted(1),
        );
        assert_error(
            V2_SIGNATURE,
            Versions::V1,
            ProxyError::VersionNotAccepted(2),
        );
        assert_error(
            &v2(0x20, 0, &[]),
            Versions::V1,
            ProxyError::VersionNotAccepted(2),
        );
        assert_eq!(
            ProxyError::VersionNotAccepted(2).to_string(),
            "PROXY v2 header, but only v1 is accepted"
        );
        assert_eq!(
            ProxyError::VersionNotAccepted(1).to_string(),
            "PROXY v1 header, but only v2 is accepted"
        );
    }

    #[test]
    fn every_error_displays_on_one_line() {
        let errors = [
            ProxyError::NotProxy,
            ProxyError::VersionNotAccepted(1),
            ProxyError::V1TooLong,
            ProxyError::V1BareLineFeed,
            ProxyError::V1UnknownProtocol("a\nb".into()),
            ProxyError::V1FieldCount {
                protocol: "TCP6",
                found: 2,
            },
            ProxyError::V1BadAddress {
                end: End::Source,
                protocol: "TCP6",
                text: "\r\n".into(),
            },
            ProxyError::V1BadPort {
                end: End::Destination,
                text: "\u{7f}\n".into(),
            },
            ProxyError::V2Version(0),
            ProxyError::V2Command(3),
            ProxyError::V2Family(5),
            ProxyError::V2Transport(9),
            ProxyError::V2AddressTooShort {
                family: "AF_UNIX",
                needed: 216,
                len: 0,
            },
            ProxyError::V2TlvOverrun { offset: 28 },
            ProxyError::V2ChecksumLength(2),
            ProxyError::V2ChecksumMismatch {
                stated: 1,
                computed: 2,
            },
        ];
        for e in errors {
            let text = e.to_string();
            assert!(!text.is_empty(), "{e:?}");
            assert!(!text.contains(['\n', '\r']), "{e:?}: {text:?}");
        }
    }

    #[test]
    fn proxy_info_names_the_client_and_keeps_the_real_addresses_for_local() {
        let balancer = inet("127.0.0.1:5000").unwrap();
        let mut relayed = proxied(inet("192.0.2.9:40000"), inet("198.51.100.7:443"));
        relayed.tlvs = vec![
            (ProxyInfo::TLV_ALPN, b"h2".to_vec()),
            (ProxyInfo::TLV_AUTHORITY, b"example.com".to_vec()),
            (ProxyInfo::TLV_UNIQUE_ID, vec![0, 1, 2]),
        ];
        let info = ProxyInfo::new(relayed, balancer.clone());
        assert_eq!(info.client(), &inet("192.0.2.9:40000").unwrap());
        assert_eq!(info.destination(), inet("198.51.100.7:443").as_ref());
        assert_eq!(info.proxy(), &balancer);
        assert!(info.is_relayed() && !info.is_local());
        assert_eq!(info.alpn(), Some(&b"h2"[..]));
        assert_eq!(info.authority(), Some("example.com"));
        assert_eq!(info.unique_id(), Some(&[0, 1, 2][..]));
        assert_eq!(info.tlvs().count(), 3);
        for header in [
            ProxyHeader::without_addresses(Command::Local),
            proxied(None, None),
        ] {
            let local = header.command == Command::Local;
            let info = ProxyInfo::new(header, balancer.clone());
            assert_eq!(info.client(), &balancer);
            assert_eq!(info.destination(), None);
            assert_eq!(info.is_local(), local);
            assert!(!info.is_relayed());
        }
    }

    #[test]
    fn the_plan_reads_exact_lengths() {
        assert_eq!(
            next_step(b"", Versions::Both),
            Ok(Step::Read(MIN_HEADER_LEN))
        );
        assert_eq!(next_step(b"PRO", Versions::Both), Ok(Step::Read(12)));
        let v1 = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n";
        assert_eq!(
            next_step(&v1[..15], Versions::Both),
            Ok(Step::Line(V1_MAX_LEN - 15))
        );
        assert!(matches!(next_step(v1, Versions::Both), Ok(Step::Done(_))));
        let v2 = v2(0x21, 0x11, &ipv4_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        assert_eq!(next_step(&v2[..15], Versions::Both), Ok(Step::Read(1)));
        assert_eq!(next_step(&v2[..16], Versions::Both), Ok(Step::Read(12)));
        assert_eq!(next_step(&v2[..20], Versions::Both), Ok(Step::Read(8)));
        assert!(matches!(next_step(&v2, Versions::Both), Ok(Step::Done(_))));
        assert_eq!(next_step(b"GET", Versions::Both), Err(ProxyError::NotProxy));
        assert_eq!(line_take(b"abc"), 3);
        assert_eq!(line_take(b"ab\r\nGET"), 4);
    }

    // ---- properties ----

    /// A valid header, the bytes it is sent as, and the version.
    #[derive(Debug, Clone)]
    struct Case {
        bytes: Vec<u8>,
        header: ProxyHeader,
        version: u8,
    }

    fn v1_case() -> impl Strategy<Value = Case> {
        let tcp4 = (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(|(src, dst, sport, dport)| {
                let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
                Case {
                    bytes: format!("PROXY TCP4 {src} {dst} {sport} {dport}\r\n").into_bytes(),
                    header: proxied(
                        Some(Address::Inet(SocketAddr::new(src.into(), sport))),
                        Some(Address::Inet(SocketAddr::new(dst.into(), dport))),
                    ),
                    version: 1,
                }
            });
        let tcp6 = (any::<u128>(), any::<u128>(), any::<u16>(), any::<u16>()).prop_map(
            |(src, dst, sport, dport)| {
                let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
                Case {
                    bytes: format!("PROXY TCP6 {src} {dst} {sport} {dport}\r\n").into_bytes(),
                    header: proxied(
                        Some(Address::Inet(SocketAddr::new(src.into(), sport))),
                        Some(Address::Inet(SocketAddr::new(dst.into(), dport))),
                    ),
                    version: 1,
                }
            },
        );
        // "PROXY UNKNOWN" + " " + tail + CRLF, at most 107 bytes.
        let unknown = proptest::option::of("[ -~]{0,91}").prop_map(|tail| Case {
            bytes: match tail {
                Some(tail) => format!("PROXY UNKNOWN {tail}\r\n"),
                None => "PROXY UNKNOWN\r\n".to_string(),
            }
            .into_bytes(),
            header: proxied(None, None),
            version: 1,
        });
        prop_oneof![tcp4, tcp6, unknown]
    }

    /// TLVs of any type but CRC32C, which [`v2_case`] adds with a right
    /// checksum.
    fn tlvs() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        let kind = any::<u8>().prop_filter("CRC32C is added separately", |&k| k != PP2_TYPE_CRC32C);
        proptest::collection::vec((kind, proptest::collection::vec(any::<u8>(), 0..40)), 0..4)
    }

    /// A `sun_path` and the address it decodes to: 0 to 108 bytes without
    /// NUL, then NULs, or a NUL and anything.
    fn unix_address() -> impl Strategy<Value = ([u8; 108], Address)> {
        // The edges, 0, 107 and 108 bytes, as often as the rest.
        let len = prop_oneof![Just(0usize), Just(107), Just(108), 1usize..107];
        (
            len.prop_flat_map(|n| proptest::collection::vec(1u8..=255, n)),
            proptest::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(path, junk)| {
                let mut raw = sun_path(&path);
                if path.len() < 107 {
                    let n = junk.len().min(107 - path.len());
                    raw[path.len() + 1..path.len() + 1 + n].copy_from_slice(&junk[..n]);
                }
                let address = if path.is_empty() {
                    Address::Unix(None)
                } else {
                    Address::Unix(Some(PathBuf::from(OsStr::from_bytes(&path))))
                };
                (raw, address)
            })
    }

    fn v2_case() -> impl Strategy<Value = Case> {
        let local = (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
            |(family_transport, block)| Case {
                bytes: v2(0x20, family_transport, &block),
                header: ProxyHeader::without_addresses(Command::Local),
                version: 2,
            },
        );
        let unspecified = (
            prop_oneof![
                Just(0x00u8),
                Just(0x01),
                Just(0x02),
                Just(0x10),
                Just(0x20),
                Just(0x30)
            ],
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(family_transport, block)| Case {
                bytes: v2(0x21, family_transport, &block),
                header: proxied(None, None),
                version: 2,
            });
        let ip = prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>()).prop_map(|(s, d)| {
                (
                    0x10u8,
                    [&s[..], &d].concat(),
                    IpAddr::from(s),
                    IpAddr::from(d),
                )
            }),
            (any::<[u8; 16]>(), any::<[u8; 16]>()).prop_map(|(s, d)| {
                (
                    0x20u8,
                    [&s[..], &d].concat(),
                    IpAddr::from(s),
                    IpAddr::from(d),
                )
            }),
        ];
        let inet = (ip, 1u8..=2, any::<u16>(), any::<u16>()).prop_map(
            |((family, ips, src, dst), transport, sport, dport)| {
                let block = [&ips[..], &sport.to_be_bytes(), &dport.to_be_bytes()].concat();
                let header = proxied(
                    Some(Address::Inet(SocketAddr::new(src, sport))),
                    Some(Address::Inet(SocketAddr::new(dst, dport))),
                );
                (family | transport, block, header)
            },
        );
        let unix = (unix_address(), unix_address(), 1u8..=2).prop_map(
            |((src_raw, src), (dst_raw, dst), transport)| {
                (
                    0x30 | transport,
                    [src_raw, dst_raw].concat(),
                    proxied(Some(src), Some(dst)),
                )
            },
        );
        let with_addresses = (prop_oneof![inet, unix], tlvs(), any::<bool>()).prop_map(
            |((family_transport, addresses, mut header), tlvs, crc)| {
                let mut block = addresses;
                for (kind, value) in &tlvs {
                    block.extend_from_slice(&tlv(*kind, value));
                }
                header.tlvs = tlvs;
                let mut bytes = v2(0x21, family_transport, &block);
                if crc {
                    bytes = with_crc32c(bytes);
                    let checksum = bytes[bytes.len() - 4..].to_vec();
                    header.tlvs.push((PP2_TYPE_CRC32C, checksum));
                }
                Case {
                    bytes,
                    header,
                    version: 2,
                }
            },
        );
        prop_oneof![local, unspecified, with_addresses]
    }

    fn case() -> impl Strategy<Value = Case> {
        prop_oneof![v1_case(), v2_case()]
    }

    /// What a connection does: append each chunk, parse, stop at the first
    /// verdict. Returns the verdict and how many bytes it had.
    fn feed(
        stream: &[u8],
        chunks: &[usize],
        accept: Versions,
    ) -> (Result<Parsed, ProxyError>, usize) {
        let mut buf = Vec::new();
        let mut rest = stream;
        let mut sizes = chunks.iter().copied().cycle();
        loop {
            let n = sizes
                .next()
                .unwrap_or(1)
                .clamp(1, rest.len().max(1))
                .min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            buf.extend_from_slice(chunk);
            rest = tail;
            match parse(&buf, accept) {
                Ok(Parsed::Incomplete) if !rest.is_empty() => continue,
                verdict => return (verdict, buf.len()),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn valid_headers_decode_whatever_the_split(
            case in case(),
            app in proptest::collection::vec(any::<u8>(), 0..64),
            chunks in proptest::collection::vec(1usize..40, 1..8),
            both in any::<bool>(),
        ) {
            let accept = match (case.version, both) {
                (_, true) => Versions::Both,
                (1, false) => Versions::V1,
                _ => Versions::V2,
            };
            let stream = [&case.bytes[..], &app].concat();
            let want = Ok(Parsed::Done { consumed: case.bytes.len(), header: case.header.clone() });

            // One byte at a time: every prefix, since the parser sees the
            // whole buffer on each call.
            for n in 0..case.bytes.len() {
                prop_assert_eq!(parse(&stream[..n], accept), Ok(Parsed::Incomplete), "{} bytes", n);
            }
            for n in case.bytes.len()..=stream.len() {
                prop_assert_eq!(&parse(&stream[..n], accept), &want, "{} bytes", n);
            }

            // Random reads, as a connection gets them.
            let (verdict, held) = feed(&stream, &chunks, accept);
            prop_assert_eq!(&verdict, &want);
            prop_assert!(held >= case.bytes.len());
            prop_assert_eq!(&stream[case.bytes.len()..held], &app[..held - case.bytes.len()]);

            // The other version alone refuses it.
            let other = if case.version == 1 { Versions::V2 } else { Versions::V1 };
            prop_assert_eq!(parse(&stream, other), Err(ProxyError::VersionNotAccepted(case.version)));
        }

        #[test]
        fn garbage_never_panics_and_verdicts_hold(
            prefix in prop_oneof![
                Just(&b""[..]),
                Just(&b"PROXY "[..]),
                Just(&b"PROXY TCP4 "[..]),
                Just(&b"PROXY TCP6 "[..]),
                Just(&b"\r\n\r\n\0\r\nQUIT\n"[..]),
                Just(&b"\r\n\r\n\0\r\nQUIT\n\x21"[..]),
                Just(&b"\r\n\r\n\0\r\nQUIT\n\x20"[..]),
            ],
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let data = [prefix, &tail[..]].concat();
            for accept in ALL {
                let mut first: Option<(usize, Result<Parsed, ProxyError>)> = None;
                for n in 0..=data.len() {
                    let verdict = parse(&data[..n], accept);
                    match (&first, &verdict) {
                        (None, Ok(Parsed::Incomplete)) => {}
                        (None, _) => first = Some((n, verdict.clone())),
                        // A verdict, once given, holds as more bytes come.
                        (Some((_, v)), _) => prop_assert_eq!(v, &verdict, "{} bytes", n),
                    }
                    match verdict {
                        Ok(Parsed::Done { consumed, .. }) => {
                            prop_assert!(consumed > 0 && consumed <= n);
                        }
                        Err(e) => {
                            let text = e.to_string();
                            prop_assert!(!text.is_empty() && !text.contains(['\n', '\r']));
                        }
                        Ok(Parsed::Incomplete) => {}
                    }
                }
                // A verdict needs no byte past the header.
                if let Some((_, Ok(Parsed::Done { consumed, header }))) = &first {
                    prop_assert_eq!(
                        parse(&data[..*consumed], accept),
                        Ok(Parsed::Done { consumed: *consumed, header: header.clone() })
                    );
                }
            }
        }
    }
}

/// The PROXY header as a byte layer of the connection pipeline: it holds
/// what arrives until the header is whole (at most [`MAX_HEADER_LEN`]
/// bytes), hands the header to the pipeline, passes the bytes
/// after the header up, and then drops out of the stack. A header that
/// does not complete within [`HEADER_TIMEOUT`] is a slow peer.
#[derive(Debug)]
pub(crate) struct ProxyLayer {
    accept: Versions,
    held: Vec<u8>,
    done: bool,
    deadline: std::time::Instant,
}

/// How long a connection may take to send its PROXY header (the
/// specification asks for at least 3 s).
pub(crate) const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl ProxyLayer {
    pub(crate) fn new(accept: Versions, now: std::time::Instant) -> ProxyLayer {
        ProxyLayer {
            accept,
            held: Vec::new(),
            done: false,
            deadline: now + HEADER_TIMEOUT,
        }
    }
}

impl crate::pipeline::layer::Layer for ProxyLayer {
    fn input(
        &mut self,
        wire: &[u8],
        io: &mut crate::pipeline::layer::LayerIo<'_>,
    ) -> Result<(), crate::pipeline::layer::LayerError> {
        if self.done {
            io.up.extend_from_slice(wire);
            return Ok(());
        }
        // Parse in place when nothing is held (the whole header in one
        // read, the common case); hold only an unfinished header.
        let parsed = if self.held.is_empty() {
            parse(wire, self.accept).map(|p| (p, wire))
        } else {
            self.held.extend_from_slice(wire);
            parse(&self.held, self.accept).map(|p| (p, self.held.as_slice()))
        };
        match parsed {
            Ok((Parsed::Incomplete, _)) => {
                if self.held.is_empty() {
                    self.held.extend_from_slice(wire);
                }
                Ok(())
            }
            Ok((Parsed::Done { consumed, header }, buf)) => {
                io.up.extend_from_slice(&buf[consumed..]);
                // What it means (LOCAL and UNKNOWN keep the real
                // endpoints) is `ProxyInfo`'s to say, after the gate.
                *io.header = Some(header);
                self.done = true;
                self.held = Vec::new();
                Ok(())
            }
            Err(e) => Err(crate::pipeline::layer::LayerError(e.to_string())),
        }
    }

    fn is_transparent(&self) -> bool {
        self.done
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        (!self.done).then_some(self.deadline)
    }
}
