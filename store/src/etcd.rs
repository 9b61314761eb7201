//! etcd v3 backend through `etcd-client`.
