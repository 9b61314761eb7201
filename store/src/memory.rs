//! In-memory backend with etcd semantics (revisions, compaction, leases, ordered watches).
