//! The kubelet path: pods created through containerd's CRI plugin, which runs the CNI
//! configuration the project installs.
//!
//! A [`Containerd`] is one containerd (Debian's 1.6, with its built-in CRI plugin and runc)
//! started inside one lab node's network namespace (`nsenter --net`, so the pods' veths land
//! on that node and the plugin reaches that node's agent), with its own root, state, socket,
//! runc root and CNI directories under a temporary directory. The CNI binary and conflist are
//! put there by `deploy/cni/install.sh`, as an operator would; the sandbox image is built
//! locally ([`image`]) and imported with `ctr`. A [`CriClient`] drives it as kubelet does.
//!
//! Facts of the machines the rig runs on, each a setting below:
//! - root may lack `CAP_SYS_RESOURCE`, so runc cannot give the sandbox a negative
//!   `oom_score_adj`: `restrict_oom_score_adj = true`;
//! - cgroups through cgroupfs, without systemd: `SystemdCgroup = false`;
//! - pod namespaces are pinned under the state directory (`netns_mounts_under_state_dir`), so
//!   everything the runtime mounts lies under the rig's directory and is unmounted with it;
//! - shims put their sockets in `/run/containerd/s/<sha256 of address/namespace/id>` whatever
//!   the state directory says; the rig removes those of its sandboxes by that rule.
//!
//! Processes are ended by their pids only: containerd by its guard, its shims and their
//! sandboxes found by the rig's own socket path in their command lines.

pub mod client;
pub mod image;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

pub use client::{CriClient, CriError, PodSpec, SandboxNetwork};

use crate::process::{ChildGuard, wait_until};

/// The containerd namespace the CRI plugin keeps its sandboxes and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Where shims put their sockets, whatever the state directory.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";

/// The reference plugins the runtime needs beside wren: `loopback` for every pod, `portmap`
/// and `bandwidth` chained in the shipped conflist, `ptp` and `host-local` for the reference
/// configuration the benchmark compares against.
pub const REFERENCE_PLUGINS: [&str; 5] = ["loopback", "portmap", "bandwidth", "ptp", "host-local"];

/// Where Debian's `containernetworking-plugins` installs them.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// How long containerd may take to answer on its socket after starting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks what the rig needs (see [`crate::prereq`]): containerd, ctr, runc, the static
/// busybox and the reference CNI plugins, besides the lab's own prerequisites.
#[track_caller]
pub fn require_cri() -> bool {
    use crate::prereq::{require, require_command};
    crate::lab::require_lab(false)
        && require_command("containerd")
        && require_command("ctr")
        && require_command("runc")
        && require_command("containerd-shim-runc-v2")
        && require(
            &format!("{} is not a static busybox", image::STATIC_BUSYBOX),
            image::is_static_elf(Path::new(image::STATIC_BUSYBOX)),
        )
        && REFERENCE_PLUGINS.iter().all(|p| {
            require(
                &format!("the CNI plugin {REFERENCE_PLUGIN_DIR}/{p} is missing"),
                Path::new(REFERENCE_PLUGIN_DIR).join(p).exists(),
            )
        })
}

/// A lab whose every node runs a containerd with wren installed as its CNI network.
pub struct CriLab {
    /// One runtime per node, in the lab's node order. Declared before the lab so they are
    /// torn down (their sandboxes' DEL reaching the agents) while the agents still run.
    pub runtimes: Vec<Containerd>,
    /// The lab: etcd, the nodes and their agents.
    pub lab: crate::lab::Lab,
    _image: tempfile::TempDir,
}

impl CriLab {
    /// A lab of `nodes` nodes without pods, a containerd on each, and wren installed into
    /// each runtime with `deploy/cni/install.sh`.
    pub fn up(name: &str, nodes: usize) -> Result<Self, crate::lab::LabError> {
        let image = tempfile::Builder::new().prefix("wren-pause-").tempdir()?;
        let archive = image::build_pause_archive(image.path())?;
        // The pin directories exist before the agents start (see `Containerd::prepare`).
        let mut runtimes = (1..=nodes)
            .map(|i| Containerd::prepare(&format!("n{i}")))
            .collect::<io::Result<Vec<_>>>()?;
        let mut spec = crate::lab::LabSpec::new(name, nodes);
        spec.pods_per_node = 0;
        let lab = crate::lab::Lab::up(spec)?;
        for (runtime, node) in runtimes.iter_mut().zip(&lab.state().nodes) {
            runtime.start(&crate::netns::path_of(&node.ns), &archive)?;
        }
        let rig = Self {
            runtimes,
            lab,
            _image: image,
        };
        for index in 0..nodes {
            rig.install_wren(index, None)?;
        }
        Ok(rig)
    }

    /// Installs wren into runtime `index` with `deploy/cni/install.sh`, pointing at its
    /// node's agent; `conflist` replaces the shipped configuration when given.
    pub fn install_wren(&self, index: usize, conflist: Option<&Path>) -> io::Result<()> {
        let node = &self.lab.state().nodes[index];
        let binary = self.lab.state().spec.bin_dir.join("wren-cni");
        self.runtimes[index].install_wren(&binary, &node.socket, conflist)
    }
}

/// One containerd for one node.
pub struct Containerd {
    node: String,
    netns: PathBuf,
    dir: tempfile::TempDir,
    process: Option<ChildGuard>,
}

impl Containerd {
    /// The directories of node `node`'s runtime, before anything runs: the CNI directories
    /// and the directory pods' namespaces are pinned in, made a shared mount point so that
    /// pins appear in mount namespaces copied from this one before they were made (the lab's
    /// agents run in such copies, as an agent in a container whose volume has
    /// `mountPropagation: HostToContainer`).
    pub fn prepare(node: &str) -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("wren-cri-{node}-"))
            .tempdir()?;
        let runtime = Self {
            node: node.to_owned(),
            netns: PathBuf::new(),
            dir,
            process: None,
        };
        fs::create_dir_all(runtime.cni_bin_dir())?;
        fs::create_dir_all(runtime.cni_conf_dir())?;
        for plugin in REFERENCE_PLUGINS {
            std::os::unix::fs::symlink(
                Path::new(REFERENCE_PLUGIN_DIR).join(plugin),
                runtime.cni_bin_dir().join(plugin),
            )?;
        }
        let pins = runtime.netns_pin_dir();
        fs::create_dir_all(&pins)?;
        use nix::mount::{MsFlags, mount};
        mount(
            Some(&pins),
            &pins,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from)?;
        mount(
            None::<&str>,
            &pins,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(io::Error::from)?;
        fs::write(runtime.config_path(), runtime.config())?;
        Ok(runtime)
    }

    /// Starts containerd inside the network namespace at `netns` and imports the sandbox
    /// image from `pause_archive`.
    pub fn start(&mut self, netns: &Path, pause_archive: &Path) -> io::Result<()> {
        self.netns = netns.to_path_buf();
        self.spawn()?;
        crate::netns::run(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(["--namespace", CRI_NAMESPACE, "images", "import"])
                .arg(pause_archive),
        )
        .map(drop)
    }

    /// The node this runtime serves.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// containerd's gRPC socket (the CRI endpoint kubelet would be given).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// The directory the CRI plugin runs CNI plugins from.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.path().join("cni/bin")
    }

    /// The directory the CRI plugin reads the network configuration from.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("cni/net.d")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where the CRI plugin pins pods' network namespaces (`netns_mounts_under_state_dir`).
    pub fn netns_pin_dir(&self) -> PathBuf {
        self.state().join("io.containerd.grpc.v1.cri/netns")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// containerd's configuration: everything under the rig's directory, the CRI plugin set
    /// up as the module documentation says.
    fn config(&self) -> String {
        let dir = self.dir.path().display();
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[{cri}]
  sandbox_image = "{image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  Root = "{dir}/runc"

[{cri}.cni]
  bin_dir = "{dir}/cni/bin"
  conf_dir = "{dir}/cni/net.d"
  max_conf_num = 1
"#,
            image = image::PAUSE_IMAGE,
        )
    }

    fn spawn(&mut self) -> io::Result<()> {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns.display()))
            .arg("containerd")
            .arg("--config")
            .arg(self.config_path());
        let child = ChildGuard::spawn(format!("containerd of {}", self.node), &mut command)?;
        let socket = self.socket();
        let mut child = child;
        let up = wait_until(START_TIMEOUT, Duration::from_millis(50), || {
            !matches!(child.try_wait(), Ok(Some(_)))
                && std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        if !up {
            return Err(child.failure("did not answer on its socket"));
        }
        // The CRI service answers "not initialized" until it has recovered its sandboxes.
        let client = CriClient::connect(&socket)?;
        if !wait_until(START_TIMEOUT, Duration::from_millis(50), || {
            client.list().is_ok()
        }) {
            return Err(child.failure("its CRI service did not become ready"));
        }
        self.process = Some(child);
        Ok(())
    }

    /// Kills containerd with `SIGKILL`, as a crash would; its shims and sandboxes go on.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.signal(Signal::SIGKILL)?;
            process.stop()?;
        }
        Ok(())
    }

    /// Starts containerd again with the same root and state, as after a crash.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn()
    }

    /// A CRI client on this runtime's socket.
    pub fn client(&self) -> io::Result<CriClient> {
        CriClient::connect(&self.socket())
    }

    /// The log containerd wrote so far (its CNI errors among it).
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(ChildGuard::log)
            .unwrap_or_default()
    }

    /// Installs the wren CNI plugin and its conflist with the project's `deploy/cni/install.sh`,
    /// as an operator would, pointing the conflist at `agent_socket`. `conflist` replaces the
    /// shipped one when given (a configuration with another capability, say).
    pub fn install_wren(
        &self,
        cni_binary: &Path,
        agent_socket: &Path,
        conflist: Option<&Path>,
    ) -> io::Result<()> {
        self.remove_configurations()?;
        let script = repo_root().join("deploy/cni/install.sh");
        let mut command = Command::new("sh");
        command
            .arg(script)
            .arg("--binary")
            .arg(cni_binary)
            .arg("--bin-dir")
            .arg(self.cni_bin_dir())
            .arg("--conf-dir")
            .arg(self.cni_conf_dir())
            .arg("--socket")
            .arg(agent_socket);
        if let Some(conflist) = conflist {
            command.arg("--conflist").arg(conflist);
        }
        crate::netns::run(&mut command).map(drop)
    }

    /// Replaces whatever network configuration the runtime has with `conflist` (the reference
    /// `ptp` + `host-local` chain, say), written as `<name>.conflist`.
    pub fn install_configuration(
        &self,
        name: &str,
        conflist: &serde_json::Value,
    ) -> io::Result<()> {
        self.remove_configurations()?;
        let tmp = self.cni_conf_dir().join(format!(".{name}.tmp"));
        fs::write(&tmp, conflist.to_string())?;
        fs::rename(tmp, self.cni_conf_dir().join(format!("{name}.conflist")))
    }

    fn remove_configurations(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.cni_conf_dir())? {
            fs::remove_file(entry?.path())?;
        }
        Ok(())
    }

    /// Ids of the sandboxes the runtime has task state for, from its state directory (also
    /// while containerd is down).
    fn task_ids(&self) -> Vec<String> {
        let tasks = self
            .state()
            .join("io.containerd.runtime.v2.task")
            .join(CRI_NAMESPACE);
        fs::read_dir(tasks)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes every sandbox through CRI (so the plugin's DEL runs), then ends containerd, its
    /// shims and their processes by pid, unmounts what the runtime mounted under the rig's
    /// directory and removes the shim sockets.
    fn teardown(&mut self) {
        if self.process.is_some()
            && let Ok(client) = self.client()
            && let Ok(ids) = client.list()
        {
            for id in ids {
                if let Err(e) = client.delete(&id) {
                    eprintln!("containerd of {}: removing sandbox {id}: {e}", self.node);
                }
            }
        }
        let ids = self.task_ids();
        if let Some(mut process) = self.process.take() {
            let _ = process.stop();
        }
        let socket = self.socket();
        let shims = pids_with_argument(&socket.to_string_lossy());
        for pid in children_of(&shims).into_iter().chain(shims) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        unmount_under(self.dir.path());
        for id in ids {
            let _ = fs::remove_file(shim_socket(&socket, CRI_NAMESPACE, &id));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The socket a containerd shim listens on: `/run/containerd/s/<hex sha256 of
/// "<address>/<namespace>/<id>">`, the rule containerd 1.6 names them by.
pub fn shim_socket(address: &Path, namespace: &str, id: &str) -> PathBuf {
    let path = address.join(namespace).join(id);
    Path::new(SHIM_SOCKET_DIR).join(sha256_hex(path.as_os_str().as_encoded_bytes()))
}

/// The SHA-256 of `bytes` in lowercase hex, as content digests and shim sockets spell it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The directory of the repository (the parent of the `tests` crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Pids of processes one of whose arguments is exactly `argument`.
fn pids_with_argument(argument: &str) -> Vec<i32> {
    processes()
        .filter(|(_, cmdline, _)| cmdline.split('\0').any(|a| a == argument))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Pids of the direct children of `parents`.
fn children_of(parents: &[i32]) -> Vec<i32> {
    processes()
        .filter(|(_, _, ppid)| parents.contains(ppid))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Every process as (pid, command line with NUL separators, parent pid).
fn processes() -> impl Iterator<Item = (i32, String, i32)> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).into_owned(), ppid))
        })
}

/// Unmounts (lazily, deepest first) every mount point under `dir`.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}
