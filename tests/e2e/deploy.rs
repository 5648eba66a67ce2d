//! What ships beside the binary: the systemd unit (checked by `systemd-analyze`), and the
//! command line's release commands (version, shell completions, manual page).

use std::path::Path;
use std::process::Command;

use crate::harness::{TempDir, binary, run_cli};

/// The unit as shipped, with `ExecStart` pointing at the binary under test (`verify` checks
/// that the command exists).
fn unit(dir: &TempDir) -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/portcullis.service"))
        .expect("deploy/systemd/portcullis.service");
    let text = text.replace("/usr/local/bin/portcullis", binary());
    dir.write("portcullis.service", &text).to_str().unwrap().to_string()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = TempDir::new("systemd");
    let path = unit(&dir);
    let out = Command::new("systemd-analyze")
        .args(["verify", &path])
        .output()
        .expect("systemd-analyze (test.sh installs systemd)");
    // `verify` exits 0 for unknown keys and other mistakes, which it only prints.
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    let text = std::fs::read_to_string(&path).unwrap();
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    // No capability beyond binding low ports, however the lines are spelt.
    for l in text.lines().filter(|l| l.starts_with("AmbientCapabilities=") || l.starts_with("CapabilityBoundingSet=")) {
        assert_eq!(l.split_once('=').unwrap().1, "CAP_NET_BIND_SERVICE", "{l}");
    }

    // systemd's own exposure score (0 safest, 10 unprotected): "OK" is below 5.
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes", &path]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let overall = report.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{report}"));
    let score: f64 =
        overall.split("portcullis.service: ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(score <= 2.0, "exposure {score}: {overall}");
}

#[test]
fn version_names_the_commit() {
    let (code, out, _) = run_cli(&["version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with(&format!("portcullis {} (commit ", env!("CARGO_PKG_VERSION"))), "{out}");
    let head =
        Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if let Some(head) = head.ok().filter(|h| h.status.success()) {
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        assert!(out.contains(&format!("(commit {head})")), "built from {head}: {out}");
    }
}

#[test]
fn completions_for_each_shell_name_the_commands() {
    let (code, bash, err) = run_cli(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    assert!(bash.contains("complete -F _portcullis"), "{bash}");
    for command in ["serve", "check", "revoke", "usage", "completions"] {
        assert!(bash.contains(command), "bash completion lacks {command}");
    }
    // The script is valid bash.
    let dir = TempDir::new("completions");
    let script = dir.write("portcullis.bash", &bash);
    let syntax = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "{}", String::from_utf8_lossy(&syntax.stderr));
    let (_, zsh, _) = run_cli(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef portcullis"), "{zsh}");
    let (_, fish, _) = run_cli(&["completions", "fish"]);
    assert!(fish.contains("complete -c portcullis"), "{fish}");
    let (code, _, err) = run_cli(&["completions", "tcsh"]);
    assert_ne!(code, 0);
    assert!(err.contains("tcsh"), "{err}");
}

#[test]
fn the_manual_page_is_roff_and_lists_the_commands() {
    let (code, page, err) = run_cli(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(page.contains(".TH portcullis 1"), "{page}");
    for command in ["serve", "check", "revoke", "completions"] {
        assert!(page.contains(command), "the page lacks {command}");
    }
    // A page for each command, each one that groff reads without a warning.
    let dir = TempDir::new("man");
    let (code, _, err) = run_cli(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    for page in ["portcullis.1", "portcullis-serve.1", "portcullis-revoke.1", "portcullis-usage-export.1"] {
        let path = dir.path().join(page);
        assert!(path.exists(), "no {page}");
        let out = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(&path).output().expect("groff");
        assert!(out.status.success() && out.stderr.is_empty(), "{page}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
