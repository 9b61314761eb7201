//! The forwarding database of wren's VXLAN device: which node receives the frames for each
//! remote tunnel MAC.
//!
//! With learning off, a VXLAN device knows a remote MAC only through these entries, so an
//! entry per remote node (`<mac> dst <node ip> self permanent`) is what lets the device send a
//! frame anywhere. They are reconciled with the neighbour entries' machinery
//! (the `neigh` module), on `wren.vxlan` only.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::neigh::{self, Entry, EntryReport, Table};
use super::netlink::{Netlink, NetlinkError};

/// One forwarding entry: frames for `mac` go, encapsulated, to `remote`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The remote tunnel device's MAC.
    pub mac: [u8; 6],
    /// The remote node's underlay address.
    pub remote: IpAddr,
}

impl From<FdbEntry> for Entry {
    fn from(e: FdbEntry) -> Entry {
        Entry {
            ip: e.remote,
            mac: e.mac,
        }
    }
}

/// Makes the permanent forwarding entries of device `index` exactly `wanted`.
pub(crate) fn reconcile(
    netlink: &mut Netlink,
    index: u32,
    wanted: impl IntoIterator<Item = FdbEntry>,
) -> Result<EntryReport, NetlinkError> {
    let wanted: BTreeSet<Entry> = wanted.into_iter().map(Entry::from).collect();
    neigh::reconcile(netlink, Table::Fdb, index, &wanted)
}
