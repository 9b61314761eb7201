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
#[derive(Debug, Clone)]
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
    _dir: TempDir,
}

impl TestPki {
    /// Creates the CA and certificates; the server certificate is valid for `server_ip`.
    /// Needs the `openssl` command.
    pub fn generate(server_ip: IpAddr) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("wren-pki-").tempdir()?;
        let path = |name: &str| dir.path().join(name);
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
                format!("subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth\n"),
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
        Ok(Self { files, _dir: dir })
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
                Err(e) if etcd.options.client_port.is_none() && lost_port_race(&etcd) => {
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

fn default_data_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn lost_port_race(etcd: &Etcd) -> bool {
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
    let client_url = client_url(options, client);
    let peer_url = format!("http://{peer}");
    let mut command = program(options, "etcd");
    command
        .arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(data)
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("{name}={peer_url}")])
        .args(["--initial-cluster-state", "new"])
        .args(["--logger", "zap", "--log-level", "warn"]);
    if let Some(tls) = &options.tls {
        command
            .arg("--trusted-ca-file")
            .arg(&tls.ca)
            .arg("--cert-file")
            .arg(&tls.server_cert)
            .arg("--key-file")
            .arg(&tls.server_key)
            .arg("--client-cert-auth");
    }
    ChildGuard::spawn(format!("etcd {name}"), &mut command)
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
            .args(["--endpoints", &client_url(options, client)])
            .arg("--cacert")
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.client_cert)
            .arg("--key")
            .arg(&tls.client_key)
            .args(["--dial-timeout", "1s", "endpoint", "health"]);
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
