//! How failures of the allocator, the dataplane and the datastore reach the runtime: as CNI
//! errors with the code that tells it what to do (retry, give up, clean up).

use wren_cni::{CniError, ErrorCode};
use wren_store::StoreError;

use super::backend::{AllocError, DataplaneError};

impl From<AllocError> for CniError {
    fn from(e: AllocError) -> Self {
        let code = match &e {
            AllocError::Exhausted(_) => ErrorCode::ADDRESSES_EXHAUSTED,
            AllocError::NoUsablePool(_) => ErrorCode::NO_USABLE_POOL,
            AllocError::AddressUnavailable(_) => ErrorCode::REQUESTED_ADDRESS_UNAVAILABLE,
            AllocError::Unavailable(_) => ErrorCode::TRY_AGAIN_LATER,
            AllocError::Invalid(_) => ErrorCode::INVALID_NETWORK_CONFIG,
            AllocError::Other(_) => ErrorCode::DATASTORE_FAILURE,
        };
        CniError::new(code, format!("address allocation failed: {e}"))
    }
}

impl From<DataplaneError> for CniError {
    fn from(e: DataplaneError) -> Self {
        match e {
            DataplaneError::NetnsMissing(why) => CniError::new(
                ErrorCode::UNKNOWN_CONTAINER,
                format!("the pod's network namespace is gone: {why}"),
            ),
            DataplaneError::NameTaken(why) => CniError::new(
                ErrorCode::INTERFACE_EXISTS,
                format!("interface name taken: {why}"),
            ),
            DataplaneError::Kernel(why) => CniError::new(
                ErrorCode::DATAPLANE_FAILURE,
                format!("the kernel refused a change: {why}"),
            ),
        }
    }
}

/// A datastore failure while doing `what`: unreachable means "try again later", anything
/// else is a datastore failure.
pub fn store_error(what: &str, e: StoreError) -> CniError {
    let code = match e {
        StoreError::Unavailable { .. } | StoreError::Conflict { .. } => ErrorCode::TRY_AGAIN_LATER,
        _ => ErrorCode::DATASTORE_FAILURE,
    };
    CniError::new(code, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_ask_the_runtime_to_retry() {
        assert_eq!(
            CniError::from(AllocError::Unavailable("etcd".into())).code,
            ErrorCode::TRY_AGAIN_LATER
        );
        let down = StoreError::Unavailable {
            endpoints: "http://127.0.0.1:2379".into(),
            reason: "refused".into(),
        };
        assert_eq!(
            store_error("reading", down).code,
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
    fn a_missing_netns_is_an_unknown_container() {
        let e = CniError::from(DataplaneError::NetnsMissing("/run/netns/x".into()));
        assert_eq!(e.code, ErrorCode::UNKNOWN_CONTAINER);
        assert!(e.msg.contains("/run/netns/x"));
        assert_eq!(
            CniError::from(AllocError::Exhausted("full".into())).code,
            ErrorCode::ADDRESSES_EXHAUSTED
        );
    }
}
