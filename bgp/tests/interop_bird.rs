//! wren's speaker against BIRD 2: eBGP and iBGP, IPv4 and IPv6, attributes, withdraws, route
//! refresh, hold-timer expiry both ways, graceful restart both ways and TCP MD5, on one
//! topology (see `interop_common::suite`).

mod interop_common;

use wren_tests::daemons::BgpDaemon;
use wren_tests::daemons::bird::Bird;
use wren_tests::netns::NetNs;
use wren_tests::prereq;

fn bird(ns: &NetNs, config: wren_tests::daemons::Config) -> Box<dyn BgpDaemon + '_> {
    Box::new(Bird::start(ns, config).unwrap_or_else(|e| panic!("start BIRD: {e}")))
}

#[test]
fn wren_interoperates_with_bird() {
    if !prereq::require_root()
        || !["ip", "nft", "bird"]
            .iter()
            .all(|c| prereq::require_command(c))
    {
        return;
    }
    interop_common::suite::run("bird", bird);
}
