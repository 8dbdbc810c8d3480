//! A bad esc.toml gets an error that names the field and what to do, the
//! daemon exits with status 2, and nothing is started or created.

mod common;

use std::process::Command;

fn run_with(toml: &str) -> (Option<i32>, String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("esc.toml"), toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_escd"))
        .arg("--home")
        .arg(dir.path())
        .arg("--log-dir")
        .arg(dir.path().join("log"))
        .output()
        .unwrap();
    let home = dir.path().to_path_buf();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        home,
        dir,
    )
}

#[test]
fn bad_configs_are_refused_with_the_field_named() {
    let cases = [
        ("node_name = \"a\"\nbogus = 1\n", "unknown field `bogus`"),
        (
            "node_name = \"a\"\n[replication]\nlisten = \"127.0.0.1:1\"\npeer = \"127.0.0.2:1\"\nmode = \"sync\"\ninitial_role = \"primary\"\nasync_lag_entries_max = 1\nheartbeat_interval_ms = 100\npeer_timeout_ms = 1000\nbatch_entries_max = 1\n",
            "replication.secret",
        ),
        ("node_name = \"bad name!\"\n", "node_name"),
        (
            "node_name = \"a\"\n[store]\ndata_dir = \"d\"\nsnapshot_every_entries = 10\nlog_retain_entries = 20\ngroup_commit_entries_max = 1\n",
            "store.log_retain_entries",
        ),
        ("node_name = [\n", "esc.toml"),
    ];
    for (toml, needle) in cases {
        let (code, stderr, home, _dir) = run_with(toml);
        assert_eq!(code, Some(2), "exit code for {toml:?}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
        assert!(stderr.contains("nothing was started"), "{stderr}");
        assert!(!home.join("data").exists(), "a refused config created data");
        assert!(
            !home.join("escd.sock").exists(),
            "a refused config opened a socket"
        );
    }
    // A missing file says which file.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_escd"))
        .arg("--home")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("esc.toml"));
}
