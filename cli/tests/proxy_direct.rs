//! The PROXY protocol end to end without a balancer: the test writes the
//! headers itself, split and joined in the ways real networks deliver
//! them, to a message handler (`--handler echo`) and to a program per
//! connection (`--exec`), whose socket must come with exactly the header
//! taken off it.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{ChildGuard, TempDir, DEADLINE};

const ENV_THEN_CAT: &str =
    r#"echo "$PROTO $TCPREMOTEIP $TCPREMOTEPORT $TCPCONNNUM $TCPLOCALIP $TCPLOCALPORT"; exec cat"#;

const V1: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.7 40000 7000\r\n";

/// A v2 PROXY header for 192.0.2.1:40000 → 198.51.100.7:7000 with `tlvs`.
fn v2(tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut block = vec![192, 0, 2, 1, 198, 51, 100, 7];
    block.extend_from_slice(&40000u16.to_be_bytes());
    block.extend_from_slice(&7000u16.to_be_bytes());
    for (kind, value) in tlvs {
        block.push(*kind);
        block.extend_from_slice(&(value.len() as u16).to_be_bytes());
        block.extend_from_slice(value);
    }
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

fn port_of(server: &ChildGuard) -> u16 {
    server.listening[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

fn echo_server(extra: &[&str]) -> ChildGuard {
    let mut args = vec!["--handler", "echo", "--framing", "line"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--proxy-protocol", "any", "tcp://127.0.0.1:0"]);
    ChildGuard::serve(&args, 1)
}

fn exec_server(extra: &[&str], script: &str) -> ChildGuard {
    let mut args = vec!["--proxy-protocol", "any"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["tcp://127.0.0.1:0", "--exec", "sh", "-c", script]);
    ChildGuard::serve(&args, 1)
}

fn connect_from(from: &str, port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sock.connect_timeout(&dst.into(), DEADLINE).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `data` one byte per write (no delay: each its own segment as far
/// as the kernel allows).
fn trickle(s: &mut TcpStream, data: &[u8]) {
    for b in data {
        s.write_all(std::slice::from_ref(b)).unwrap();
        s.flush().unwrap();
    }
}

fn line(reader: &mut impl BufRead) -> String {
    let mut l = String::new();
    reader.read_line(&mut l).unwrap();
    l
}

/// Reads to the end; true if the server closed without sending a byte.
fn closed_without_a_byte(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Ok(_) => false,
        Err(e) => panic!("neither closed nor answered: {e}"),
    }
}

#[test]
fn a_header_split_byte_by_byte_is_read_whole() {
    let server = echo_server(&[]);
    for header in [V1.to_vec(), v2(&[])] {
        let mut s = connect_from("127.0.0.1", port_of(&server));
        trickle(&mut s, &header);
        trickle(&mut s, b"ping\n");
        assert_eq!(line(&mut BufReader::new(&s)), "ping\n");
    }
    let exec = exec_server(&[], ENV_THEN_CAT);
    // Both kept open: the second is the client's second connection
    // (TCPCONNNUM counts the header's client, not the socket's peer).
    let mut open = Vec::new();
    for (n, header) in [V1.to_vec(), v2(&[])].into_iter().enumerate() {
        let mut s = connect_from("127.0.0.1", port_of(&exec));
        trickle(&mut s, &header);
        let mut r = BufReader::new(s.try_clone().unwrap());
        assert_eq!(
            line(&mut r),
            format!("TCP 192.0.2.1 40000 {} 198.51.100.7 7000\n", n + 1),
            "the program sees the header's client and destination"
        );
        trickle(&mut s, b"ping\n");
        assert_eq!(line(&mut r), "ping\n");
        open.push(s);
    }
}

#[test]
fn a_header_and_the_first_request_in_one_write() {
    let server = echo_server(&[]);
    let exec = exec_server(&[], ENV_THEN_CAT);
    let mut open = Vec::new();
    for (n, header) in [V1.to_vec(), v2(&[(0x02, b"example.com")])]
        .into_iter()
        .enumerate()
    {
        let mut s = connect_from("127.0.0.1", port_of(&server));
        s.write_all(&[&header[..], b"first\nsecond\n"].concat())
            .unwrap();
        let mut r = BufReader::new(&s);
        assert_eq!(line(&mut r), "first\n");
        assert_eq!(line(&mut r), "second\n");

        // The program's stdin starts right after the header: not one byte
        // of the request was taken with it.
        let mut s = connect_from("127.0.0.1", port_of(&exec));
        s.write_all(&[&header[..], b"first\nsecond\n"].concat())
            .unwrap();
        let mut r = BufReader::new(&s);
        let env = line(&mut r);
        assert!(
            env.starts_with(&format!("TCP 192.0.2.1 40000 {} ", n + 1)),
            "{env:?}"
        );
        assert_eq!(line(&mut r), "first\n");
        assert_eq!(line(&mut r), "second\n");
        open.push(s);
    }
}

#[test]
fn garbage_instead_of_a_header_is_closed_without_a_byte() {
    let server = echo_server(&[]);
    let exec = exec_server(&[], ENV_THEN_CAT);
    for port in [port_of(&server), port_of(&exec)] {
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
        ] {
            let mut s = connect_from("127.0.0.1", port);
            s.write_all(garbage).unwrap();
            assert!(closed_without_a_byte(&mut s), "{garbage:?} on {port}");
        }
        // A v1 line over 107 bytes.
        let mut s = connect_from("127.0.0.1", port);
        let _ = s.write_all(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat());
        assert!(closed_without_a_byte(&mut s), "an overlong v1 line");
    }
    // Neither server is hurt: a good header is served.
    let mut s = connect_from("127.0.0.1", port_of(&server));
    s.write_all(&[V1, b"ok\n"].concat()).unwrap();
    assert_eq!(line(&mut BufReader::new(&s)), "ok\n");
}

#[test]
fn no_header_in_time_is_closed_for_both_kinds_of_handler() {
    let server = echo_server(&[]);
    let exec = exec_server(&[], ENV_THEN_CAT);
    // Both wait at once: one header timeout (3 s) for the test.
    let started = Instant::now();
    let mut silent = [
        connect_from("127.0.0.1", port_of(&server)),
        connect_from("127.0.0.1", port_of(&exec)),
    ];
    // Half a header, then nothing.
    for s in &mut silent {
        s.write_all(&V1[..10]).unwrap();
    }
    for s in &mut silent {
        assert!(closed_without_a_byte(s));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(8),
        "closed after {took:?}"
    );
}

#[test]
fn a_direct_client_outside_proxy_from_is_closed_without_a_byte() {
    let trusted = ["--proxy-from", "127.0.0.1/32"];
    let server = echo_server(&trusted);
    let exec = exec_server(&trusted, r#"echo started; exec cat"#);
    for port in [port_of(&server), port_of(&exec)] {
        let mut s = connect_from("127.0.0.8", port);
        let _ = s.write_all(&[V1, b"forged\n"].concat());
        assert!(closed_without_a_byte(&mut s), "port {port}");
        // The balancer's address is served.
        let mut s = connect_from("127.0.0.1", port);
        s.write_all(&[V1, b"real\n"].concat()).unwrap();
        let got = line(&mut BufReader::new(&s));
        assert!(got == "real\n" || got == "started\n", "{got:?}");
    }
}

#[test]
fn the_program_gets_the_tlvs_and_the_rules_variables_of_the_client() {
    let dir = TempDir::new("proxy-rules-env");
    let rules = dir.join("rules");
    std::fs::write(
        &rules,
        "192.0.2.0/24 allow SITE=lab TIER=2\n203.0.113.0/24 deny\n",
    )
    .unwrap();
    let rules_arg = rules.display().to_string();
    let exec = exec_server(
        &["--rules", &rules_arg],
        r#"echo "$TCPREMOTEIP|$SITE|$TIER|$PROXY_AUTHORITY|$PROXY_ALPN|$PROXY_UNIQUE_ID"; exec cat"#,
    );
    let header = v2(&[(0x02, b"example.com"), (0x01, b"h2"), (0x05, b"req-42")]);
    let mut s = connect_from("127.0.0.1", port_of(&exec));
    s.write_all(&header).unwrap();
    assert_eq!(
        line(&mut BufReader::new(&s)),
        "192.0.2.1|lab|2|example.com|h2|req-42\n"
    );
    // A client the rules deny: closed before any program runs.
    let mut s = connect_from("127.0.0.1", port_of(&exec));
    s.write_all(b"PROXY TCP4 203.0.113.5 198.51.100.7 1234 7000\r\nhi\n")
        .unwrap();
    assert!(closed_without_a_byte(&mut s));
    // Without a TLV, no variable: the line has empty fields.
    let mut s = connect_from("127.0.0.1", port_of(&exec));
    s.write_all(V1).unwrap();
    assert_eq!(line(&mut BufReader::new(&s)), "192.0.2.1|lab|2|||\n");
}
