//! BIRD 2 as a test peer: `bird -f -c <dir>/bird.conf -s <dir>/bird.ctl -P <dir>/bird.pid`,
//! queried over its control socket with the protocol `birdc` speaks.
//!
//! Announced prefixes are blackhole routes of two static protocols (`announced4`,
//! `announced6`) carrying their attributes. Announcing or withdrawing rewrites the
//! configuration and runs `configure`; only the static protocols change, so the BGP sessions
//! are not reloaded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::netns::NetNs;

use super::run::{Running, write_file};
use super::{
    Announce, BfdDaemon, BfdState, BgpDaemon, Config, Error, Family, Neighbor, Origin, Restart,
    Route, SessionState, Signal, wait_for,
};

/// A running BIRD 2 daemon.
#[derive(Debug)]
pub struct Bird<'ns> {
    ns: &'ns NetNs,
    dir: tempfile::TempDir,
    config: Config,
    announced: BTreeMap<IpNet, Announce>,
    process: Running,
}

impl<'ns> Bird<'ns> {
    /// Starts BIRD in the network namespace `ns` with `config`, and waits until it answers on
    /// its control socket.
    pub fn start(ns: &'ns NetNs, config: Config) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("wren-bird-")
            .tempdir()
            .map_err(|e| Error::io("create BIRD directory", e))?;
        let mut bird = Self {
            ns,
            dir,
            config,
            announced: BTreeMap::new(),
            process: Running::default(),
        };
        bird.write_config()?;
        bird.launch(false)?;
        Ok(bird)
    }

    /// The directory holding BIRD's configuration, socket, pid file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The control socket, for `birdc -s`.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("bird.ctl")
    }

    /// The name of the BGP protocol for the neighbour at `address` (`show protocols all <name>`).
    pub fn protocol_name(address: IpAddr) -> String {
        let text = address.to_string().replace(['.', ':'], "_");
        format!("peer_{text}")
    }

    /// Runs one control command (as `birdc` would) and returns the reply text, one line per
    /// reply line, with the reply codes removed.
    pub fn command(&self, command: &str) -> Result<String, Error> {
        control(&self.socket(), command)
    }

    /// Routes imported from the neighbour at `address` (`Routes: N imported`): a cheap counter
    /// that does not walk the table.
    pub fn imported(&self, address: IpAddr) -> Result<u64, Error> {
        Ok(self.neighbor(address)?.prefixes_received)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("bird.conf")
    }

    fn write_config(&self) -> Result<(), Error> {
        write_file(&self.config_path(), &render(&self.config, &self.announced))
    }

    fn launch(&mut self, recovering: bool) -> Result<(), Error> {
        let dir = self.dir.path();
        let mut cmd = self.ns.command("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(self.config_path())
            .arg("-s")
            .arg(self.socket())
            .arg("-P")
            .arg(dir.join("bird.pid"));
        if recovering {
            cmd.arg("-R");
        }
        self.process.start(self.ns, "bird", &mut cmd)?;
        let socket = self.socket();
        let process = &mut self.process;
        wait_for(
            "BIRD to answer on its control socket",
            Duration::from_secs(20),
            || {
                process.check()?;
                Ok(match control(&socket, "show status") {
                    Ok(text) if text.contains("Daemon is up") => Ok(()),
                    Ok(text) => Err(text),
                    Err(e) => Err(e.to_string()),
                })
            },
        )
    }

    fn reconfigure(&self) -> Result<(), Error> {
        self.write_config()?;
        let reply = self.command("configure")?;
        if reply.contains("Reconfigured") || reply.contains("Reconfiguration in progress") {
            Ok(())
        } else {
            Err(Error::Command {
                what: "birdc configure".into(),
                detail: reply,
            })
        }
    }
}

impl BgpDaemon for Bird<'_> {
    fn kind(&self) -> &'static str {
        "bird"
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn neighbor(&self, address: IpAddr) -> Result<Neighbor, Error> {
        let text = self.command(&format!(
            "show protocols all {}",
            Self::protocol_name(address)
        ))?;
        parse_protocol(&text)
    }

    fn routes(&self, family: Family) -> Result<Vec<Route>, Error> {
        let table = match family {
            Family::Ipv4 => "master4",
            Family::Ipv6 => "master6",
        };
        let text = self.command(&format!("show route all table {table}"))?;
        parse_routes(&text)
    }

    fn announce(&mut self, announce: &Announce) -> Result<(), Error> {
        self.announced.insert(announce.prefix, announce.clone());
        self.reconfigure()
    }

    fn withdraw(&mut self, prefix: IpNet) -> Result<(), Error> {
        self.announced.remove(&prefix);
        self.reconfigure()
    }

    fn request_refresh(&self, address: IpAddr) -> Result<(), Error> {
        let reply = self.command(&format!("reload in {}", Self::protocol_name(address)))?;
        if reply.contains("reloading") || reply.contains("Reloading") {
            Ok(())
        } else {
            Err(Error::Command {
                what: "birdc reload in".into(),
                detail: reply,
            })
        }
    }

    fn signal(&mut self, sig: Signal) -> Result<(), Error> {
        self.process.signal(sig)
    }

    fn restart(&mut self, how: Restart) -> Result<(), Error> {
        self.process.take_down(how)?;
        let _ = std::fs::remove_file(self.socket());
        self.launch(how == Restart::Crash)
    }

    fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

impl BfdDaemon for Bird<'_> {
    fn kind(&self) -> &'static str {
        "bird"
    }

    fn bfd_state(&self, address: IpAddr) -> Result<Option<BfdState>, Error> {
        let text = self.command("show bfd sessions")?;
        Ok(parse_bfd_sessions(&text, address))
    }
}

/// Reads `show bfd sessions`: one line per session, `<address> <interface> <state> …`.
fn parse_bfd_sessions(text: &str, address: IpAddr) -> Option<BfdState> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let ip: IpAddr = fields.next()?.parse().ok()?;
        if ip != address {
            return None;
        }
        BfdState::parse(fields.nth(1)?)
    })
}

/// Talks BIRD's control protocol: every reply line starts with a four-digit code and `-`
/// (more follows) or a space (last line); lines starting with a space continue the previous
/// code. Codes 8xxx and 9xxx are errors.
fn control(socket: &Path, command: &str) -> Result<String, Error> {
    let what = || format!("BIRD control socket {}", socket.display());
    let stream = UnixStream::connect(socket).map_err(|e| Error::io(what(), e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::io(what(), e))?;
    let mut writer = stream.try_clone().map_err(|e| Error::io(what(), e))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    // Greeting: "0001 BIRD x.y ready."
    reader
        .read_line(&mut line)
        .map_err(|e| Error::io(what(), e))?;
    writer
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| Error::io(what(), e))?;
    let mut reply = String::new();
    let mut error = false;
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| Error::io(what(), e))?;
        if n == 0 {
            return Err(Error::parse(what(), "connection closed inside a reply"));
        }
        let l = line.trim_end_matches('\n');
        let bytes = l.as_bytes();
        let coded = bytes.len() >= 5 && bytes[..4].iter().all(u8::is_ascii_digit);
        if coded {
            error |= matches!(bytes[0], b'8' | b'9');
            reply.push_str(&l[5..]);
            reply.push('\n');
            if bytes[4] == b' ' {
                break;
            }
        } else {
            reply.push_str(l.strip_prefix(' ').unwrap_or(l));
            reply.push('\n');
        }
    }
    if error {
        return Err(Error::Command {
            what: format!("birdc {command}"),
            detail: reply.trim().to_owned(),
        });
    }
    Ok(reply)
}

fn render(config: &Config, announced: &BTreeMap<IpNet, Announce>) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "router id {};", config.router_id);
    c.push_str("log stderr all;\n");
    c.push_str("protocol device { scan time 2; }\n");
    c.push_str("protocol direct { ipv4; ipv6; }\n");
    // MED and LOCAL_PREF travel in custom attributes that the (fixed) export filter copies:
    // BIRD sends a MED to an eBGP neighbour only when the export filter set it, and a filter
    // that changes with every announcement would make `configure` reload every channel.
    c.push_str("attribute int wren_med;\nattribute int wren_local_pref;\n");
    for (name, v4) in [("announced4", true), ("announced6", false)] {
        let _ = writeln!(
            c,
            "protocol static {name} {{\n  {};",
            if v4 { "ipv4" } else { "ipv6" }
        );
        for a in announced
            .values()
            .filter(|a| matches!(a.prefix, IpNet::V4(_)) == v4)
        {
            let _ = write!(c, "  route {} blackhole {{", a.prefix);
            let origin = match a.origin {
                Origin::Igp => "ORIGIN_IGP",
                Origin::Egp => "ORIGIN_EGP",
                Origin::Incomplete => "ORIGIN_INCOMPLETE",
            };
            let _ = write!(c, " bgp_origin = {origin};");
            if let Some(med) = a.med {
                let _ = write!(c, " wren_med = {med};");
            }
            if let Some(lp) = a.local_pref {
                let _ = write!(c, " wren_local_pref = {lp};");
            }
            for (asn, value) in &a.communities {
                let _ = write!(c, " bgp_community.add(({asn},{value}));");
            }
            // An undefined AS path reads as an empty one, so this works on a static route.
            for asn in &a.prepend {
                let _ = write!(c, " bgp_path.prepend({asn});");
            }
            c.push_str(" };\n");
        }
        c.push_str("}\n");
    }
    // Only originated and BGP-learned routes leave; connected routes stay local.
    c.push_str(
        "filter wren_out {\n  if source != RTS_STATIC && source != RTS_BGP then reject;\n  \
         if defined(wren_med) then bgp_med = wren_med;\n  \
         if defined(wren_local_pref) then bgp_local_pref = wren_local_pref;\n  accept;\n}\n",
    );
    if config.kernel_ecmp {
        // BGP routes only; equal ones (RFC 4271 §9.1.2.2 up to the router id) merged.
        c.push_str(
            "protocol kernel {\n  ipv4 { export where source = RTS_BGP; };\n  merge paths on;\n}\n",
        );
    }
    render_bfd(&mut c, config);
    for p in &config.peers {
        let _ = writeln!(c, "protocol bgp {} {{", Bird::protocol_name(p.address));
        let _ = writeln!(c, "  local {} as {};", p.local_address, config.asn);
        let _ = writeln!(c, "  neighbor {} as {};", p.address, p.asn);
        let _ = writeln!(
            c,
            "  hold time {}; keepalive time {};",
            p.hold_time,
            p.keepalive()
        );
        c.push_str("  connect retry time 2; connect delay time 1; error wait time 1, 4;\n");
        if let Some(pw) = &p.password {
            let _ = writeln!(c, "  password \"{pw}\";");
        }
        if p.passive {
            c.push_str("  passive on;\n");
        }
        if p.bfd {
            c.push_str("  bfd on;\n");
        }
        if p.ttl_security {
            c.push_str("  ttl security on;\n");
        }
        match p.graceful_restart {
            Some(t) => {
                let _ = writeln!(c, "  graceful restart on; graceful restart time {t};");
            }
            None => c.push_str("  graceful restart off;\n"),
        }
        if p.rr_client {
            c.push_str("  rr client;\n");
            if let Some(id) = config.cluster_id {
                let _ = writeln!(c, "  rr cluster id {id};");
            }
        }
        for f in &p.families {
            let name = f.name();
            let _ = writeln!(c, "  {name} {{ import all; export filter wren_out; }};");
        }
        c.push_str("}\n");
    }
    c
}

/// The `bfd` protocol: one interface block per session's interface (the first session on an
/// interface sets its timing), one `neighbor` per session. BGP sessions with `bfd on` need the
/// protocol even without sessions of their own.
fn render_bfd(c: &mut String, config: &Config) {
    if config.bfd.is_empty() && !config.peers.iter().any(|p| p.bfd) {
        return;
    }
    c.push_str("protocol bfd {\n");
    let mut seen = Vec::new();
    for b in &config.bfd {
        if seen.contains(&&b.interface) {
            continue;
        }
        seen.push(&b.interface);
        let _ = writeln!(
            c,
            "  interface \"{}\" {{ interval {} ms; multiplier {};{} }};",
            b.interface,
            b.interval_ms(),
            b.detect_mult,
            if b.passive { " passive on;" } else { "" }
        );
    }
    for b in &config.bfd {
        let _ = writeln!(
            c,
            "  neighbor {} dev \"{}\" local {};",
            b.address, b.interface, b.local_address
        );
    }
    c.push_str("}\n");
}

/// Reads `show protocols all <name>`.
fn parse_protocol(text: &str) -> Result<Neighbor, Error> {
    let mut state = None;
    let mut imported = 0;
    let mut updates = 0;
    let mut sent = 0;
    for line in text.lines() {
        let line = line.trim();
        if let Some(s) = line.strip_prefix("BGP state:") {
            state = SessionState::parse(s);
        } else if let Some(r) = line.strip_prefix("Routes:") {
            // "Routes: 12 imported, 0 exported, 12 preferred" (one line per channel)
            imported += r
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        } else if let Some(u) = line.strip_prefix("Export updates:") {
            // received, rejected, filtered, ignored, accepted: the last is what was sent.
            sent += u
                .split_whitespace()
                .last()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        } else if let Some(u) = line.strip_prefix("Import updates:") {
            updates += u
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    // A protocol that is down has no BGP state line.
    let state = state.or_else(|| text.contains(" down ").then_some(SessionState::Idle));
    let state = state.ok_or_else(|| Error::parse("birdc show protocols all", text.to_owned()))?;
    Ok(Neighbor {
        state,
        prefixes_received: imported,
        updates_received: updates,
        updates_sent: sent,
    })
}

/// Reads `show route all`, keeping the primary (best) route of each prefix.
fn parse_routes(text: &str) -> Result<Vec<Route>, Error> {
    let mut routes = Vec::new();
    let mut prefix: Option<IpNet> = None;
    let mut current: Option<Route> = None;
    let mut flush = |current: &mut Option<Route>| {
        if let Some(r) = current.take() {
            routes.push(r);
        }
    };
    for line in text.lines() {
        if line.starts_with("Table ") || line.trim().is_empty() {
            continue;
        }
        let starts_route = !line.starts_with('\t') && line.contains(" [");
        if starts_route {
            flush(&mut current);
            if !line.starts_with(' ') {
                let first = line.split_whitespace().next().unwrap_or_default();
                prefix = Some(
                    first
                        .parse()
                        .map_err(|_| Error::parse("BIRD route line", line.to_owned()))?,
                );
            }
            // The primary route of a prefix is flagged with a `*` after the source.
            let primary = line
                .split(']')
                .nth(1)
                .is_some_and(|rest| rest.trim_start().starts_with('*'));
            current = primary.then(|| Route {
                prefix,
                stale: line.contains("stale"),
                ..Route::default()
            });
            continue;
        }
        let Some(route) = current.as_mut() else {
            continue;
        };
        let Some((key, value)) = line.trim().split_once(": ") else {
            continue;
        };
        let value = value.trim();
        match key {
            "BGP.origin" => {
                route.origin = match value {
                    "IGP" => Some(Origin::Igp),
                    "EGP" => Some(Origin::Egp),
                    _ => Some(Origin::Incomplete),
                }
            }
            "BGP.as_path" => {
                route.as_path = value
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| s.parse().ok())
                    .collect()
            }
            "BGP.next_hop" => {
                route.next_hop = value.split_whitespace().next().and_then(|a| a.parse().ok())
            }
            "BGP.med" => route.med = value.parse().ok(),
            "BGP.local_pref" => route.local_pref = value.parse().ok(),
            "BGP.originator_id" => route.originator_id = value.parse().ok(),
            "BGP.cluster_list" => {
                route.cluster_list = value
                    .split_whitespace()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            }
            "BGP.community" => {
                let mut cs: Vec<_> = value
                    .split(['(', ')'])
                    .filter_map(|c| {
                        let (a, v) = c.split_once(',')?;
                        Some((a.trim().parse().ok()?, v.trim().parse().ok()?))
                    })
                    .collect();
                cs.sort_unstable();
                route.communities = cs;
            }
            "BGP.large_community" => {
                let mut cs: Vec<_> = value
                    .split(['(', ')'])
                    .filter_map(|c| super::large_community(c.split(',')))
                    .collect();
                cs.sort_unstable();
                route.large_communities = cs;
            }
            _ => {}
        }
    }
    flush(&mut current);
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemons::Peer;

    #[test]
    fn route_dump_keeps_primary_routes_with_attributes() {
        let text = [
            "Table master4:",
            "32.0.0.0/24          unicast [g 22:01:37.118] * (100) [AS37304i]",
            "\tvia 10.99.0.1 on vb",
            "\tType: BGP univ",
            "\tBGP.origin: IGP",
            "\tBGP.as_path: 65001 55538 37304",
            "\tBGP.next_hop: 10.99.0.1",
            "\tBGP.med: 7",
            "\tBGP.local_pref: 100",
            "\tBGP.community: (65000,2) (65000,1)",
            "\tBGP.large_community: (65000, 7, 8) (64512, 1, 4294967295)",
            "                     unicast [h 22:01:38.000] (100) [AS65009i]",
            "\tvia 10.99.0.9 on vb",
            "\tBGP.as_path: 65009",
            "10.1.0.0/24          blackhole [announced4 22:00:00.000] * (200)",
            "\tType: static univ",
        ]
        .join("\n");
        let routes = parse_routes(&text).unwrap();
        assert_eq!(routes.len(), 2);
        let r = &routes[0];
        assert_eq!(r.prefix, Some("32.0.0.0/24".parse().unwrap()));
        assert_eq!(r.as_path, vec![65001, 55538, 37304]);
        assert_eq!(r.next_hop, Some("10.99.0.1".parse().unwrap()));
        assert_eq!(r.med, Some(7));
        assert_eq!(r.local_pref, Some(100));
        assert_eq!(r.communities, vec![(65000, 1), (65000, 2)]);
        assert_eq!(
            r.large_communities,
            vec![(64512, 1, u32::MAX), (65000, 7, 8)]
        );
        assert_eq!(r.origin, Some(Origin::Igp));
        assert_eq!(routes[1].prefix, Some("10.1.0.0/24".parse().unwrap()));
        assert!(routes[1].as_path.is_empty());
    }

    #[test]
    fn protocol_dump_gives_state_and_counters() {
        let text = "Name       Proto      Table      State  Since         Info\n\
g          BGP        ---        up     22:01:37.114  Established\n\
  BGP state:          Established\n\
  Channel ipv4\n\
    Routes:         1000 imported, 0 exported, 1000 preferred\n\
    Route change stats:     received   rejected   filtered    ignored   accepted\n\
      Import updates:           1200          0          0          0    1000\n\
      Export updates:             40          5          0        ---      35\n";
        let n = parse_protocol(text).unwrap();
        assert_eq!(n.state, SessionState::Established);
        assert_eq!(n.prefixes_received, 1000);
        assert_eq!(n.updates_received, 1200);
        assert_eq!(n.updates_sent, 35);
    }

    #[test]
    fn bfd_sessions_table_gives_the_state() {
        let text = "bfd1:\n\
IP address                Interface  State      Since         Interval  Timeout\n\
192.0.2.1                 eth0       Up         23:59:59.123    0.300    0.900\n\
2001:db8::1               eth0       Init       23:59:59.123    1.000    0.000\n";
        let v4 = "192.0.2.1".parse().unwrap();
        assert_eq!(parse_bfd_sessions(text, v4), Some(BfdState::Up));
        let v6 = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_bfd_sessions(text, v6), Some(BfdState::Init));
        assert_eq!(parse_bfd_sessions(text, "192.0.2.9".parse().unwrap()), None);
    }

    #[test]
    fn config_carries_attributes_on_static_routes() {
        let peer = Peer::new(
            "10.0.0.1".parse().unwrap(),
            65002,
            "10.0.0.2".parse().unwrap(),
        )
        .password("s3cret")
        .graceful_restart(30)
        .rr_client();
        let config = Config::new("10.0.0.2".parse().unwrap(), 65001)
            .peer(peer)
            .cluster_id("1.1.1.1".parse().unwrap());
        let mut announced = BTreeMap::new();
        let a = Announce::new("192.0.2.0/24".parse().unwrap())
            .med(5)
            .community((65000, 7));
        announced.insert(a.prefix, a);
        let text = render(&config, &announced);
        assert!(text.contains(
            "route 192.0.2.0/24 blackhole { bgp_origin = ORIGIN_IGP; wren_med = 5; bgp_community.add((65000,7)); };"
        ));
        assert!(text.contains("if defined(wren_med) then bgp_med = wren_med;"));
        assert!(text.contains("protocol bgp peer_10_0_0_1 {"));
        assert!(text.contains("password \"s3cret\";"));
        assert!(text.contains("graceful restart on; graceful restart time 30;"));
        assert!(text.contains("rr cluster id 1.1.1.1;"));
    }
}
