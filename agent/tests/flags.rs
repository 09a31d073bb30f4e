//! The agent's command line: bad flags and missing files are one-line errors, before anything
//! touches the node.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// Binaries of the workspace sit next to the test's own deps directory.
fn bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join(name)
}

#[test]
fn bad_flags_and_missing_files_are_one_line_errors() {
    let out = Command::new(bin("skiff-agent"))
        .args([
            "--server",
            "https://127.0.0.1:1",
            "--token-file",
            "/nonexistent/token",
            "--ca-file",
            "/nonexistent/ca",
            "--node-name",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/token"), "{err}");
}
