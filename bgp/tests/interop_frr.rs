//! wren's speaker against FRR (zebra + bgpd): eBGP and iBGP, IPv4 and IPv6, attributes,
//! withdraws, route refresh, hold-timer expiry both ways, graceful restart both ways and TCP
//! MD5, on one topology (see `interop_common::suite`).

mod interop_common;

use wren_tests::daemons::frr::{self, Frr};
use wren_tests::daemons::{BgpDaemon, Config};
use wren_tests::netns::NetNs;
use wren_tests::prereq;

fn frr(ns: &NetNs, config: Config) -> Box<dyn BgpDaemon + '_> {
    Box::new(Frr::start(ns, config).unwrap_or_else(|e| panic!("start FRR: {e}")))
}

#[test]
fn wren_interoperates_with_frr() {
    if !prereq::require_root()
        || !["ip", "nft"]
            .iter()
            .chain(&frr::BINARIES)
            .all(|c| prereq::require_command(c))
    {
        return;
    }
    interop_common::suite::run("frr", frr);
}
