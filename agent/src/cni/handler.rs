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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::IpNet;
use wren_cni::config::NetConf;
use wren_cni::env::Attachment;
use wren_cni::wire::{AttachmentRequest, NetworkRequest};
use wren_cni::{CniError, CniResult, ErrorCode};
use wren_ipam::{AllocateRequest, Family};
use wren_model::{Workload, keys, workload_handle};
use wren_store::json::{Versioned, decode_kv, encode};
use wren_store::{Store, StoreError};

use super::backend::{Allocator, PodNetwork};
use super::errors::{ipam_error, pod_error, store_error};
use super::locks::{KeyGuard, KeyedLocks};
use super::result::{attachment_result, sandbox_addresses};
use crate::api::CniService;
use crate::dataplane::mtu::OffloadSizes;
use crate::dataplane::pod::{DEFAULT_MTU, format_mac, host_ifname};
use crate::dataplane::{HostVeth, PodDefaults, PodError, PodSpec};

/// How long STATUS waits for the datastore before calling it unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the CNI commands for one node.
pub struct CniHandler {
    node: String,
    defaults: Arc<PodDefaults>,
    store: Arc<dyn Store>,
    allocator: Arc<dyn Allocator>,
    pods: Arc<dyn PodNetwork>,
    locks: KeyedLocks,
    /// Locks an ADD takes on its host interface name and its handle, which the orphan sweep
    /// takes too: the sweep never removes what an ADD is building.
    sweep_locks: KeyedLocks,
    /// Says what the node refuses now and why; `None` when every command may go ahead.
    admission: Option<Admission>,
}

/// What the node refuses now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// New pods (the datastore away, the node not registered): an ADD cannot allocate, while
    /// a DEL still frees what it holds.
    NewPods(String),
    /// Every command (the datastore does not hold the cluster's data): an ADD would hand out
    /// addresses the rebuild brings back, a DEL or GC would change records the rebuild writes
    /// back as they were.
    Everything(String),
}

/// Asked before every command; `Some` refuses it with "try again later".
pub type Admission = Arc<dyn Fn() -> Option<Refusal> + Send + Sync>;

/// What an orphan removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanOutcome {
    /// Removed (the interface) or released (the addresses, listed).
    Removed(Vec<IpAddr>),
    /// A workload record explains it now: left alone.
    Explained,
    /// Already gone.
    Gone,
}

/// A workload record with the revision it was read at.
type Record = Versioned<Workload>;

impl CniHandler {
    /// A handler for `node`, recording workloads in `store`, allocating with `allocator` (the
    /// IPAM) and building links with `pods` (the kernel).
    pub fn new(
        node: impl Into<String>,
        store: Arc<dyn Store>,
        allocator: Arc<dyn Allocator>,
        pods: Arc<dyn PodNetwork>,
    ) -> Self {
        Self {
            node: node.into(),
            defaults: Arc::new(PodDefaults::new(DEFAULT_MTU)),
            store,
            allocator,
            pods,
            locks: KeyedLocks::new(),
            sweep_locks: KeyedLocks::new(),
            admission: None,
        }
    }

    /// Asks `admission` before every command, at once and before anything is allocated or
    /// changed.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// The refusal, with "try again later" so the runtime retries, of a command (`adds` says
    /// whether it is an ADD) that the node cannot serve now.
    fn admit(&self, adds: bool) -> Result<(), CniError> {
        let reason = match self.admission.as_ref().and_then(|admit| admit()) {
            Some(Refusal::Everything(why)) => why,
            Some(Refusal::NewPods(why)) if adds => why,
            _ => return Ok(()),
        };
        Err(CniError::new(
            ErrorCode::TRY_AGAIN_LATER,
            format!(
                "the wren agent on node {} is not ready ({reason}); the runtime retries, and \
                 `wren status` on the node says more",
                self.node
            ),
        ))
    }

    /// This node's workload records, for the orphan sweep.
    pub async fn workloads(&self) -> Result<Vec<Workload>, StoreError> {
        self.store
            .list(&keys::node_workloads(&self.node))
            .await?
            .items
            .into_iter()
            .map(|kv| decode_kv::<Workload>(kv).map(|r| r.value))
            .collect()
    }

    /// Whether a workload record of this node, read now, passes `names_it`.
    async fn explained(&self, names_it: impl Fn(&Workload) -> bool) -> Result<bool, CniError> {
        let records = self
            .workloads()
            .await
            .map_err(|e| store_error("listing this node's workloads", e))?;
        Ok(records.iter().any(names_it))
    }

    /// The pods' host veths in the node's namespace, for the orphan sweep.
    pub async fn host_interfaces(&self) -> Result<Vec<HostVeth>, PodError> {
        self.pods.host_interfaces().await
    }

    /// Removes the host veth `name`, which no workload record explained, unless one does
    /// now: checked again under the lock an ADD building that interface holds.
    pub async fn remove_orphan_interface(&self, name: &str) -> Result<OrphanOutcome, CniError> {
        let _guard = self.sweep_locks.lock(&format!("veth/{name}")).await;
        if self.explained(|w| w.host_interface == name).await? {
            return Ok(OrphanOutcome::Explained);
        }
        match self.pods.remove_host_interface(name).await {
            Ok(true) => Ok(OrphanOutcome::Removed(Vec::new())),
            Ok(false) => Ok(OrphanOutcome::Gone),
            Err(e) => Err(pod_error("removing an orphaned host interface", e)),
        }
    }

    /// Releases the addresses of `handle`, which no workload record explained, unless one
    /// does now: checked again under the lock an ADD allocating for that handle holds.
    pub async fn release_orphan_handle(&self, handle: &str) -> Result<OrphanOutcome, CniError> {
        let _guard = self.sweep_locks.lock(&format!("handle/{handle}")).await;
        if self.explained(|w| w.handle == handle).await? {
            return Ok(OrphanOutcome::Explained);
        }
        match self.allocator.release(handle).await {
            Ok(freed) if freed.is_empty() => Ok(OrphanOutcome::Gone),
            Ok(freed) => Ok(OrphanOutcome::Removed(freed)),
            Err(e) => Err(ipam_error("releasing an orphaned allocation", e)),
        }
    }

    /// Sets the pod MTU used when the network configuration has no `mtu` (the agent derives it
    /// from the underlay MTU and the encapsulation).
    pub fn with_default_mtu(self, mtu: u32) -> Self {
        let (_, offload) = self.defaults.current();
        self.defaults.set(mtu, offload);
        self
    }

    /// Reads the pods' default MTU and offload sizes from `defaults` at every request: the
    /// agent updates them as the underlay and the pools' encapsulation change.
    pub fn with_defaults(mut self, defaults: Arc<PodDefaults>) -> Self {
        self.defaults = defaults;
        self
    }

    /// How many attachments have a request in flight (their locks held or awaited).
    pub fn locks_in_use(&self) -> usize {
        self.locks.in_use()
    }

    async fn lock(&self, network: &str, container_id: &str, ifname: &str) -> KeyGuard<'_> {
        let key = format!("{network}/{}", workload_id(container_id, ifname));
        self.locks.lock(&key).await
    }

    /// The MTU and offload sizes of a pod on `config`, from one read of the defaults. The
    /// agent's offload sizes go only with the MTU they were derived with: a configured MTU of
    /// the pod's own says its path is not the one the node sees.
    fn link_settings(&self, config: &NetConf) -> (u32, Option<OffloadSizes>) {
        let (default_mtu, offload) = self.defaults.current();
        let mtu = config.mtu.unwrap_or(default_mtu);
        (mtu, offload.filter(|_| mtu == default_mtu))
    }

    fn record_key(&self, container_id: &str, ifname: &str) -> String {
        keys::workload(&self.node, container_id, ifname)
    }

    /// Every record of one container on this node (any interface, any network).
    async fn container_records(&self, container_id: &str) -> Result<Vec<Record>, CniError> {
        let prefix = format!("{}{container_id}/", keys::node_workloads(&self.node));
        let what = "reading the pod's workload records";
        let listing = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| store_error(what, e))?;
        listing
            .items
            .into_iter()
            .map(|kv| decode_kv::<Workload>(kv).map_err(|e| store_error(what, e)))
            .collect()
    }

    async fn record(&self, container_id: &str, ifname: &str) -> Result<Option<Record>, CniError> {
        let what = "reading the workload record";
        let found = self
            .store
            .get(&self.record_key(container_id, ifname))
            .await
            .map_err(|e| store_error(what, e))?;
        found
            .map(|kv| decode_kv(kv).map_err(|e| store_error(what, e)))
            .transpose()
    }

    async fn attach(&self, attachment: Attachment, config: NetConf) -> Result<CniResult, CniError> {
        let Attachment {
            container_id,
            ifname,
            netns,
            args,
        } = attachment;
        let netns = netns
            .ok_or_else(|| CniError::new(ErrorCode::INVALID_ENVIRONMENT, "ADD needs CNI_NETNS"))?;
        self.admit(true)?;
        let (mtu, offload) = self.link_settings(&config);
        let _guard = self.lock(&config.name, &container_id, &ifname).await;
        let handle = workload_handle(&config.name, &container_id);
        let _veth = self
            .sweep_locks
            .lock(&format!(
                "veth/{}",
                host_ifname(&workload_id(&container_id, &ifname))
            ))
            .await;
        let _handle = self.sweep_locks.lock(&format!("handle/{handle}")).await;

        for existing in self.container_records(&container_id).await? {
            let record = &existing.value;
            if record.ifname == ifname {
                if record.network != config.name {
                    return Err(CniError::new(
                        ErrorCode::INTERFACE_EXISTS,
                        format!(
                            "{ifname} of container {container_id} is already attached to network {:?}",
                            record.network
                        ),
                    ));
                }
                if record.netns == netns
                    && self
                        .problems(record, mtu, offload)
                        .await
                        .is_ok_and(|p| p.is_empty())
                {
                    tracing::info!(container = %container_id, %ifname, "ADD repeated; returning the existing attachment");
                    return Ok(attachment_result(record, mtu, config.dns.as_ref()));
                }
                // Rebuild it: the allocation is kept (IPAM hands the handle its addresses back)
                // and the interface is replaced, so the pod keeps its address.
                tracing::warn!(container = %container_id, %ifname, "rebuilding an attachment that is no longer intact");
                self.forget(&existing).await?;
            } else if record.network == config.name {
                return Err(CniError::new(
                    ErrorCode::INVALID_NETWORK_CONFIG,
                    format!(
                        "container {container_id} is already on network {:?} through {}; wren gives a container one interface per network",
                        record.network, record.ifname
                    ),
                ));
            }
        }

        // Phase times go into the log line, so a slow ADD says where its time went.
        let mut times = PhaseTimes::start();
        let choices = config.pod_choices()?;
        // Pools the pod names in its annotations replace the network's for this pod.
        let pools = if choices.pools.is_empty() {
            &config.ipam.pools
        } else {
            &choices.pools
        };
        let mut request = AllocateRequest::new(handle.clone(), self.node.clone())
            .families(config.ipam.assign_ipv4, config.ipam.assign_ipv6)
            .pools(pools.iter().cloned());
        let asked = config.runtime_config.iter().flat_map(|rc| &rc.ips);
        for ip in asked.map(IpNet::addr).chain(choices.addresses) {
            request = request.address(ip);
        }
        let addresses = self
            .allocator
            .allocate(request)
            .await
            .map_err(|e| ipam_error("address allocation failed", e))?;
        times.mark_addresses();

        let spec = PodSpec {
            workload_id: workload_id(&container_id, &ifname),
            netns: PathBuf::from(&netns),
            ifname: ifname.clone(),
            addresses,
            mtu,
            offload,
        };
        let interface = match self.pods.setup(spec).await {
            Ok(interface) => interface,
            Err(e) => {
                let e = pod_error("setting up the pod's interface failed", e);
                return Err(self.undo(e, &handle, None).await);
            }
        };
        times.mark_links();

        let record = Workload {
            node: self.node.clone(),
            container_id: container_id.clone(),
            ifname: ifname.clone(),
            network: config.name.clone(),
            handle: handle.clone(),
            pod_namespace: args.pod_namespace().map(str::to_string),
            pod_name: args.pod_name().map(str::to_string),
            pod_uid: args.pod_uid().map(str::to_string),
            netns,
            addresses: interface.addresses.clone(),
            host_interface: interface.host_ifname.clone(),
            mac: format_mac(&interface.pod_mac),
        };
        let key = self.record_key(&container_id, &ifname);
        let written = match encode(&key, &record) {
            Ok(bytes) => self.store.create(&key, bytes, None).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            let e = store_error("recording the workload failed", e);
            let workload = workload_id(&container_id, &ifname);
            return Err(self.undo(e, &handle, Some(&workload)).await);
        }
        times.mark_record();
        tracing::info!(
            container = %container_id, %ifname, host = %record.host_interface,
            addresses = ?record.addresses, addresses_ms = times.addresses_ms(),
            links_ms = times.links_ms(), record_ms = times.record_ms(), "pod attached"
        );
        Ok(attachment_result(&record, mtu, config.dns.as_ref()))
    }

    /// Undoes a failed ADD: removes the interface (when built) and releases the addresses.
    /// What cannot be undone is named in the error's details, so nothing leaks silently.
    async fn undo(&self, mut error: CniError, handle: &str, workload: Option<&str>) -> CniError {
        let mut leftovers = Vec::new();
        if let Some(workload) = workload
            && let Err(e) = self.pods.teardown(workload).await
        {
            leftovers.push(format!("could not remove the interface of {workload}: {e}"));
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

    /// Everything wrong with a recorded attachment: its allocation and its interface.
    async fn problems(
        &self,
        record: &Workload,
        mtu: u32,
        offload: Option<OffloadSizes>,
    ) -> Result<Vec<String>, CniError> {
        let mut problems = Vec::new();
        let held: BTreeSet<IpAddr> = self
            .allocator
            .holds(&record.handle)
            .await
            .map_err(|e| ipam_error("reading the allocation", e))?
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
            addresses: record.addresses.iter().map(IpNet::addr).collect(),
            mtu,
            offload,
        };
        let found = self
            .pods
            .check(spec)
            .await
            .map_err(|e| pod_error("checking the pod's interface", e))?;
        problems.extend(found.iter().map(ToString::to_string));
        Ok(problems)
    }

    /// Removes a recorded attachment: interface, then addresses, then the record (so a failure
    /// part-way leaves the record for the next DEL or GC to find).
    async fn detach(&self, record: &Record) -> Result<PhaseTimes, CniError> {
        let w = &record.value;
        let mut times = PhaseTimes::start();
        self.pods
            .teardown(&workload_id(&w.container_id, &w.ifname))
            .await
            .map_err(|e| pod_error("removing the pod's interface failed", e))?;
        times.mark_links();
        self.allocator
            .release(&w.handle)
            .await
            .map_err(|e| ipam_error("releasing the pod's addresses failed", e))?;
        times.mark_addresses();
        self.forget(record).await?;
        times.mark_record();
        Ok(times)
    }

    /// Deletes a workload record (only the revision that was read).
    async fn forget(&self, record: &Record) -> Result<(), CniError> {
        match self
            .store
            .delete(&record.key, Some(record.mod_revision))
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("removing the workload record failed", e)),
        }
    }

    async fn remove(&self, attachment: Attachment, config: NetConf) -> Result<(), CniError> {
        let (container_id, ifname) = (&attachment.container_id, &attachment.ifname);
        let _guard = self.lock(&config.name, container_id, ifname).await;
        let handle = workload_handle(&config.name, container_id);
        let times = match self.record(container_id, ifname).await? {
            Some(record) if record.value.network == config.name => self.detach(&record).await?,
            // The interface belongs to another network's attachment: leave it alone, but
            // release this network's handle.
            Some(_) => {
                self.release(&handle).await?;
                PhaseTimes::start()
            }
            // No record (an ADD that died before writing it, or a DEL repeated): remove
            // whatever is left under this attachment's names, and release the handle so an
            // allocation whose ADD died before recording it does not leak.
            None => {
                let mut times = PhaseTimes::start();
                self.pods
                    .teardown(&workload_id(container_id, ifname))
                    .await
                    .map_err(|e| pod_error("removing the pod's interface failed", e))?;
                times.mark_links();
                self.release(&handle).await?;
                times.mark_addresses();
                times
            }
        };
        tracing::info!(
            container = %container_id, %ifname, links_ms = times.links_ms(),
            addresses_ms = times.addresses_ms(), record_ms = times.record_ms(), "pod detached"
        );
        Ok(())
    }

    async fn release(&self, handle: &str) -> Result<(), CniError> {
        self.allocator
            .release(handle)
            .await
            .map(drop)
            .map_err(|e| ipam_error("releasing the pod's addresses failed", e))
    }

    async fn verify(&self, attachment: Attachment, config: NetConf) -> Result<(), CniError> {
        let (container_id, ifname) = (&attachment.container_id, &attachment.ifname);
        let _guard = self.lock(&config.name, container_id, ifname).await;
        let record = self
            .record(container_id, ifname)
            .await?
            .filter(|r| r.value.network == config.name)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::CHECK_FAILED,
                    format!(
                        "no attachment of container {container_id} via {ifname} on network {:?} is recorded on node {}",
                        config.name, self.node
                    ),
                )
            })?
            .value;
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
            let listed: BTreeSet<IpNet> = sandbox_addresses(&prev, ifname).into_iter().collect();
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
        let (mtu, offload) = self.link_settings(&config);
        problems.extend(self.problems(&record, mtu, offload).await?);
        if problems.is_empty() {
            return Ok(());
        }
        let count = problems.len();
        Err(CniError::new(
            ErrorCode::CHECK_FAILED,
            format!(
                "{ifname} of container {container_id} is not as ADD left it ({count} problem{})",
                if count == 1 { "" } else { "s" }
            ),
        )
        .with_details(problems.join("; ")))
    }

    async fn collect_garbage(&self, config: NetConf) -> Result<(), CniError> {
        let valid: BTreeSet<(&str, &str)> = config
            .gc_attachments()
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::INVALID_NETWORK_CONFIG,
                    "GC needs \"cni.dev/valid-attachments\" in the configuration",
                )
            })?
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
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
                || valid.contains(&(w.container_id.as_str(), w.ifname.as_str()))
            {
                continue;
            }
            let _guard = self.lock(&config.name, &w.container_id, &w.ifname).await;
            // Re-read under the lock: a DEL may have removed or an ADD replaced it meanwhile.
            let current = match self.record(&w.container_id, &w.ifname).await {
                Ok(Some(current)) if current.mod_revision == record.mod_revision => current,
                Ok(_) => continue,
                Err(e) => {
                    failures.push(e.msg);
                    continue;
                }
            };
            match self.detach(&current).await {
                Ok(_) => {
                    removed += 1;
                    tracing::info!(container = %w.container_id, ifname = %w.ifname, "GC removed a stale attachment");
                }
                Err(e) => failures.push(format!(
                    "{}: {}",
                    workload_id(&w.container_id, &w.ifname),
                    e.msg
                )),
            }
        }
        tracing::info!(network = %config.name, removed, failed = failures.len(), "GC done");
        if failures.is_empty() {
            return Ok(());
        }
        Err(CniError::new(
            ErrorCode::TRY_AGAIN_LATER,
            format!("GC could not remove {} stale attachment(s)", failures.len()),
        )
        .with_details(failures.join("; ")))
    }

    async fn readiness(&self, config: NetConf) -> Result<(), CniError> {
        let unavailable = |msg: String| CniError::new(ErrorCode::NOT_AVAILABLE, msg);
        let pools = match tokio::time::timeout(STATUS_TIMEOUT, self.allocator.pools()).await {
            Ok(Ok(pools)) => pools,
            Ok(Err(e)) => return Err(unavailable(format!("cannot read the pools: {e}"))),
            Err(_) => {
                return Err(unavailable(format!(
                    "the datastore did not answer within {STATUS_TIMEOUT:?}"
                )));
            }
        };
        let wanted = &config.ipam.pools;
        if let Some(missing) = wanted.iter().find(|w| !pools.iter().any(|p| &p.name == *w)) {
            return Err(unavailable(format!(
                "pool {missing:?} named in ipam.pools does not exist"
            )));
        }
        let usable = |family: Family| {
            pools.iter().any(|p| {
                !p.pool.disabled
                    && Family::of_net(&p.pool.cidr) == family
                    && (wanted.is_empty() || wanted.contains(&p.name))
            })
        };
        for (asked, family) in [
            (config.ipam.assign_ipv4, Family::V4),
            (config.ipam.assign_ipv6, Family::V6),
        ] {
            if asked && !usable(family) {
                return Err(unavailable(format!(
                    "no enabled {family} pool{} to allocate from",
                    if wanted.is_empty() {
                        String::new()
                    } else {
                        format!(" among {}", wanted.join(", "))
                    }
                )));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl CniService for CniHandler {
    async fn add(&self, request: AttachmentRequest) -> Result<CniResult, CniError> {
        self.attach(request.attachment, request.config).await
    }

    async fn del(&self, request: AttachmentRequest) -> Result<(), CniError> {
        self.admit(false)?;
        self.remove(request.attachment, request.config).await
    }

    async fn check(&self, request: AttachmentRequest) -> Result<(), CniError> {
        self.admit(false)?;
        self.verify(request.attachment, request.config).await
    }

    async fn gc(&self, request: NetworkRequest) -> Result<(), CniError> {
        self.admit(false)?;
        self.collect_garbage(request.config).await
    }

    async fn status(&self, request: NetworkRequest) -> Result<(), CniError> {
        if let Err(e) = self.admit(true) {
            return Err(CniError::new(ErrorCode::NOT_AVAILABLE, e.msg));
        }
        self.readiness(request.config).await
    }
}

/// How long each step of an ADD or DEL took, for its log line.
struct PhaseTimes {
    last: Instant,
    addresses: Duration,
    links: Duration,
    record: Duration,
}

impl PhaseTimes {
    fn start() -> Self {
        Self {
            last: Instant::now(),
            addresses: Duration::ZERO,
            links: Duration::ZERO,
            record: Duration::ZERO,
        }
    }

    fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let lap = now - self.last;
        self.last = now;
        lap
    }

    fn mark_addresses(&mut self) {
        let lap = self.lap();
        self.addresses += lap;
    }

    fn mark_links(&mut self) {
        let lap = self.lap();
        self.links += lap;
    }

    fn mark_record(&mut self) {
        let lap = self.lap();
        self.record += lap;
    }

    fn addresses_ms(&self) -> f64 {
        self.addresses.as_secs_f64() * 1e3
    }

    fn links_ms(&self) -> f64 {
        self.links.as_secs_f64() * 1e3
    }

    fn record_ms(&self) -> f64 {
        self.record.as_secs_f64() * 1e3
    }
}

/// The id the host veth name derives from: `<containerID>/<ifname>`, unique per attachment.
pub fn workload_id(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}
