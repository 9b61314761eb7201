//! GoBGP as a test peer: `gobgpd -f <dir>/gobgpd.toml --api-hosts unix://<dir>/api.sock`,
//! driven with `gobgp --target unix://<dir>/api.sock`.
//!
//! The gRPC API listens on a unix socket in the private directory rather than on a TCP port,
//! so daemons in different namespaces never compete for `:50051` and the CLI needs no
//! namespace switch. Announced prefixes live in GoBGP's global RIB; they are added again
//! after a restart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::netns::NetNs;

use super::run::{Running, count, json, tool, write_file};
use super::{
    Announce, BgpDaemon, Config, Error, Family, Neighbor, Origin, Restart, Route, SessionState,
    Signal, community_of, wait_for,
};

/// A running GoBGP daemon.
#[derive(Debug)]
pub struct Gobgp<'ns> {
    ns: &'ns NetNs,
    dir: tempfile::TempDir,
    peers: Vec<IpAddr>,
    announced: BTreeMap<IpNet, Announce>,
    process: Running,
}

impl<'ns> Gobgp<'ns> {
    /// Starts gobgpd in the network namespace `ns` with `config`, and waits until its API
    /// answers.
    pub fn start(ns: &'ns NetNs, config: Config) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("wren-gobgp-")
            .tempdir()
            .map_err(|e| Error::io("create GoBGP directory", e))?;
        write_file(&dir.path().join("gobgpd.toml"), &render(&config))?;
        let peers = config.peers.iter().map(|p| p.address).collect();
        let mut gobgp = Self {
            ns,
            dir,
            peers,
            announced: BTreeMap::new(),
            process: Running::default(),
        };
        gobgp.launch(false)?;
        Ok(gobgp)
    }

    /// The directory holding configuration, API socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API address for `gobgp --target`.
    pub fn target(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Runs the `gobgp` CLI against this daemon and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("gobgp");
        cmd.arg("--target").arg(self.target()).args(args);
        tool(&mut cmd)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    fn launch(&mut self, restarting: bool) -> Result<(), Error> {
        let _ = std::fs::remove_file(self.socket());
        let mut cmd = self.ns.command("gobgpd");
        cmd.arg("-f")
            .arg(self.dir.path().join("gobgpd.toml"))
            .arg(format!("--api-hosts={}", self.target()))
            .args(["--pprof-disable", "--log-plain", "--log-level=info"]);
        if restarting {
            cmd.arg("--graceful-restart");
        }
        self.process.start(self.ns, "gobgpd", &mut cmd)?;
        let target = self.target();
        let process = &mut self.process;
        wait_for(
            "gobgpd to answer on its API socket",
            Duration::from_secs(20),
            || {
                process.check()?;
                let mut cmd = Command::new("gobgp");
                cmd.arg("--target").arg(&target).arg("global");
                Ok(tool(&mut cmd).map(|_| ()).map_err(|e| e.to_string()))
            },
        )?;
        // The neighbours start administratively down: GoBGP's RIB has no static routes in its
        // configuration, so the announcements go in first. Otherwise a restarting GoBGP would
        // send End-of-RIB before them and its peers would rightly drop the stale copies.
        let announced: Vec<Announce> = self.announced.values().cloned().collect();
        for a in &announced {
            self.add_path(a)?;
        }
        for p in &self.peers {
            self.cli(&["neighbor", &p.to_string(), "enable"])?;
        }
        Ok(())
    }

    fn add_path(&self, a: &Announce) -> Result<(), Error> {
        let prefix = a.prefix.to_string();
        let origin = match a.origin {
            Origin::Igp => "igp",
            Origin::Egp => "egp",
            Origin::Incomplete => "incomplete",
        };
        let mut args = vec![
            "global",
            "rib",
            "add",
            "-a",
            afi(&a.prefix),
            &prefix,
            "origin",
            origin,
        ];
        let med = a.med.map(|m| m.to_string());
        if let Some(m) = &med {
            args.extend(["med", m]);
        }
        let lp = a.local_pref.map(|m| m.to_string());
        if let Some(l) = &lp {
            args.extend(["local-pref", l]);
        }
        let communities: Vec<String> = a
            .communities
            .iter()
            .map(|(x, y)| format!("{x}:{y}"))
            .collect();
        let joined = communities.join(",");
        if !communities.is_empty() {
            args.extend(["community", &joined]);
        }
        self.cli(&args).map(|_| ())
    }
}

fn afi(prefix: &IpNet) -> &'static str {
    Family::of_prefix(prefix).name()
}

impl BgpDaemon for Gobgp<'_> {
    fn kind(&self) -> &'static str {
        "gobgp"
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn neighbor(&self, address: IpAddr) -> Result<Neighbor, Error> {
        let text = self.cli(&["-j", "neighbor", &address.to_string()])?;
        parse_neighbor(&text)
    }

    fn routes(&self, family: Family) -> Result<Vec<Route>, Error> {
        let text = self.cli(&["-j", "global", "rib", "-a", family.name()])?;
        parse_routes(&text)
    }

    fn announce(&mut self, announce: &Announce) -> Result<(), Error> {
        if self.announced.contains_key(&announce.prefix) {
            self.withdraw(announce.prefix)?;
        }
        self.add_path(announce)?;
        self.announced.insert(announce.prefix, announce.clone());
        Ok(())
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<(), Error> {
        self.announced.remove(&prefix);
        self.cli(&[
            "global",
            "rib",
            "del",
            "-a",
            afi(&prefix),
            &prefix.to_string(),
        ])
        .map(|_| ())
    }

    /// `gobgp neighbor <addr> softresetin` re-runs import policy over GoBGP's own copy of the
    /// neighbour's routes; it sends no ROUTE-REFRESH, and the CLI has no command that does.
    fn request_refresh(&self, _address: IpAddr) -> Result<(), Error> {
        Err(Error::Unsupported {
            daemon: "gobgp",
            what: "send a ROUTE-REFRESH",
            why: "softresetin re-applies policy to GoBGP's own Adj-RIB-In without asking the peer",
        })
    }

    fn signal(&mut self, sig: Signal) -> Result<(), Error> {
        self.process.signal(sig)
    }

    fn restart(&mut self, how: Restart) -> Result<(), Error> {
        self.process.take_down(how)?;
        self.launch(how == Restart::Crash)
    }

    fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

fn render(config: &Config) -> String {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "[global.config]\n  as = {}\n  router-id = \"{}\"\n  port = 179",
        config.asn, config.router_id
    );
    for p in &config.peers {
        c.push_str("\n[[neighbors]]\n  [neighbors.config]\n");
        let _ = writeln!(
            c,
            "    neighbor-address = \"{}\"\n    peer-as = {}\n    admin-down = true",
            p.address, p.asn
        );
        if let Some(pw) = &p.password {
            let _ = writeln!(c, "    auth-password = \"{pw}\"");
        }
        let _ = writeln!(
            c,
            "  [neighbors.timers.config]\n    hold-time = {}\n    keepalive-interval = {}\n    connect-retry = 2\n    idle-hold-time-after-reset = 1",
            p.hold_time,
            p.keepalive()
        );
        let _ = writeln!(
            c,
            "  [neighbors.transport.config]\n    local-address = \"{}\"",
            p.local_address
        );
        if p.passive {
            c.push_str("    passive-mode = true\n");
        }
        if let Some(t) = p.graceful_restart {
            let _ = writeln!(
                c,
                "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = {t}"
            );
        }
        if p.rr_client {
            let id = config.cluster_id.unwrap_or(config.router_id);
            let _ = writeln!(
                c,
                "  [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{id}\""
            );
        }
        for f in &p.families {
            let name = format!("{}-unicast", f.name());
            let _ = writeln!(
                c,
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{name}\""
            );
            if p.graceful_restart.is_some() {
                c.push_str(
                    "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n",
                );
            }
        }
    }
    c
}

fn parse_neighbor(text: &str) -> Result<Neighbor, Error> {
    let what = "gobgp -j neighbor";
    let json = json(text, what)?;
    // The API's enum: 1 idle, 2 connect, 3 active, 4 opensent, 5 openconfirm, 6 established.
    let state = match json.pointer("/state/session_state") {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(2) => Some(SessionState::Connect),
            Some(3) => Some(SessionState::Active),
            Some(4) => Some(SessionState::OpenSent),
            Some(5) => Some(SessionState::OpenConfirm),
            Some(6) => Some(SessionState::Established),
            _ => Some(SessionState::Idle),
        },
        Some(Value::String(s)) => SessionState::parse(s),
        // Fields with their zero value are left out: unknown state.
        _ => Some(SessionState::Idle),
    };
    let state = state.ok_or_else(|| Error::parse(what, text.to_owned()))?;
    let prefixes_received = json
        .get("afi_safis")
        .and_then(Value::as_array)
        .map(|afs| afs.iter().map(|af| count(af, "/state/accepted")).sum())
        .unwrap_or(0);
    let updates_received = count(&json, "/state/messages/received/update");
    let updates_sent = count(&json, "/state/messages/sent/update");
    Ok(Neighbor {
        state,
        prefixes_received,
        updates_received,
        updates_sent,
    })
}

/// Reads `gobgp -j global rib`: prefix → paths, each with its attributes as `{type, …}`.
fn parse_routes(text: &str) -> Result<Vec<Route>, Error> {
    let what = "gobgp -j global rib";
    let json = json(text, what)?;
    let Some(table) = json.as_object() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (prefix, paths) in table {
        let prefix: IpNet = prefix
            .parse()
            .map_err(|_| Error::parse(what, format!("prefix {prefix}")))?;
        let Some(best) = paths.as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p.get("best").and_then(Value::as_bool) == Some(true))
        }) else {
            continue;
        };
        let mut route = Route {
            prefix: Some(prefix),
            stale: best.get("stale").and_then(Value::as_bool).unwrap_or(false),
            ..Route::default()
        };
        for attr in best
            .get("attrs")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            apply_attribute(&mut route, attr);
        }
        out.push(route);
    }
    Ok(out)
}

fn apply_attribute(route: &mut Route, attr: &Value) {
    let u32_of = |key: &str| attr.get(key).and_then(Value::as_u64).map(|v| v as u32);
    match attr.get("type").and_then(Value::as_u64) {
        Some(1) => {
            route.origin = match u32_of("value") {
                Some(0) => Some(Origin::Igp),
                Some(1) => Some(Origin::Egp),
                _ => Some(Origin::Incomplete),
            }
        }
        Some(2) => {
            route.as_path = attr
                .get("as_paths")
                .and_then(Value::as_array)
                .map(|segs| {
                    segs.iter()
                        .filter_map(|s| s.get("asns").and_then(Value::as_array))
                        .flatten()
                        .filter_map(|a| a.as_u64().map(|a| a as u32))
                        .collect()
                })
                .unwrap_or_default()
        }
        Some(3) | Some(14) => {
            route.next_hop = attr
                .get("nexthop")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok());
        }
        Some(4) => route.med = u32_of("metric"),
        Some(5) => route.local_pref = u32_of("value"),
        Some(8) => {
            let mut cs: Vec<_> = attr
                .get("communities")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(|c| c.as_u64().map(|c| community_of(c as u32)))
                        .collect()
                })
                .unwrap_or_default();
            cs.sort_unstable();
            route.communities = cs;
        }
        Some(9) => {
            route.originator_id = attr
                .get("value")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok())
        }
        Some(10) => {
            route.cluster_list = attr
                .get("value")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(|a| a.as_str().and_then(|a| a.parse::<Ipv4Addr>().ok()))
                        .collect()
                })
                .unwrap_or_default()
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemons::Peer;

    #[test]
    fn rib_json_gives_best_path_attributes() {
        let text = r#"{"10.200.0.0/24":[{"nlri":{"prefix":"10.200.0.0/24"},"best":true,"attrs":[
            {"type":1,"value":1},{"type":2,"as_paths":[{"segment_type":2,"num":2,"asns":[65001,65099]}]},
            {"type":3,"nexthop":"10.98.0.1"},{"type":4,"metric":7},{"type":5,"value":150},
            {"type":8,"communities":[4259840002,4259840001]},{"type":9,"value":"1.1.1.1"},
            {"type":10,"value":["2.2.2.2"]}],"stale":true}]}"#;
        let routes = parse_routes(text).unwrap();
        assert_eq!(routes.len(), 1);
        let r = &routes[0];
        assert_eq!(r.origin, Some(Origin::Egp));
        assert_eq!(r.as_path, vec![65001, 65099]);
        assert_eq!(r.next_hop, Some("10.98.0.1".parse().unwrap()));
        assert_eq!((r.med, r.local_pref), (Some(7), Some(150)));
        assert_eq!(r.communities, vec![(65000, 1), (65000, 2)]);
        assert_eq!(r.originator_id, Some("1.1.1.1".parse().unwrap()));
        assert_eq!(r.cluster_list, vec!["2.2.2.2".parse::<Ipv4Addr>().unwrap()]);
        assert!(r.stale);
    }

    #[test]
    fn neighbor_json_gives_state_and_counters() {
        let text = r#"{"state":{"messages":{"received":{"update":4},"sent":{"update":6}},"session_state":6},
            "afi_safis":[{"state":{"accepted":3}},{"state":{}}]}"#;
        let n = parse_neighbor(text).unwrap();
        assert_eq!(
            n,
            Neighbor {
                state: SessionState::Established,
                prefixes_received: 3,
                updates_received: 4,
                updates_sent: 6,
            }
        );
    }

    #[test]
    fn config_has_timers_password_and_reflection() {
        let peer = Peer::new(
            "10.0.0.1".parse().unwrap(),
            65001,
            "10.0.0.2".parse().unwrap(),
        )
        .hold_time(6)
        .password("pw")
        .rr_client()
        .graceful_restart(20);
        let text = render(&Config::new("10.0.0.2".parse().unwrap(), 65001).peer(peer));
        assert!(text.contains("hold-time = 6\n    keepalive-interval = 2\n"));
        assert!(text.contains("auth-password = \"pw\""));
        assert!(text.contains("route-reflector-cluster-id = \"10.0.0.2\""));
        assert!(text.contains("restart-time = 20"));
        assert!(
            text.contains("[neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true")
        );
    }
}
