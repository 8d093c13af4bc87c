//! What each request carries, and how a reply is checked against it.
//!
//! A payload is unique to its connection and sequence number, so a reply
//! that belongs to another request (reordered, duplicated, or another
//! connection's) is caught, not just a corrupted one; and it is cheap to
//! regenerate, so checking every reply costs next to nothing.

use std::fmt::Write as _;
use std::io;

use sockserv::frame::{Codec, Encoder, Framing};

/// Request payloads: printable, unique per (connection, sequence number),
/// cheap to regenerate for checking a reply.
///
/// A payload is a window into a long "tape" of the alphabet repeated, with
/// the connection number written in the first 4 bytes and the sequence
/// number in the last 8 (base-|alphabet| digits), as far as the size allows.
/// Regenerating the expected reply is a `memcpy` plus 12 digit writes, so
/// checking every reply costs next to nothing even for large payloads.
#[derive(Debug)]
pub(super) struct Payloads {
    alphabet: Vec<u8>,
    tape: Vec<u8>,
    size: usize,
}

impl Payloads {
    /// Printable ASCII (no space, so a line protocol that trims cannot change
    /// a payload), minus every byte of the framing's delimiters (all of
    /// them: `delim:A|B` splits on either) and of whatever the encoder
    /// appends after a payload (`\n`, `\r\n`).
    pub(super) fn new(size: usize, framing: Option<&Framing>) -> io::Result<Payloads> {
        Payloads::build(size, framing, false)
    }

    /// Payloads that an upper-casing server answers unchanged: no lower-case
    /// letters, so the seed's `upper` handler and an echo reply alike. The
    /// churn workload is meant to run against either.
    pub(super) fn case_blind(size: usize, framing: Option<&Framing>) -> io::Result<Payloads> {
        Payloads::build(size, framing, true)
    }

    fn build(size: usize, framing: Option<&Framing>, case_blind: bool) -> io::Result<Payloads> {
        let mut alphabet: Vec<u8> = (0x21u8..=0x7e).collect();
        if case_blind {
            alphabet.retain(|b| !b.is_ascii_lowercase());
        }
        if let Some(framing) = framing {
            let codec = framing.codec();
            let mut banned = Vec::new();
            if let Codec::Delimiter(d) = &codec {
                d.delimiters().for_each(|d| banned.extend_from_slice(d));
            }
            let mut probe = Vec::new();
            if codec.encode(b"x", &mut probe).is_ok() && probe.len() > 1 && probe[0] == b'x' {
                banned.extend_from_slice(&probe[1..]);
            }
            alphabet.retain(|b| !banned.contains(b));
        }
        if alphabet.len() < 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the framing's delimiter leaves no printable bytes to build requests from",
            ));
        }
        let a = alphabet.len();
        let tape: Vec<u8> = alphabet.iter().copied().cycle().take(size + a).collect();
        let payloads = Payloads {
            alphabet,
            tape,
            size,
        };
        if let Some(framing) = framing {
            // Every payload has the same length and alphabet, so if one
            // encodes, all do.
            let mut sample = vec![0; size];
            payloads.fill(&mut sample, 0, 0);
            let mut out = Vec::new();
            if let Err(e) = framing.codec().encode(&sample, &mut out) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{size}-byte requests cannot be sent with --framing {framing}: {e}"),
                ));
            }
        }
        Ok(payloads)
    }

    /// Writes the payload of request `seq` on connection `conn` into `out`
    /// (`out.len()` must be `size`).
    pub(super) fn fill(&self, out: &mut [u8], conn: usize, seq: u64) {
        let a = self.alphabet.len() as u64;
        let offset = ((conn as u64).wrapping_mul(7).wrapping_add(seq) % a) as usize;
        out.copy_from_slice(&self.tape[offset..offset + self.size]);
        let n = out.len();
        // Sequence number in the last (up to) 8 bytes, least significant last.
        let seq_digits = n.min(8);
        let mut s = seq;
        for b in out[n - seq_digits..].iter_mut().rev() {
            *b = self.alphabet[(s % a) as usize];
            s /= a;
        }
        // Connection number in the first 4 bytes, when they do not overlap.
        if n >= 12 {
            let mut c = conn as u64;
            for b in out[..4].iter_mut().rev() {
                *b = self.alphabet[(c % a) as usize];
                c /= a;
            }
        }
    }

    pub(super) fn append(&self, out: &mut Vec<u8>, conn: usize, seq: u64) {
        let start = out.len();
        out.resize(start + self.size, 0);
        self.fill(&mut out[start..], conn, seq);
    }
}

/// Why `got` is not the reply to request `seq` of connection `conn`, in one
/// line that says where they differ (or that the server upper-cased it).
pub(super) fn mismatch(conn: usize, seq: u64, expected: &[u8], got: &[u8]) -> String {
    let at = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    if expected.len() != got.len() {
        format!(
            "connection {conn}, request {seq}: reply of {} bytes to a {}-byte request (sent {}, got {})",
            got.len(),
            expected.len(),
            excerpt(expected, at),
            excerpt(got, at)
        )
    } else if expected.to_ascii_uppercase() == got {
        format!(
            "connection {conn}, request {seq}: the reply is the request upper-cased: \
             the server runs the upper handler, bench needs an echo server (serve --handler echo)"
        )
    } else {
        format!(
            "connection {conn}, request {seq}: reply differs at byte {at} (sent {}, got {})",
            excerpt(expected, at),
            excerpt(got, at)
        )
    }
}

/// Up to 24 bytes around `at`, escaped, for an error message.
pub(super) fn excerpt(bytes: &[u8], at: usize) -> String {
    let from = at.saturating_sub(8).min(bytes.len());
    let to = (from + 24).min(bytes.len());
    let mut s = String::new();
    if from > 0 {
        s.push_str("...");
    }
    s.push('"');
    let _ = write!(s, "{}", bytes[from..to].escape_ascii());
    s.push('"');
    if to < bytes.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(size: usize, framing: &str) -> Payloads {
        let framing: Framing = framing.parse().unwrap();
        Payloads::new(size, (!framing.is_raw()).then_some(&framing)).unwrap()
    }

    #[test]
    fn payloads_are_unique_per_connection_and_sequence() {
        let p = payloads(64, "raw");
        let mut seen = std::collections::HashSet::new();
        let mut buf = vec![0; 64];
        for conn in 0..50 {
            for seq in 0..200 {
                p.fill(&mut buf, conn, seq);
                assert!(buf.iter().all(|b| (0x21..=0x7e).contains(b)));
                assert!(
                    seen.insert(buf.clone()),
                    "duplicate payload for {conn}/{seq}"
                );
            }
        }
    }

    #[test]
    fn case_blind_payloads_survive_upper_casing() {
        let framing: Framing = "line".parse().unwrap();
        let p = Payloads::case_blind(64, Some(&framing)).unwrap();
        let mut buf = vec![0; 64];
        for seq in 0..500 {
            p.fill(&mut buf, 7, seq);
            assert_eq!(buf.to_ascii_uppercase(), buf);
            assert!(!buf.contains(&b'\n'));
        }
    }

    #[test]
    fn payloads_avoid_the_delimiter() {
        let p = payloads(300, "delim:ab");
        let mut buf = vec![0; 300];
        for seq in 0..100 {
            p.fill(&mut buf, 3, seq);
            assert!(!buf.contains(&b'a') && !buf.contains(&b'b'));
        }
        let p = payloads(1, "line");
        let mut one = [0u8; 1];
        p.fill(&mut one, 0, 5);
        assert_ne!(one[0], b'\n');
    }
}
