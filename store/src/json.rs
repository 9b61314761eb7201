//! Typed JSON access on top of any [`Store`].
//!
//! Every wren document is JSON. These helpers do the (de)serialisation in one place so that a
//! value that does not parse always becomes [`StoreError::InvalidData`] naming its key, and
//! never a panic or a bare `serde_json` error without context.
//!
//! Documents are read leniently: a field this version does not know (a newer version wrote
//! it, in a cluster being upgraded) is set aside rather than failing the document, and a
//! document written back as read ([`JsonStore::update_read`]) keeps it. So an older agent
//! neither misreads a newer document as missing nor drops what it does not understand.

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

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
    /// The fields of the stored document this version does not know.
    pub unknown: UnknownFields,
}

/// Fields of a stored document that the type it was decoded into does not know, each with
/// its place in the document and its value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnknownFields(Vec<(Vec<Step>, Value)>);

/// One step of a place in a JSON document: a member of an object or an element of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Member(String),
    Element(usize),
}

impl UnknownFields {
    /// Whether the document had none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Their places, as `a.b.0.c`.
    pub fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(place, _)| {
                place
                    .iter()
                    .map(|step| match step {
                        Step::Member(name) => name.clone(),
                        Step::Element(index) => index.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            })
            .collect()
    }

    /// Puts each field back into `document` where its parent still is.
    fn restore(&self, document: &mut Value) {
        for (place, value) in &self.0 {
            let Some((Step::Member(name), parent)) = place.split_last() else {
                continue;
            };
            if let Some(Value::Object(object)) = document.pointer_mut(&pointer(parent)) {
                object.entry(name.clone()).or_insert_with(|| value.clone());
            }
        }
    }
}

/// The place serde_ignored reports as steps through the document.
fn steps(path: &serde_ignored::Path<'_>) -> Vec<Step> {
    use serde_ignored::Path;
    let mut steps = Vec::new();
    let mut at = path;
    loop {
        at = match at {
            Path::Root => break,
            Path::Seq { parent, index } => {
                steps.push(Step::Element(*index));
                parent
            }
            Path::Map { parent, key } => {
                steps.push(Step::Member(key.clone()));
                parent
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => parent,
        };
    }
    steps.reverse();
    steps
}

/// `place` as a JSON pointer (RFC 6901), which `serde_json` resolves.
fn pointer(place: &[Step]) -> String {
    place
        .iter()
        .map(|step| match step {
            Step::Member(member) => format!("/{}", member.replace('~', "~0").replace('/', "~1")),
            Step::Element(index) => format!("/{index}"),
        })
        .collect()
}

/// Decoded documents under a prefix, read at one consistent revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonListing<T> {
    /// The documents in key order.
    pub items: Vec<Versioned<T>>,
    /// Store revision of the listing; watch from `revision + 1` to follow it.
    pub revision: Revision,
}

/// Decodes a stored value, setting aside the fields `T` does not know; a value that does
/// not parse is [`StoreError::InvalidData`] naming `key`.
pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    decode_with_unknown(key, value).map(|(decoded, _)| decoded)
}

/// [`decode`], also returning the fields set aside.
pub fn decode_with_unknown<T: DeserializeOwned>(
    key: &str,
    value: &[u8],
) -> Result<(T, UnknownFields)> {
    let invalid = |e: serde_json::Error| StoreError::InvalidData {
        key: key.to_owned(),
        reason: e.to_string(),
    };
    let mut places = Vec::new();
    let mut reader = serde_json::Deserializer::from_slice(value);
    let decoded: T = serde_ignored::deserialize(&mut reader, |path| places.push(steps(&path)))
        .map_err(invalid)?;
    reader.end().map_err(invalid)?;
    if places.is_empty() {
        return Ok((decoded, UnknownFields::default()));
    }
    // Only a document with fields set aside is read a second time, whole.
    let document: Value = serde_json::from_slice(value).map_err(invalid)?;
    let unknown = places
        .into_iter()
        .filter_map(|place| {
            let found = document.pointer(&pointer(&place))?.clone();
            Some((place, found))
        })
        .collect();
    Ok((decoded, UnknownFields(unknown)))
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
    let (value, unknown) = decode_with_unknown(&kv.key, &kv.value)?;
    Ok(Versioned {
        key: kv.key,
        value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        lease: kv.lease,
        unknown,
    })
}

/// Encodes `value` for `key` with the `unknown` fields of the document it replaces put back.
pub fn encode_keeping<T: Serialize + ?Sized>(
    key: &str,
    value: &T,
    unknown: &UnknownFields,
) -> Result<Vec<u8>> {
    if unknown.is_empty() {
        return encode(key, value);
    }
    let invalid = |e: serde_json::Error| StoreError::InvalidData {
        key: key.to_owned(),
        reason: e.to_string(),
    };
    let mut document = serde_json::to_value(value).map_err(invalid)?;
    unknown.restore(&mut document);
    serde_json::to_vec(&document).map_err(invalid)
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

    /// Replaces the document `read` came from with `value`, only if it has not changed
    /// since, keeping the fields it had that this version does not know: what a
    /// read-modify-write uses.
    async fn update_read<R: Sync, T: Serialize + Sync + ?Sized>(
        &self,
        read: &Versioned<R>,
        value: &T,
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

    async fn update_read<R: Sync, T: Serialize + Sync + ?Sized>(
        &self,
        read: &Versioned<R>,
        value: &T,
    ) -> Result<Revision> {
        let bytes = encode_keeping(&read.key, value, &read.unknown)?;
        self.update(&read.key, bytes, read.mod_revision).await
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

    /// What an older version knows of a document a newer one wrote.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peer {
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bfd: Option<Bfd>,
        #[serde(default)]
        rules: Vec<Bfd>,
    }

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Bfd {
        interval: u32,
    }

    #[tokio::test]
    async fn fields_a_newer_version_wrote_are_read_around_and_written_back() {
        let store = MemoryStore::new();
        let newer = serde_json::json!({
            "address": "192.0.2.1",
            "localAs": 65010,
            "bfd": {"interval": 300, "echo": true},
            "rules": [{"interval": 1}, {"interval": 2, "weight": 7}],
            "gone": null
        });
        store
            .put("peers/a", serde_json::to_vec(&newer).unwrap(), None)
            .await
            .unwrap();
        let read = store.get_json::<Peer>("peers/a").await.unwrap().unwrap();
        assert_eq!(read.value.address, "192.0.2.1");
        assert_eq!(read.value.bfd, Some(Bfd { interval: 300 }));
        assert_eq!(
            read.unknown.names(),
            ["bfd.echo", "gone", "localAs", "rules.1.weight"]
        );
        // Changing what this version knows keeps what it does not, wherever its parent is.
        let mut changed = read.value.clone();
        changed.address = "192.0.2.2".into();
        store.update_read(&read, &changed).await.unwrap();
        let stored: serde_json::Value =
            serde_json::from_slice(&store.get("peers/a").await.unwrap().unwrap().value).unwrap();
        let mut expected = newer.clone();
        expected["address"] = "192.0.2.2".into();
        assert_eq!(stored, expected);
        // A parent this version removed takes its unknown fields with it.
        let read = store.get_json::<Peer>("peers/a").await.unwrap().unwrap();
        changed.bfd = None;
        store.update_read(&read, &changed).await.unwrap();
        let stored: serde_json::Value =
            serde_json::from_slice(&store.get("peers/a").await.unwrap().unwrap().value).unwrap();
        assert_eq!(stored.get("bfd"), None);
        assert_eq!(stored["localAs"], 65010);
        // The revision still guards the write.
        assert!(
            store
                .update_read(&read, &changed)
                .await
                .unwrap_err()
                .is_conflict()
        );
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
