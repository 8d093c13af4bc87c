//! `sockserv serve --config FILE` and `sockserv check --config FILE`: each
//! `[[listener]]` table a server with its own handler and settings (the
//! global keys its defaults), sockets passed by the real
//! `systemd-socket-activate` matched to tables by name, rules per listener
//! reloaded on SIGHUP, and every class of mistake reported as one line
//! `FILE:LINE: ...` with exit code 2.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use common::{cli_bin, free_port, repo_dir, run_cli, wait_until, ChildGuard, TempDir, DEADLINE};

/// Writes `text` as `name` in `dir`; returns its path as a string.
fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Sends `line` to a TCP endpoint (`tcp://HOST:PORT` or `HOST:PORT`) and
/// reads until `want` bytes came or the server closed.
fn ask(endpoint: &str, line: &str, want: usize) -> String {
    let addr = endpoint.trim_start_matches("tcp://");
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn each_listener_is_a_server_of_its_own_with_the_global_defaults() {
    let dir = TempDir::new("config-servers");
    let cfg = write(
        &dir,
        "sockserv.toml",
        r#"
# the defaults: echo, line framing
handler = "echo"
framing = "line"

[[listener]]
name = "up"
address = "127.0.0.1:0"
handler = "upper"

[[listener]]
name = "plain"
address = "tcp://127.0.0.1:0"

[[listener]]
name = "prog"
address = "127.0.0.1:0"
exec = ["sh", "-c", "read l; echo \"exec:$l\""]
"#,
    );
    let mut server = ChildGuard::serve(&["--config", &cfg], 3);
    // One `listening` line per listener, in file order.
    let [up, plain, prog] = [0, 1, 2].map(|i| server.listening[i].clone());
    assert_eq!(ask(&up, "hello\n", 6), "HELLO\n", "its own handler");
    assert_eq!(ask(&plain, "hello\n", 6), "hello\n", "the global handler");
    assert_eq!(ask(&prog, "hi\n", 8), "exec:hi\n", "its own program");
    let (status, stderr) = server.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn activated_sockets_go_to_the_listeners_of_their_names() {
    let (a, b) = (free_port(), free_port());
    let (la, lb) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    let dir = TempDir::new("config-activation");
    // File order b, a: the names decide, not the descriptor order.
    let cfg = write(
        &dir,
        "cfg.toml",
        "framing = \"line\"\n\
         [[listener]]\nname = \"b\"\nhandler = \"echo\"\n\
         [[listener]]\nname = \"a\"\nhandler = \"upper\"\n",
    );
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &la, "-l", &lb, "--fdname=a:b", cli_bin()])
        .args(["serve", "--config", &cfg]);
    let mut server = ChildGuard::spawn(&mut cmd);
    // systemd-socket-activate starts the server at the first connection.
    let mut reply = String::new();
    assert!(
        wait_until(DEADLINE, || {
            TcpStream::connect(&la).is_ok_and(|mut s| {
                let _ = s.set_read_timeout(Some(DEADLINE));
                let _ = s.write_all(b"first\n");
                let mut buf = [0u8; 16];
                let n = s.read(&mut buf).unwrap_or(0);
                reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                n > 0
            })
        }),
        "nothing served on {la}; stderr: {}",
        server.stderr()
    );
    assert_eq!(reply, "FIRST\n", "a: upper");
    assert_eq!(ask(&lb, "second\n", 7), "second\n", "b: echo");
    assert_eq!(ask(&la, "third\n", 6), "THIRD\n");
    server.wait_listening(2, DEADLINE);
    assert_eq!(
        server.listening,
        [format!("tcp://{lb}"), format!("tcp://{la}")],
        "in file order"
    );
    let (status, stderr) = server.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn an_activated_socket_no_listener_names_is_an_error() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = TempDir::new("config-activation-stray");
    let cfg = write(
        &dir,
        "cfg.toml",
        "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:0\"\n",
    );
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &listen, "--fdname=web", cli_bin()])
        .args(["serve", "--config", &cfg]);
    let mut server = ChildGuard::spawn(&mut cmd);
    // The first connection starts the server, which refuses to run.
    assert!(wait_until(DEADLINE, || TcpStream::connect(&listen).is_ok()));
    let (status, stderr) = server.terminate_with(0, DEADLINE);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("sockserv: "))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_eq!(
        line,
        format!(
            "sockserv: {cfg}: the service manager passes fd 3 (tcp://{listen}) named \"web\", \
             but no [[listener]] has that name"
        )
    );
}

#[test]
fn rules_are_per_listener_and_sighup_reloads_them() {
    let dir = TempDir::new("config-rules");
    write(&dir, "guarded.rules", "127.0.0.0/8 deny\n");
    // A relative rules path is read from the config file's directory.
    let cfg = write(
        &dir,
        "cfg.toml",
        "handler = \"echo\"\nframing = \"line\"\n\
         [[listener]]\nname = \"guarded\"\naddress = \"127.0.0.1:0\"\nrules = \"guarded.rules\"\n\
         [[listener]]\nname = \"open\"\naddress = \"127.0.0.1:0\"\n",
    );
    let mut server = ChildGuard::serve(&["--config", &cfg, "-v"], 2);
    let (guarded, open) = (server.listening[0].clone(), server.listening[1].clone());
    assert_eq!(
        ask(&guarded, "x\n", 2),
        "",
        "refused: closed without a byte"
    );
    assert_eq!(
        ask(&open, "x\n", 2),
        "x\n",
        "the other listener has no rules"
    );

    write(&dir, "guarded.rules", "127.0.0.0/8 allow\n");
    common::signal_pid(server.id(), libc::SIGHUP);
    assert!(
        wait_until(DEADLINE, || server.stderr().contains("1 rules in force")),
        "no reload: {}",
        server.stderr()
    );
    assert_eq!(ask(&guarded, "y\n", 2), "y\n", "allowed after the reload");
    let (status, stderr) = server.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn check_accepts_a_good_file_and_the_contrib_example() {
    let dir = TempDir::new("config-check-ok");
    let cfg = write(
        &dir,
        "ok.toml",
        "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:7000\"\n\
         [[listener]]\naddress = \"udp://127.0.0.1:7000\"\nhandler = \"echo\"\n",
    );
    let out = run_cli(&["check", "--config", &cfg], DEADLINE);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, format!("{cfg}: ok (2 listeners)\n"));

    let example = repo_dir().join("contrib/sockserv.toml");
    let example = example.display().to_string();
    let out = run_cli(&["check", "--config", &example], DEADLINE);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, format!("{example}: ok (4 listeners)\n"));
}

/// `sockserv check --config FILE` with `text` as the file: exit code 2 and
/// exactly one line on stderr, which is returned with the path replaced
/// by `FILE`.
fn check_error(text: &str) -> String {
    let dir = TempDir::new("config-check-error");
    let cfg = write(&dir, "bad.toml", text);
    let out = run_cli(&["check", "--config", &cfg], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    out.stderr.trim_end().replace(&cfg, "FILE")
}

/// A listener table `api` on a free address, plus `extra` lines.
fn api(extra: &str) -> String {
    format!("# comment\n\n[[listener]]\nname = \"api\"\naddress = \"127.0.0.1:0\"\n{extra}")
}

#[test]
fn error_unknown_key_in_a_listener() {
    let err = check_error(&api("handlr = \"echo\"\n"));
    assert!(
        err.starts_with("sockserv: FILE:6: listener \"api\": unknown key \"handlr\" (expected one of name, address, handler, exec,"),
        "{err}"
    );
    assert!(
        !err.contains("admin"),
        "global-only keys are not offered: {err}"
    );
}

#[test]
fn error_unknown_key_at_the_top() {
    let err = check_error(&format!("max_conn = 5\n{}", api("")));
    assert!(
        err.starts_with(
            "sockserv: FILE:1: unknown key \"max_conn\" (expected one of listener, handler,"
        ),
        "{err}"
    );
}

#[test]
fn error_wrong_type() {
    assert_eq!(
        check_error(&api("max_conns = \"ten\"\n")),
        "sockserv: FILE:6: listener \"api\": max_conns: invalid type: string \"ten\", expected u64"
    );
    assert_eq!(
        check_error(&api("workers = 0\n")),
        "sockserv: FILE:6: listener \"api\": workers: 0 is not in 1..=100000"
    );
}

#[test]
fn error_bad_address() {
    assert_eq!(
        check_error("[[listener]]\nname = \"api\"\naddress = \"127.0.0.1:99999\"\n"),
        "sockserv: FILE:3: listener \"api\": address: invalid address \"127.0.0.1:99999\": the port must be a number from 0 to 65535"
    );
}

#[test]
fn error_bad_duration() {
    assert_eq!(
        check_error(&api("idle_timeout = \"10 parsecs\"\n")),
        "sockserv: FILE:6: listener \"api\": idle_timeout: invalid duration \"10 parsecs\": unit must be ms, s, m or h"
    );
    assert_eq!(
        check_error(&format!("write_timeout = \"0s\"\n{}", api(""))),
        "sockserv: FILE:1: write_timeout: a timeout of \"0s\" would close every connection at once; give a duration over 0 (e.g. 30s, 500ms), or leave the option out"
    );
}

#[test]
fn error_bad_framing() {
    let err = check_error(&api("framing = \"lines\"\n"));
    assert!(
        err.starts_with(
            "sockserv: FILE:6: listener \"api\": framing: unknown framing \"lines\": expected raw, line,"
        ),
        "{err}"
    );
}

#[test]
fn error_bad_cidr() {
    assert_eq!(
        check_error(&api("allow = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n")),
        "sockserv: FILE:6: listener \"api\": allow: \"10.0.0.0/33\" is not a CIDR prefix (like 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7)"
    );
}

#[test]
fn error_bad_choice() {
    assert_eq!(
        check_error(&api("mode = \"forking\"\n")),
        "sockserv: FILE:6: listener \"api\": mode: invalid value \"forking\" (expected one of async, threads, pool, sequential)"
    );
}

#[test]
fn error_missing_address() {
    assert_eq!(
        check_error(&format!("{}[[listener]]\nhandler = \"echo\"\n", api(""))),
        "sockserv: FILE:6: listener 2: no address (and no name to match a socket passed by the service manager)"
    );
}

#[test]
fn error_a_named_listener_without_address_when_not_activated() {
    // `check` accepts it (a socket of that name may be passed); `serve`
    // without LISTEN_FDS has nothing to serve it with.
    let dir = TempDir::new("config-no-address");
    let cfg = write(&dir, "cfg.toml", "\n[[listener]]\nname = \"web\"\n");
    let ok = run_cli(&["check", "--config", &cfg], DEADLINE);
    assert_eq!(ok.code(), Some(0), "{}", ok.stderr);
    let out = run_cli(&["serve", "--config", &cfg], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        format!("sockserv: {cfg}:2: listener \"web\": no address, and no socket of this name is passed by the service manager (LISTEN_FDNAMES)")
    );
}

#[test]
fn error_two_listeners_on_one_address() {
    assert_eq!(
        check_error(
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:7000\"\n\n\
             [[listener]]\nname = \"b\"\naddress = \"tcp://127.0.0.1:7000\"\n"
        ),
        "sockserv: FILE:7: listener \"b\": address tcp://127.0.0.1:7000 is already the address of the listener at line 1 (two listeners cannot share an address)"
    );
}

#[test]
fn error_two_listeners_with_one_name() {
    assert_eq!(
        check_error(
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:7000\"\n\
             [[listener]]\nname = \"a\"\naddress = \"127.0.0.1:7001\"\n"
        ),
        "sockserv: FILE:5: listener \"a\": the name \"a\" is already the name of the listener at line 1"
    );
}

#[test]
fn error_handler_and_exec() {
    assert_eq!(
        check_error(&api("handler = \"echo\"\nexec = [\"cat\"]\n")),
        "sockserv: FILE:7: listener \"api\": both handler and exec: a listener runs a built-in handler or a program, not both"
    );
}

#[test]
fn error_global_key_in_a_listener_and_listener_key_at_the_top() {
    assert_eq!(
        check_error(&api("admin = \"127.0.0.1:9100\"\n")),
        "sockserv: FILE:6: listener \"api\": admin is global: set it at the top of the file, once for all listeners"
    );
    assert_eq!(
        check_error(&format!("address = \"127.0.0.1:1\"\n{}", api(""))),
        "sockserv: FILE:1: address belongs in a [[listener]] table, not at the top of the file"
    );
}

#[test]
fn error_exec_on_a_datagram_address() {
    assert_eq!(
        check_error("[[listener]]\nname = \"u\"\naddress = \"udp://127.0.0.1:0\"\nexec = [\"cat\"]\n"),
        "sockserv: FILE:4: listener \"u\": exec serves stream addresses only (tcp://, unix://), not udp://127.0.0.1:0"
    );
}

/// A check shared with the command line names the key and its line, in
/// the table or at the top of the file, not the flag.
#[test]
fn error_a_max_frame_below_the_framing_names_its_key_and_line() {
    assert_eq!(
        check_error("[[listener]]\naddress = \"tcp://127.0.0.1:0\"\nframing = \"fixed:100\"\nmax_frame = 10\n"),
        "sockserv: FILE:4: listener 1: max_frame 10: fixed frame size of 100 bytes exceeds the maximum frame size of 10 bytes (raise max_frame, or leave it out)"
    );
    assert_eq!(
        check_error("max_frame = 10\n\n[[listener]]\naddress = \"tcp://127.0.0.1:0\"\nframing = \"fixed:100\"\n"),
        "sockserv: FILE:1: listener 1: max_frame 10: fixed frame size of 100 bytes exceeds the maximum frame size of 10 bytes (raise max_frame, or leave it out)"
    );
}

#[test]
fn error_a_rules_file_that_does_not_parse() {
    let dir = TempDir::new("config-bad-rules");
    let rules = write(&dir, "r.rules", "10.0.0.0/8 allow\n10.0.0.0/8 permit\n");
    let cfg = write(&dir, "cfg.toml", &api("rules = \"r.rules\"\n"));
    let out = run_cli(&["check", "--config", &cfg], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    let err = out.stderr.trim_end();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("sockserv: {cfg}:3: listener \"api\": ")),
        "{err}"
    );
    assert!(err.contains(&rules) && err.contains("line 2"), "{err}");
}

#[test]
fn error_toml_syntax_no_listener_unreadable_file() {
    assert_eq!(
        check_error("[[listener]\nname = \"a\"\n"),
        "sockserv: FILE:1: unclosed array table, expected `]`"
    );
    assert_eq!(
        check_error("handler = \"echo\"\n"),
        "sockserv: FILE: no [[listener]] table: nothing to serve"
    );
    let out = run_cli(
        &["check", "--config", "/nonexistent/sockserv.toml"],
        DEADLINE,
    );
    assert_eq!(out.code(), Some(2));
    assert_eq!(
        out.stderr.trim_end(),
        "sockserv: /nonexistent/sockserv.toml: cannot read it: no such file or directory"
    );
}

#[test]
fn config_errors_stop_serve_too() {
    let dir = TempDir::new("config-serve-error");
    let cfg = write(&dir, "cfg.toml", &api("handlr = \"echo\"\n"));
    let out = run_cli(&["serve", "--config", &cfg], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "sockserv: {cfg}:6: listener \"api\": unknown key \"handlr\""
        )),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "nothing served: {}", out.stdout);
}

#[test]
fn config_is_not_combined_with_addresses_or_listener_flags() {
    let dir = TempDir::new("config-flags");
    let cfg = write(&dir, "cfg.toml", &api(""));
    let out = run_cli(&["serve", "--config", &cfg, "--max-conns", "5"], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "sockserv: --config cannot be combined with --max-conns: set it in the config file (globally or per [[listener]])"
    );
    let out = run_cli(&["serve", "--config", &cfg, "tcp://127.0.0.1:0"], DEADLINE);
    assert_eq!(out.code(), Some(2), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("--config"), "{}", out.stderr);
    // -v is the one option allowed beside it.
    let mut server = ChildGuard::serve(&["--config", &cfg, "-v"], 1);
    assert_eq!(ask(&server.listening[0], "ok\n", 3), "OK\n");
    let (status, _) = server.terminate_with(libc::SIGTERM, DEADLINE);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_help_mentions_config_and_inetd() {
    let out = run_cli(&["serve", "--help"], DEADLINE);
    assert_eq!(out.code(), Some(0));
    for needle in [
        "--config <FILE>",
        "--inetd",
        "sockserv serve --config",
        "sockserv serve --inetd",
    ] {
        assert!(out.stdout.contains(needle), "{needle} in: {}", out.stdout);
    }
    let out = run_cli(&["check", "--help"], DEADLINE);
    assert_eq!(out.code(), Some(0));
    assert!(
        out.stdout.contains("sockserv check --config"),
        "{}",
        out.stdout
    );
}

/// A relative `rules` path at the top of the file is found from the
/// file's directory, as in a table: `check` run from elsewhere (a service
/// manager's working directory is `/`) reads the same file.
#[test]
fn a_global_rules_path_is_relative_to_the_config_file() {
    let dir = common::TempDir::new("config-global-rules");
    std::fs::write(dir.join("site.rules"), "127.0.0.0/8 allow\n").unwrap();
    let config = dir.join("sockserv.toml");
    std::fs::write(
        &config,
        "rules = \"site.rules\"\n\n[[listener]]\naddress = \"tcp://127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = common::run_with_input(
        std::process::Command::new(common::cli_bin())
            .args(["check", "--config"])
            .arg(&config)
            .current_dir("/"),
        None,
        common::DEADLINE,
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("ok (1 listener"), "{out:?}");
}
