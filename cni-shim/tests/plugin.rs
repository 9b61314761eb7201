//! The `wren-cni` binary called the way a runtime calls it (environment + stdin), against a
//! scripted agent API on a unix socket: result shapes per spec version, and every error path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_wren-cni");

/// What the scripted agent answers and what it was asked.
#[derive(Default)]
struct Script {
    status: u16,
    body: String,
    seen: Vec<(String, Value)>,
}

/// A scripted agent API serving on a socket in a temporary directory, on its own thread.
struct FakeAgent {
    socket: PathBuf,
    script: Arc<Mutex<Script>>,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl FakeAgent {
    fn start(status: u16, body: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let script = Arc::new(Mutex::new(Script {
            status,
            body: if body.is_null() {
                String::new()
            } else {
                body.to_string()
            },
            seen: Vec::new(),
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _entered = runtime.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        let app = Router::new()
            .route("/v1/cni/{command}", post(answer))
            .with_state(script.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            socket,
            script,
            _dir: dir,
            _runtime: runtime,
        }
    }

    fn seen(&self) -> Vec<(String, Value)> {
        self.script.lock().unwrap().seen.clone()
    }
}

async fn answer(
    State(script): State<Arc<Mutex<Script>>>,
    UrlPath(command): UrlPath<String>,
    body: Bytes,
) -> impl IntoResponse {
    let mut script = script.lock().unwrap();
    let request = serde_json::from_slice(&body).unwrap_or(Value::Null);
    script.seen.push((command, request));
    (
        StatusCode::from_u16(script.status).unwrap(),
        [("content-type", "application/json")],
        script.body.clone(),
    )
}

/// Runs the plugin with exactly `env` and `stdin`; returns (success, stdout as JSON or null).
fn plugin(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let json = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    (out.status.success(), json)
}

fn attachment_env(command: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "3f6940ab5ab43bc5"),
        ("CNI_NETNS", "/var/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn config(version: &str, socket: &Path, extra: Value) -> String {
    let mut v = json!({
        "cniVersion": version, "name": "k8s-pod-network", "type": "wren",
        "agentSocket": socket.display().to_string(), "mtu": 1450,
        "ipam": {"pools": ["default-ipv4"]},
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v.to_string()
}

/// The result the agent returns, in wren's version-neutral form.
fn agent_result() -> Value {
    json!({
        "interfaces": [
            {"name": "wren1a2b3c4d5e6", "mac": "ee:ee:ee:ee:ee:ee", "mtu": 1450},
            {"name": "eth0", "mac": "0a:58:0a:41:00:05", "mtu": 1450, "sandbox": "/var/run/netns/cni-1234"}
        ],
        "ips": [
            {"address": "10.65.0.5/32", "interface": 1},
            {"address": "fd00:65::5/128", "interface": 1}
        ],
        "routes": [
            {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
            {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}
        ],
        "dns": {}
    })
}

#[test]
fn version_lists_every_supported_version() {
    let (ok, out) = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok);
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(
        out["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let (ok, out) = plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert!(ok);
    assert_eq!(out["cniVersion"], "1.1.0");
}

#[test]
fn add_result_has_the_shape_of_each_version() {
    let agent = FakeAgent::start(200, agent_result());
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let (ok, out) = plugin(
            &attachment_env("ADD"),
            &config(version, &agent.socket, json!({})),
        );
        assert!(ok, "{version}: {out}");
        assert_eq!(out["cniVersion"], version);
        let legacy = version.starts_with("0.");
        for ip in out["ips"].as_array().unwrap() {
            assert_eq!(ip["interface"], 1, "{version}");
            assert_eq!(ip.get("version").is_some(), legacy, "{version}: {ip}");
        }
        assert_eq!(out["ips"][0]["address"], "10.65.0.5/32");
        if legacy {
            assert_eq!(out["ips"][1]["version"], "6");
        }
        assert_eq!(out["interfaces"][1]["sandbox"], "/var/run/netns/cni-1234");
        assert!(out["interfaces"][0].get("sandbox").is_none());
        assert_eq!(
            out["interfaces"][1].get("mtu").is_some(),
            version == "1.1.0",
            "{version}"
        );
        assert_eq!(
            out["routes"][0],
            json!({"dst": "0.0.0.0/0", "gw": "169.254.1.1"})
        );
    }
    let seen = agent.seen();
    assert_eq!(seen.len(), 5);
    let (command, body) = &seen[0];
    assert_eq!(command, "add");
    assert_eq!(body["attachment"]["containerId"], "3f6940ab5ab43bc5");
    assert_eq!(body["attachment"]["netns"], "/var/run/netns/cni-1234");
    assert_eq!(body["attachment"]["args"]["K8S_POD_NAME"], "web-0");
    assert_eq!(body["config"]["ipam"]["pools"], json!(["default-ipv4"]));
    assert_eq!(body["config"]["mtu"], 1450);
}

#[test]
fn add_appends_to_the_previous_plugins_result() {
    let agent = FakeAgent::start(200, agent_result());
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "sandbox": "/var/run/netns/cni-1234"}],
        "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let (ok, out) = plugin(
        &attachment_env("ADD"),
        &config("1.0.0", &agent.socket, json!({"prevResult": prev})),
    );
    assert!(ok, "{out}");
    assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
    assert_eq!(out["ips"][0]["address"], "127.0.0.1/8");
    assert_eq!(out["ips"][1]["interface"], 2);
    assert_eq!(out["dns"]["nameservers"], json!(["10.96.0.10"]));
}

#[test]
fn del_check_gc_and_status_print_nothing_on_success() {
    let agent = FakeAgent::start(204, Value::Null);
    let conf = config("1.1.0", &agent.socket, json!({}));
    for command in ["DEL", "CHECK"] {
        let (ok, out) = plugin(&attachment_env(command), &conf);
        assert!(ok && out.is_null(), "{command}: {out}");
    }
    let mut del_without_netns = attachment_env("DEL");
    del_without_netns.retain(|(k, _)| *k != "CNI_NETNS");
    assert!(plugin(&del_without_netns, &conf).0);
    let gc_conf = config(
        "1.1.0",
        &agent.socket,
        json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
    );
    let (ok, out) = plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &gc_conf,
    );
    assert!(ok && out.is_null(), "{out}");
    let (ok, out) = plugin(&[("CNI_COMMAND", "STATUS")], &conf);
    assert!(ok && out.is_null(), "{out}");
    let commands: Vec<String> = agent.seen().into_iter().map(|(c, _)| c).collect();
    assert_eq!(commands, ["del", "check", "del", "gc", "status"]);
    let gc_body = &agent.seen()[3].1;
    assert_eq!(
        gc_body["config"]["cni.dev/valid-attachments"][0]["containerID"],
        "keep"
    );
    assert!(agent.seen()[2].1["attachment"].get("netns").is_none());
}

#[test]
fn missing_or_bad_environment_is_code_4() {
    let socket = Path::new("/nonexistent/agent.sock");
    let conf = config("1.0.0", socket, json!({}));
    let mut no_netns = attachment_env("ADD");
    no_netns.retain(|(k, _)| *k != "CNI_NETNS");
    let (ok, out) = plugin(&no_netns, &conf);
    assert!(!ok);
    assert_eq!(out["code"], 4);
    assert!(out["msg"].as_str().unwrap().contains("CNI_NETNS"), "{out}");
    assert_eq!(out["cniVersion"], "1.0.0");

    let (_, out) = plugin(&[], &conf);
    assert_eq!(out["code"], 4);
    let (_, out) = plugin(&[("CNI_COMMAND", "FROB")], &conf);
    assert_eq!(out["code"], 4);
    let mut bad_ifname = attachment_env("ADD");
    bad_ifname.retain(|(k, _)| *k != "CNI_IFNAME");
    bad_ifname.push(("CNI_IFNAME", "this-name-is-too-long"));
    let (_, out) = plugin(&bad_ifname, &conf);
    assert_eq!(out["code"], 4);
    let mut bad_args = attachment_env("ADD");
    bad_args.retain(|(k, _)| *k != "CNI_ARGS");
    bad_args.push(("CNI_ARGS", "K8S_POD_NAME"));
    let (_, out) = plugin(&bad_args, &conf);
    assert_eq!(out["code"], 4);
    assert!(out["msg"].as_str().unwrap().contains("CNI_ARGS"), "{out}");
    let (_, out) = plugin(&[("CNI_COMMAND", "GC")], &conf);
    assert_eq!(out["code"], 4, "GC needs CNI_PATH");
}

#[test]
fn bad_json_is_code_6_and_bad_config_is_code_7() {
    let (ok, out) = plugin(&attachment_env("ADD"), "{\"cniVersion\": ");
    assert!(!ok);
    assert_eq!(out["code"], 6);
    let (_, out) = plugin(&attachment_env("ADD"), "");
    assert_eq!(out["code"], 6);
    let (_, out) = plugin(
        &attachment_env("ADD"),
        r#"{"cniVersion":"1.0.0","name":"n","type":"wren","mtu":"large"}"#,
    );
    assert_eq!(out["code"], 7);
    let (_, out) = plugin(
        &attachment_env("ADD"),
        r#"{"cniVersion":"1.0.0","name":"n","type":"wren","ipam":{"type":"host-local"}}"#,
    );
    assert_eq!(out["code"], 2);
    assert!(out["msg"].as_str().unwrap().contains("host-local"), "{out}");
}

#[test]
fn unsupported_versions_are_code_1() {
    for version in ["0.2.0", "2.0.0"] {
        let (ok, out) = plugin(
            &attachment_env("ADD"),
            &format!(r#"{{"cniVersion":"{version}","name":"n","type":"wren"}}"#),
        );
        assert!(!ok);
        assert_eq!(out["code"], 1, "{version}");
        assert!(out["msg"].as_str().unwrap().contains(version));
    }
    let socket = Path::new("/nonexistent/agent.sock");
    let (_, out) = plugin(
        &[("CNI_COMMAND", "STATUS")],
        &config("1.0.0", socket, json!({})),
    );
    assert_eq!(out["code"], 1, "STATUS needs 1.1.0: {out}");
    let (_, out) = plugin(
        &attachment_env("CHECK"),
        &config("0.3.1", socket, json!({})),
    );
    assert_eq!(out["code"], 1, "CHECK needs 0.4.0: {out}");
}

#[test]
fn agent_down_is_try_again_later_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let conf = config("1.1.0", &socket, json!({}));
    for command in ["ADD", "DEL", "CHECK"] {
        let (ok, out) = plugin(&attachment_env(command), &conf);
        assert!(!ok);
        assert_eq!(out["code"], 11, "{command}: {out}");
        assert!(
            out["msg"]
                .as_str()
                .unwrap()
                .contains(&socket.display().to_string()),
            "{out}"
        );
    }
    // A socket file nobody listens on (an agent that died) is the same.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let (_, out) = plugin(&attachment_env("ADD"), &conf);
    assert_eq!(out["code"], 11, "{out}");
    let (_, out) = plugin(&[("CNI_COMMAND", "STATUS")], &conf);
    assert_eq!(out["code"], 50, "{out}");
}

#[test]
fn agent_errors_reach_the_runtime_unchanged() {
    let agent = FakeAgent::start(
        409,
        json!({"code": 100, "msg": "no free IPv4 address left in default-ipv4", "details": "pool 10.65.0.0/16"}),
    );
    let (ok, out) = plugin(
        &attachment_env("ADD"),
        &config("0.4.0", &agent.socket, json!({})),
    );
    assert!(!ok);
    assert_eq!(
        out,
        json!({"cniVersion": "0.4.0", "code": 100, "msg": "no free IPv4 address left in default-ipv4", "details": "pool 10.65.0.0/16"})
    );
}

#[test]
fn gc_without_a_valid_list_is_refused_before_reaching_the_agent() {
    let agent = FakeAgent::start(204, Value::Null);
    let (ok, out) = plugin(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &config("1.1.0", &agent.socket, json!({})),
    );
    assert!(!ok);
    assert_eq!(out["code"], 7);
    assert!(agent.seen().is_empty());
}
