//! In-memory stand-ins for the IPAM and the dataplane, with switches to make them fail, for
//! the handler's unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnet::IpNet;
use wren_ipam::error::IpamError;
use wren_ipam::pool::NamedPool;
use wren_ipam::{AllocateRequest, Family};
use wren_model::Pool;
use wren_store::StoreError;

use super::backend::{Allocator, PodNetwork};
use crate::dataplane::pod::{HOST_MAC, host_ifname};
use crate::dataplane::{HostVeth, NetnsError, PodError, PodInterface, PodSpec, Problem, Side};

/// Hands out 10.65.0.0 .. 10.65.0.(size-1) by handle, from one pool named `default`.
#[derive(Debug)]
pub struct FakeAllocator {
    size: u8,
    pub held: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    pub down: Mutex<bool>,
    pub pool_disabled: Mutex<bool>,
    /// The last allocation asked for.
    pub last_request: Mutex<Option<AllocateRequest>>,
}

impl FakeAllocator {
    pub fn with_addresses(size: u8) -> Self {
        Self {
            size,
            held: Mutex::new(BTreeMap::new()),
            down: Mutex::new(false),
            pool_disabled: Mutex::new(false),
            last_request: Mutex::new(None),
        }
    }

    pub fn allocated(&self) -> usize {
        self.held.lock().unwrap().values().map(Vec::len).sum()
    }

    fn check_up(&self) -> Result<(), IpamError> {
        if *self.down.lock().unwrap() {
            Err(IpamError::Store(Arc::new(StoreError::Unavailable {
                endpoints: "fake".into(),
                reason: "down".into(),
            })))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Allocator for FakeAllocator {
    async fn allocate(&self, request: AllocateRequest) -> Result<Vec<IpAddr>, IpamError> {
        self.check_up()?;
        *self.last_request.lock().unwrap() = Some(request.clone());
        let mut held = self.held.lock().unwrap();
        if let Some(existing) = held.get(&request.handle) {
            return Ok(existing.clone());
        }
        let used: BTreeSet<IpAddr> = held.values().flatten().copied().collect();
        let free = (0..self.size)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 65, 0, i)))
            .find(|a| !used.contains(a))
            .ok_or(IpamError::Exhausted {
                family: Family::V4,
                pools: "default".into(),
            })?;
        held.insert(request.handle, vec![free]);
        Ok(vec![free])
    }

    async fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.check_up()?;
        Ok(self.held.lock().unwrap().remove(handle).unwrap_or_default())
    }

    async fn holds(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.check_up()?;
        Ok(self
            .held
            .lock()
            .unwrap()
            .get(handle)
            .cloned()
            .unwrap_or_default())
    }

    async fn pools(&self) -> Result<Vec<NamedPool>, IpamError> {
        self.check_up()?;
        let cidr: IpNet = "10.65.0.0/24".parse().unwrap_or_default();
        Ok(vec![NamedPool {
            name: "default".into(),
            pool: Pool {
                cidr,
                block_size: 26,
                encapsulation: Default::default(),
                encapsulation_mode: Default::default(),
                nat_outgoing: false,
                disabled: *self.pool_disabled.lock().unwrap(),
                communities: Vec::new(),
            },
            revision: 1,
        }])
    }
}

/// Keeps "links" in a map keyed by workload id.
#[derive(Debug, Default)]
pub struct FakePods {
    /// Workload id → the spec it was built from.
    pub links: Mutex<BTreeMap<String, PodSpec>>,
    /// Netns paths that exist.
    pub namespaces: Mutex<BTreeSet<String>>,
    /// (netns, ifname) pairs already taken inside pods.
    pub taken: Mutex<BTreeSet<(String, String)>>,
    /// Number of setups, to tell an idempotent ADD from a repeated one.
    pub setups: Mutex<usize>,
}

impl FakePods {
    pub fn with_namespaces(names: &[&str]) -> Self {
        let pods = Self::default();
        pods.namespaces
            .lock()
            .unwrap()
            .extend(names.iter().map(|s| s.to_string()));
        pods
    }

    pub fn count(&self) -> usize {
        self.links.lock().unwrap().len()
    }
}

#[async_trait]
impl PodNetwork for FakePods {
    async fn setup(&self, spec: PodSpec) -> Result<PodInterface, PodError> {
        let netns = spec.netns.display().to_string();
        if !self.namespaces.lock().unwrap().contains(&netns) {
            return Err(PodError::Netns(NetnsError::Open {
                path: spec.netns.clone(),
                source: io::ErrorKind::NotFound.into(),
            }));
        }
        if self
            .taken
            .lock()
            .unwrap()
            .contains(&(netns, spec.ifname.clone()))
        {
            return Err(PodError::PodInterfaceExists {
                ifname: spec.ifname.clone(),
                netns: spec.netns.clone(),
            });
        }
        *self.setups.lock().unwrap() += 1;
        let interface = PodInterface {
            host_ifname: host_ifname(&spec.workload_id),
            host_ifindex: 10,
            pod_ifname: spec.ifname.clone(),
            pod_ifindex: 2,
            pod_mac: [0x0a, 0, 0, 0, 0, 1],
            host_mac: HOST_MAC,
            addresses: spec.addresses.iter().map(|a| IpNet::from(*a)).collect(),
        };
        self.links
            .lock()
            .unwrap()
            .insert(spec.workload_id.clone(), spec);
        Ok(interface)
    }

    async fn teardown(&self, workload_id: &str) -> Result<bool, PodError> {
        Ok(self.links.lock().unwrap().remove(workload_id).is_some())
    }

    async fn check(&self, spec: PodSpec) -> Result<Vec<Problem>, PodError> {
        match self.links.lock().unwrap().get(&spec.workload_id) {
            None => Ok(vec![Problem::InterfaceMissing {
                side: Side::Host,
                name: host_ifname(&spec.workload_id),
            }]),
            Some(built) if built.addresses != spec.addresses => {
                Ok(vec![Problem::InterfaceMissing {
                    side: Side::Pod,
                    name: spec.ifname.clone(),
                }])
            }
            Some(_) => Ok(Vec::new()),
        }
    }

    async fn host_interfaces(&self) -> Result<Vec<HostVeth>, PodError> {
        Ok(self
            .links
            .lock()
            .unwrap()
            .keys()
            .map(|id| HostVeth {
                name: host_ifname(id),
                workload_id: Some(id.clone()),
                up: true,
            })
            .collect())
    }

    async fn remove_host_interface(&self, name: &str) -> Result<bool, PodError> {
        let mut links = self.links.lock().unwrap();
        let before = links.len();
        links.retain(|id, _| host_ifname(id) != name);
        Ok(links.len() != before)
    }
}
