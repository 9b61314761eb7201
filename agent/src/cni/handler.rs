//! The agent side of every CNI command.
//!
//! ADD allocates the pod's addresses (handle `<network>.<containerID>`), builds its links and
//! records the workload at `workloads/<node>/<containerID>/<ifname>`, undoing every step
//! done so far when a later one fails. DEL undoes the three in reverse order and succeeds
//! when any of them is already gone. CHECK compares the record, the allocation, `prevResult`
//! and the kernel. GC removes this network's attachments the runtime no longer lists.
//! STATUS says whether an ADD could succeed now.
//!
//! Requests for one attachment are serialized by a per-attachment lock; nothing is held
//! across requests for different containers, so a burst of ADDs proceeds in parallel.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use wren_cni::config::NetConf;
use wren_cni::env::Attachment;
use wren_cni::wire::{AttachmentRequest, NetworkRequest};
use wren_cni::{CniError, CniResult, ErrorCode};
use wren_model::{Workload, keys};
use wren_store::json::{Versioned, decode_kv, encode};
use wren_store::{Store, StoreError};

use super::backend::{AddressRequest, Allocator, PodLinks, PodNetwork, PodSpec};
use super::errors::store_error;
use super::locks::{KeyGuard, KeyedLocks};
use super::result::{HOST_MAC, attachment_result, sandbox_addresses};
use crate::api::CniService;

/// MTU of pod interfaces when neither the configuration nor the agent says otherwise.
pub const DEFAULT_MTU: u32 = 1500;

/// How long STATUS waits for the datastore before calling it unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the CNI commands for one node.
pub struct CniHandler {
    node: String,
    default_mtu: u32,
    store: Arc<dyn Store>,
    allocator: Arc<dyn Allocator>,
    pods: Arc<dyn PodNetwork>,
    locks: KeyedLocks,
}

/// A workload record with the revision it was read at.
type Record = Versioned<Workload>;

impl CniHandler {
    /// A handler for `node`, recording workloads in `store`.
    pub fn new(
        node: impl Into<String>,
        store: Arc<dyn Store>,
        allocator: Arc<dyn Allocator>,
        pods: Arc<dyn PodNetwork>,
    ) -> Self {
        Self {
            node: node.into(),
            default_mtu: DEFAULT_MTU,
            store,
            allocator,
            pods,
            locks: KeyedLocks::new(),
        }
    }

    /// Sets the pod MTU used when the network configuration has no `mtu` (the agent derives it
    /// from the underlay MTU and the encapsulation).
    pub fn with_default_mtu(mut self, mtu: u32) -> Self {
        self.default_mtu = mtu;
        self
    }

    /// How many attachments have a request in flight (their locks held or awaited).
    pub fn locks_in_use(&self) -> usize {
        self.locks.in_use()
    }

    async fn lock(&self, config: &NetConf, attachment: &Attachment) -> KeyGuard<'_> {
        let key = lock_key(&config.name, &attachment.container_id, &attachment.ifname);
        self.locks.lock(&key).await
    }

    fn mtu(&self, config: &NetConf) -> u32 {
        config.mtu.unwrap_or(self.default_mtu)
    }

    fn record_key(&self, container_id: &str, ifname: &str) -> String {
        keys::workload(&self.node, container_id, ifname)
    }

    /// Every record of one container on this node (any interface, any network).
    async fn container_records(&self, container_id: &str) -> Result<Vec<Record>, CniError> {
        let prefix = format!("{}{container_id}/", keys::node_workloads(&self.node));
        let listing = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| store_error("reading the pod's workload records", e))?;
        listing
            .items
            .into_iter()
            .map(|kv| {
                decode_kv::<Workload>(kv).map_err(|e| store_error("reading a workload record", e))
            })
            .collect()
    }

    async fn record(&self, container_id: &str, ifname: &str) -> Result<Option<Record>, CniError> {
        let key = self.record_key(container_id, ifname);
        match self.store.get(&key).await {
            Ok(Some(kv)) => decode_kv(kv)
                .map(Some)
                .map_err(|e| store_error("reading the workload record", e)),
            Ok(None) => Ok(None),
            Err(e) => Err(store_error("reading the workload record", e)),
        }
    }

    async fn attach(&self, attachment: Attachment, config: NetConf) -> Result<CniResult, CniError> {
        let netns = attachment
            .netns
            .clone()
            .ok_or_else(|| CniError::new(ErrorCode::INVALID_ENVIRONMENT, "ADD needs CNI_NETNS"))?;
        let mtu = self.mtu(&config);
        let workload_id = workload_id(&attachment.container_id, &attachment.ifname);
        let _guard = self.lock(&config, &attachment).await;

        for existing in self.container_records(&attachment.container_id).await? {
            let record = &existing.value;
            if record.ifname == attachment.ifname {
                if record.network != config.name {
                    return Err(CniError::new(
                        ErrorCode::INTERFACE_EXISTS,
                        format!(
                            "{} of container {} is already attached to network {:?}",
                            record.ifname, record.container_id, record.network
                        ),
                    ));
                }
                if record.netns == netns && self.intact(record, mtu).await {
                    tracing::info!(container = %record.container_id, ifname = %record.ifname, "ADD repeated; returning the existing attachment");
                    return Ok(attachment_result(record, mtu, config.dns.as_ref()));
                }
                tracing::warn!(container = %record.container_id, ifname = %record.ifname, "replacing an attachment that is no longer intact");
                self.detach(&existing).await?;
            } else if record.network == config.name {
                return Err(CniError::new(
                    ErrorCode::INVALID_NETWORK_CONFIG,
                    format!(
                        "container {} is already on network {:?} through {}; wren gives a container one interface per network",
                        record.container_id, record.network, record.ifname
                    ),
                ));
            }
        }

        // A host veth of this attachment without a record is left from an ADD that died
        // halfway; it would block the new one.
        self.pods
            .teardown(&self.pods.host_ifname(&workload_id))
            .await
            .map_err(CniError::from)?;

        let handle = config.handle(&attachment.container_id);
        let request = AddressRequest {
            handle: handle.clone(),
            node: self.node.clone(),
            ipv4: config.ipam.assign_ipv4,
            ipv6: config.ipam.assign_ipv6,
            pools: config.ipam.pools.clone(),
            addresses: config
                .runtime_config
                .as_ref()
                .map(|rc| rc.ips.iter().map(IpNet::addr).collect())
                .unwrap_or_default(),
            attributes: allocation_attributes(&self.node, &attachment),
        };
        let addresses: Vec<IpNet> = self
            .allocator
            .allocate(request)
            .await
            .map_err(CniError::from)?
            .into_iter()
            .map(IpNet::from)
            .collect();

        let spec = PodSpec {
            workload_id,
            netns: PathBuf::from(&netns),
            ifname: attachment.ifname.clone(),
            addresses: addresses.clone(),
            mtu,
        };
        let links = match self.pods.setup(&spec).await {
            Ok(links) => links,
            Err(e) => return Err(self.undo(CniError::from(e), &handle, None).await),
        };

        let record = Workload {
            node: self.node.clone(),
            container_id: attachment.container_id.clone(),
            ifname: attachment.ifname.clone(),
            network: config.name.clone(),
            handle: handle.clone(),
            pod_namespace: attachment.args.pod_namespace().map(str::to_string),
            pod_name: attachment.args.pod_name().map(str::to_string),
            netns,
            addresses,
            host_interface: links.host_ifname.clone(),
            mac: links.pod_mac.clone(),
        };
        let key = self.record_key(&attachment.container_id, &attachment.ifname);
        let written = match encode(&key, &record) {
            Ok(bytes) => self.store.create(&key, bytes, None).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            let e = store_error("recording the workload", e);
            return Err(self.undo(e, &handle, Some(&links.host_ifname)).await);
        }
        tracing::info!(
            container = %record.container_id, ifname = %record.ifname, host = %record.host_interface,
            addresses = ?record.addresses, "pod attached"
        );
        Ok(attachment_result(&record, mtu, config.dns.as_ref()))
    }

    /// Undoes a failed ADD: removes the links (when built) and releases the addresses. What
    /// cannot be undone is named in the error's details, so nothing leaks silently.
    async fn undo(&self, mut error: CniError, handle: &str, host_ifname: Option<&str>) -> CniError {
        let mut leftovers = Vec::new();
        if let Some(host) = host_ifname
            && let Err(e) = self.pods.teardown(host).await
        {
            leftovers.push(format!("could not remove {host}: {e}"));
        }
        if let Err(e) = self.allocator.release(handle).await {
            leftovers.push(format!(
                "could not release the addresses of handle {handle} ({e}); `wren ipam check` reports them"
            ));
        }
        if !leftovers.is_empty() {
            tracing::error!(
                handle,
                ?leftovers,
                "ADD failed and could not be fully undone"
            );
            let extra = leftovers.join("; ");
            error.details = if error.details.is_empty() {
                extra
            } else {
                format!("{}; {extra}", error.details)
            };
        }
        error
    }

    /// Whether a recorded attachment still has its links, addresses and allocation.
    async fn intact(&self, record: &Workload, mtu: u32) -> bool {
        matches!(self.problems(record, mtu).await, Ok(p) if p.is_empty())
    }

    /// Everything wrong with a recorded attachment: its allocation and its links.
    async fn problems(&self, record: &Workload, mtu: u32) -> Result<Vec<String>, CniError> {
        let mut problems = Vec::new();
        let held: BTreeSet<IpAddr> = self
            .allocator
            .holds(&record.handle)
            .await
            .map_err(CniError::from)?
            .into_iter()
            .collect();
        for address in &record.addresses {
            if !held.contains(&address.addr()) {
                problems.push(format!(
                    "{} is no longer allocated to handle {}",
                    address.addr(),
                    record.handle
                ));
            }
        }
        let spec = PodSpec {
            workload_id: workload_id(&record.container_id, &record.ifname),
            netns: PathBuf::from(&record.netns),
            ifname: record.ifname.clone(),
            addresses: record.addresses.clone(),
            mtu,
        };
        let links = PodLinks {
            host_ifname: record.host_interface.clone(),
            host_mac: HOST_MAC.to_string(),
            pod_mac: record.mac.clone(),
        };
        problems.extend(
            self.pods
                .check(&spec, &links)
                .await
                .map_err(CniError::from)?,
        );
        Ok(problems)
    }

    /// Removes a recorded attachment: links, then addresses, then the record (so a failure
    /// part-way leaves the record for the next DEL or GC to find).
    async fn detach(&self, record: &Record) -> Result<(), CniError> {
        self.pods
            .teardown(&record.value.host_interface)
            .await
            .map_err(CniError::from)?;
        self.allocator
            .release(&record.value.handle)
            .await
            .map_err(CniError::from)?;
        match self
            .store
            .delete(&record.key, Some(record.mod_revision))
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("removing the workload record", e)),
        }
    }

    async fn remove(&self, attachment: Attachment, config: NetConf) -> Result<(), CniError> {
        let _guard = self.lock(&config, &attachment).await;
        let handle = config.handle(&attachment.container_id);
        match self
            .record(&attachment.container_id, &attachment.ifname)
            .await?
        {
            Some(record) if record.value.network == config.name => {
                self.detach(&record).await?;
                // The handle in the record is this network's; release it too in case an
                // older record named another.
                if record.value.handle != handle {
                    self.allocator
                        .release(&handle)
                        .await
                        .map_err(CniError::from)?;
                }
            }
            // The interface belongs to another network's attachment: leave it alone.
            Some(_) => {
                self.allocator
                    .release(&handle)
                    .await
                    .map_err(CniError::from)?;
            }
            None => {
                self.pods
                    .teardown(
                        &self.pods.host_ifname(&workload_id(
                            &attachment.container_id,
                            &attachment.ifname,
                        )),
                    )
                    .await
                    .map_err(CniError::from)?;
                self.allocator
                    .release(&handle)
                    .await
                    .map_err(CniError::from)?;
            }
        }
        tracing::info!(container = %attachment.container_id, ifname = %attachment.ifname, "pod detached");
        Ok(())
    }

    async fn verify(&self, attachment: Attachment, config: NetConf) -> Result<(), CniError> {
        let _guard = self.lock(&config, &attachment).await;
        let record = self
            .record(&attachment.container_id, &attachment.ifname)
            .await?
            .filter(|r| r.value.network == config.name)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::CHECK_FAILED,
                    format!(
                        "no attachment of container {} via {} on network {:?} is recorded on node {}",
                        attachment.container_id, attachment.ifname, config.name, self.node
                    ),
                )
            })?;
        let record = record.value;
        let mut problems = Vec::new();
        if let Some(netns) = &attachment.netns
            && *netns != record.netns
        {
            problems.push(format!(
                "the attachment was made in {}, not {netns}",
                record.netns
            ));
        }
        if let Some(prev) = &config.prev_result {
            let prev = CniResult::from_value(prev)
                .map_err(|e| CniError::new(ErrorCode::INVALID_NETWORK_CONFIG, e.to_string()))?;
            let listed: BTreeSet<IpNet> = sandbox_addresses(&prev, &record.ifname)
                .into_iter()
                .collect();
            let recorded: BTreeSet<IpNet> = record.addresses.iter().copied().collect();
            for missing in recorded.difference(&listed) {
                problems.push(format!(
                    "prevResult does not list {missing}, which wren assigned"
                ));
            }
            for extra in listed.difference(&recorded) {
                problems.push(format!(
                    "prevResult lists {extra}, which wren did not assign"
                ));
            }
        }
        problems.extend(self.problems(&record, self.mtu(&config)).await?);
        if problems.is_empty() {
            return Ok(());
        }
        Err(CniError::new(
            ErrorCode::CHECK_FAILED,
            format!(
                "{} of container {} is not as ADD left it ({} problem{})",
                record.ifname,
                record.container_id,
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            ),
        )
        .with_details(problems.join("; ")))
    }

    async fn collect_garbage(&self, config: NetConf) -> Result<(), CniError> {
        let valid: BTreeSet<(String, String)> = config
            .gc_attachments()
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::INVALID_NETWORK_CONFIG,
                    "GC needs \"cni.dev/valid-attachments\" in the configuration",
                )
            })?
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let listing = self
            .store
            .list(&keys::node_workloads(&self.node))
            .await
            .map_err(|e| store_error("listing this node's workloads", e))?;
        let mut failures = Vec::new();
        let mut removed = 0usize;
        for kv in listing.items {
            let record = match decode_kv::<Workload>(kv) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "GC skips a workload record it cannot read");
                    continue;
                }
            };
            let w = &record.value;
            if w.network != config.name
                || valid.contains(&(w.container_id.clone(), w.ifname.clone()))
            {
                continue;
            }
            let _guard = self
                .locks
                .lock(&lock_key(&config.name, &w.container_id, &w.ifname))
                .await;
            // Re-read under the lock: a DEL may have removed it meanwhile.
            let current = match self.record(&w.container_id, &w.ifname).await {
                Ok(Some(current)) if current.mod_revision == record.mod_revision => current,
                Ok(_) => continue,
                Err(e) => {
                    failures.push(e.msg);
                    continue;
                }
            };
            match self.detach(&current).await {
                Ok(()) => {
                    removed += 1;
                    tracing::info!(container = %w.container_id, ifname = %w.ifname, "GC removed a stale attachment");
                }
                Err(e) => failures.push(format!("{}/{}: {}", w.container_id, w.ifname, e.msg)),
            }
        }
        tracing::info!(network = %config.name, removed, failed = failures.len(), "GC done");
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                ErrorCode::TRY_AGAIN_LATER,
                format!("GC could not remove {} stale attachment(s)", failures.len()),
            )
            .with_details(failures.join("; ")))
        }
    }

    async fn readiness(&self, config: NetConf) -> Result<(), CniError> {
        let unavailable = |msg: String| CniError::new(ErrorCode::NOT_AVAILABLE, msg);
        match tokio::time::timeout(STATUS_TIMEOUT, self.store.revision()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable(format!("the datastore is unreachable: {e}"))),
            Err(_) => {
                return Err(unavailable(format!(
                    "the datastore did not answer within {STATUS_TIMEOUT:?}"
                )));
            }
        }
        self.allocator
            .ready(
                &config.ipam.pools,
                config.ipam.assign_ipv4,
                config.ipam.assign_ipv6,
            )
            .await
            .map_err(|e| unavailable(format!("no address can be allocated: {e}")))
    }
}

#[async_trait]
impl CniService for CniHandler {
    async fn add(&self, request: AttachmentRequest) -> Result<CniResult, CniError> {
        self.attach(request.attachment, request.config).await
    }

    async fn del(&self, request: AttachmentRequest) -> Result<(), CniError> {
        self.remove(request.attachment, request.config).await
    }

    async fn check(&self, request: AttachmentRequest) -> Result<(), CniError> {
        self.verify(request.attachment, request.config).await
    }

    async fn gc(&self, request: NetworkRequest) -> Result<(), CniError> {
        self.collect_garbage(request.config).await
    }

    async fn status(&self, request: NetworkRequest) -> Result<(), CniError> {
        self.readiness(request.config).await
    }
}

/// The id the host veth name derives from: `<containerID>/<ifname>`, unique per attachment.
pub fn workload_id(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// The lock of one attachment, as the spec keys plugin state: network, container, interface.
fn lock_key(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}/{}", workload_id(container_id, ifname))
}

/// Who holds an allocation, for `wren ipam show --ip`.
fn allocation_attributes(node: &str, attachment: &Attachment) -> Vec<(String, String)> {
    let mut attributes = vec![
        ("node".to_string(), node.to_string()),
        ("containerID".to_string(), attachment.container_id.clone()),
        ("ifname".to_string(), attachment.ifname.clone()),
    ];
    if let Some(ns) = attachment.args.pod_namespace() {
        attributes.push(("namespace".to_string(), ns.to_string()));
    }
    if let Some(pod) = attachment.args.pod_name() {
        attributes.push(("pod".to_string(), pod.to_string()));
    }
    attributes
}
