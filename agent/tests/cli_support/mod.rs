//! Running the built `wren` binary against a test's etcd, as an operator runs it. The test
//! that includes this module names its key prefix in etcd as `PREFIX`.

use std::io::Write;
use std::process::{Command, Stdio};

use wren_store::Store;

use super::PREFIX;

/// What one `wren` run printed and how it ended.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `wren args` with `input` on its standard input.
pub fn wren_with_input(endpoint: &str, args: &[&str], input: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wren"))
        .args(args)
        .env("WREN_ETCD_ENDPOINTS", endpoint)
        .env("WREN_ETCD_PREFIX", PREFIX)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wren");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `wren args` with nothing on its standard input.
pub fn wren(endpoint: &str, args: &[&str]) -> Run {
    wren_with_input(endpoint, args, "")
}

/// Runs `wren` expecting success; returns its output.
pub fn ok(endpoint: &str, args: &[&str]) -> String {
    ok_with_input(endpoint, args, "")
}

/// [`ok`] with `input` on its standard input.
pub fn ok_with_input(endpoint: &str, args: &[&str], input: &str) -> String {
    let run = wren_with_input(endpoint, args, input);
    assert!(run.ok, "wren {args:?} failed: {}", run.stderr);
    run.stdout
}

/// Runs `wren` expecting failure with one clear line containing `expected`.
pub fn fails(endpoint: &str, args: &[&str], expected: &str) {
    fails_with_input(endpoint, args, "", expected);
}

/// [`fails`] with `input` on its standard input.
pub fn fails_with_input(endpoint: &str, args: &[&str], input: &str, expected: &str) {
    let run = wren_with_input(endpoint, args, input);
    assert!(!run.ok, "wren {args:?} succeeded: {}", run.stdout);
    let line = run.stderr.trim_end();
    assert_eq!(
        line.lines().count(),
        1,
        "wren {args:?}: not one line: {line:?}"
    );
    assert!(
        line.starts_with("wren: ") && line.contains(expected),
        "wren {args:?}: {line:?} does not contain {expected:?}"
    );
}

/// Every key and value under the test's prefix: to show that a refused command wrote nothing.
pub async fn snapshot(store: &dyn Store) -> Vec<(String, Vec<u8>)> {
    let items = store.list("").await.unwrap().items;
    items.into_iter().map(|kv| (kv.key, kv.value)).collect()
}
