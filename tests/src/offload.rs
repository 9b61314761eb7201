//! The GSO/GRO packet-size limits of an interface (BIG TCP above 64 KiB), read and set over
//! netlink: Debian 12's `ip` shows and sets only the generic sizes, not the IPv4 ones.

use std::io;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::LinkUnspec;

use crate::netns::run_in;

/// The limit every interface starts with.
pub const STANDARD: u32 = 65_536;

/// The size the lab and the benchmarks give BIG TCP links (what NICs with BIG TCP are commonly
/// set to).
pub const BIG_TCP: u32 = 196_608;

/// An interface's limits, in bytes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    /// `gso_max_size` (IPv6 and other protocols).
    pub gso: u32,
    /// `gro_max_size`.
    pub gro: u32,
    /// `gso_ipv4_max_size`.
    pub gso_ipv4: u32,
    /// `gro_ipv4_max_size`.
    pub gro_ipv4: u32,
}

impl Sizes {
    /// All four limits at `size`.
    pub fn all(size: u32) -> Sizes {
        Sizes {
            gso: size,
            gro: size,
            gso_ipv4: size,
            gro_ipv4: size,
        }
    }
}

/// Runs one rtnetlink exchange inside namespace `ns` on a runtime of its own.
fn in_ns<T: Send>(
    ns: &str,
    exchange: impl AsyncFnOnce(rtnetlink::Handle) -> Result<T, rtnetlink::Error> + Send,
) -> io::Result<T> {
    run_in(ns, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            exchange(handle).await.map_err(io::Error::other)
        })
    })?
}

/// The limits of `ifname` in namespace `ns`.
pub fn sizes(ns: &str, ifname: &str) -> io::Result<Sizes> {
    let name = ifname.to_owned();
    let link: Option<LinkMessage> = in_ns(ns, async move |handle| {
        handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
    })?;
    let link = link.ok_or_else(|| io::Error::other(format!("no interface {ifname} in {ns}")))?;
    let mut sizes = Sizes::default();
    for attr in &link.attributes {
        match attr {
            LinkAttribute::GsoMaxSize(v) => sizes.gso = *v,
            LinkAttribute::GroMaxSize(v) => sizes.gro = *v,
            LinkAttribute::GsoIpv4MaxSize(v) => sizes.gso_ipv4 = *v,
            LinkAttribute::GroIpv4MaxSize(v) => sizes.gro_ipv4 = *v,
            _ => {}
        }
    }
    Ok(sizes)
}

/// Sets the limits of `ifname` in namespace `ns`.
pub fn set_sizes(ns: &str, ifname: &str, sizes: Sizes) -> io::Result<()> {
    let mut message = LinkUnspec::new_with_name(ifname).build();
    message.attributes.extend([
        LinkAttribute::GsoMaxSize(sizes.gso),
        LinkAttribute::GroMaxSize(sizes.gro),
        LinkAttribute::GsoIpv4MaxSize(sizes.gso_ipv4),
        LinkAttribute::GroIpv4MaxSize(sizes.gro_ipv4),
    ]);
    in_ns(ns, async move |handle| {
        handle.link().set(message).execute().await
    })
    .map_err(|e| io::Error::other(format!("setting GSO/GRO sizes of {ifname} in {ns}: {e}")))
}
