//! `wren peer add` and `wren bgp config` with their BGP session controls, as an operator runs
//! them against a real etcd: what is stored, and every kind of bad value refused with one
//! line naming the field, nothing written.

use wren_model::{ClusterConfig, Peer, keys};
use wren_store::json::JsonStore;

// The `wren` runs.
#[allow(dead_code)]
mod cli_support;
use cli_support::*;

const PREFIX: &str = "/wren-peer-cli-test/";

#[test]
fn session_controls_are_stored_and_bad_ones_refused() {
    let Some(Datastore {
        etcd,
        runtime,
        store,
    }) = datastore()
    else {
        return;
    };
    let e = etcd.endpoint();
    let e = e.as_str();
    let peer = |name: &str| -> Peer {
        runtime
            .block_on(store.get_json::<Peer>(&keys::peer(name)))
            .unwrap()
            .unwrap()
            .value
    };
    let add = [
        "peer",
        "add",
        "tor",
        "--peer-ip",
        "10.0.0.254",
        "--as",
        "65000",
    ];

    ok(e, &[&add[..], &["--bfd"]].concat());
    let bfd = peer("tor").bfd.unwrap();
    assert_eq!(
        (
            bfd.transmit_interval_ms,
            bfd.receive_interval_ms,
            bfd.multiplier
        ),
        (300, 300, 3)
    );
    ok(
        e,
        &[
            &add[..],
            &[
                "--bfd",
                "--bfd-transmit-interval",
                "100ms",
                "--bfd-receive-interval",
                "1s",
                "--bfd-multiplier",
                "5",
            ],
        ]
        .concat(),
    );
    let bfd = peer("tor").bfd.unwrap();
    assert_eq!(
        (
            bfd.transmit_interval_ms,
            bfd.receive_interval_ms,
            bfd.multiplier
        ),
        (100, 1000, 5)
    );

    // The session controls: stored as given, absent when not.
    assert_eq!(peer("tor").hold_time, None);
    ok(
        e,
        &[
            &add[..],
            &[
                "--hold-time",
                "9",
                "--ttl-security",
                "1",
                "--source-address",
                "10.0.0.7",
            ],
        ]
        .concat(),
    );
    let stored = peer("tor");
    assert_eq!(
        (stored.hold_time, stored.ttl_security, stored.source_address),
        (Some(9), Some(1), Some("10.0.0.7".parse().unwrap()))
    );
    assert_eq!(stored.bfd, None, "a peer add replaces the peer");
    ok(e, &[&add[..], &["--hold-time", "0"]].concat());
    assert_eq!(peer("tor").hold_time, Some(0));

    // A local AS, 2- and 4-octet, and a keepalive time: stored as given.
    assert_eq!(peer("tor").local_as_number, None);
    for asn in ["65001", "4200000001"] {
        ok(e, &[&add[..], &["--local-as", asn]].concat());
        assert_eq!(peer("tor").local_as_number, asn.parse().ok());
    }
    ok(
        e,
        &[&add[..], &["--hold-time", "9", "--keepalive-time", "1"]].concat(),
    );
    let stored = peer("tor");
    assert_eq!(
        (stored.hold_time, stored.keepalive_time_secs),
        (Some(9), Some(1))
    );

    // A prefix limit: stored with its defaults filled in; absent, the default applies.
    assert_eq!(peer("tor").max_prefixes, None);
    ok(e, &[&add[..], &["--max-prefixes", "500"]].concat());
    assert_eq!(
        peer("tor").max_prefixes,
        Some(wren_model::MaxPrefixes {
            limit: 500,
            ..wren_model::MaxPrefixes::DEFAULT
        })
    );
    ok(
        e,
        &[
            &add[..],
            &[
                "--max-prefixes",
                "500",
                "--max-prefixes-warning",
                "90",
                "--max-prefixes-restart",
                "5m",
            ],
        ]
        .concat(),
    );
    assert_eq!(
        peer("tor").max_prefixes,
        Some(wren_model::MaxPrefixes {
            limit: 500,
            warning_percent: 90,
            restart_after_secs: 300,
        })
    );

    let before = runtime.block_on(snapshot(store.as_ref()));
    for (extra, expected) in [
        (
            &["--bfd", "--bfd-transmit-interval", "0"][..],
            "--bfd-transmit-interval",
        ),
        (
            &["--bfd", "--bfd-receive-interval", "5ms"],
            "--bfd-receive-interval",
        ),
        (
            &["--bfd", "--bfd-receive-interval", "61s"],
            "--bfd-receive-interval",
        ),
        (&["--bfd", "--bfd-multiplier", "0"], "--bfd-multiplier"),
        (&["--bfd", "--bfd-multiplier", "256"], "--bfd-multiplier"),
        (&["--bfd-multiplier", "3"], "--bfd"),
        (&["--hold-time", "1"], "hold time 1"),
        (&["--hold-time", "2"], "hold time 2"),
        (&["--hold-time", "65536"], "--hold-time"),
        (&["--ttl-security", "0"], "ttl security 0"),
        (&["--ttl-security", "255"], "ttl security 255"),
        (&["--local-as", "0"], "local AS 0"),
        (&["--local-as", "23456"], "local AS 23456: AS_TRANS"),
        (&["--local-as", "4294967295"], "local AS 4294967295"),
        (&["--local-as", "4294967296"], "--local-as"),
        (&["--keepalive-time", "0"], "keepalive time 0"),
        (
            &["--keepalive-time", "31"],
            "keepalive time 31: must be 1 to a third of the hold time (90 s)",
        ),
        (
            &["--hold-time", "9", "--keepalive-time", "4"],
            "keepalive time 4: must be 1 to a third of the hold time (9 s)",
        ),
        (
            &["--hold-time", "0", "--keepalive-time", "1"],
            "keepalive time 1: hold time 0 sends no keepalives",
        ),
        (&["--source-address", "0.0.0.0"], "source address 0.0.0.0"),
        (&["--source-address", "fd00::1"], "source address fd00::1"),
        (&["--max-prefixes", "0"], "max prefixes: limit 0"),
        (
            &["--max-prefixes", "10", "--max-prefixes-warning", "0"],
            "warning at 0 %",
        ),
        (
            &["--max-prefixes", "10", "--max-prefixes-warning", "101"],
            "warning at 101 %",
        ),
        (
            &["--max-prefixes", "10", "--max-prefixes-restart", "0s"],
            "--max-prefixes-restart",
        ),
        (&["--max-prefixes-warning", "50"], "--max-prefixes"),
    ] {
        fails(e, &[&add[..], extra].concat(), expected);
    }
    for (args, expected) in [
        (
            &["bgp", "config", "--mesh-bfd", "on", "--bfd-multiplier", "0"][..],
            "--bfd-multiplier",
        ),
        (
            &["bgp", "config", "--bfd-transmit-interval", "100ms"],
            "--mesh-bfd on",
        ),
        (
            &[
                "bgp",
                "config",
                "--mesh-bfd",
                "off",
                "--bfd-multiplier",
                "3",
            ],
            "--mesh-bfd on",
        ),
    ] {
        fails(e, args, expected);
    }
    assert_eq!(runtime.block_on(snapshot(store.as_ref())), before);

    // The node mesh: on with the default timing, a timing changed, off.
    let shown = ok(e, &["bgp", "config", "--mesh-bfd", "on"]);
    assert!(
        shown.contains("Node-to-node BFD:   on, transmit 300 ms, receive 300 ms, multiplier 3"),
        "{shown}"
    );
    ok(
        e,
        &[
            "bgp",
            "config",
            "--mesh-bfd",
            "on",
            "--bfd-transmit-interval",
            "100ms",
        ],
    );
    let cluster = || -> ClusterConfig {
        runtime
            .block_on(store.get_json::<ClusterConfig>(keys::CLUSTER_CONFIG))
            .unwrap()
            .unwrap()
            .value
    };
    let bfd = cluster().node_mesh_bfd.unwrap();
    assert_eq!(
        (
            bfd.transmit_interval_ms,
            bfd.receive_interval_ms,
            bfd.multiplier
        ),
        (100, 300, 3)
    );
    let shown = ok(e, &["bgp", "config", "--mesh-bfd", "off"]);
    assert!(shown.contains("Node-to-node BFD:   off"), "{shown}");
    assert_eq!(cluster().node_mesh_bfd, None);
}

/// A cluster configuration a newer version wrote, with fields this one does not know (at the
/// top and inside a known field): `wren bgp config` shows it, changes it, and writes the
/// unknown fields back as they were. Before, the command failed on the document.
#[test]
fn a_newer_versions_cluster_config_is_changed_without_losing_its_fields() {
    let Some(datastore) = datastore() else {
        return;
    };
    let (runtime, store) = (&datastore.runtime, &datastore.store);
    let e = datastore.etcd.endpoint();
    let newer = serde_json::json!({
        "asNumber": 65010,
        "nodeToNodeMesh": false,
        "nodeMeshBfd": {"transmitIntervalMs": 300, "receiveIntervalMs": 300, "multiplier": 3,
                        "echoMode": true},
        "bgpPolicyGeneration": 7
    });
    runtime
        .block_on(store.put(
            keys::CLUSTER_CONFIG,
            serde_json::to_vec(&newer).unwrap(),
            None,
        ))
        .unwrap();
    let shown = ok(&e, &["bgp", "config", "--as", "65020"]);
    assert!(shown.contains("65020"), "{shown}");
    assert!(shown.contains("Node-to-node mesh:  off"), "{shown}");
    let stored: serde_json::Value = serde_json::from_slice(
        &runtime
            .block_on(store.get(keys::CLUSTER_CONFIG))
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(stored["asNumber"], 65020);
    assert_eq!(stored["bgpPolicyGeneration"], 7, "{stored}");
    assert_eq!(stored["nodeMeshBfd"]["echoMode"], true, "{stored}");
    assert_eq!(stored["nodeToNodeMesh"], false, "{stored}");
}
