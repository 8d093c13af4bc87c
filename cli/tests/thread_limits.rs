//! Issue 11, defect 9: values `--workers` accepts must never abort or hang
//! the server. A thread that cannot start (here: a 4 GB address-space
//! limit, which binds root too) is a one-line error and exit code 1,
//! before anything listens.

use std::process::Command;

fn serve_limited(mode_args: &str) -> (Option<i32>, String, String) {
    let bin = env!("CARGO_BIN_EXE_sockserv");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v 4000000; exec timeout 60 {bin} serve {mode_args} tcp://127.0.0.1:0"
        ))
        .output()
        .expect("sh runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_failure(mode_args: &str) {
    let (code, stdout, stderr) = serve_limited(mode_args);
    eprintln!("{mode_args}: exit {code:?}, stderr {stderr:?}");
    assert_eq!(code, Some(1), "{mode_args}: exit code (stderr {stderr:?})");
    assert!(
        !stdout.contains("listening"),
        "{mode_args}: it listened before failing: {stdout:?}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{mode_args}: not one line: {stderr:?}");
    assert!(
        lines[0].starts_with("sockserv: cannot start the ") && lines[0].contains("threads"),
        "{mode_args}: {stderr:?}"
    );
    assert!(!stderr.contains("panicked"), "{mode_args}: {stderr:?}");
}

#[test]
fn too_many_pool_workers_is_a_one_line_error() {
    assert_one_line_failure("--mode pool --workers 100000");
}

#[test]
fn too_many_event_loops_is_a_one_line_error() {
    assert_one_line_failure("--mode async --workers 20000");
}
