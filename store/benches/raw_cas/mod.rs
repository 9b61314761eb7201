//! The benchmarks' compare-and-swap anchor: one etcd transaction written straight against
//! `etcd-client`, without wren's layer. Shared by the store's and IPAM's benchmarks.

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};

/// Puts `value` at `key` on the condition that its mod revision is still `revision`, and
/// returns the revision of the write. Panics when the condition fails: every benchmark
/// client owns its key, so a failed compare means the measurement is wrong.
pub async fn cas(kv: &mut KvClient, key: &str, value: Vec<u8>, revision: i64) -> i64 {
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::put(key, value, None)]);
    let response = kv.txn(txn).await.expect("txn");
    assert!(response.succeeded(), "an uncontended CAS failed");
    response.header().map_or(0, |h| h.revision())
}
