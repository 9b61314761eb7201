//! Opening the datastore from the command line's `--etcd-*` flags.

use std::sync::Arc;

use wren_store::Store;
use wren_store::etcd::{DEFAULT_PREFIX, EtcdConfig, EtcdStore};

use super::{DEFAULT_ETCD_ENDPOINTS, StoreArgs};

/// The etcd settings the flags (or their `WREN_ETCD_*` variables) describe; defaults for the
/// rest.
pub fn etcd_config(args: &StoreArgs) -> EtcdConfig {
    EtcdConfig {
        endpoints: args
            .etcd_endpoints
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_ETCD_ENDPOINTS.to_owned()]),
        prefix: args
            .etcd_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned()),
        ca: args.etcd_ca.clone(),
        cert: args.etcd_cert.clone(),
        key: args.etcd_key.clone(),
        ..EtcdConfig::default()
    }
}

/// Opens the datastore. The connection is made on first use, so this fails only on
/// configuration (a TLS file that cannot be read, an endpoint that is not a URL).
pub async fn open(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    let store = EtcdStore::connect(etcd_config(args)).await?;
    Ok(Arc::new(store))
}
