//! Every command the README shows runs as written (issue 10, item 7: the
//! original's spellings `op_mode` and `ip_trans` were refused).
//!
//! 1. Every `escadm ...` line of the README's shell blocks parses: run
//!    against a home without a node, it fails to reach escd (exit 3) or, for
//!    the local `ha set`, on the missing config, never with a usage error.
//! 2. The read-only and mode commands run against a live standalone node
//!    and succeed, in the README's spellings and the dashed aliases, and
//!    `escadm status --json` is the node's typed status.

mod common;

use common::{Node, NodeSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

fn escadm() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_escd")).with_file_name("escadm")
}

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
        .expect("README.md")
}

/// The README's `escadm` command lines, comments and `[optional]` brackets
/// removed, placeholders filled in.
fn readme_escadm_lines() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in readme().lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = t == "```sh";
            continue;
        }
        if !in_sh || !t.starts_with("escadm ") {
            continue;
        }
        let cmd = t.split(" #").next().unwrap_or(t);
        let cmd = cmd
            .replace(['[', ']'], "")
            .replace("<VIP>", "192.0.2.100")
            .replace("<IF>", "lo")
            .replace("<IP1>", "127.0.0.1")
            .replace("<IP2>", "127.0.0.2");
        out.push(cmd.split_whitespace().skip(1).map(str::to_string).collect());
    }
    out
}

fn run(home: &Path, args: &[String]) -> (i32, String, String) {
    let out = Command::new(escadm())
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("run escadm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_escadm_line_of_the_readme_parses() {
    let lines = readme_escadm_lines();
    assert!(
        lines.len() >= 12,
        "the README's escadm commands were found: {lines:?}"
    );
    for must in [
        &["op_mode", "show"][..],
        &["ip_trans"],
        &["ha", "switchover"],
        &["status", "--v"],
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&must.iter().map(|s| s.to_string()).collect::<Vec<_>>())),
            "README shows escadm {must:?}"
        );
    }
    let nowhere = tempfile::tempdir().unwrap();
    for args in &lines {
        let (code, stdout, stderr) = run(nowhere.path(), args);
        assert!(
            !stderr.contains("Usage:") && !stderr.contains("unrecognized"),
            "escadm {args:?} is refused by the CLI itself:\n{stderr}"
        );
        // Checked before any node is asked: `ha set`, and a password read
        // from an empty standard input.
        let local = (args.first().is_some_and(|a| a == "ha")
            && args.get(1).is_some_and(|a| a == "set"))
            || args.iter().any(|a| a == "--password-stdin");
        if local {
            assert!(
                stderr.contains("nothing was changed"),
                "escadm {args:?}: {stderr}"
            );
        } else {
            assert_eq!(code, 3, "escadm {args:?} without a node: {stdout}{stderr}");
        }
    }
}

#[test]
fn the_readme_commands_run_against_a_live_node() {
    let node = Node::start(NodeSpec::new("esc-1", "127.0.0.1", "primary"));
    let home = node.home.clone();
    let ok = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (code, stdout, stderr) = run(&home, &args);
        assert_eq!(code, 0, "escadm {args:?}: {stdout}{stderr}");
        stdout
    };
    assert!(ok(&["status"]).starts_with("0 ESC status=0 ESC Primary Healthy"));
    let v = ok(&["status", "--v"]);
    assert!(v.contains("state:") && v.contains("digest="), "{v}");
    let status: esc_proto::NodeStatus =
        serde_json::from_str(&ok(&["status", "--json"])).expect("status --json is a NodeStatus");
    assert_eq!(status.node_name, "esc-1");
    assert!(status.health.is_some_and(|h| h.healthy()));
    assert!(ok(&["health"]).starts_with("ESC HEALTH PASS: 2000"));
    ok(&["op_mode", "set", "--mode=maintenance", "--ipt_check=true"]);
    assert_eq!(
        ok(&["op_mode", "show"]).trim(),
        "Operation Mode = MAINTENANCE"
    );
    ok(&["op-mode", "set", "--mode=operation"]);
    assert_eq!(
        ok(&["op-mode", "show"]).trim(),
        "Operation Mode = OPERATION"
    );
    assert!(ok(&["ip_trans"]).contains("transaction(s) in progress"));
    assert!(ok(&["ip-trans"]).contains("transaction(s) in progress"));
    // scripts/health.sh, as the README shows it.
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/health.sh"))
        .env("ESC_HOME", &home)
        .env("ESCADM", escadm())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A standalone node has no peer to hand over to: refused, said why.
    let (code, _, stderr) = run(&home, &["ha".into(), "switchover".into()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no peer configured"), "{stderr}");
}
