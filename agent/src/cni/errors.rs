//! How failures of the IPAM, the dataplane and the datastore reach the runtime: as CNI errors
//! whose code tells it what to do (retry, give up, fix the configuration).

use wren_cni::{CniError, ErrorCode};
use wren_ipam::IpamError;
use wren_store::StoreError;

use crate::dataplane::{NetnsError, PodError};

/// An IPAM failure while doing `what`.
pub fn ipam_error(what: &str, e: IpamError) -> CniError {
    let code = match &e {
        IpamError::Exhausted { .. } | IpamError::PoolExhaustedForNode { .. } => {
            ErrorCode::ADDRESSES_EXHAUSTED
        }
        IpamError::NoPools { .. } | IpamError::UnknownPool(_) | IpamError::PoolDisabled(_) => {
            ErrorCode::NO_USABLE_POOL
        }
        IpamError::AddressNotInPool(_) | IpamError::AlreadyAllocated { .. } => {
            ErrorCode::REQUESTED_ADDRESS_UNAVAILABLE
        }
        IpamError::InvalidRequest(_) => ErrorCode::INVALID_NETWORK_CONFIG,
        IpamError::ConflictRetriesExhausted { .. } | IpamError::AllocatorStopped(_) => {
            ErrorCode::TRY_AGAIN_LATER
        }
        IpamError::Store(store) if is_transient(store) => ErrorCode::TRY_AGAIN_LATER,
        _ => ErrorCode::DATASTORE_FAILURE,
    };
    let hint = match code {
        ErrorCode::ADDRESSES_EXHAUSTED => {
            "; add a pool (`wren pool add`) or free addresses (`wren ipam check`)"
        }
        ErrorCode::NO_USABLE_POOL => {
            "; name an enabled pool in ipam.pools or the pod's wren.dev/pools annotation (`wren pool list` shows them)"
        }
        _ => "",
    };
    CniError::new(code, format!("{what}: {e}{hint}"))
}

/// A dataplane failure while doing `what`. A pod namespace that is gone (or is no network
/// namespace) means the container is unknown, which tells the runtime no cleanup is needed.
pub fn pod_error(what: &str, e: PodError) -> CniError {
    let code = match &e {
        PodError::Netns(NetnsError::Open { .. } | NetnsError::Enter { .. }) => {
            ErrorCode::UNKNOWN_CONTAINER
        }
        PodError::Collision { .. } | PodError::PodInterfaceExists { .. } => {
            ErrorCode::INTERFACE_EXISTS
        }
        // wren configured as an additional network of a pod that has its first one already.
        PodError::Invalid(_) | PodError::DefaultRouteTaken { .. } => {
            ErrorCode::INVALID_NETWORK_CONFIG
        }
        _ => ErrorCode::DATAPLANE_FAILURE,
    };
    CniError::new(code, format!("{what}: {e}"))
}

/// A datastore failure while doing `what`: unreachable means "try again later", anything
/// else is a datastore failure.
pub fn store_error(what: &str, e: StoreError) -> CniError {
    let code = if is_transient(&e) {
        ErrorCode::TRY_AGAIN_LATER
    } else {
        ErrorCode::DATASTORE_FAILURE
    };
    CniError::new(code, format!("{what}: {e}"))
}

fn is_transient(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Unavailable { .. } | StoreError::Conflict { .. }
    )
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use super::*;
    use wren_ipam::Family;

    fn down() -> StoreError {
        StoreError::Unavailable {
            endpoints: "http://127.0.0.1:2379".into(),
            reason: "refused".into(),
        }
    }

    #[test]
    fn transient_failures_ask_the_runtime_to_retry() {
        let code = |e: IpamError| ipam_error("allocating", e).code;
        assert_eq!(
            code(IpamError::Store(Arc::new(down()))),
            ErrorCode::TRY_AGAIN_LATER
        );
        assert_eq!(
            store_error("reading", down()).code,
            ErrorCode::TRY_AGAIN_LATER
        );
        let bad = StoreError::InvalidData {
            key: "k".into(),
            reason: "x".into(),
        };
        assert_eq!(
            store_error("reading", bad).code,
            ErrorCode::DATASTORE_FAILURE
        );
    }

    #[test]
    fn allocation_failures_say_what_ran_out() {
        let exhausted = ipam_error(
            "allocating",
            IpamError::Exhausted {
                family: Family::V4,
                pools: "default".into(),
            },
        );
        assert_eq!(exhausted.code, ErrorCode::ADDRESSES_EXHAUSTED);
        assert!(exhausted.msg.contains("default"), "{}", exhausted.msg);
        assert!(exhausted.msg.contains("wren pool add"), "{}", exhausted.msg);
        let none = ipam_error("allocating", IpamError::NoPools { family: Family::V6 });
        assert_eq!(none.code, ErrorCode::NO_USABLE_POOL);
        let unknown = ipam_error("allocating", IpamError::UnknownPool("gold".into()));
        assert!(unknown.msg.contains("gold"), "{}", unknown.msg);
        assert!(unknown.msg.contains("wren pool list"), "{}", unknown.msg);
    }

    #[test]
    fn a_missing_netns_is_an_unknown_container() {
        let gone = PodError::Netns(NetnsError::Open {
            path: "/run/netns/x".into(),
            source: io::ErrorKind::NotFound.into(),
        });
        let e = pod_error("setting up", gone);
        assert_eq!(e.code, ErrorCode::UNKNOWN_CONTAINER);
        assert!(e.msg.contains("/run/netns/x"), "{}", e.msg);
        let taken = PodError::PodInterfaceExists {
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
        };
        assert_eq!(
            pod_error("setting up", taken).code,
            ErrorCode::INTERFACE_EXISTS
        );
    }
}
