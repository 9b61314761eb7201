//! A CRI v1 client that asks the runtime for pod sandboxes as kubelet does.
//!
//! Blocking calls over one gRPC channel on the runtime's unix socket; [`CriClient::run_many`]
//! sends several `RunPodSandbox` requests at once, as kubelet does when many pods land on a
//! node together.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatusRequest, PortMapping, Protocol, RemovePodSandboxRequest, RunPodSandboxRequest,
    StatusRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take before the client gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod as kubelet describes it to the runtime: its identity, annotations and host ports.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid`.
    pub uid: String,
    /// Pod annotations.
    pub annotations: HashMap<String, String>,
    /// `(container port, host port)` pairs, TCP.
    pub host_ports: Vec<(u16, u16)>,
}

impl PodSpec {
    /// A pod named `name` in namespace `namespace`, with a uid derived from both.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: format!("uid-{namespace}-{name}"),
            ..Self::default()
        }
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Maps TCP `host_port` on the node to `container_port` in the pod.
    pub fn host_port(mut self, container_port: u16, host_port: u16) -> Self {
        self.host_ports.push((container_port, host_port));
        self
    }

    fn request(&self) -> RunPodSandboxRequest {
        RunPodSandboxRequest {
            config: Some(self.config()),
            runtime_handler: String::new(),
        }
    }

    fn config(&self) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            annotations: self.annotations.clone(),
            port_mappings: self
                .host_ports
                .iter()
                .map(|&(container_port, host_port)| PortMapping {
                    protocol: Protocol::Tcp as i32,
                    container_port: i32::from(container_port),
                    host_port: i32::from(host_port),
                    host_ip: String::new(),
                })
                .collect(),
            ..PodSandboxConfig::default()
        }
    }
}

/// What `PodSandboxStatus` says about a sandbox's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNetwork {
    /// The pod IP kubelet would put in the pod's status (empty when the runtime has none).
    pub ip: String,
    /// The sandbox's network namespace, from the verbose status.
    pub netns: Option<PathBuf>,
    /// Whether the sandbox is ready.
    pub ready: bool,
}

/// A CRI runtime service client on one runtime's socket.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    service: RuntimeServiceClient<Channel>,
}

/// A failed CRI call: the gRPC status, whose message carries the CNI plugin's error.
#[derive(Debug, thiserror::Error)]
#[error("CRI {call}: {status}")]
pub struct CriError {
    /// The call that failed.
    pub call: &'static str,
    /// What the runtime answered.
    pub status: tonic::Status,
}

impl CriClient {
    /// Connects to the runtime listening on `socket`.
    pub fn connect(socket: &Path) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let socket = socket.to_path_buf();
        let channel = runtime.block_on(async move {
            Endpoint::from_static("http://[::]:50051")
                .timeout(CALL_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(socket).await?,
                        ))
                    }
                }))
                .await
                .map_err(io::Error::other)
        })?;
        Ok(Self {
            runtime,
            service: RuntimeServiceClient::new(channel),
        })
    }

    /// Makes one call on a clone of the service and waits for its answer.
    fn call<R, F, Fut>(&self, call: &'static str, send: F) -> Result<R, CriError>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.runtime
            .block_on(send(self.service.clone()))
            .map(tonic::Response::into_inner)
            .map_err(|status| CriError { call, status })
    }

    /// `RunPodSandbox`: returns the sandbox id once the runtime reports it ready.
    pub fn run(&self, pod: &PodSpec) -> Result<String, CriError> {
        let request = pod.request();
        self.call("RunPodSandbox", |mut s| async move {
            s.run_pod_sandbox(request).await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// Sends `RunPodSandbox` for every pod at once; returns each outcome with the time the
    /// runtime took to answer it, in the order of `pods`.
    pub fn run_many(&self, pods: &[PodSpec]) -> Vec<(Result<String, CriError>, Duration)> {
        let calls = pods.iter().map(|pod| {
            let mut service = self.service.clone();
            let request = pod.request();
            async move {
                let start = Instant::now();
                let outcome = service
                    .run_pod_sandbox(request)
                    .await
                    .map(|r| r.into_inner().pod_sandbox_id)
                    .map_err(|status| CriError {
                        call: "RunPodSandbox",
                        status,
                    });
                (outcome, start.elapsed())
            }
        });
        self.runtime.block_on(futures::future::join_all(calls))
    }

    /// `PodSandboxStatus` (verbose): the address and namespace of a sandbox.
    pub fn network(&self, id: &str) -> Result<SandboxNetwork, CriError> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        };
        let response = self.call("PodSandboxStatus", |mut s| async move {
            s.pod_sandbox_status(request).await
        })?;
        let status = response.status.unwrap_or_default();
        let netns = response
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|info| netns_of(&info));
        Ok(SandboxNetwork {
            ip: status.network.map(|n| n.ip).unwrap_or_default(),
            netns,
            ready: status.state == PodSandboxState::SandboxReady as i32,
        })
    }

    /// `StopPodSandbox`: the runtime stops the sandbox and runs CNI DEL.
    pub fn stop(&self, id: &str) -> Result<(), CriError> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("StopPodSandbox", |mut s| async move {
            s.stop_pod_sandbox(request).await
        })
        .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove(&self, id: &str) -> Result<(), CriError> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("RemovePodSandbox", |mut s| async move {
            s.remove_pod_sandbox(request).await
        })
        .map(drop)
    }

    /// `StopPodSandbox` then `RemovePodSandbox`, as kubelet does when a pod is deleted.
    pub fn delete(&self, id: &str) -> Result<(), CriError> {
        self.stop(id)?;
        self.remove(id)
    }

    /// The network configuration the runtime's CNI plugin has loaded (verbose `Status`,
    /// `cniconfig`), as JSON text.
    pub fn network_config(&self) -> Result<String, CriError> {
        let request = StatusRequest { verbose: true };
        self.call("Status", |mut s| async move { s.status(request).await })
            .map(|r| r.info.get("cniconfig").cloned().unwrap_or_default())
    }

    /// Waits until the loaded network configuration contains `needle` (the runtime reloads
    /// its CNI directory when a file there changes); returns whether it did in `timeout`.
    pub fn wait_network_config(&self, needle: &str, timeout: Duration) -> bool {
        crate::process::wait_until(timeout, Duration::from_millis(100), || {
            self.network_config().is_ok_and(|c| c.contains(needle))
        })
    }

    /// The ids of every sandbox the runtime knows.
    pub fn list(&self) -> Result<Vec<String>, CriError> {
        let request = ListPodSandboxRequest { filter: None };
        self.call("ListPodSandbox", |mut s| async move {
            s.list_pod_sandbox(request).await
        })
        .map(|r| r.items.into_iter().map(|s| s.id).collect())
    }
}

/// The network namespace path in a verbose sandbox status's `info` document (the runtime
/// spec's `linux.namespaces`, entry of type `network`).
fn netns_of(info: &serde_json::Value) -> Option<PathBuf> {
    info.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_netns_comes_from_the_runtime_spec() {
        let info = serde_json::json!({"runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/state/io.containerd.grpc.v1.cri/netns/cni-1"},
        ]}}});
        assert_eq!(
            netns_of(&info),
            Some(PathBuf::from(
                "/state/io.containerd.grpc.v1.cri/netns/cni-1"
            ))
        );
        assert_eq!(netns_of(&serde_json::json!({"runtimeSpec": {}})), None);
    }
}
