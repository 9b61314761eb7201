//! FRR as a test peer: `zebra` and `bgpd` with every path in a private directory
//! (`-f` config, `-i` pid file, `-z` zebra socket, `--vty_socket` for the vty sockets, `-P 0`
//! so no vty TCP port), queried with `vtysh --vty_socket <dir> --config_dir <dir>`.
//!
//! FRR drops privileges to the `frr` user (root is not in the `frrvty` group the vty sockets
//! belong to), so the directory is handed to that user. Announced prefixes are `network`
//! statements with a route map per prefix that sets the attributes; they are applied live
//! through vtysh and also written into `bgpd.conf`, so a restarted bgpd announces them again.

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
    Announce, BfdDaemon, BfdState, BgpDaemon, Config, Error, Family, Neighbor, Origin, Restart,
    Route, SessionState, Signal, parse_community, wait_for,
};

const ZEBRA: &str = "/usr/lib/frr/zebra";
const BGPD: &str = "/usr/lib/frr/bgpd";
const BFDD: &str = "/usr/lib/frr/bfdd";

/// The FRR binaries the runner needs.
pub const BINARIES: [&str; 3] = [ZEBRA, BGPD, "vtysh"];

/// The FRR binaries the runner needs for BFD sessions, in addition to [`BINARIES`].
pub const BFD_BINARIES: [&str; 1] = [BFDD];

/// A running FRR: zebra and bgpd, and bfdd when the configuration has BFD sessions.
#[derive(Debug)]
pub struct Frr<'ns> {
    ns: &'ns NetNs,
    dir: tempfile::TempDir,
    config: Config,
    announced: BTreeMap<IpNet, Announce>,
    // Fields drop in order: bgpd and bfdd stop before zebra, as an operator would stop them.
    bgpd: Running,
    bfdd: Running,
    zebra: Running,
}

impl<'ns> Frr<'ns> {
    /// Starts zebra and bgpd in the network namespace `ns` with `config`, and waits until
    /// bgpd answers through vtysh.
    pub fn start(ns: &'ns NetNs, config: Config) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("wren-frr-")
            .tempdir()
            .map_err(|e| Error::io("create FRR directory", e))?;
        let mut frr = Self {
            ns,
            dir,
            config,
            announced: BTreeMap::new(),
            bgpd: Running::default(),
            bfdd: Running::default(),
            zebra: Running::default(),
        };
        write_file(&frr.path("zebra.conf"), "hostname zebra\n")?;
        write_file(&frr.path("vtysh.conf"), "")?;
        let bfd = !frr.config.bfd.is_empty() || frr.config.peers.iter().any(|p| p.bfd);
        if bfd {
            write_file(&frr.path("bfdd.conf"), &render_bfd(&frr.config))?;
        }
        frr.write_bgpd_config()?;
        give_to_frr(frr.dir.path())?;
        frr.zebra
            .start(ns, "zebra", &mut frr.daemon_command(ZEBRA, "zebra"))?;
        frr.wait_vty("zebra")?;
        if bfd {
            let mut cmd = frr.daemon_command(BFDD, "bfdd");
            // Its control socket would otherwise be the machine's /var/run/frr/bfdd.sock.
            cmd.arg("--bfdctl").arg(frr.path("bfdd.sock"));
            frr.bfdd.start(ns, "bfdd", &mut cmd)?;
            frr.wait_vty("bfdd")?;
        }
        frr.start_bgpd()?;
        Ok(frr)
    }

    /// The directory holding configuration, vty sockets, pid files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs vtysh commands in one session (so `configure terminal` and what follows share a
    /// context) and returns the output.
    pub fn vtysh(&self, commands: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new("vtysh");
        cmd.arg("--vty_socket")
            .arg(self.dir.path())
            .arg("--config_dir")
            .arg(self.dir.path());
        for c in commands {
            cmd.arg("-c").arg(c);
        }
        tool(&mut cmd)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn daemon_command(&self, program: &str, name: &str) -> Command {
        let mut cmd = self.ns.command(program);
        cmd.arg("-f")
            .arg(self.path(&format!("{name}.conf")))
            .arg("-i")
            .arg(self.path(&format!("{name}.pid")))
            .arg("-z")
            .arg(self.path("zserv.api"))
            .arg("--vty_socket")
            .arg(self.dir.path())
            .args(["-u", "frr", "-g", "frr", "-P", "0"]);
        cmd
    }

    fn start_bgpd(&mut self) -> Result<(), Error> {
        let mut cmd = self.daemon_command(BGPD, "bgpd");
        self.bgpd.start(self.ns, "bgpd", &mut cmd)?;
        self.wait_vty("bgpd")
    }

    fn wait_vty(&mut self, daemon: &str) -> Result<(), Error> {
        let socket = self.path(&format!("{daemon}.vty"));
        let dir = self.dir.path().to_owned();
        let process = match daemon {
            "bgpd" => &mut self.bgpd,
            "bfdd" => &mut self.bfdd,
            _ => &mut self.zebra,
        };
        wait_for(
            &format!("FRR {daemon} to answer through vtysh"),
            Duration::from_secs(20),
            || {
                process.check()?;
                if !socket.exists() {
                    return Ok(Err(format!("{} missing", socket.display())));
                }
                let mut cmd = Command::new("vtysh");
                cmd.arg("--vty_socket")
                    .arg(&dir)
                    .arg("--config_dir")
                    .arg(&dir)
                    .args(["-d", daemon, "-c", "show version"]);
                Ok(tool(&mut cmd).map(|_| ()).map_err(|e| e.to_string()))
            },
        )
    }

    fn write_bgpd_config(&self) -> Result<(), Error> {
        write_file(
            &self.path("bgpd.conf"),
            &render(&self.config, &self.announced),
        )
    }

    fn family_name(prefix: &IpNet) -> String {
        format!("{} unicast", Family::of_prefix(prefix).name())
    }
}

impl BgpDaemon for Frr<'_> {
    fn kind(&self) -> &'static str {
        "frr"
    }

    fn pid(&self) -> u32 {
        self.bgpd.pid()
    }

    fn neighbor(&self, address: IpAddr) -> Result<Neighbor, Error> {
        let text = self.vtysh(&[&format!("show bgp neighbors {address} json")])?;
        parse_neighbor(&text, address)
    }

    fn routes(&self, family: Family) -> Result<Vec<Route>, Error> {
        let afi = family.name();
        let text = self.vtysh(&[&format!("show bgp {afi} unicast json detail")])?;
        parse_routes(&text)
    }

    fn announce(&mut self, announce: &Announce) -> Result<(), Error> {
        // A changed route map reaches a `network` statement only after FRR's route-map delay
        // timer; withdrawing first makes a re-announcement take effect at once.
        if self.announced.contains_key(&announce.prefix) {
            self.withdraw(announce.prefix)?;
        }
        self.announced.insert(announce.prefix, announce.clone());
        self.write_bgpd_config()?;
        let mut commands = vec!["configure terminal".to_owned()];
        commands.extend(route_map(announce).lines().map(str::to_owned));
        commands.push("exit".into());
        commands.push(format!("router bgp {}", self.config.asn));
        commands.push(format!(
            "address-family {}",
            Self::family_name(&announce.prefix)
        ));
        commands.push(format!(
            "network {} route-map {}",
            announce.prefix,
            route_map_name(&announce.prefix)
        ));
        let refs: Vec<&str> = commands.iter().map(String::as_str).collect();
        self.vtysh(&refs).map(|_| ())
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<(), Error> {
        let Some(announce) = self.announced.remove(&prefix) else {
            return Ok(());
        };
        self.write_bgpd_config()?;
        // The route map stays: deleting it while bgpd still processes the `network` removal
        // can bring the prefix back.
        self.vtysh(&[
            "configure terminal",
            &format!("router bgp {}", self.config.asn),
            &format!("address-family {}", Self::family_name(&announce.prefix)),
            &format!("no network {prefix}"),
        ])
        .map(|_| ())
    }

    fn request_refresh(&self, address: IpAddr) -> Result<(), Error> {
        let afi = Family::of(address).name();
        self.vtysh(&[&format!("clear bgp {afi} unicast {address} soft in")])
            .map(|_| ())
    }

    fn signal(&mut self, sig: Signal) -> Result<(), Error> {
        self.bgpd.signal(sig)
    }

    /// Restarts bgpd only; zebra (and the kernel routes it installed) stays, as it does when
    /// an operator restarts bgpd.
    fn restart(&mut self, how: Restart) -> Result<(), Error> {
        self.bgpd.take_down(how)?;
        let _ = std::fs::remove_file(self.path("bgpd.vty"));
        self.start_bgpd()
    }

    fn log_tail(&self) -> String {
        format!(
            "zebra:\n{}\nbgpd:\n{}",
            self.zebra.log_tail(),
            self.bgpd.log_tail()
        )
    }
}

impl BfdDaemon for Frr<'_> {
    fn kind(&self) -> &'static str {
        "frr"
    }

    fn bfd_state(&self, address: IpAddr) -> Result<Option<BfdState>, Error> {
        let text = self.vtysh(&["show bfd peers json"])?;
        parse_bfd_peers(&text, address)
    }
}

/// Reads `show bfd peers json`: a list of sessions with `peer` and `status`.
fn parse_bfd_peers(text: &str, address: IpAddr) -> Result<Option<BfdState>, Error> {
    let what = "vtysh show bfd peers json";
    let json = json(text, what)?;
    let peers = json.as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(peers
        .iter()
        .filter(|p| {
            p.get("peer")
                .and_then(Value::as_str)
                .and_then(|a| a.parse().ok())
                == Some(address)
        })
        .find_map(|p| {
            p.get("status")
                .and_then(Value::as_str)
                .and_then(BfdState::parse)
        }))
}

/// `bfdd.conf`: one `peer` block per session.
fn render_bfd(config: &Config) -> String {
    let mut c =
        String::from("frr defaults traditional\nhostname bfdd\nlog stdout informational\nbfd\n");
    for b in &config.bfd {
        let _ = writeln!(
            c,
            " peer {} local-address {} interface {}",
            b.address, b.local_address, b.interface
        );
        let ms = b.interval_ms();
        let _ = writeln!(c, "  receive-interval {ms}\n  transmit-interval {ms}");
        let _ = writeln!(c, "  detect-multiplier {}", b.detect_mult);
        if b.passive {
            c.push_str("  passive-mode\n");
        }
        c.push_str(" exit\n");
    }
    c.push_str("exit\n");
    c
}

/// Hands the directory and its files to the `frr` user, as FRR's daemons drop to it.
fn give_to_frr(dir: &Path) -> Result<(), Error> {
    let user = nix::unistd::User::from_name("frr")
        .map_err(|e| Error::io("look up user frr", e.into()))?
        .ok_or_else(|| Error::Command {
            what: "look up user frr".into(),
            detail: "no such user".into(),
        })?;
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    let mut paths = vec![dir.to_owned()];
    paths.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    for p in paths {
        nix::unistd::chown(&p, Some(user.uid), Some(user.gid))
            .map_err(|e| Error::io(format!("chown {}", p.display()), e.into()))?;
    }
    Ok(())
}

fn route_map_name(prefix: &IpNet) -> String {
    format!(
        "announce-{}",
        prefix.to_string().replace(['.', ':', '/'], "-")
    )
}

fn route_map(a: &Announce) -> String {
    let mut m = format!("route-map {} permit 10\n", route_map_name(&a.prefix));
    let origin = match a.origin {
        Origin::Igp => "igp",
        Origin::Egp => "egp",
        Origin::Incomplete => "incomplete",
    };
    let _ = writeln!(m, " set origin {origin}");
    if let Some(med) = a.med {
        let _ = writeln!(m, " set metric {med}");
    }
    if let Some(lp) = a.local_pref {
        let _ = writeln!(m, " set local-preference {lp}");
    }
    if !a.communities.is_empty() {
        let list: Vec<String> = a
            .communities
            .iter()
            .map(|(x, y)| format!("{x}:{y}"))
            .collect();
        let _ = writeln!(m, " set community {}", list.join(" "));
    }
    m
}

fn render(config: &Config, announced: &BTreeMap<IpNet, Announce>) -> String {
    let mut c = String::from("frr defaults traditional\nhostname bgpd\nlog stdout informational\n");
    for a in announced.values() {
        c.push_str(&route_map(a));
    }
    let _ = writeln!(c, "router bgp {}", config.asn);
    let _ = writeln!(c, " bgp router-id {}", config.router_id);
    c.push_str(" no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n");
    if let Some(id) = config.cluster_id {
        let _ = writeln!(c, " bgp cluster-id {id}");
    }
    if let Some(t) = config.graceful_restart_time() {
        let _ = writeln!(
            c,
            " bgp graceful-restart\n bgp graceful-restart restart-time {t}"
        );
        c.push_str(" bgp graceful-restart preserve-fw-state\n");
    }
    for p in &config.peers {
        let n = p.address;
        let _ = writeln!(c, " neighbor {n} remote-as {}", p.asn);
        let _ = writeln!(c, " neighbor {n} update-source {}", p.local_address);
        let _ = writeln!(c, " neighbor {n} timers {} {}", p.keepalive(), p.hold_time);
        let _ = writeln!(c, " neighbor {n} timers connect 2");
        if let Some(pw) = &p.password {
            let _ = writeln!(c, " neighbor {n} password {pw}");
        }
        if p.passive {
            let _ = writeln!(c, " neighbor {n} passive");
        }
        if p.ttl_security {
            let _ = writeln!(c, " neighbor {n} ttl-security hops 1");
        }
        if p.bfd {
            let _ = writeln!(c, " neighbor {n} bfd");
        }
        if p.graceful_restart.is_none() && config.graceful_restart_time().is_some() {
            let _ = writeln!(c, " neighbor {n} graceful-restart-disable");
        }
    }
    for family in [Family::Ipv4, Family::Ipv6] {
        let _ = writeln!(c, " address-family {} unicast", family.name());
        for p in config.peers.iter().filter(|p| p.families.contains(&family)) {
            let _ = writeln!(c, "  neighbor {} activate", p.address);
            if p.rr_client {
                let _ = writeln!(c, "  neighbor {} route-reflector-client", p.address);
            }
        }
        for a in announced
            .values()
            .filter(|a| Family::of(a.prefix.addr()) == family)
        {
            let _ = writeln!(
                c,
                "  network {} route-map {}",
                a.prefix,
                route_map_name(&a.prefix)
            );
        }
        c.push_str(" exit-address-family\n");
    }
    c
}

fn parse_neighbor(text: &str, address: IpAddr) -> Result<Neighbor, Error> {
    let what = "vtysh show bgp neighbors json";
    let json = json(text, what)?;
    let n = json
        .get(address.to_string())
        .ok_or_else(|| Error::parse(what, text.to_owned()))?;
    let state = n
        .get("bgpState")
        .and_then(Value::as_str)
        .and_then(SessionState::parse)
        .ok_or_else(|| Error::parse(what, "no bgpState"))?;
    let prefixes_received = n
        .get("addressFamilyInfo")
        .and_then(Value::as_object)
        .map(|afs| {
            afs.values()
                .map(|af| count(af, "/acceptedPrefixCounter"))
                .sum()
        })
        .unwrap_or(0);
    let updates_received = count(n, "/messageStats/updatesRecv");
    let updates_sent = count(n, "/messageStats/updatesSent");
    Ok(Neighbor {
        state,
        prefixes_received,
        updates_received,
        updates_sent,
    })
}

/// Reads `show bgp <afi> unicast json detail`: `routes` maps each prefix to a list whose first
/// element describes the prefix and the rest are its paths.
fn parse_routes(text: &str) -> Result<Vec<Route>, Error> {
    let what = "vtysh show bgp json detail";
    let json = json(text, what)?;
    let Some(routes) = json.get("routes").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (prefix, entries) in routes {
        let prefix: IpNet = prefix
            .parse()
            .map_err(|_| Error::parse(what, format!("prefix {prefix}")))?;
        let paths = entries.as_array().map(Vec::as_slice).unwrap_or_default();
        let best = paths
            .iter()
            .find(|p| p.pointer("/bestpath/overall").and_then(Value::as_bool) == Some(true));
        if let Some(p) = best {
            out.push(route_of(prefix, p));
        }
    }
    Ok(out)
}

fn route_of(prefix: IpNet, p: &Value) -> Route {
    let str_list = |pointer: &str| -> Vec<String> {
        p.pointer(pointer)
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let as_path = p
        .pointer("/aspath/segments")
        .and_then(Value::as_array)
        .map(|segs| {
            segs.iter()
                .filter_map(|s| s.get("list").and_then(Value::as_array))
                .flatten()
                .filter_map(|a| a.as_u64().map(|a| a as u32))
                .collect()
        })
        .unwrap_or_default();
    let origin = match p.get("origin").and_then(Value::as_str) {
        Some("IGP") => Some(Origin::Igp),
        Some("EGP") => Some(Origin::Egp),
        Some(_) => Some(Origin::Incomplete),
        None => None,
    };
    let mut communities: Vec<_> = str_list("/community/list")
        .iter()
        .filter_map(|c| parse_community(c))
        .collect();
    communities.sort_unstable();
    // `largeCommunity` carries the list as one string, `asn:value:value` separated by blanks.
    let mut large_communities: Vec<_> = p
        .pointer("/largeCommunity/string")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| super::large_community(c.split(':')))
        .collect();
    large_communities.sort_unstable();
    let next_hop = p
        .pointer("/nexthops/0/ip")
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok());
    let cluster_list: Vec<Ipv4Addr> = str_list("/clusterList/list")
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    Route {
        prefix: Some(prefix),
        next_hop,
        as_path,
        origin,
        med: p.get("metric").and_then(Value::as_u64).map(|m| m as u32),
        // `show bgp <prefix> json` says "localpref", the table's `json detail` "locPrf".
        local_pref: ["locPrf", "localpref"]
            .iter()
            .find_map(|k| p.get(*k).and_then(Value::as_u64))
            .map(|m| m as u32),
        communities,
        large_communities,
        originator_id: p
            .get("originatorId")
            .and_then(Value::as_str)
            .and_then(|a| a.parse().ok()),
        cluster_list,
        stale: p.get("stale").and_then(Value::as_bool).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemons::Peer;

    #[test]
    fn detail_json_gives_best_path_attributes() {
        let text = r#"{"routes": {"10.200.0.0/24": [{"prefix":"10.200.0.0/24"},
            {"aspath":{"segments":[{"type":"as-sequence","list":[65001,65009]}]},"origin":"EGP","metric":7,
             "locPrf":150,"bestpath":{"overall":true},"community":{"list":["65000:2","65000:1"]},
             "originatorId":"1.1.1.1","clusterList":{"list":["2.2.2.2"]},
             "nexthops":[{"ip":"10.99.0.1"}]},
            {"aspath":{"segments":[]},"origin":"IGP","nexthops":[{"ip":"10.99.0.9"}]}]}}"#;
        let routes = parse_routes(text).unwrap();
        assert_eq!(routes.len(), 1);
        let r = &routes[0];
        assert_eq!(r.as_path, vec![65001, 65009]);
        assert_eq!(r.origin, Some(Origin::Egp));
        assert_eq!(r.med, Some(7));
        assert_eq!(r.local_pref, Some(150));
        assert_eq!(r.communities, vec![(65000, 1), (65000, 2)]);
        assert_eq!(r.next_hop, Some("10.99.0.1".parse().unwrap()));
        assert_eq!(r.originator_id, Some("1.1.1.1".parse().unwrap()));
        assert_eq!(r.cluster_list, vec!["2.2.2.2".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn neighbor_json_gives_state_and_counters() {
        let text = r#"{"10.99.0.1":{"bgpState":"Established","messageStats":{"updatesRecv":2,"updatesSent":5},
            "addressFamilyInfo":{"ipv4Unicast":{"acceptedPrefixCounter":1}}}}"#;
        let n = parse_neighbor(text, "10.99.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            n,
            Neighbor {
                state: SessionState::Established,
                prefixes_received: 1,
                updates_received: 2,
                updates_sent: 5,
            }
        );
        assert!(
            parse_neighbor(
                r#"{"bgpNoSuchNeighbor":true}"#,
                "10.99.0.1".parse().unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn bfd_peers_json_gives_the_state() {
        let text = r#"[{"multihop":false,"peer":"192.0.2.1","local":"192.0.2.2","status":"up"},
            {"multihop":false,"peer":"2001:db8::1","status":"shutdown"}]"#;
        let v4 = "192.0.2.1".parse().unwrap();
        assert_eq!(parse_bfd_peers(text, v4).unwrap(), Some(BfdState::Up));
        let v6 = "2001:db8::1".parse().unwrap();
        assert_eq!(
            parse_bfd_peers(text, v6).unwrap(),
            Some(BfdState::AdminDown)
        );
        assert_eq!(parse_bfd_peers("[]", v4).unwrap(), None);
    }

    #[test]
    fn config_activates_families_and_reflects() {
        let peer = Peer::new(
            "fd00::1".parse().unwrap(),
            65001,
            "fd00::2".parse().unwrap(),
        )
        .rr_client()
        .password("pw");
        let config = Config::new("10.0.0.2".parse().unwrap(), 65001).peer(peer);
        let mut announced = BTreeMap::new();
        let a = Announce::new("fd00:1::/64".parse().unwrap()).med(3);
        announced.insert(a.prefix, a);
        let text = render(&config, &announced);
        assert!(text.contains(" address-family ipv6 unicast\n  neighbor fd00::1 activate\n  neighbor fd00::1 route-reflector-client\n  network fd00:1::/64 route-map announce-fd00-1---64\n"));
        assert!(text.contains(" neighbor fd00::1 password pw\n"));
        assert!(text.contains(
            "route-map announce-fd00-1---64 permit 10\n set origin igp\n set metric 3\n"
        ));
    }
}
