//! The command line as a new user meets it: `check` reports every mistake of a config in one
//! run, in the order of the file, and says what to write; `apikey hash` takes the key from
//! standard input, so that it need not pass through shell history.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::{TempDir, binary, run_cli};

/// Mistakes of every kind, on different lines: an unknown key, values of the wrong type, a
/// missing key, a host name for an address, and a rule that spans keys.
const BROKEN: &str = "\
server:
  listen: localhost:8080
  drain_timeout: 30
routes:
  - id: orders
    match:
      path_prefx: /orders
    upstream: echo
    authenticate: none
  - id: orders
    authenticate: [jwtt]
  - id: public
    upstream: echo
    authenticate: [none]
    upgrades: websocket
";

#[test]
fn check_prints_every_error_in_the_order_of_the_file() {
    let dir = TempDir::new("check-all");
    let file = dir.write("gw.yaml", BROKEN);
    let (code, out, err) = run_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let file = std::path::absolute(&file).unwrap();
    let expected = [
        (2, 3, "server.listen", "`localhost:8080` is not an IP address and port"),
        (3, 3, "server.drain_timeout", "a duration needs a unit: write `30s`"),
        (7, 7, "routes[0].match.path_prefx", "unknown key `path_prefx`; did you mean `path_prefix`?"),
        (9, 5, "routes[0].authenticate", "write `[none]`"),
        (10, 5, "routes[1]", "missing required key `upstream`"),
        (11, 20, "routes[1].authenticate[0]", "unknown value `jwtt`; did you mean `jwt`?"),
        (15, 5, "routes[2].upgrades", "write `[websocket]`"),
    ];
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), expected.len(), "{err}");
    for (line, (l, c, path, message)) in lines.iter().zip(expected) {
        let head = format!("error: {}:{l}:{c}: {path}: ", file.display());
        assert!(line.starts_with(&head), "expected {head:?}...: {err}");
        assert!(line.contains(message), "expected {message:?}: {err}");
    }
    assert!(err.contains(&format!("{} error(s)", expected.len())), "{err}");
}

/// A config whose types are right but whose rules are not: those errors come in file order
/// too, after none is lost.
#[test]
fn check_merges_typing_and_rule_errors() {
    let dir = TempDir::new("check-merge");
    let text = "\
server:
  listen: 127.0.0.1:8080
routes:
  - id: a
    upstream: echo
    authenticate: [none]
  - id: a
    upstream: echo
    authenticate: [none]
    tunnel: yes
  - id: c
    upstream: nowhere
    authenticate: [none]
";
    let file = dir.write("gw.yaml", text);
    let (code, _, err) = run_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let paths: Vec<&str> =
        err.lines().filter(|l| l.starts_with("error: ")).filter_map(|l| l.split(": ").nth(2)).collect();
    assert_eq!(paths, ["routes[1].id", "routes[1].tunnel", "routes[2].upstream"], "{err}");
}

fn hash_from_stdin(input: &str) -> (i32, String, String) {
    let mut child = Command::new(binary())
        .args(["apikey", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn apikey_hash_reads_the_key_from_standard_input() {
    let (code, from_arg, _) = run_cli(&["apikey", "hash", "pc_s3cr3t-k3y"]);
    assert_eq!(code, 0);
    assert!(from_arg.trim().starts_with("sha256:"), "{from_arg}");
    for input in ["pc_s3cr3t-k3y\n", "pc_s3cr3t-k3y\r\n", "pc_s3cr3t-k3y"] {
        let (code, out, err) = hash_from_stdin(input);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out, from_arg, "{input:?}");
        assert!(!format!("{out}{err}").contains("s3cr3t"), "the key is never printed");
    }
    // Only the first line is the key.
    assert_eq!(hash_from_stdin("pc_s3cr3t-k3y\nmore\n").1, from_arg);
    for empty in ["", "\n"] {
        let (code, out, err) = hash_from_stdin(empty);
        assert_eq!(code, 1, "{empty:?}: {out}");
        assert!(out.is_empty() && err.contains("no key"), "{empty:?}: {out}{err}");
    }
}
