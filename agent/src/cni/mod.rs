//! The agent side of the CNI plugin: ADD, DEL, CHECK, GC and STATUS over the IPAM, the pod
//! dataplane and the workload records in the datastore.
//!
//! - [`backend`]: the narrow traits the handler drives ([`Allocator`], implemented by the
//!   IPAM, and [`PodNetwork`], implemented by [`KernelPods`]).
//! - [`handler`]: [`CniHandler`], which implements [`crate::api::CniService`].
//! - [`result`]: the CNI result of an attachment, from its workload record.
//! - [`locks`]: per-attachment locks.
//! - [`errors`]: how backend failures become CNI error codes.

pub mod backend;
pub mod errors;
pub mod handler;
pub mod locks;
pub mod result;

#[cfg(test)]
mod fake;

pub use backend::{Allocator, KernelPods, PodNetwork};
pub use handler::{Admission, CniHandler, OrphanOutcome, Refusal};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use serde_json::json;
    use wren_cni::config::NetConf;
    use wren_cni::env::{Attachment, CniArgs};
    use wren_cni::wire::{AttachmentRequest, NetworkRequest};
    use wren_cni::{CniError, ErrorCode};
    use wren_model::{Workload, keys};
    use wren_store::memory::MemoryStore;
    use wren_store::{KeyValue, LeaseId, Listing, Revision, Store, StoreError, Txn, WatchStream};

    use super::fake::{FakeAllocator, FakePods};
    use super::*;
    use crate::api::CniService;

    const NODE: &str = "node1";

    struct Setup {
        store: Arc<MemoryStore>,
        alloc: Arc<FakeAllocator>,
        pods: Arc<FakePods>,
        handler: CniHandler,
    }

    fn setup(addresses: u8) -> Setup {
        let store = Arc::new(MemoryStore::new());
        let alloc = Arc::new(FakeAllocator::with_addresses(addresses));
        let pods = Arc::new(FakePods::with_namespaces(&[
            "/run/netns/p1",
            "/run/netns/p2",
            "/run/netns/p3",
        ]));
        let handler = CniHandler::new(NODE, store.clone(), alloc.clone(), pods.clone());
        Setup {
            store,
            alloc,
            pods,
            handler,
        }
    }

    fn config(network: &str, extra: serde_json::Value) -> NetConf {
        let mut v = json!({"cniVersion": "1.1.0", "name": network, "type": "wren"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        NetConf::from_value(v).unwrap()
    }

    fn request(container: &str, netns: &str) -> AttachmentRequest {
        request_on("net", container, netns, json!({}))
    }

    fn request_on(
        network: &str,
        container: &str,
        netns: &str,
        extra: serde_json::Value,
    ) -> AttachmentRequest {
        AttachmentRequest {
            attachment: Attachment {
                container_id: container.into(),
                ifname: "eth0".into(),
                netns: Some(netns.into()),
                args: CniArgs::parse("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web").unwrap(),
            },
            config: config(network, extra),
        }
    }

    async fn records(store: &MemoryStore) -> usize {
        store
            .list(&keys::node_workloads(NODE))
            .await
            .unwrap()
            .items
            .len()
    }

    async fn assert_nothing_left(s: &Setup) {
        assert_eq!(s.alloc.allocated(), 0, "addresses left allocated");
        assert_eq!(s.pods.count(), 0, "links left behind");
        assert_eq!(records(&s.store).await, 0, "workload records left behind");
        assert_eq!(s.handler_locks(), 0, "locks left behind");
    }

    impl Setup {
        fn handler_locks(&self) -> usize {
            self.handler.locks_in_use()
        }
    }

    #[tokio::test]
    async fn add_records_the_workload_and_del_removes_everything_twice() {
        let s = setup(4);
        let result = s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        assert_eq!(result.ips[0].address.to_string(), "10.65.0.0/32");
        assert_eq!(
            result.interfaces[1].sandbox.as_deref(),
            Some("/run/netns/p1")
        );
        let kv = s
            .store
            .get(&keys::workload(NODE, "c1", "eth0"))
            .await
            .unwrap()
            .unwrap();
        let w: Workload = serde_json::from_slice(&kv.value).unwrap();
        assert_eq!(w.handle, "net.c1");
        assert_eq!(w.pod_name.as_deref(), Some("web"));
        assert_eq!(w.host_interface, result.interfaces[0].name);
        assert_eq!(s.pods.count(), 1);

        s.handler.del(request("c1", "/run/netns/p1")).await.unwrap();
        assert_nothing_left(&s).await;
        s.handler.del(request("c1", "/run/netns/p1")).await.unwrap();
    }

    #[tokio::test]
    async fn a_repeated_add_returns_the_same_attachment() {
        let s = setup(4);
        let first = s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        let second = s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(*s.pods.setups.lock().unwrap(), 1);
        assert_eq!(s.alloc.allocated(), 1);
    }

    #[tokio::test]
    async fn an_add_whose_links_vanished_is_rebuilt() {
        let s = setup(4);
        let first = s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        s.pods.links.lock().unwrap().clear();
        let second = s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        assert_eq!(*s.pods.setups.lock().unwrap(), 2);
        assert_eq!(s.pods.count(), 1);
        assert_eq!(first.ips, second.ips, "the pod keeps its address");
        assert_eq!(s.alloc.allocated(), 1);
    }

    #[tokio::test]
    async fn a_missing_netns_fails_as_unknown_container_and_leaks_nothing() {
        let s = setup(4);
        let e = s
            .handler
            .add(request("c1", "/run/netns/gone"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::UNKNOWN_CONTAINER);
        assert_nothing_left(&s).await;
    }

    #[tokio::test]
    async fn a_taken_interface_name_fails_and_leaks_nothing() {
        let s = setup(4);
        s.pods
            .taken
            .lock()
            .unwrap()
            .insert(("/run/netns/p1".into(), "eth0".into()));
        let e = s
            .handler
            .add(request("c1", "/run/netns/p1"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::INTERFACE_EXISTS);
        assert_nothing_left(&s).await;
    }

    #[tokio::test]
    async fn while_the_datastore_is_not_trusted_every_command_waits_and_nothing_changes() {
        let s = setup(4);
        s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let handler = {
            let lost = lost.clone();
            CniHandler::new(NODE, s.store.clone(), s.alloc.clone(), s.pods.clone()).with_admission(
                Arc::new(move || {
                    lost.load(std::sync::atomic::Ordering::SeqCst).then(|| {
                        Refusal::Everything("the datastore has lost the cluster's data".to_owned())
                    })
                }),
            )
        };
        let add = handler
            .add(request("c2", "/run/netns/p2"))
            .await
            .unwrap_err();
        assert_eq!(add.code, ErrorCode::TRY_AGAIN_LATER);
        assert!(add.msg.contains("lost the cluster's data"), "{}", add.msg);
        let del = handler
            .del(request("c1", "/run/netns/p1"))
            .await
            .unwrap_err();
        assert_eq!(del.code, ErrorCode::TRY_AGAIN_LATER);
        assert_eq!(s.alloc.allocated(), 1);
        assert_eq!(s.pods.count(), 1);
        assert_eq!(records(&s.store).await, 1);
        lost.store(false, std::sync::atomic::Ordering::SeqCst);
        handler.add(request("c2", "/run/netns/p2")).await.unwrap();
        handler.del(request("c1", "/run/netns/p1")).await.unwrap();
        assert_eq!(s.alloc.allocated(), 1);
    }

    #[tokio::test]
    async fn exhaustion_fails_the_new_pod_only() {
        let s = setup(1);
        s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        let e = s
            .handler
            .add(request("c2", "/run/netns/p2"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ADDRESSES_EXHAUSTED);
        assert_eq!(s.pods.count(), 1);
        assert_eq!(records(&s.store).await, 1);
    }

    #[tokio::test]
    async fn a_failed_record_write_undoes_links_and_addresses() {
        let s = setup(4);
        let broken = Arc::new(RefusesCreate(s.store.clone()));
        let handler = CniHandler::new(NODE, broken, s.alloc.clone(), s.pods.clone());
        let e = handler
            .add(request("c1", "/run/netns/p1"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TRY_AGAIN_LATER);
        assert_eq!(s.alloc.allocated(), 0);
        assert_eq!(s.pods.count(), 0);
    }

    #[tokio::test]
    async fn an_agent_that_cannot_take_pods_refuses_adds_at_once_and_still_deletes() {
        let s = setup(4);
        s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        let blocked = Arc::new(std::sync::Mutex::new(Some(
            "datastore unreachable".to_owned(),
        )));
        let reason = blocked.clone();
        let handler = CniHandler::new(NODE, s.store.clone(), s.alloc.clone(), s.pods.clone())
            .with_admission(Arc::new(move || {
                reason.lock().unwrap().clone().map(Refusal::NewPods)
            }));
        let e = handler
            .add(request("c2", "/run/netns/p2"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TRY_AGAIN_LATER);
        for part in ["node1", "not ready", "datastore unreachable", "wren status"] {
            assert!(e.msg.contains(part), "{part:?} missing from {:?}", e.msg);
        }
        assert_eq!((s.alloc.allocated(), s.pods.count()), (1, 1));
        assert_eq!(records(&s.store).await, 1);
        // A pod going away is never refused: DEL frees what it held.
        handler.del(request("c1", "/run/netns/p1")).await.unwrap();
        assert_nothing_left(&s).await;
        *blocked.lock().unwrap() = None;
        handler.add(request("c2", "/run/netns/p2")).await.unwrap();
    }

    #[tokio::test]
    async fn del_with_the_datastore_down_keeps_the_record_for_a_retry() {
        let s = setup(4);
        s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        *s.alloc.down.lock().unwrap() = true;
        let e = s
            .handler
            .del(request("c1", "/run/netns/p1"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TRY_AGAIN_LATER);
        assert_eq!(records(&s.store).await, 1);
        *s.alloc.down.lock().unwrap() = false;
        s.handler.del(request("c1", "/run/netns/p1")).await.unwrap();
        assert_nothing_left(&s).await;
    }

    #[tokio::test]
    async fn del_without_netns_or_record_still_releases_the_handle() {
        let s = setup(4);
        s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        s.store
            .delete(&keys::workload(NODE, "c1", "eth0"), None)
            .await
            .unwrap();
        let mut del = request("c1", "/run/netns/p1");
        del.attachment.netns = None;
        s.handler.del(del).await.unwrap();
        assert_nothing_left(&s).await;
    }

    #[tokio::test]
    async fn check_passes_after_add_and_says_what_broke() {
        let s = setup(4);
        let result = s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        let prev = result.to_versioned_json(wren_cni::SpecVersion::V1_1_0);
        let check = || {
            request_on(
                "net",
                "c1",
                "/run/netns/p1",
                json!({"prevResult": prev.clone()}),
            )
        };
        s.handler.check(check()).await.unwrap();

        s.pods.links.lock().unwrap().clear();
        let e = s.handler.check(check()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::CHECK_FAILED);
        assert!(e.details.contains("is missing"), "{}", e.details);

        let mut wrong = prev.clone();
        wrong["ips"][0]["address"] = json!("10.65.0.99/32");
        let e = s
            .handler
            .check(request_on(
                "net",
                "c1",
                "/run/netns/p1",
                json!({"prevResult": wrong}),
            ))
            .await
            .unwrap_err();
        assert!(e.details.contains("10.65.0.99/32"), "{}", e.details);
        let e = s
            .handler
            .check(request("c9", "/run/netns/p1"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::CHECK_FAILED);
    }

    #[tokio::test]
    async fn gc_removes_only_this_networks_unlisted_attachments() {
        let s = setup(8);
        for (c, ns) in [("c1", "/run/netns/p1"), ("c2", "/run/netns/p2")] {
            s.handler.add(request(c, ns)).await.unwrap();
        }
        s.handler
            .add(request_on("other", "c3", "/run/netns/p3", json!({})))
            .await
            .unwrap();
        let gc = NetworkRequest {
            config: config(
                "net",
                json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}),
            ),
        };
        s.handler.gc(gc).await.unwrap();
        assert!(
            s.store
                .get(&keys::workload(NODE, "c1", "eth0"))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            s.store
                .get(&keys::workload(NODE, "c2", "eth0"))
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.store
                .get(&keys::workload(NODE, "c3", "eth0"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(s.pods.count(), 2);
        assert_eq!(s.alloc.allocated(), 2);
    }

    #[tokio::test]
    async fn status_reports_when_allocation_cannot_work() {
        let s = setup(4);
        let status = |extra: serde_json::Value| NetworkRequest {
            config: config("net", extra),
        };
        s.handler.status(status(json!({}))).await.unwrap();
        s.handler
            .status(status(json!({"ipam": {"pools": ["default"]}})))
            .await
            .unwrap();

        let e = s
            .handler
            .status(status(json!({"ipam": {"pools": ["nope"]}})))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NOT_AVAILABLE);
        assert!(e.msg.contains("nope"), "{}", e.msg);
        let e = s
            .handler
            .status(status(json!({"ipam": {"assign_ipv6": true}})))
            .await
            .unwrap_err();
        assert!(e.msg.contains("IPv6") || e.msg.contains("v6"), "{}", e.msg);

        *s.alloc.pool_disabled.lock().unwrap() = true;
        let e = s.handler.status(status(json!({}))).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NOT_AVAILABLE);
        *s.alloc.pool_disabled.lock().unwrap() = false;

        *s.alloc.down.lock().unwrap() = true;
        let e: CniError = s.handler.status(status(json!({}))).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::NOT_AVAILABLE);
    }

    #[tokio::test]
    async fn a_second_interface_on_the_same_network_is_refused() {
        let s = setup(4);
        s.handler.add(request("c1", "/run/netns/p1")).await.unwrap();
        let mut second = request("c1", "/run/netns/p1");
        second.attachment.ifname = "net1".into();
        let e = s.handler.add(second).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert_eq!(s.pods.count(), 1);
    }

    #[tokio::test]
    async fn concurrent_adds_get_distinct_addresses() {
        let s = setup(64);
        let handler = Arc::new(s.handler);
        let namespaces: Vec<String> = (0..50).map(|i| format!("/run/netns/b{i}")).collect();
        s.pods
            .namespaces
            .lock()
            .unwrap()
            .extend(namespaces.iter().cloned());
        let tasks: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let (handler, ns) = (handler.clone(), ns.clone());
                tokio::spawn(async move { handler.add(request(&format!("b{i}"), &ns)).await })
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert!(
                seen.insert(r.ips[0].address),
                "duplicate {}",
                r.ips[0].address
            );
        }
        assert_eq!(handler.locks_in_use(), 0);
    }

    #[tokio::test]
    async fn pod_annotations_choose_pools_and_addresses_and_a_bad_one_allocates_nothing() {
        let s = setup(4);
        let annotated = |pairs: serde_json::Value| {
            request_on(
                "net",
                "c1",
                "/run/netns/p1",
                json!({
                    "ipam": {"pools": ["default"]},
                    "runtimeConfig": {"io.kubernetes.cri.pod-annotations": pairs},
                }),
            )
        };
        s.handler
            .add(annotated(json!({
                "wren.dev/pools": "[\"gold\"]",
                "wren.dev/ip-addrs": "[\"10.65.0.3\"]",
                "team": "not wren's",
            })))
            .await
            .unwrap();
        let asked = s.alloc.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(
            asked.pools,
            ["gold"],
            "the pod's pools replace the network's"
        );
        assert_eq!(
            asked.addresses,
            ["10.65.0.3".parse::<std::net::IpAddr>().unwrap()]
        );
        s.handler.del(request("c1", "/run/netns/p1")).await.unwrap();

        s.handler.add(annotated(json!({}))).await.unwrap();
        let asked = s.alloc.last_request.lock().unwrap().clone().unwrap();
        assert_eq!(
            asked.pools,
            ["default"],
            "without annotations the network's pools"
        );
        s.handler.del(request("c1", "/run/netns/p1")).await.unwrap();

        // The runtime's JSON is only checked by the plugin; the agent checks it again.
        let mut bad = annotated(json!({}));
        bad.config.runtime_config = Some(wren_cni::config::RuntimeConfig {
            pod_annotations: [("wren.dev/ip-addrs".to_owned(), "10.65.0.3".to_owned())].into(),
            ..Default::default()
        });
        let e = s.handler.add(bad).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_NETWORK_CONFIG);
        assert!(e.msg.contains("wren.dev/ip-addrs"), "{}", e.msg);
        assert_nothing_left(&s).await;
    }

    /// A store whose `create` always fails as if etcd were down.
    struct RefusesCreate(Arc<MemoryStore>);

    #[async_trait]
    impl Store for RefusesCreate {
        async fn get(&self, key: &str) -> wren_store::Result<Option<KeyValue>> {
            self.0.get(key).await
        }
        async fn list(&self, prefix: &str) -> wren_store::Result<Listing> {
            self.0.list(prefix).await
        }
        async fn create(
            &self,
            _: &str,
            _: Vec<u8>,
            _: Option<LeaseId>,
        ) -> wren_store::Result<Revision> {
            Err(StoreError::Unavailable {
                endpoints: "test".into(),
                reason: "refused".into(),
            })
        }
        async fn put(
            &self,
            key: &str,
            value: Vec<u8>,
            lease: Option<LeaseId>,
        ) -> wren_store::Result<Revision> {
            self.0.put(key, value, lease).await
        }
        async fn update(
            &self,
            key: &str,
            value: Vec<u8>,
            expected: Revision,
        ) -> wren_store::Result<Revision> {
            self.0.update(key, value, expected).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<Revision>,
        ) -> wren_store::Result<Revision> {
            self.0.delete(key, expected).await
        }
        async fn txn(&self, txn: Txn) -> wren_store::Result<Revision> {
            self.0.txn(txn).await
        }
        async fn watch(&self, prefix: &str, from: Revision) -> wren_store::Result<WatchStream> {
            self.0.watch(prefix, from).await
        }
        async fn grant_lease(&self, ttl: i64) -> wren_store::Result<LeaseId> {
            self.0.grant_lease(ttl).await
        }
        async fn keep_alive(&self, lease: LeaseId) -> wren_store::Result<()> {
            self.0.keep_alive(lease).await
        }
        async fn revoke_lease(&self, lease: LeaseId) -> wren_store::Result<()> {
            self.0.revoke_lease(lease).await
        }
        async fn revision(&self) -> wren_store::Result<Revision> {
            self.0.revision().await
        }
    }
}
