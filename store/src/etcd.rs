//! etcd v3 backend through `etcd-client`.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Endpoints (`http://127.0.0.1:2379`, `https://10.0.0.1:2379`, …).
    pub endpoints: Vec<String>,
    /// Key prefix of wren's data (default `/wren/v1/`); every key the store sees is relative to it.
    pub prefix: String,
    /// CA certificate (PEM) to verify the server with; enables TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key: Option<PathBuf>,
    /// Time allowed to establish a connection.
    pub dial_timeout: Duration,
    /// Time allowed for one request.
    pub request_timeout: Duration,
}

/// Default key prefix of wren's data in etcd.
pub const DEFAULT_PREFIX: &str = "/wren/v1/";

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: DEFAULT_PREFIX.into(),
            ca: None,
            cert: None,
            key: None,
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The etcd backend. Construct with `EtcdStore::connect(EtcdConfig) -> Result<EtcdStore>`.
pub struct EtcdStore {}
