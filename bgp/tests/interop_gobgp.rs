//! wren's speaker against GoBGP: eBGP and iBGP, IPv4 and IPv6, attributes, withdraws, route
//! refresh, hold-timer expiry both ways, graceful restart both ways and TCP MD5, on one
//! topology (see `interop_common::suite`).

mod interop_common;

use wren_tests::daemons::gobgp::Gobgp;
use wren_tests::daemons::{BgpDaemon, Config};
use wren_tests::netns::NetNs;
use wren_tests::prereq;

fn gobgp(ns: &NetNs, config: Config) -> Box<dyn BgpDaemon + '_> {
    Box::new(Gobgp::start(ns, config).unwrap_or_else(|e| panic!("start GoBGP: {e}")))
}

#[test]
fn wren_interoperates_with_gobgp() {
    if !prereq::require_root()
        || !["ip", "nft", "gobgpd", "gobgp"]
            .iter()
            .all(|c| prereq::require_command(c))
    {
        return;
    }
    interop_common::suite::run("gobgp", gobgp);
}
