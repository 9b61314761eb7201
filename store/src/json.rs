//! Typed JSON access on top of any [`Store`].
//!
//! Every wren document is JSON. These helpers do the (de)serialisation in one place so that a
//! value that does not parse always becomes [`StoreError::InvalidData`] naming its key, and
//! never a panic or a bare `serde_json` error without context.

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{KeyValue, LeaseId, Result, Revision, Store, StoreError, WatchEvent};

/// A decoded document with the revisions it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// The decoded document.
    pub value: T,
    /// Revision at which the key was created.
    pub create_revision: Revision,
    /// Revision of the last change: pass it to [`JsonStore::update_json`] to compare-and-swap.
    pub mod_revision: Revision,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// Decoded documents under a prefix, read at one consistent revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonListing<T> {
    /// The documents in key order.
    pub items: Vec<Versioned<T>>,
    /// Store revision of the listing; watch from `revision + 1` to follow it.
    pub revision: Revision,
}

/// Decodes a stored value; a value that does not parse is [`StoreError::InvalidData`] naming
/// `key`.
pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| StoreError::InvalidData {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Encodes a document for `key`; a document that does not serialise (a map with non-string
/// keys, say) is [`StoreError::InvalidData`] naming `key`.
pub fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::InvalidData {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Decodes one stored key into a [`Versioned`] document.
pub fn decode_kv<T: DeserializeOwned>(kv: KeyValue) -> Result<Versioned<T>> {
    let value = decode(&kv.key, &kv.value)?;
    Ok(Versioned {
        key: kv.key,
        value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        lease: kv.lease,
    })
}

/// A watch event with its document decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonEvent<T> {
    /// The key was created or changed.
    Put(Versioned<T>),
    /// The key was removed at `revision`.
    Delete {
        /// The removed key.
        key: String,
        /// Revision of the delete.
        revision: Revision,
    },
}

/// Decodes the document a watch event carries.
pub fn decode_event<T: DeserializeOwned>(event: WatchEvent) -> Result<JsonEvent<T>> {
    match event {
        WatchEvent::Put(kv) => decode_kv(kv).map(JsonEvent::Put),
        WatchEvent::Delete { key, revision } => Ok(JsonEvent::Delete { key, revision }),
    }
}

/// Typed reads and writes of JSON documents, available on every [`Store`] (including
/// `dyn Store`).
#[async_trait]
pub trait JsonStore {
    /// Reads and decodes one document.
    async fn get_json<T: DeserializeOwned + Send>(&self, key: &str)
    -> Result<Option<Versioned<T>>>;

    /// Reads and decodes every document under `prefix` at one revision. One value that does
    /// not parse fails the whole listing, naming its key.
    async fn list_json<T: DeserializeOwned + Send>(&self, prefix: &str) -> Result<JsonListing<T>>;

    /// Creates a document only if `key` does not exist ([`StoreError::Conflict`] otherwise).
    async fn create_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<Revision>;

    /// Writes a document unconditionally.
    async fn put_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<Revision>;

    /// Replaces a document only if its mod revision is still `expected`.
    async fn update_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expected: Revision,
    ) -> Result<Revision>;
}

#[async_trait]
impl<S: Store + ?Sized> JsonStore for S {
    async fn get_json<T: DeserializeOwned + Send>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>> {
        self.get(key).await?.map(decode_kv).transpose()
    }

    async fn list_json<T: DeserializeOwned + Send>(&self, prefix: &str) -> Result<JsonListing<T>> {
        let listing = self.list(prefix).await?;
        let items = listing
            .items
            .into_iter()
            .map(decode_kv)
            .collect::<Result<_>>()?;
        Ok(JsonListing {
            items,
            revision: listing.revision,
        })
    }

    async fn create_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        self.create(key, encode(key, value)?, lease).await
    }

    async fn put_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        self.put(key, encode(key, value)?, lease).await
    }

    async fn update_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        expected: Revision,
    ) -> Result<Revision> {
        self.update(key, encode(key, value)?, expected).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::memory::MemoryStore;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Pool {
        cidr: String,
    }

    #[tokio::test]
    async fn round_trips_a_document_with_its_revisions() {
        let store = MemoryStore::new();
        let pool = Pool {
            cidr: "10.0.0.0/16".into(),
        };
        let rev = store.create_json("pools/a", &pool, None).await.unwrap();
        let got = store.get_json::<Pool>("pools/a").await.unwrap().unwrap();
        assert_eq!(got.value, pool);
        assert_eq!((got.create_revision, got.mod_revision), (rev, rev));
    }

    #[tokio::test]
    async fn a_value_that_does_not_parse_names_its_key() {
        let store = MemoryStore::new();
        store
            .put("pools/a", br#"{"cidr":"10.0.0.0/16"}"#.to_vec(), None)
            .await
            .unwrap();
        store
            .put("pools/b", b"{not json".to_vec(), None)
            .await
            .unwrap();
        match store.list_json::<Pool>("pools/").await {
            Err(StoreError::InvalidData { key, .. }) => assert_eq!(key, "pools/b"),
            other => panic!("expected invalid data at pools/b, got {other:?}"),
        }
        match store.get_json::<Pool>("pools/b").await {
            Err(StoreError::InvalidData { key, .. }) => assert_eq!(key, "pools/b"),
            other => panic!("expected invalid data at pools/b, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_document_that_does_not_serialise_names_its_key() {
        let store = MemoryStore::new();
        let bad: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        match store.put_json("odd/key", &bad, None).await {
            Err(StoreError::InvalidData { key, .. }) => assert_eq!(key, "odd/key"),
            other => panic!("expected invalid data at odd/key, got {other:?}"),
        }
        assert!(store.get("odd/key").await.unwrap().is_none());
    }
}
