//! In-memory stand-ins for the allocator and the dataplane, with switches to make them fail,
//! for the handler's unit tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use async_trait::async_trait;

use super::backend::{
    AddressRequest, AllocError, Allocator, DataplaneError, PodLinks, PodNetwork, PodSpec,
};

/// Hands out 10.65.0.0 .. 10.65.0.(size-1) by handle.
#[derive(Debug)]
pub struct FakeAllocator {
    size: u8,
    pub held: Mutex<BTreeMap<String, Vec<IpAddr>>>,
    pub down: Mutex<bool>,
}

impl FakeAllocator {
    pub fn with_addresses(size: u8) -> Self {
        Self {
            size,
            held: Mutex::new(BTreeMap::new()),
            down: Mutex::new(false),
        }
    }

    pub fn allocated(&self) -> usize {
        self.held.lock().unwrap().values().map(Vec::len).sum()
    }

    fn check_up(&self) -> Result<(), AllocError> {
        if *self.down.lock().unwrap() {
            Err(AllocError::Unavailable("datastore unreachable".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Allocator for FakeAllocator {
    async fn allocate(&self, request: AddressRequest) -> Result<Vec<IpAddr>, AllocError> {
        self.check_up()?;
        let mut held = self.held.lock().unwrap();
        if let Some(existing) = held.get(&request.handle) {
            return Ok(existing.clone());
        }
        let used: BTreeSet<IpAddr> = held.values().flatten().copied().collect();
        let free = (0..self.size)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 65, 0, i)))
            .find(|a| !used.contains(a))
            .ok_or_else(|| AllocError::Exhausted("no free IPv4 address left in fake".into()))?;
        held.insert(request.handle, vec![free]);
        Ok(vec![free])
    }

    async fn release(&self, handle: &str) -> Result<usize, AllocError> {
        self.check_up()?;
        Ok(self
            .held
            .lock()
            .unwrap()
            .remove(handle)
            .map_or(0, |a| a.len()))
    }

    async fn holds(&self, handle: &str) -> Result<Vec<IpAddr>, AllocError> {
        self.check_up()?;
        Ok(self
            .held
            .lock()
            .unwrap()
            .get(handle)
            .cloned()
            .unwrap_or_default())
    }

    async fn ready(&self, _pools: &[String], _ipv4: bool, _ipv6: bool) -> Result<(), AllocError> {
        self.check_up()
    }
}

/// Keeps "links" in a map keyed by host interface name.
#[derive(Debug, Default)]
pub struct FakePods {
    /// Host ifname → the spec it was built from.
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
    fn host_ifname(&self, workload_id: &str) -> String {
        let hash = workload_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        format!("wren{:011x}", hash & 0xfff_ffff_ffff)
    }

    async fn setup(&self, pod: &PodSpec) -> Result<PodLinks, DataplaneError> {
        let netns = pod.netns.display().to_string();
        if !self.namespaces.lock().unwrap().contains(&netns) {
            return Err(DataplaneError::NetnsMissing(format!(
                "{netns} does not exist"
            )));
        }
        if self
            .taken
            .lock()
            .unwrap()
            .contains(&(netns.clone(), pod.ifname.clone()))
        {
            return Err(DataplaneError::NameTaken(format!(
                "{} exists in {netns}",
                pod.ifname
            )));
        }
        let host = self.host_ifname(&pod.workload_id);
        let mut links = self.links.lock().unwrap();
        if links.contains_key(&host) {
            return Err(DataplaneError::NameTaken(format!(
                "{host} exists on the host"
            )));
        }
        links.insert(host.clone(), pod.clone());
        *self.setups.lock().unwrap() += 1;
        Ok(PodLinks {
            host_ifname: host,
            host_mac: "ee:ee:ee:ee:ee:ee".into(),
            pod_mac: "0a:00:00:00:00:01".into(),
        })
    }

    async fn teardown(&self, host_ifname: &str) -> Result<(), DataplaneError> {
        self.links.lock().unwrap().remove(host_ifname);
        Ok(())
    }

    async fn check(&self, pod: &PodSpec, links: &PodLinks) -> Result<Vec<String>, DataplaneError> {
        match self.links.lock().unwrap().get(&links.host_ifname) {
            None => Ok(vec![format!("{} is missing", links.host_ifname)]),
            Some(built) if built.addresses != pod.addresses => {
                Ok(vec![format!("{} carries other addresses", pod.ifname)])
            }
            Some(_) => Ok(Vec::new()),
        }
    }
}
