//! A real `etcd` for tests and benchmarks: started on free loopback ports (or inside a lab
//! namespace) with a temporary data directory, checked healthy before use, and stopped by its
//! pid when dropped.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! if !wren_tests::prereq::require_command("etcd") {
//!     return Ok(());
//! }
//! let etcd = wren_tests::etcd::Etcd::start()?;
//! println!("etcd at {}", etcd.endpoint());
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use nix::sys::signal::Signal;

use crate::netns::{command_in, run, run_in, unique_name};
use crate::process::{ChildGuard, wait_until};

/// How long etcd may take to become healthy.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Attempts at finding free ports when another process takes one first.
const PORT_ATTEMPTS: usize = 3;

/// Where and how to run etcd.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Network namespace (name as `ip netns` knows it) to run in; `None` for the machine's own
    /// namespace, where only loopback is used.
    pub netns: Option<String>,
    /// Address to listen on for clients and peers.
    pub host: IpAddr,
    /// Client port; `None` picks a free one (2379 inside a namespace).
    pub client_port: Option<u16>,
    /// Directory in which the temporary data directory is made; `None` uses `/dev/shm` when
    /// it exists (fsync costs nothing there, which keeps tests fast) and the system temp dir
    /// otherwise. Benchmarks that should pay for durable writes point this at a disk.
    pub data_parent: Option<PathBuf>,
    /// Serve clients over TLS and require a client certificate signed by the CA.
    pub tls: Option<EtcdTls>,
}

/// Certificate files of an etcd that speaks TLS to its clients (see [`TestPki`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EtcdTls {
    /// CA (PEM) that signed the server and client certificates.
    pub ca: PathBuf,
    /// Server certificate (PEM), valid for the listen address.
    pub server_cert: PathBuf,
    /// Server key (PEM).
    pub server_key: PathBuf,
    /// Client certificate (PEM) for mutual TLS.
    pub client_cert: PathBuf,
    /// Client key (PEM).
    pub client_key: PathBuf,
}

/// A throw-away certificate authority with one server and one client certificate, made with
/// the `openssl` command in a temporary directory that goes when this is dropped.
#[derive(Debug)]
pub struct TestPki {
    files: EtcdTls,
    _dir: Option<TempDir>,
}

impl TestPki {
    /// Creates the CA and certificates; the server certificate is valid for `server_ip`.
    /// Needs the `openssl` command.
    pub fn generate(server_ip: IpAddr) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("wren-pki-").tempdir()?;
        let files = Self::generate_in(dir.path(), server_ip)?;
        Ok(Self {
            files,
            _dir: Some(dir),
        })
    }

    /// Creates the CA and certificates in `dir`, which keeps them (a lab's state directory);
    /// returns their paths.
    pub fn generate_in(dir: &Path, server_ip: IpAddr) -> io::Result<EtcdTls> {
        let path = |name: &str| dir.join(name);
        let files = EtcdTls {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server-key.pem"),
            client_cert: path("client.pem"),
            client_key: path("client-key.pem"),
        };
        let ca_key = path("ca-key.pem");
        run(openssl("req")
            .args(["-x509", "-subj", "/CN=wren test CA", "-keyout"])
            .arg(&ca_key)
            .arg("-out")
            .arg(&files.ca))?;
        let leaves = [
            (
                &files.server_cert,
                &files.server_key,
                "etcd",
                // etcd dials its own client port with its server certificate (its gRPC
                // gateway), so the certificate must serve as a client's too.
                format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth,clientAuth\n"),
            ),
            (
                &files.client_cert,
                &files.client_key,
                "wren",
                "extendedKeyUsage=clientAuth\n".to_owned(),
            ),
        ];
        for (cert, key, name, extensions) in leaves {
            let request = path(&format!("{name}.csr"));
            let ext_file = path(&format!("{name}.ext"));
            std::fs::write(&ext_file, extensions)?;
            run(openssl("req")
                .args(["-new", "-subj", &format!("/CN={name}"), "-keyout"])
                .arg(key)
                .arg("-out")
                .arg(&request))?;
            run(Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-set_serial", "1", "-in"])
                .arg(&request)
                .args([OsStr::new("-CA"), files.ca.as_os_str()])
                .args([OsStr::new("-CAkey"), ca_key.as_os_str()])
                .args([OsStr::new("-extfile"), ext_file.as_os_str()])
                .arg("-out")
                .arg(cert))?;
        }
        Ok(files)
    }

    /// The files, for [`EtcdOptions::tls`] and for clients.
    pub fn files(&self) -> &EtcdTls {
        &self.files
    }
}

/// `openssl <command>` making a P-256 key without a passphrase, valid for two days.
fn openssl(command: &str) -> Command {
    let mut openssl = Command::new("openssl");
    openssl.args([
        command,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
    ]);
    openssl.args(["-nodes", "-days", "2"]);
    openssl
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            netns: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: None,
            data_parent: None,
            tls: None,
        }
    }
}

/// A running single-member etcd cluster.
#[derive(Debug)]
pub struct Etcd {
    // Field order matters: the process stops before its data directory is removed.
    child: ChildGuard,
    name: String,
    options: EtcdOptions,
    client: SocketAddr,
    peer: SocketAddr,
    data: TempDir,
}

impl Etcd {
    /// Starts etcd on free loopback ports with a fresh data directory and waits until it is
    /// healthy.
    pub fn start() -> io::Result<Self> {
        Self::start_with(EtcdOptions::default())
    }

    /// Starts etcd as `options` says and waits until it is healthy.
    pub fn start_with(options: EtcdOptions) -> io::Result<Self> {
        let parent = options
            .data_parent
            .clone()
            .unwrap_or_else(default_data_parent);
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let data = tempfile::Builder::new()
                .prefix("wren-etcd-")
                .tempdir_in(&parent)?;
            let (client, peer) = ports(&options)?;
            let name = unique_name("etcd");
            let child = spawn(&name, &options, client, peer, data.path())?;
            let mut etcd = Self {
                child,
                name,
                options: options.clone(),
                client,
                peer,
                data,
            };
            match etcd.wait_healthy() {
                Ok(()) => return Ok(etcd),
                // Someone took a port between our probe and etcd's bind: try other ports.
                Err(e) if etcd.options.client_port.is_none() && lost_port_race(&etcd.child) => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    /// The client URL (`http://127.0.0.1:<port>`, `https://…` with TLS).
    pub fn endpoint(&self) -> String {
        client_url(&self.options, self.client)
    }

    /// The client URLs, as a list for clients that take several.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// The member's name (unique to this test process).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The etcd process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything etcd logged so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// The data directory (removed when the guard drops).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// Stops etcd (`SIGTERM`, then `SIGKILL`), keeping its data and ports for [`restart`].
    ///
    /// [`restart`]: Self::restart
    pub fn stop(&mut self) -> io::Result<()> {
        self.child.stop().map(|_| ())
    }

    /// Starts etcd again on the same ports and data after [`stop`](Self::stop) (or a crash),
    /// and waits until it is healthy.
    pub fn restart(&mut self) -> io::Result<()> {
        self.child.stop()?;
        self.child = spawn(
            &self.name,
            &self.options,
            self.client,
            self.peer,
            self.data.path(),
        )?;
        self.wait_healthy()
    }

    /// True when etcd answers `/health` with a leader.
    pub fn is_healthy(&self) -> bool {
        healthy(&self.options, self.client)
    }

    fn wait_healthy(&mut self) -> io::Result<()> {
        let (options, client, child) = (&self.options, self.client, &mut self.child);
        let mut exited = false;
        let healthy = wait_until(START_TIMEOUT, Duration::from_millis(50), || {
            exited = !child.is_running();
            exited || healthy(options, client)
        });
        if exited {
            return Err(self.child.failure("etcd exited during start-up"));
        }
        if !healthy {
            return Err(self.child.failure(&format!(
                "etcd did not become healthy within {:?}",
                crate::vm::scaled(START_TIMEOUT)
            )));
        }
        Ok(())
    }
}

/// A running etcd cluster of several members on loopback, for tests of failure: members can
/// be killed, restarted on their data, and paused, each by its pid.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<ClusterMember>,
    options: EtcdOptions,
    initial_cluster: String,
}

/// One member of an [`EtcdCluster`].
#[derive(Debug)]
struct ClusterMember {
    // Field order matters: the process stops before its data directory is removed.
    child: ChildGuard,
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    paused: bool,
    data: TempDir,
}

impl EtcdCluster {
    /// Starts a cluster of `size` members on free loopback ports and waits until every member
    /// is healthy (a leader elected).
    pub fn start(size: usize) -> io::Result<Self> {
        Self::start_with(size, EtcdOptions::default())
    }

    /// Starts a cluster of `size` members as `options` says (its `client_port` and `netns`
    /// are not used: every member gets free ports on the machine's loopback).
    pub fn start_with(size: usize, options: EtcdOptions) -> io::Result<Self> {
        let options = EtcdOptions {
            netns: None,
            client_port: None,
            ..options
        };
        let parent = options
            .data_parent
            .clone()
            .unwrap_or_else(default_data_parent);
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let tag = unique_name("etcd");
            let mut planned = Vec::with_capacity(size);
            for index in 0..size {
                let (client, peer) = ports(&options)?;
                planned.push((format!("{tag}-{index}"), client, peer));
            }
            let initial_cluster = planned
                .iter()
                .map(|(name, _, peer)| format!("{name}=http://{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut members = Vec::with_capacity(size);
            for (name, client, peer) in planned {
                let data = tempfile::Builder::new()
                    .prefix("wren-etcd-")
                    .tempdir_in(&parent)?;
                let child =
                    spawn_member(&name, &options, client, peer, data.path(), &initial_cluster)?;
                members.push(ClusterMember {
                    child,
                    name,
                    client,
                    peer,
                    paused: false,
                    data,
                });
            }
            let mut cluster = Self {
                members,
                options: options.clone(),
                initial_cluster,
            };
            match cluster.wait_healthy() {
                Ok(()) => return Ok(cluster),
                Err(e) if cluster.members.iter().any(|m| lost_port_race(&m.child)) => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the etcd cluster did not start")))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a cluster without members (never made by [`start`](Self::start)).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| client_url(&self.options, m.client))
            .collect()
    }

    /// Member `index`'s process id.
    pub fn pid(&self, index: usize) -> u32 {
        self.members[index].child.pid()
    }

    /// Member `index`'s name.
    pub fn name(&self, index: usize) -> &str {
        &self.members[index].name
    }

    /// Kills member `index` with `SIGKILL` (its data stays for [`restart`](Self::restart)).
    pub fn kill(&mut self, index: usize) -> io::Result<()> {
        let member = &mut self.members[index];
        member.child.signal(Signal::SIGKILL)?;
        member.child.stop()?;
        member.paused = false;
        Ok(())
    }

    /// Starts member `index` again on its ports and data and waits until it is healthy.
    pub fn restart(&mut self, index: usize) -> io::Result<()> {
        let member = &mut self.members[index];
        if member.paused {
            member.child.signal(Signal::SIGCONT)?;
            member.paused = false;
        }
        member.child.stop()?;
        member.child = spawn_member(
            &member.name,
            &self.options,
            member.client,
            member.peer,
            member.data.path(),
            &self.initial_cluster,
        )?;
        let (options, client) = (&self.options, member.client);
        if wait_until(START_TIMEOUT, Duration::from_millis(50), || {
            healthy(options, client)
        }) {
            Ok(())
        } else {
            Err(member.child.failure("etcd member did not rejoin"))
        }
    }

    /// Pauses member `index` with `SIGSTOP`: its sockets stay open and nothing answers.
    pub fn pause(&mut self, index: usize) -> io::Result<()> {
        let member = &mut self.members[index];
        member.child.signal(Signal::SIGSTOP)?;
        member.paused = true;
        Ok(())
    }

    /// Resumes member `index` after [`pause`](Self::pause) (`SIGCONT`).
    pub fn resume(&mut self, index: usize) -> io::Result<()> {
        let member = &mut self.members[index];
        member.child.signal(Signal::SIGCONT)?;
        member.paused = false;
        Ok(())
    }

    /// The index of the member the running, unpaused members agree is the leader, if they
    /// name one (asked with `etcdctl endpoint status`).
    pub fn leader(&mut self) -> Option<usize> {
        let mut endpoints = Vec::new();
        for member in &mut self.members {
            if !member.paused && member.child.is_running() {
                endpoints.push(client_url(&self.options, member.client));
            }
        }
        if endpoints.is_empty() {
            return None;
        }
        let mut command = self.etcdctl(&endpoints);
        command.args(["endpoint", "status", "-w", "json"]);
        let endpoint = leader_endpoint(&run(&mut command).ok()?)?;
        self.endpoints().iter().position(|e| *e == endpoint)
    }

    /// Waits until a leader is known, and returns its index.
    pub fn wait_leader(&mut self, timeout: Duration) -> io::Result<usize> {
        let mut found = None;
        wait_until(timeout, Duration::from_millis(100), || {
            found = self.leader();
            found.is_some()
        });
        found.ok_or_else(|| io::Error::other(format!("no etcd leader within {timeout:?}")))
    }

    /// Makes member `index` the leader (`etcdctl move-leader`, sent to the leader of the
    /// moment) and waits until the members agree on it, so a test can choose whether the
    /// member it stops is the leader or a follower.
    pub fn move_leader(&mut self, index: usize, timeout: Duration) -> io::Result<()> {
        let leader = self.wait_leader(timeout)?;
        if leader == index {
            return Ok(());
        }
        let endpoints = self.endpoints();
        let mut status = self.etcdctl(&endpoints);
        status.args(["endpoint", "status", "-w", "json"]);
        let target = member_id(&run(&mut status)?, &endpoints[index]).ok_or_else(|| {
            io::Error::other(format!(
                "no member id for {} in endpoint status",
                endpoints[index]
            ))
        })?;
        let mut command = self.etcdctl(&endpoints[leader..=leader]);
        command.args(["move-leader", &format!("{target:x}")]);
        run(&mut command)?;
        if wait_until(timeout, Duration::from_millis(100), || {
            self.leader() == Some(index)
        }) {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "member {index} did not become the leader within {timeout:?}"
            )))
        }
    }

    /// Everything member `index` logged so far.
    pub fn log(&self, index: usize) -> String {
        self.members[index].child.log()
    }

    /// `etcdctl` against `endpoints`, with the client certificate over TLS.
    fn etcdctl(&self, endpoints: &[String]) -> Command {
        let mut command = Command::new("etcdctl");
        command.args(etcdctl_args(
            &endpoints.join(","),
            self.options.tls.as_ref(),
        ));
        command
    }

    fn wait_healthy(&mut self) -> io::Result<()> {
        let options = &self.options;
        let mut exited = None;
        let healthy_all = wait_until(START_TIMEOUT, Duration::from_millis(50), || {
            exited = self.members.iter_mut().position(|m| !m.child.is_running());
            exited.is_some() || self.members.iter().all(|m| healthy(options, m.client))
        });
        if let Some(index) = exited {
            return Err(self.members[index]
                .child
                .failure("etcd member exited during start-up"));
        }
        if !healthy_all {
            return Err(self.members[0].child.failure(&format!(
                "the etcd cluster did not become healthy within {START_TIMEOUT:?}"
            )));
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // A paused member cannot act on SIGTERM: let it run so its guard stops it cleanly.
        for member in &mut self.members {
            if member.paused {
                let _ = member.child.signal(Signal::SIGCONT);
            }
        }
    }
}

/// The arguments of `etcdctl` that reach `endpoints` (comma separated), short timeouts, and
/// with TLS the CA and the client certificate; the command follows them.
pub fn etcdctl_args(endpoints: &str, tls: Option<&EtcdTls>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = ["--endpoints", endpoints]
        .into_iter()
        .chain(["--dial-timeout", "1s", "--command-timeout", "2s"])
        .map(Into::into)
        .collect();
    if let Some(tls) = tls {
        for (flag, path) in [
            ("--cacert", &tls.ca),
            ("--cert", &tls.client_cert),
            ("--key", &tls.client_key),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
    }
    args
}

/// The endpoint of the leader in the output of `etcdctl endpoint status -w json`, when one of
/// the members asked is the leader the others name.
pub fn leader_endpoint(status_json: &str) -> Option<String> {
    let statuses: Vec<serde_json::Value> = serde_json::from_str(status_json).ok()?;
    let leader = statuses
        .iter()
        .find_map(|s| s.pointer("/Status/leader")?.as_u64())?;
    statuses.iter().find_map(|s| {
        let member = s.pointer("/Status/header/member_id")?.as_u64()?;
        (member == leader).then(|| s.get("Endpoint")?.as_str().map(str::to_owned))?
    })
}

/// The member id of `endpoint` in the output of `etcdctl endpoint status -w json`.
fn member_id(status_json: &str, endpoint: &str) -> Option<u64> {
    let statuses: Vec<serde_json::Value> = serde_json::from_str(status_json).ok()?;
    statuses.iter().find_map(|s| {
        (s.get("Endpoint")?.as_str()? == endpoint)
            .then(|| s.pointer("/Status/header/member_id")?.as_u64())?
    })
}

fn default_data_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn lost_port_race(etcd: &ChildGuard) -> bool {
    etcd.log().contains("address already in use")
}

/// Client and peer addresses: the given or well-known ports inside a namespace of our own,
/// free ones (asked of the kernel) on the machine's loopback.
fn ports(options: &EtcdOptions) -> io::Result<(SocketAddr, SocketAddr)> {
    let host = options.host;
    if options.netns.is_some() {
        let client = options.client_port.unwrap_or(2379);
        return Ok((
            SocketAddr::new(host, client),
            SocketAddr::new(host, client + 1),
        ));
    }
    let free = || -> io::Result<u16> { Ok(TcpListener::bind((host, 0))?.local_addr()?.port()) };
    let client = match options.client_port {
        Some(port) => port,
        None => free()?,
    };
    let mut peer = free()?;
    while peer == client {
        peer = free()?;
    }
    Ok((SocketAddr::new(host, client), SocketAddr::new(host, peer)))
}

fn spawn(
    name: &str,
    options: &EtcdOptions,
    client: SocketAddr,
    peer: SocketAddr,
    data: &Path,
) -> io::Result<ChildGuard> {
    let initial_cluster = format!("{name}=http://{peer}");
    spawn_member(name, options, client, peer, data, &initial_cluster)
}

fn spawn_member(
    name: &str,
    options: &EtcdOptions,
    client: SocketAddr,
    peer: SocketAddr,
    data: &Path,
    initial_cluster: &str,
) -> io::Result<ChildGuard> {
    let member = MemberArgs {
        name,
        data,
        client_urls: &[client_url(options, client)],
        peer_url: &format!("http://{peer}"),
        initial_cluster,
        tls: options.tls.as_ref(),
    };
    let mut command = program(options, "etcd");
    command.args(member.args());
    ChildGuard::spawn(format!("etcd {name}"), &mut command)
}

/// The command line of one etcd member, shared by the harness and the lab.
#[derive(Debug, Clone)]
pub struct MemberArgs<'a> {
    /// Member name, unique in its cluster.
    pub name: &'a str,
    /// Data directory.
    pub data: &'a Path,
    /// URLs it serves clients on; the first is the one it advertises.
    pub client_urls: &'a [String],
    /// URL it talks to the other members on.
    pub peer_url: &'a str,
    /// Every member as `name=peer URL`, comma separated.
    pub initial_cluster: &'a str,
    /// Serve clients over TLS and require a client certificate signed by the CA.
    pub tls: Option<&'a EtcdTls>,
}

impl MemberArgs<'_> {
    /// The arguments to `etcd`. A member restarted on its data directory ignores the
    /// `--initial-*` ones, so the same arguments start it the first time and every time after.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        let mut add = |flag: &str, value: &OsStr| {
            args.push(flag.into());
            args.push(value.to_owned());
        };
        add("--name", self.name.as_ref());
        add("--data-dir", self.data.as_os_str());
        add("--listen-client-urls", self.client_urls.join(",").as_ref());
        let advertised = self.client_urls.first().map_or("", String::as_str);
        add("--advertise-client-urls", advertised.as_ref());
        add("--listen-peer-urls", self.peer_url.as_ref());
        add("--initial-advertise-peer-urls", self.peer_url.as_ref());
        add("--initial-cluster", self.initial_cluster.as_ref());
        add("--initial-cluster-state", "new".as_ref());
        add("--logger", "zap".as_ref());
        add("--log-level", "warn".as_ref());
        if let Some(tls) = self.tls {
            add("--trusted-ca-file", tls.ca.as_os_str());
            add("--cert-file", tls.server_cert.as_os_str());
            add("--key-file", tls.server_key.as_os_str());
            args.push("--client-cert-auth".into());
        }
        args
    }
}

/// Asks etcd's `/health` endpoint over plain HTTP/1.0.
fn probe_health(addr: SocketAddr) -> bool {
    let ask = || -> io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    };
    ask().is_ok_and(|reply| reply.contains(r#""health":"true""#))
}

/// A command running `name` where the etcd runs: in its namespace, if it has one.
fn program(options: &EtcdOptions, name: &str) -> Command {
    match &options.netns {
        Some(ns) => command_in(ns, name),
        None => Command::new(name),
    }
}

fn client_url(options: &EtcdOptions, client: SocketAddr) -> String {
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{client}")
}

/// Health as seen from the etcd's namespace. Over TLS `etcdctl` asks, with the client
/// certificate; otherwise a plain HTTP request does.
fn healthy(options: &EtcdOptions, client: SocketAddr) -> bool {
    if let Some(tls) = &options.tls {
        let mut command = program(options, "etcdctl");
        command
            .args(etcdctl_args(&client_url(options, client), Some(tls)))
            .args(["endpoint", "health"]);
        return run(&mut command).is_ok();
    }
    match &options.netns {
        None => probe_health(client),
        Some(ns) => run_in(ns, move || probe_health(client)).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetNs;
    use crate::prereq;

    #[test]
    fn starts_healthy_and_stops_on_drop() {
        if !prereq::require_command("etcd") {
            return;
        }
        let etcd = Etcd::start().unwrap();
        assert!(etcd.is_healthy());
        let (pid, data) = (etcd.pid(), etcd.data_dir().to_path_buf());
        drop(etcd);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "etcd still runs"
        );
        assert!(!data.exists(), "data directory left behind");
    }

    #[test]
    fn restarts_on_the_same_port() {
        if !prereq::require_command("etcd") {
            return;
        }
        let mut etcd = Etcd::start().unwrap();
        let endpoint = etcd.endpoint();
        etcd.stop().unwrap();
        assert!(!etcd.is_healthy());
        etcd.restart().unwrap();
        assert_eq!(etcd.endpoint(), endpoint);
        assert!(etcd.is_healthy());
    }

    #[test]
    fn serves_tls_with_client_certificates() {
        if !prereq::require_command("etcd") || !prereq::require_command("openssl") {
            return;
        }
        let pki = TestPki::generate(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        let etcd = Etcd::start_with(EtcdOptions {
            tls: Some(pki.files().clone()),
            ..EtcdOptions::default()
        })
        .unwrap();
        assert!(etcd.endpoint().starts_with("https://"));
        assert!(etcd.is_healthy());
        // Plain HTTP gets no health answer from a TLS port.
        assert!(!probe_health(etcd.client_addr()));
    }

    #[test]
    fn a_cluster_elects_a_new_leader_when_its_leader_is_killed_and_takes_it_back() {
        if !prereq::require_command("etcd") || !prereq::require_command("etcdctl") {
            return;
        }
        let mut cluster = EtcdCluster::start(3).unwrap();
        assert_eq!(cluster.endpoints().len(), 3);
        let leader = cluster.wait_leader(Duration::from_secs(10)).unwrap();
        let pid = cluster.pid(leader);
        cluster.kill(leader).unwrap();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "member still runs"
        );
        let other_leader = |cluster: &mut EtcdCluster, old: usize| {
            let mut found = None;
            wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
                found = cluster.leader().filter(|&l| l != old);
                found.is_some()
            });
            found.expect("the other members elect a leader among themselves")
        };
        let next = other_leader(&mut cluster, leader);
        cluster.restart(leader).unwrap();
        assert!(healthy(&cluster.options, cluster.members[leader].client));
        cluster.pause(next).unwrap();
        other_leader(&mut cluster, next);
        cluster.resume(next).unwrap();
    }

    #[test]
    fn runs_inside_a_namespace() {
        if !prereq::require_root() || !prereq::require_command("etcd") {
            return;
        }
        let ns = NetNs::new("etcd").unwrap();
        // A port free on the machine's loopback, so nothing there can answer the probe below.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let etcd = Etcd::start_with(EtcdOptions {
            netns: Some(ns.name().into()),
            client_port: Some(port),
            ..EtcdOptions::default()
        })
        .unwrap();
        assert!(etcd.is_healthy());
        // The namespace's loopback is not the machine's: nothing answers there.
        assert!(!probe_health(etcd.client_addr()));
        drop(etcd);
    }
}
