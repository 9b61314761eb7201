//! Opening the datastore from the command line's `--etcd-*` flags.

use std::sync::Arc;

use wren_store::Store;
use wren_store::etcd::{DEFAULT_PREFIX, EtcdConfig, EtcdStore};

use super::{DEFAULT_ETCD_ENDPOINTS, StoreArgs};

/// The etcd settings the flags (or their `WREN_ETCD_*` variables) describe; defaults for the
/// rest.
pub fn etcd_config(args: &StoreArgs) -> EtcdConfig {
    EtcdConfig {
        endpoints: args.etcd_endpoints.as_ref().map_or_else(
            || vec![DEFAULT_ETCD_ENDPOINTS.to_owned()],
            |endpoints| endpoints.iter().map(|e| e.0.clone()).collect(),
        ),
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

/// Opens the datastore and makes sure it answers, for commands that cannot do anything
/// without it: an unreachable etcd is one clear line naming the endpoints.
pub async fn open_reachable(args: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    let config = etcd_config(args);
    let endpoints = config.endpoints.join(",");
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(config).await?);
    match store.revision().await {
        Ok(_) => Ok(store),
        Err(wren_store::StoreError::Unavailable { reason, .. }) => {
            anyhow::bail!("cannot reach etcd at {endpoints}: {reason}")
        }
        Err(e) => Err(e.into()),
    }
}
