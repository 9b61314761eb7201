//! Pools: validation of a pool definition, and adding, listing, disabling and removing pools.

use ipnet::IpNet;
use wren_model::{Community, Encapsulation, EncapsulationMode, Pool, keys};
use wren_store::json::{JsonStore, Versioned};
use wren_store::{Compare, Store, Txn};

use crate::error::{IpamError, PoolError, Result};
use crate::{Family, Ipam, affinity, blocks_in};

/// Smallest and largest block prefix length per family.
const V4_BLOCK_SIZES: (u8, u8) = (20, 32);
const V6_BLOCK_SIZES: (u8, u8) = (116, 128);

/// A pool as the operator describes it, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    /// Pool name (the key segment under `pools/`).
    pub name: String,
    /// The range, as typed.
    pub cidr: String,
    /// Block prefix length; the family's default when absent.
    pub block_size: Option<u8>,
    /// Encapsulation toward other nodes.
    pub encapsulation: Encapsulation,
    /// When encapsulation applies.
    pub encapsulation_mode: EncapsulationMode,
    /// Masquerade traffic leaving every pool.
    pub nat_outgoing: bool,
    /// Create it disabled.
    pub disabled: bool,
    /// Communities on the pool's announced prefixes.
    pub communities: Vec<Community>,
}

impl PoolSpec {
    /// A spec with the defaults for everything but name and range.
    pub fn new(name: impl Into<String>, cidr: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cidr: cidr.into(),
            block_size: None,
            encapsulation: Encapsulation::None,
            encapsulation_mode: EncapsulationMode::Always,
            nat_outgoing: false,
            disabled: false,
            communities: Vec::new(),
        }
    }

    /// The same spec with another block size.
    pub fn block_size(mut self, block_size: u8) -> Self {
        self.block_size = Some(block_size);
        self
    }
}

/// A stored pool with its name and revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPool {
    /// The pool's name.
    pub name: String,
    /// The pool.
    pub pool: Pool,
    /// Mod revision of `pools/<name>`.
    pub revision: i64,
}

/// Checks a spec against the rules and the existing pools, returning the pool to store.
pub fn validate(spec: &PoolSpec, existing: &[NamedPool]) -> Result<Pool, PoolError> {
    validate_name(&spec.name)?;
    let input = spec.cidr.trim();
    let cidr: IpNet = input.parse().map_err(|_| PoolError::MalformedCidr {
        input: spec.cidr.clone(),
    })?;
    if cidr.trunc() != cidr {
        return Err(PoolError::NotNetworkAddress {
            input: input.to_owned(),
            network: cidr.trunc(),
        });
    }
    let family = Family::of_net(&cidr);
    let block_size = spec
        .block_size
        .unwrap_or_else(|| Pool::default_block_size(&cidr));
    let (min, max) = match family {
        Family::V4 => V4_BLOCK_SIZES,
        Family::V6 => V6_BLOCK_SIZES,
    };
    if !(min..=max).contains(&block_size) {
        return Err(PoolError::BlockSizeOutOfRange {
            block_size,
            family,
            min,
            max,
        });
    }
    if block_size < cidr.prefix_len() {
        return Err(PoolError::BlockLargerThanPool { block_size, cidr });
    }
    if let Some(other) = existing
        .iter()
        .find(|p| p.pool.cidr.contains(&cidr) || cidr.contains(&p.pool.cidr))
    {
        return Err(PoolError::Overlap {
            cidr,
            other: other.name.clone(),
            other_cidr: other.pool.cidr,
        });
    }
    Ok(Pool {
        cidr,
        block_size,
        encapsulation: spec.encapsulation,
        encapsulation_mode: spec.encapsulation_mode,
        nat_outgoing: spec.nat_outgoing,
        disabled: spec.disabled,
        communities: spec.communities.clone(),
    })
}

fn validate_name(name: &str) -> Result<(), PoolError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(PoolError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// Reads every pool, in name order.
pub(crate) async fn read_pools(store: &dyn Store) -> Result<Vec<NamedPool>> {
    let listing = store.list_json::<Pool>(keys::POOLS).await?;
    Ok(listing.items.into_iter().map(named).collect())
}

fn named(v: Versioned<Pool>) -> NamedPool {
    NamedPool {
        name: v.key.strip_prefix(keys::POOLS).unwrap_or(&v.key).to_owned(),
        pool: v.value,
        revision: v.mod_revision,
    }
}

/// The pool whose range holds `address`.
pub(crate) fn pool_of(pools: &[NamedPool], address: std::net::IpAddr) -> Option<&NamedPool> {
    pools.iter().find(|p| p.pool.cidr.contains(&address))
}

impl Ipam {
    /// Adds a pool after validating it; nothing is written when it is refused.
    pub async fn add_pool(&self, spec: &PoolSpec) -> Result<NamedPool> {
        let existing = read_pools(self.store()).await?;
        if existing.iter().any(|p| p.name == spec.name) {
            return Err(IpamError::PoolExists(spec.name.clone()));
        }
        let pool = validate(spec, &existing).map_err(|error| IpamError::InvalidPool {
            name: spec.name.clone(),
            error,
        })?;
        let key = keys::pool(&spec.name);
        match self.store().create_json(&key, &pool, None).await {
            Ok(revision) => Ok(NamedPool {
                name: spec.name.clone(),
                pool,
                revision,
            }),
            Err(e) if e.is_conflict() => Err(IpamError::PoolExists(spec.name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Every pool, in name order.
    pub async fn list_pools(&self) -> Result<Vec<NamedPool>> {
        read_pools(self.store()).await
    }

    /// One pool by name.
    pub async fn get_pool(&self, name: &str) -> Result<NamedPool> {
        self.store()
            .get_json::<Pool>(&keys::pool(name))
            .await?
            .map(named)
            .ok_or_else(|| IpamError::UnknownPool(name.to_owned()))
    }

    /// Stops (or resumes) handing out addresses from a pool. Existing allocations stay.
    pub async fn set_pool_disabled(&self, name: &str, disabled: bool) -> Result<NamedPool> {
        self.change_pool(name, |pool| pool.disabled = disabled)
            .await
    }

    /// Replaces the communities on a pool's announced prefixes.
    pub async fn set_pool_communities(
        &self,
        name: &str,
        communities: Vec<Community>,
    ) -> Result<NamedPool> {
        self.change_pool(name, |pool| pool.communities = communities)
            .await
    }

    /// Applies `change` to a pool and writes it back if that changed it (compare-and-swap
    /// on the revision read, keeping fields a newer version stored).
    async fn change_pool(&self, name: &str, change: impl FnOnce(&mut Pool)) -> Result<NamedPool> {
        let read = self
            .store()
            .get_json::<Pool>(&keys::pool(name))
            .await?
            .ok_or_else(|| IpamError::UnknownPool(name.to_owned()))?;
        let mut pool = read.value.clone();
        change(&mut pool);
        let revision = if pool == read.value {
            read.mod_revision
        } else {
            self.store().update_read(&read, &pool).await?
        };
        Ok(NamedPool {
            name: name.to_owned(),
            pool,
            revision,
        })
    }

    /// Removes a pool with no allocated address, with its (empty) blocks and their
    /// affinities. Refused, saying how many addresses are allocated, otherwise.
    ///
    /// The pool is disabled first so that no allocation can land in it while its blocks are
    /// deleted; if addresses turn up in that window it is enabled again and the removal is
    /// refused.
    pub async fn remove_pool(&self, name: &str) -> Result<usize> {
        let current = self.get_pool(name).await?;
        let allocated = self.allocated_in(&current.pool.cidr).await?;
        if allocated > 0 {
            return Err(IpamError::PoolInUse {
                name: name.to_owned(),
                allocated,
            });
        }
        let disabled = self.set_pool_disabled(name, true).await?;
        let allocated = self.allocated_in(&current.pool.cidr).await?;
        if allocated > 0 {
            if !current.pool.disabled {
                self.set_pool_disabled(name, false).await?;
            }
            return Err(IpamError::PoolInUse {
                name: name.to_owned(),
                allocated,
            });
        }
        let mut removed = 0;
        for (key, block, revision) in blocks_in(self.store(), &current.pool.cidr).await? {
            let mut txn = Txn::new()
                .when(Compare::ModRevision(key.clone(), revision))
                .delete(key);
            if let Some(node) = block.affinity() {
                txn = txn.delete(keys::affinity(node, &block.cidr()));
            }
            self.store().txn(txn).await?;
            removed += 1;
        }
        for kv in self.store().list(keys::AFFINITY).await?.items {
            if affinity::parse_key(&kv.key).is_some_and(|(_, b)| current.pool.cidr.contains(&b)) {
                self.store().delete(&kv.key, Some(kv.mod_revision)).await?;
            }
        }
        self.store()
            .delete(&keys::pool(name), Some(disabled.revision))
            .await?;
        Ok(removed)
    }

    async fn allocated_in(&self, cidr: &IpNet) -> Result<usize> {
        Ok(blocks_in(self.store(), cidr)
            .await?
            .iter()
            .map(|(_, b, _)| b.used() as usize)
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(name: &str, cidr: &str) -> NamedPool {
        let cidr: IpNet = cidr.parse().unwrap();
        NamedPool {
            name: name.into(),
            pool: Pool {
                cidr,
                block_size: Pool::default_block_size(&cidr),
                encapsulation: Encapsulation::None,
                encapsulation_mode: EncapsulationMode::Always,
                nat_outgoing: false,
                disabled: false,
                communities: Vec::new(),
            },
            revision: 1,
        }
    }

    fn check(name: &str, cidr: &str, block: Option<u8>) -> Result<Pool, PoolError> {
        let mut spec = PoolSpec::new(name, cidr);
        spec.block_size = block;
        validate(
            &spec,
            &[
                existing("main", "10.65.0.0/16"),
                existing("v6", "fd00:65::/48"),
            ],
        )
    }

    #[test]
    fn accepts_well_formed_pools_with_family_defaults() {
        assert_eq!(check("b", "10.66.0.0/16", None).unwrap().block_size, 26);
        assert_eq!(check("c", "fd00:66::/64", None).unwrap().block_size, 122);
        assert_eq!(
            check("d", "192.168.7.0/24", Some(24)).unwrap().block_size,
            24
        );
    }

    #[test]
    fn each_mistake_has_its_own_error() {
        assert!(matches!(
            check("b", "10.66.0/16", None),
            Err(PoolError::MalformedCidr { .. })
        ));
        assert!(matches!(
            check("b", "10.66.0.0", None),
            Err(PoolError::MalformedCidr { .. })
        ));
        assert!(matches!(
            check("b", "10.66.0.0/33", None),
            Err(PoolError::MalformedCidr { .. })
        ));
        assert_eq!(
            check("b", "10.66.1.0/16", None),
            Err(PoolError::NotNetworkAddress {
                input: "10.66.1.0/16".into(),
                network: "10.66.0.0/16".parse().unwrap()
            })
        );
        assert!(matches!(
            check("b", "10.66.0.0/16", Some(19)),
            Err(PoolError::BlockSizeOutOfRange {
                min: 20,
                max: 32,
                ..
            })
        ));
        assert!(matches!(
            check("b", "fd00:66::/64", Some(26)),
            Err(PoolError::BlockSizeOutOfRange {
                min: 116,
                max: 128,
                ..
            })
        ));
        assert!(matches!(
            check("b", "10.66.0.0/28", Some(26)),
            Err(PoolError::BlockLargerThanPool { .. })
        ));
        assert!(
            matches!(check("b", "10.65.128.0/17", None), Err(PoolError::Overlap { ref other, .. }) if other == "main")
        );
        assert!(matches!(
            check("b", "10.0.0.0/8", None),
            Err(PoolError::Overlap { .. })
        ));
        assert!(
            matches!(check("b", "fd00:65:0:1::/64", None), Err(PoolError::Overlap { ref other, .. }) if other == "v6")
        );
        assert!(matches!(
            check("a/b", "10.66.0.0/16", None),
            Err(PoolError::InvalidName { .. })
        ));
        assert!(matches!(
            check("", "10.66.0.0/16", None),
            Err(PoolError::InvalidName { .. })
        ));
    }

    #[test]
    fn errors_read_as_one_clear_line() {
        let e = check("b", "10.66.1.0/16", None).unwrap_err().to_string();
        assert_eq!(
            e,
            "10.66.1.0/16 is not a network address; did you mean 10.66.0.0/16?"
        );
        let e = check("b", "10.65.0.0/24", None).unwrap_err().to_string();
        assert_eq!(e, "10.65.0.0/24 overlaps pool main (10.65.0.0/16)");
    }
}
