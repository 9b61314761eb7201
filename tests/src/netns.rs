//! Network namespaces a test creates, uses and removes.
//!
//! Every namespace gets a name unique to this process (`wren-<tag>-<pid>-<n>`), so tests can
//! run in parallel and a leftover is traceable to the run that made it. Links are created
//! from inside the namespaces with their ends placed directly where they belong, so nothing
//! ever appears in the machine's own namespace. Dropping a [`NetNs`] deletes it, which also
//! removes every link inside; stop the processes running in it first (drop their guards
//! before the namespace).
//!
//! All of this needs root; call [`crate::prereq::require_root`] first.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

use crate::process::ChildGuard;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process: `wren-<tag>-<pid>-<n>`.
pub fn unique_name(tag: &str) -> String {
    format!(
        "wren-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `command` and returns its stdout; a non-zero exit is an error carrying the command
/// line and its stderr.
pub fn run(command: &mut Command) -> io::Result<String> {
    let out = command.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run {:?}: {e}", command.get_program()),
        )
    })?;
    checked(command, out)
}

/// Runs `command` with `input` on its standard input (`nft -f -`, `ip -batch -`) and returns
/// its stdout; a non-zero exit is an error carrying the command line and its stderr.
pub fn run_with_input(command: &mut Command, input: &[u8]) -> io::Result<String> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {:?}: {e}", command.get_program()),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    checked(command, out)
}

fn checked(command: &Command, out: Output) -> io::Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let line: Vec<_> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect();
    Err(io::Error::other(format!(
        "`{}` failed ({}): {}",
        line.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Path of the bind mount of the namespace `ip netns` calls `name`.
pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Moves the calling thread into the namespace named `name` for good: for a child process
/// that must live in it, before it starts any other thread (threads it starts later are
/// born there).
pub fn enter_for_good(name: &str) -> io::Result<()> {
    let file = File::open(path_of(name))?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

/// Runs `f` on a fresh thread that has entered the namespace named `name` (one this test
/// did not create, such as a lab node's), and returns its result. See [`NetNs::enter`].
pub fn run_in<F, R>(name: &str, f: F) -> io::Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = path_of(name);
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> io::Result<R> {
                let file = File::open(&path)?;
                setns(file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A command that runs `program` inside the namespace named `name` (`ip netns exec`).
pub fn command_in(name: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", name]).arg(program);
    command
}

/// A network namespace with loopback up, deleted when dropped.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named after `tag` (see [`unique_name`]) and brings `lo` up.
    pub fn new(tag: &str) -> io::Result<Self> {
        let name = unique_name(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, for `setns` or tools that take a path.
    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`). The process is
    /// `program` itself (`ip` execs it), so its pid is the one to signal.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// Runs `program args…` inside the namespace and returns its stdout (error on failure).
    pub fn exec<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> io::Result<String> {
        run(self.command(program).args(args))
    }

    /// Runs `ip <args…>` against the namespace (`ip -n <name>`).
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Gives the namespace an interface `name` that stands for another network's, up and with
    /// carrier: a veth pair whose other end, `<name>-peer`, stays in the namespace.
    pub fn add_foreign_interface(&self, name: &str) -> io::Result<()> {
        let peer = format!("{name}-peer");
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", &peer])?;
        self.ip(&["link", "set", &peer, "up"])?;
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Starts a long-running process inside the namespace under a [`ChildGuard`].
    pub fn spawn(&self, label: &str, program: &str, args: &[&str]) -> io::Result<ChildGuard> {
        let label = format!("{label} in {}", self.name);
        ChildGuard::spawn(label, self.command(program).args(args))
    }

    /// Runs `f` on a fresh thread that has entered the namespace, and returns its result.
    /// Sockets `f` opens (netlink, TCP) live in the namespace; for async code build a
    /// current-thread tokio runtime inside `f`.
    pub fn enter<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in(&self.name, f)
    }

    /// Runs the future `make` returns to completion on a current-thread tokio runtime, on a
    /// fresh thread that has entered the namespace, and returns its output.
    pub fn block_on<F, Fut>(&self, make: F) -> io::Result<Fut::Output>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future,
        Fut::Output: Send,
    {
        self.enter(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(make()))
        })?
    }

    /// Brings `ifname` up and, if given, adds `address` (`10.0.0.1/24`, `fd00::1/64`) to it.
    pub fn configure(&self, ifname: &str, address: Option<&str>) -> io::Result<()> {
        if let Some(address) = address {
            self.ip(&["addr", "add", address, "dev", ifname])?;
        }
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Creates a veth pair: `ifname` here, `peer_ifname` in `peer`, both up, with the given
    /// addresses. The pair is created inside this namespace with its peer placed straight
    /// into `peer`, so neither end ever exists in the machine's namespace.
    pub fn veth(
        &self,
        ifname: &str,
        address: Option<&str>,
        peer: &NetNs,
        peer_ifname: &str,
        peer_address: Option<&str>,
    ) -> io::Result<()> {
        self.ip(&[
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            peer_ifname,
            "netns",
            peer.name(),
        ])?;
        self.configure(ifname, address)?;
        peer.configure(peer_ifname, peer_address)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// A node namespace plugged into an uplink namespace, as every real node is: `eth0` with
/// 192.0.2.1/24 and 2001:db8::1/64 on the node, 192.0.2.254/24 and 2001:db8::fe/64 on the
/// uplink, and the node's default routes (both families) through the uplink. Returns
/// `(node, uplink)`; the uplink namespace ends nowhere, so nothing leaves.
pub fn node_with_uplink(tag: &str) -> io::Result<(NetNs, NetNs)> {
    let node = NetNs::new(tag)?;
    let uplink = NetNs::new(&format!("{tag}-up"))?;
    node.veth(
        "eth0",
        Some("192.0.2.1/24"),
        &uplink,
        "eth0",
        Some("192.0.2.254/24"),
    )?;
    node.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "eth0",
        "nodad",
    ])?;
    uplink.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8::fe/64",
        "dev",
        "eth0",
        "nodad",
    ])?;
    node.ip(&["route", "add", "default", "via", "192.0.2.254"])?;
    node.ip(&["-6", "route", "add", "default", "via", "2001:db8::fe"])?;
    Ok((node, uplink))
}

/// A namespace holding one Linux bridge (`br0`) that joins other namespaces like a switch:
/// the L2 segment of a lab.
#[derive(Debug)]
pub struct Bridge {
    ns: NetNs,
    ports: AtomicU32,
}

/// Name of the bridge device inside a [`Bridge`] namespace.
pub const BRIDGE_DEVICE: &str = "br0";

impl Bridge {
    /// Creates the namespace and the bridge in it, up.
    pub fn new(tag: &str) -> io::Result<Self> {
        let ns = NetNs::new(tag)?;
        ns.ip(&["link", "add", BRIDGE_DEVICE, "type", "bridge"])?;
        ns.configure(BRIDGE_DEVICE, None)?;
        Ok(Self {
            ns,
            ports: AtomicU32::new(0),
        })
    }

    /// The namespace the bridge lives in.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// Plugs `node` into the bridge through a veth pair: `ifname` (with `address`) in `node`,
    /// a port named `port<n>` on the bridge side. Returns the port's name.
    pub fn attach(&self, node: &NetNs, ifname: &str, address: Option<&str>) -> io::Result<String> {
        let port = format!("port{}", self.ports.fetch_add(1, Ordering::Relaxed));
        self.ns.veth(&port, None, node, ifname, address)?;
        self.ns
            .ip(&["link", "set", &port, "master", BRIDGE_DEVICE])?;
        Ok(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prereq;

    fn ready() -> bool {
        prereq::require_root() && prereq::require_command("ip")
    }

    #[test]
    fn names_are_unique_and_carry_the_pid() {
        let (a, b) = (unique_name("t"), unique_name("t"));
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
    }

    #[test]
    fn a_namespace_has_loopback_up_and_vanishes_on_drop() {
        if !ready() {
            return;
        }
        let ns = NetNs::new("lo").unwrap();
        let name = ns.name().to_owned();
        let lo = ns.ip(&["-o", "link", "show", "lo"]).unwrap();
        assert!(lo.contains("UP"), "lo is not up: {lo}");
        drop(ns);
        let list = run(Command::new("ip").args(["netns", "list"])).unwrap();
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&name))
        );
    }

    #[test]
    fn two_namespaces_on_a_bridge_reach_each_other() {
        if !ready() || !prereq::require_command("ping") {
            return;
        }
        let bridge = Bridge::new("br").unwrap();
        let a = NetNs::new("a").unwrap();
        let b = NetNs::new("b").unwrap();
        bridge.attach(&a, "eth0", Some("192.0.2.1/24")).unwrap();
        bridge.attach(&b, "eth0", Some("192.0.2.2/24")).unwrap();
        a.exec("ping", &["-c", "1", "-W", "5", "192.0.2.2"])
            .unwrap();
    }

    #[test]
    fn a_thread_that_entered_the_namespace_sees_its_links() {
        if !ready() {
            return;
        }
        let a = NetNs::new("x").unwrap();
        let b = NetNs::new("y").unwrap();
        a.veth("va", Some("198.51.100.1/30"), &b, "vb", None)
            .unwrap();
        // A TCP listener bound inside `a` is only possible where 198.51.100.1 exists.
        let bound = a
            .enter(|| std::net::TcpListener::bind("198.51.100.1:0").is_ok())
            .unwrap();
        assert!(bound, "the address of `a` was not visible from inside it");
        let outside = std::net::TcpListener::bind("198.51.100.1:0");
        assert!(
            outside.is_err(),
            "the test namespace leaked into the machine's"
        );
    }
}
