//! Running the built `wren` binary against a test's etcd, as an operator runs it. The test
//! that includes this module names its key prefix in etcd as `PREFIX`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use wren_store::Store;
use wren_store::etcd::{EtcdConfig, EtcdStore};
use wren_tests::etcd::Etcd;
use wren_tests::prereq;

use super::PREFIX;

/// A real etcd for the test, and a store on it under `PREFIX` to read what `wren` wrote.
pub struct Datastore {
    pub etcd: Etcd,
    /// Drives `store`.
    pub runtime: tokio::runtime::Runtime,
    pub store: Arc<dyn Store>,
}

/// Starts etcd and opens the store; `None` when etcd is missing (a failure under CI).
pub fn datastore() -> Option<Datastore> {
    if !prereq::require_command("etcd") {
        return None;
    }
    let etcd = Etcd::start().expect("etcd starts");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn Store> = runtime.block_on(async {
        let config = EtcdConfig {
            endpoints: etcd.endpoints(),
            prefix: PREFIX.into(),
            ..EtcdConfig::default()
        };
        Arc::new(EtcdStore::connect(config).await.unwrap())
    });
    Some(Datastore {
        etcd,
        runtime,
        store,
    })
}

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
