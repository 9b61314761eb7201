//! The cluster's identity, and the rebuild of a datastore that came back without its data.
//!
//! The first agent that finds neither an identity (`cluster/id`) nor a rebuild under way
//! writes one; every agent remembers the identity it has seen in its state directory. A
//! datastore that answers without that identity has lost the cluster's data (etcd restarted
//! on an empty data directory); one that holds another identity is another cluster's. Either
//! way the agent does not act on what it reads: the controller keeps the dataplane exactly as
//! it is (no withdrawal, no route removed), `/readyz` says why, no address is handed out, and
//! neither the orphan sweep nor the leak release runs.
//!
//! After every pass on a datastore it trusts, the agent writes down what it holds
//! ([`Holdings`]: the cluster's configuration, pools and peers as it last saw them, its node
//! document, its blocks and affinities, its workloads). When the data is lost, each agent
//! writes its holdings back (only keys that are absent), then reports
//! `cluster/rebuild/<node>`. Once every live node has reported and the live agents have had
//! time to put their liveness keys back, the identity is written back, the same one, and the
//! agents resume. The rebuild is automatic; nothing is handed out before the identity is
//! back.
//!
//! [`decide`] and [`rebuild_complete`] are the pure core; [`DatastoreIdentity`] does the I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wren_ipam::block::Block;
use wren_ipam::handle::{Handle, HandleAddress};
use wren_model::{ClusterIdentity, Node, RebuildReport, Workload, keys, vxlan_tunnel_handle};
use wren_store::{Compare, Store, StoreError, Txn};

use super::view::ClusterView;

/// The file in the state directory that remembers the identity.
const IDENTITY_FILE: &str = "cluster-id.json";
/// The file in the state directory that records what the node holds.
const HOLDINGS_FILE: &str = "holdings.json";

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("state directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error("state file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What the agent makes of the datastore's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityState {
    /// Not checked yet.
    Unknown,
    /// The datastore holds the identity this node belongs to.
    Trusted(ClusterIdentity),
    /// The datastore answers without the identity this node remembers: its data is gone.
    Lost {
        /// The identity this node belongs to.
        remembered: ClusterIdentity,
        /// Nodes whose report the rebuild still waits for (empty until known).
        waiting_for: Vec<String>,
    },
    /// The datastore holds another cluster's identity.
    Mismatch {
        /// The id of the identity this node belongs to (`(none)` when it remembers none).
        remembered: String,
        /// The one the datastore holds.
        found: String,
    },
    /// Neither the datastore nor this node has an identity, and other nodes are rebuilding.
    AwaitingRebuild,
}

impl IdentityState {
    /// Whether the datastore may be acted on.
    pub fn trusted(&self) -> bool {
        matches!(self, IdentityState::Trusted(_))
    }

    /// Whether the datastore is known not to be this cluster's (not merely unchecked).
    pub fn distrusted(&self) -> bool {
        !matches!(self, IdentityState::Trusted(_) | IdentityState::Unknown)
    }

    /// The reason the agent is not ready, in words; `None` when trusted or not yet checked.
    pub fn problem(&self) -> Option<String> {
        match self {
            IdentityState::Unknown | IdentityState::Trusted(_) => None,
            IdentityState::Lost {
                remembered,
                waiting_for,
            } => {
                let mut why = format!(
                    "the datastore has lost the cluster's data (no cluster identity; this node \
                     belongs to {}): dataplane kept as it is, rebuilding",
                    remembered.id
                );
                if !waiting_for.is_empty() {
                    why.push_str(&format!(", waiting for {}", waiting_for.join(", ")));
                }
                Some(why)
            }
            IdentityState::Mismatch { remembered, found } => Some(format!(
                "the datastore holds cluster {found}, this node belongs to {remembered}: \
                 dataplane kept as it is"
            )),
            IdentityState::AwaitingRebuild => Some(
                "the datastore has no cluster identity and other nodes are rebuilding it: waiting"
                    .to_owned(),
            ),
        }
    }
}

/// What to do about the identity the datastore holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is the one this node remembers.
    Trust,
    /// This node remembers none: remember this one.
    Adopt,
    /// Neither has one and no rebuild is under way: a new cluster, write one.
    Create,
    /// This node remembers one the datastore lacks.
    Lost,
    /// The datastore holds another.
    Mismatch,
    /// Neither has one, but other nodes are rebuilding: wait for theirs.
    AwaitRebuild,
}

/// Decides from the stored identity, the remembered one and whether any node has reported a
/// rebuild.
pub fn decide(
    stored: Option<&ClusterIdentity>,
    remembered: Option<&ClusterIdentity>,
    rebuild_under_way: bool,
) -> Decision {
    match (stored, remembered) {
        (Some(s), Some(r)) if s.id == r.id => Decision::Trust,
        (Some(_), Some(_)) => Decision::Mismatch,
        (Some(_), None) => Decision::Adopt,
        (None, Some(_)) => Decision::Lost,
        (None, None) if rebuild_under_way => Decision::AwaitRebuild,
        (None, None) => Decision::Create,
    }
}

/// Whether the identity may be written back: every node live now and every node that was
/// live before the loss has reported its part restored (a node live before that is still
/// silent once a whole `liveness_ttl` has passed is taken for dead), and at least a third of
/// `liveness_ttl` and a second have passed since the loss was seen, so every live agent has
/// had the time it takes to put its liveness key back. Returns the nodes still waited for.
pub fn rebuild_complete(
    cluster: &str,
    live_now: &BTreeSet<String>,
    live_before: &BTreeSet<String>,
    reports: &BTreeMap<String, RebuildReport>,
    since_loss: Duration,
    liveness_ttl: Duration,
) -> Result<(), Vec<String>> {
    let done = |node: &String| {
        reports
            .get(node)
            .is_some_and(|r| r.restored && r.cluster.as_deref().is_none_or(|c| c == cluster))
    };
    let mut waiting: Vec<String> = live_now.iter().filter(|n| !done(n)).cloned().collect();
    if since_loss < liveness_ttl {
        waiting.extend(
            live_before
                .iter()
                .filter(|n| !live_now.contains(*n) && !done(n))
                .cloned(),
        );
    }
    let settled = since_loss >= liveness_ttl / 3 + Duration::from_secs(1);
    if waiting.is_empty() && settled {
        Ok(())
    } else {
        Err(waiting)
    }
}

/// What a node holds, as its last pass on a trusted datastore saw it: the documents it
/// writes back when the datastore loses them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holdings {
    /// Key → document: the cluster configuration, pools, peers, this node's document, its
    /// affinities and workloads, the network policies, namespaces and pods' labels, and every
    /// block affine to it or holding one of its pods.
    pub documents: BTreeMap<String, serde_json::Value>,
    /// The nodes that were live.
    pub live_nodes: BTreeSet<String>,
}

impl Holdings {
    /// What `node` holds in `view`: the documents it keeps as stored ([`ClusterView::held`]),
    /// and the nodes that are live. Documents that are not JSON are left out.
    pub fn of(view: &ClusterView) -> Self {
        let documents = view
            .held
            .iter()
            .filter_map(|(key, value)| Some((key.clone(), serde_json::from_slice(value).ok()?)))
            .collect();
        Self {
            documents,
            live_nodes: view.live.clone(),
        }
    }

    /// Every key and value to write back, documents first, then the handle documents of
    /// this node's pods and tunnel address (built from the workloads and blocks, created
    /// now).
    pub fn restore_writes(&self, node: &str, now_secs: u64) -> Vec<(String, Vec<u8>)> {
        let mut writes: Vec<(String, Vec<u8>)> = self
            .documents
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::to_vec(v).ok()?)))
            .collect();
        let blocks: Vec<IpNet> = self
            .documents
            .iter()
            .filter(|(k, _)| k.starts_with(keys::BLOCKS))
            .filter_map(|(_, v)| serde_json::to_vec(v).ok())
            .filter_map(|bytes| Block::from_json(&bytes).ok())
            .map(|b| b.cidr())
            .collect();
        let handle = |addresses: Vec<IpAddr>| {
            let addresses: Vec<HandleAddress> = addresses
                .into_iter()
                .filter_map(|address| {
                    let block = blocks.iter().find(|b| b.contains(&address))?;
                    Some(HandleAddress {
                        address,
                        block: *block,
                    })
                })
                .collect();
            (!addresses.is_empty()).then(|| Handle {
                node: node.to_owned(),
                created_at: now_secs,
                addresses,
            })
        };
        let mut handles: BTreeMap<String, Handle> = BTreeMap::new();
        for (key, value) in &self.documents {
            if !key.starts_with(keys::WORKLOADS) {
                continue;
            }
            let Ok(w) = serde_json::from_value::<Workload>(value.clone()) else {
                continue;
            };
            if let Some(h) = handle(w.addresses.iter().map(|a| a.addr()).collect()) {
                handles.insert(w.handle, h);
            }
        }
        let tunnel = self
            .documents
            .get(&keys::node(node))
            .and_then(|v| serde_json::from_value::<Node>(v.clone()).ok())
            .and_then(|n| n.vxlan_address);
        if let Some(h) = tunnel.and_then(|a| handle(vec![a])) {
            handles.insert(vxlan_tunnel_handle(node), h);
        }
        for (name, h) in handles {
            if let Ok(bytes) = serde_json::to_vec(&h) {
                writes.push((keys::handle(&name), bytes));
            }
        }
        writes
    }
}

/// The rebuild reports in the datastore, by node (unreadable ones left out).
pub async fn rebuild_reports(
    store: &dyn Store,
) -> Result<BTreeMap<String, RebuildReport>, StoreError> {
    Ok(store
        .list(keys::REBUILD)
        .await?
        .items
        .iter()
        .filter_map(|kv| {
            let node = kv.key.strip_prefix(keys::REBUILD)?.to_owned();
            Some((node, serde_json::from_slice(&kv.value).ok()?))
        })
        .collect())
}

/// The agent's hold on the cluster identity: what it remembers, what it concluded last, and
/// the rebuild it takes part in.
pub struct DatastoreIdentity {
    node: String,
    dir: PathBuf,
    liveness_ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Option<IdentityState>,
    remembered: Option<ClusterIdentity>,
    /// The holdings last written to the state directory.
    written: Option<Holdings>,
    /// When this agent saw the loss, and whether it has written its holdings back.
    lost_since: Option<Instant>,
    restored: bool,
    reported: bool,
}

impl fmt::Debug for DatastoreIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatastoreIdentity")
            .field("node", &self.node)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IdentityError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `value` to `path` whole or not at all (a temporary file renamed over it).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec(value).map_err(|e| IdentityError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DatastoreIdentity {
    /// Opens (creating it, mode 0700) the state directory `dir` of `node` and reads the
    /// identity remembered there.
    pub fn open(node: &str, dir: &Path, liveness_ttl: Duration) -> Result<Self, IdentityError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| IdentityError::Io {
                path: dir.to_owned(),
                source,
            })?;
        let remembered = read_json(&dir.join(IDENTITY_FILE))?;
        let written = read_json(&dir.join(HOLDINGS_FILE))?;
        Ok(Self {
            node: node.to_owned(),
            dir: dir.to_owned(),
            liveness_ttl,
            inner: Mutex::new(Inner {
                remembered,
                written,
                ..Inner::default()
            }),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// The last conclusion.
    pub fn state(&self) -> IdentityState {
        self.inner().state.clone().unwrap_or(IdentityState::Unknown)
    }

    fn set_state(&self, state: IdentityState) {
        let mut inner = self.inner();
        if inner.state.as_ref() != Some(&state) {
            match state.problem() {
                Some(why) => tracing::warn!("{why}"),
                None => tracing::info!(state = ?state, "cluster identity"),
            }
        }
        inner.state = Some(state);
    }

    /// Reads the datastore's identity and decides whether it may be acted on; while the
    /// data is lost, also takes this node's step of the rebuild. A datastore that does not
    /// answer leaves the last conclusion as it was.
    pub async fn check(&self, store: &dyn Store) -> Result<IdentityState, StoreError> {
        let stored = match store.get(keys::CLUSTER_ID).await? {
            Some(kv) => match serde_json::from_slice::<ClusterIdentity>(&kv.value) {
                Ok(id) => Some(id),
                Err(e) => {
                    let state = IdentityState::Mismatch {
                        remembered: self
                            .remembered()
                            .map_or_else(|| "(none)".to_owned(), |r| r.id),
                        found: format!("(unreadable: {e})"),
                    };
                    self.set_state(state.clone());
                    return Ok(state);
                }
            },
            None => None,
        };
        let remembered = self.remembered();
        let under_way = stored.is_none()
            && remembered.is_none()
            && !store.list(keys::REBUILD).await?.items.is_empty();
        let decision = decide(stored.as_ref(), remembered.as_ref(), under_way);
        let state = match (decision, stored, remembered) {
            (Decision::Trust, stored, _) => self.trust(store, stored).await,
            (Decision::Adopt, Some(stored), _) => {
                self.remember(&stored);
                self.trust(store, Some(stored)).await
            }
            (Decision::Create, ..) => {
                let fresh = ClusterIdentity {
                    id: uuid::Uuid::new_v4().to_string(),
                    created_at: now_secs(),
                };
                let bytes = serde_json::to_vec(&fresh).unwrap_or_default();
                match store.create(keys::CLUSTER_ID, bytes, None).await {
                    Ok(_) => {
                        tracing::info!(id = fresh.id, "wrote a new cluster identity");
                        self.remember(&fresh);
                        IdentityState::Trusted(fresh)
                    }
                    // Another agent wrote one first: the next check adopts it.
                    Err(e) if e.is_conflict() => IdentityState::Unknown,
                    Err(e) => return Err(e),
                }
            }
            (Decision::Mismatch, Some(found), Some(remembered)) => IdentityState::Mismatch {
                remembered: remembered.id,
                found: found.id,
            },
            (Decision::Lost, _, Some(remembered)) => {
                let waiting_for = self.rebuild(store, &remembered).await?;
                if waiting_for.is_none() {
                    // Written back just now: trusted from the next check on.
                    self.trust(store, Some(remembered)).await
                } else {
                    IdentityState::Lost {
                        remembered,
                        waiting_for: waiting_for.unwrap_or_default(),
                    }
                }
            }
            (Decision::AwaitRebuild, ..) => {
                let report = RebuildReport {
                    cluster: None,
                    restored: true,
                };
                self.report(store, &report).await?;
                IdentityState::AwaitingRebuild
            }
            // `decide` gives these answers only with both sides as matched above.
            (Decision::Adopt | Decision::Mismatch | Decision::Lost, ..) => IdentityState::Unknown,
        };
        self.set_state(state.clone());
        Ok(state)
    }

    fn remembered(&self) -> Option<ClusterIdentity> {
        self.inner().remembered.clone()
    }

    fn remember(&self, identity: &ClusterIdentity) {
        if let Err(e) = write_json(&self.dir.join(IDENTITY_FILE), identity) {
            tracing::warn!(error = %e, "cannot remember the cluster identity");
        }
        self.inner().remembered = Some(identity.clone());
    }

    /// Trusted; a rebuild this node took part in is over, so its report goes.
    async fn trust(&self, store: &dyn Store, stored: Option<ClusterIdentity>) -> IdentityState {
        let reported = {
            let mut inner = self.inner();
            inner.lost_since = None;
            inner.restored = false;
            std::mem::take(&mut inner.reported)
        };
        if reported && let Err(e) = store.delete(&keys::rebuild(&self.node), None).await {
            tracing::debug!(error = %e, "rebuild report not removed");
        }
        match stored {
            Some(id) => IdentityState::Trusted(id),
            None => IdentityState::Unknown,
        }
    }

    async fn report(&self, store: &dyn Store, report: &RebuildReport) -> Result<(), StoreError> {
        if self.inner().reported {
            return Ok(());
        }
        let bytes = serde_json::to_vec(report).unwrap_or_default();
        store.put(&keys::rebuild(&self.node), bytes, None).await?;
        self.inner().reported = true;
        Ok(())
    }

    /// This node's step of a rebuild: writes its holdings back (once), reports, and writes
    /// the identity back when [`rebuild_complete`] says so. `Ok(None)` once the identity is
    /// back; otherwise the nodes still waited for.
    async fn rebuild(
        &self,
        store: &dyn Store,
        remembered: &ClusterIdentity,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let (since, restored, holdings) = {
            let mut inner = self.inner();
            let since = *inner.lost_since.get_or_insert_with(Instant::now);
            (
                since,
                inner.restored,
                inner.written.clone().unwrap_or_default(),
            )
        };
        if !restored {
            let mut written = 0usize;
            for (key, value) in holdings.restore_writes(&self.node, now_secs()) {
                let txn = Txn::new()
                    .when(Compare::Absent(key.clone()))
                    .put(key, value);
                match store.txn(txn).await {
                    Ok(_) => written += 1,
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
            }
            tracing::warn!(
                written,
                "the datastore lost the cluster's data: wrote back what this node holds"
            );
            self.inner().restored = true;
            let report = RebuildReport {
                cluster: Some(remembered.id.clone()),
                restored: true,
            };
            self.report(store, &report).await?;
        }
        let live_now: BTreeSet<String> = store
            .list(keys::LIVENESS)
            .await?
            .items
            .iter()
            .filter_map(|kv| kv.key.strip_prefix(keys::LIVENESS).map(str::to_owned))
            .collect();
        let reports = rebuild_reports(store).await?;
        match rebuild_complete(
            &remembered.id,
            &live_now,
            &holdings.live_nodes,
            &reports,
            since.elapsed(),
            self.liveness_ttl,
        ) {
            Ok(()) => {
                let bytes = serde_json::to_vec(remembered).unwrap_or_default();
                match store.create(keys::CLUSTER_ID, bytes, None).await {
                    Ok(_) => tracing::warn!(
                        id = remembered.id,
                        nodes = reports.len(),
                        "rebuild complete: wrote the cluster identity back"
                    ),
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e),
                }
                Ok(None)
            }
            Err(waiting) => Ok(Some(waiting)),
        }
    }

    /// Writes down what the node holds, when it changed since the last time.
    pub fn record(&self, holdings: Holdings) {
        if self.inner().written.as_ref() == Some(&holdings) {
            return;
        }
        match write_json(&self.dir.join(HOLDINGS_FILE), &holdings) {
            Ok(()) => self.inner().written = Some(holdings),
            Err(e) => tracing::warn!(error = %e, "cannot record what this node holds"),
        }
    }

    /// Whether the view holds every document this node recorded (after a rebuild, the
    /// first pass waits until the watches have delivered what was written back).
    pub fn view_holds_holdings(&self, view: &ClusterView) -> bool {
        let inner = self.inner();
        let Some(holdings) = &inner.written else {
            return true;
        };
        holdings
            .documents
            .keys()
            .all(|key| view.held.contains_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::view::Part;

    fn id(s: &str) -> ClusterIdentity {
        ClusterIdentity {
            id: s.to_owned(),
            created_at: 1,
        }
    }

    #[test]
    fn the_decision_follows_what_each_side_holds() {
        let (a, b) = (id("a"), id("b"));
        assert_eq!(decide(Some(&a), Some(&a), false), Decision::Trust);
        assert_eq!(decide(Some(&a), Some(&b), false), Decision::Mismatch);
        assert_eq!(decide(Some(&a), None, true), Decision::Adopt);
        assert_eq!(decide(None, Some(&a), false), Decision::Lost);
        assert_eq!(decide(None, None, false), Decision::Create);
        assert_eq!(decide(None, None, true), Decision::AwaitRebuild);
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn done(cluster: Option<&str>) -> RebuildReport {
        RebuildReport {
            cluster: cluster.map(str::to_owned),
            restored: true,
        }
    }

    #[test]
    fn the_identity_waits_for_every_live_node_and_the_settling_time() {
        let ttl = Duration::from_secs(30);
        let settled = Duration::from_secs(11);
        let mut reports = BTreeMap::new();
        reports.insert("n1".to_owned(), done(Some("c")));
        let live = set(&["n1", "n2"]);
        assert_eq!(
            rebuild_complete("c", &live, &live, &reports, settled, ttl),
            Err(vec!["n2".to_owned()])
        );
        // A new node with nothing to give back counts as done.
        reports.insert("n2".to_owned(), done(None));
        assert_eq!(
            rebuild_complete("c", &live, &live, &reports, settled, ttl),
            Ok(())
        );
        // Not before the live agents had time to put their liveness back.
        assert!(
            rebuild_complete("c", &live, &live, &reports, Duration::from_secs(5), ttl).is_err()
        );
        // A report for another cluster does not count.
        reports.insert("n2".to_owned(), done(Some("other")));
        assert!(rebuild_complete("c", &live, &live, &reports, settled, ttl).is_err());
    }

    #[test]
    fn a_node_live_before_the_loss_is_waited_for_one_ttl() {
        let ttl = Duration::from_secs(30);
        let mut reports = BTreeMap::new();
        reports.insert("n1".to_owned(), done(Some("c")));
        let now = set(&["n1"]);
        let before = set(&["n1", "n3"]);
        assert_eq!(
            rebuild_complete("c", &now, &before, &reports, Duration::from_secs(12), ttl),
            Err(vec!["n3".to_owned()])
        );
        assert_eq!(
            rebuild_complete("c", &now, &before, &reports, ttl, ttl),
            Ok(())
        );
    }

    #[test]
    fn holdings_keep_this_nodes_part_and_rebuild_its_handles() {
        let node = "n1";
        let mut block = Block::new("10.65.0.0/26".parse().unwrap(), Some(node.into())).unwrap();
        let pod: IpAddr = "10.65.0.3".parse().unwrap();
        block
            .assign(
                pod,
                wren_ipam::block::Assignment {
                    handle: "net.c1".into(),
                    borrowed_by: None,
                },
            )
            .unwrap();
        let other = Block::new("10.65.0.64/26".parse().unwrap(), Some("n2".into())).unwrap();
        let workload = Workload {
            node: node.into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            network: "net".into(),
            handle: "net.c1".into(),
            pod_namespace: None,
            pod_name: None,
            pod_uid: None,
            netns: "/run/netns/p".into(),
            addresses: vec!["10.65.0.3/32".parse().unwrap()],
            host_interface: "wren0".into(),
            mac: "02:00:00:00:00:01".into(),
        };
        let mut view = ClusterView::default();
        for (part, key, value) in [
            (Part::Blocks, keys::block(&block.cidr()), block.to_json()),
            (Part::Blocks, keys::block(&other.cidr()), other.to_json()),
            (
                Part::Workloads,
                keys::workload(node, "c1", "eth0"),
                serde_json::to_vec(&workload).unwrap(),
            ),
            (Part::Liveness, keys::liveness("n1"), b"{}".to_vec()),
            (Part::Liveness, keys::liveness("n2"), b"{}".to_vec()),
        ] {
            view.put(part, node, &key, &value);
        }
        let holdings = Holdings::of(&view);
        assert!(holdings.documents.contains_key(&keys::block(&block.cidr())));
        assert!(!holdings.documents.contains_key(&keys::block(&other.cidr())));
        assert_eq!(holdings.live_nodes, set(&["n1", "n2"]));
        let writes = holdings.restore_writes(node, 7);
        let (_, handle) = writes
            .iter()
            .find(|(k, _)| *k == keys::handle("net.c1"))
            .expect("the pod's handle is rebuilt");
        let handle: Handle = serde_json::from_slice(handle).unwrap();
        assert_eq!(handle.node, node);
        assert_eq!(handle.addresses[0].address, pod);
        assert_eq!(handle.addresses[0].block, block.cidr());
    }
}
