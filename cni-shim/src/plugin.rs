//! One plugin invocation from start to finish: environment and stdin in, stdout and success
//! out. The binary is a thin wrapper around [`run`].

use crate::client::{AgentTransport, Reply, TransportError};
use crate::config::{NetConf, config_version, parse_json};
use crate::env::{Command, Invocation};
use crate::error::{CniError, ErrorCode};
use crate::result::CniResult;
use crate::version::SpecVersion;
use crate::wire::{AttachmentRequest, NetworkRequest, paths};

/// What the plugin prints and whether it succeeded (exit status 0) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Everything for stdout: a result, a VERSION reply, an error, or nothing.
    pub stdout: String,
    /// Exit with status 0 when true, 1 otherwise.
    pub success: bool,
}

/// Runs one invocation. `env` reads `CNI_*` variables, `stdin` is the whole of stdin, and
/// `connect` makes the transport to the agent named by the configuration (and is the hook
/// where the binary applies `logLevel`).
pub fn run<T: AgentTransport>(
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    connect: impl FnOnce(&NetConf) -> T,
) -> Outcome {
    match dispatch(env, stdin, connect) {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => {
            tracing::warn!(code = e.code.0, msg = %e.msg, details = %e.details, "failed");
            Outcome {
                stdout: e.to_stdout_json(&reply_version(stdin)),
                success: false,
            }
        }
    }
}

/// The `cniVersion` to put on an error: the configuration's when it has one (the spec asks
/// for the same value), else the newest wren speaks.
fn reply_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| SpecVersion::LATEST.to_string())
}

fn dispatch<T: AgentTransport>(
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    connect: impl FnOnce(&NetConf) -> T,
) -> Result<String, CniError> {
    let invocation = Invocation::from_env(env)?;
    if invocation.command == Command::Version {
        return Ok(version_reply(stdin));
    }

    let value = parse_json(stdin)?;
    let version = config_version(&value)?;
    gate_command(invocation.command, version)?;
    let config = NetConf::from_value(value)?;
    let agent = connect(&config);
    let socket = config.agent_socket.display().to_string();
    tracing::debug!(command = %invocation.command, network = %config.name, socket = %socket, "calling the agent");

    match (invocation.command, invocation.attachment) {
        (Command::Add, Some(attachment)) => {
            // Read prevResult before the agent does anything, so a bad one changes nothing.
            let previous = config
                .prev_result
                .as_ref()
                .map(|v| {
                    CniResult::from_value(v).map_err(|e| {
                        CniError::new(ErrorCode::INVALID_NETWORK_CONFIG, e.to_string())
                    })
                })
                .transpose()?;
            let reply = call(
                &agent,
                invocation.command,
                paths::ADD,
                &AttachmentRequest { attachment, config },
            )?;
            let ours: CniResult = serde_json::from_slice(&reply.body).map_err(|e| {
                CniError::new(
                    ErrorCode::IO_FAILURE,
                    format!("the wren agent at {socket} sent an unreadable result"),
                )
                .with_details(e.to_string())
            })?;
            let result = match previous {
                Some(previous) => previous.chain(ours),
                None => ours,
            };
            Ok(result.to_versioned_json(version).to_string())
        }
        (Command::Del, Some(attachment)) => {
            call(
                &agent,
                invocation.command,
                paths::DEL,
                &AttachmentRequest { attachment, config },
            )?;
            Ok(String::new())
        }
        (Command::Check, Some(attachment)) => {
            call(
                &agent,
                invocation.command,
                paths::CHECK,
                &AttachmentRequest { attachment, config },
            )?;
            Ok(String::new())
        }
        (Command::Gc, _) => {
            if config.gc_attachments().is_none() {
                return Err(CniError::new(
                    ErrorCode::INVALID_NETWORK_CONFIG,
                    "GC needs \"cni.dev/valid-attachments\" in the configuration",
                ));
            }
            call(
                &agent,
                invocation.command,
                paths::GC,
                &NetworkRequest { config },
            )?;
            Ok(String::new())
        }
        (Command::Status, _) => {
            call(
                &agent,
                invocation.command,
                paths::STATUS,
                &NetworkRequest { config },
            )?;
            Ok(String::new())
        }
        // `Invocation::from_env` always fills the attachment of ADD, DEL and CHECK, and VERSION
        // was answered above.
        (command, _) => Err(CniError::new(
            ErrorCode::INVALID_ENVIRONMENT,
            format!("{command}: missing container id or interface name"),
        )),
    }
}

/// The VERSION reply. Its `cniVersion` echoes the one on stdin when there is one.
fn version_reply(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        });
    serde_json::json!({
        "cniVersion": asked.unwrap_or_else(|| SpecVersion::LATEST.to_string()),
        "supportedVersions": SpecVersion::supported_strings(),
    })
    .to_string()
}

/// CHECK exists from 0.4.0 on, GC and STATUS from 1.1.0 on.
fn gate_command(command: Command, version: SpecVersion) -> Result<(), CniError> {
    let (allowed, since) = match command {
        Command::Check => (version.allows_check(), SpecVersion::V0_4_0),
        Command::Gc | Command::Status => (version.allows_gc_and_status(), SpecVersion::V1_1_0),
        _ => (true, version),
    };
    if allowed {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::INCOMPATIBLE_VERSION,
            format!(
                "{command} needs cniVersion {since} or later; the configuration says {version}"
            ),
        ))
    }
}

/// Sends one request and turns every failure into the CNI error the runtime should see.
fn call<T: AgentTransport, B: serde::Serialize>(
    agent: &T,
    command: Command,
    path: &str,
    body: &B,
) -> Result<Reply, CniError> {
    let body = serde_json::to_vec(body).map_err(|e| {
        CniError::new(
            ErrorCode::IO_FAILURE,
            format!("cannot encode the request: {e}"),
        )
    })?;
    let reply = agent
        .post(path, body)
        .map_err(|e| transport_error(command, e))?;
    if (200..300).contains(&reply.status) {
        return Ok(reply);
    }
    match serde_json::from_slice::<CniError>(&reply.body) {
        Ok(e) => Err(e),
        Err(_) => {
            let text = String::from_utf8_lossy(&reply.body);
            let excerpt: String = text.chars().take(200).collect();
            Err(CniError::new(
                ErrorCode::IO_FAILURE,
                format!(
                    "unexpected reply from the wren agent: HTTP {}",
                    reply.status
                ),
            )
            .with_details(excerpt))
        }
    }
}

/// An unreachable agent is "try again later" (the runtime retries), except for STATUS, whose
/// answer is "not available".
fn transport_error(command: Command, e: TransportError) -> CniError {
    let code = match (&e, command) {
        (TransportError::Unreachable { .. } | TransportError::Timeout { .. }, Command::Status) => {
            ErrorCode::NOT_AVAILABLE
        }
        (TransportError::Unreachable { .. } | TransportError::Timeout { .. }, _) => {
            ErrorCode::TRY_AGAIN_LATER
        }
        (TransportError::Broken { .. } | TransportError::Untrusted { .. }, _) => {
            ErrorCode::IO_FAILURE
        }
    };
    let hint = match &e {
        TransportError::Unreachable { .. } => {
            "is `wren agent` running on this node, with this --socket?"
        }
        TransportError::Timeout { .. } => "the agent may be overloaded or stuck; see its log",
        TransportError::Broken { .. } => "see the agent's log",
        TransportError::Untrusted { .. } => {
            "the socket must be root's, in a directory only root can write"
        }
    };
    CniError::new(code, e.to_string()).with_details(hint)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::env::fixed_env as env;

    /// Answers every call with a fixed reply and remembers what it was sent.
    struct Scripted {
        reply: Result<Reply, fn() -> TransportError>,
        seen: RefCell<Vec<(String, serde_json::Value)>>,
    }

    impl Scripted {
        fn answering(reply: Result<Reply, fn() -> TransportError>) -> Self {
            Self {
                reply,
                seen: RefCell::new(Vec::new()),
            }
        }
    }

    impl AgentTransport for &Scripted {
        fn post(&self, path: &str, body: Vec<u8>) -> Result<Reply, TransportError> {
            self.seen
                .borrow_mut()
                .push((path.to_string(), serde_json::from_slice(&body).unwrap()));
            self.reply.clone().map_err(|f| f())
        }
    }

    fn add_env() -> impl Fn(&str) -> Option<String> {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
        ])
    }

    fn ok(body: serde_json::Value) -> Scripted {
        Scripted::answering(Ok(Reply {
            status: 200,
            body: body.to_string().into_bytes(),
        }))
    }

    fn parse(out: &Outcome) -> serde_json::Value {
        serde_json::from_str(&out.stdout).unwrap()
    }

    #[test]
    fn add_renders_in_the_config_version_after_the_previous_result() {
        let agent = ok(serde_json::json!({
            "interfaces": [{"name": "wrenabc", "mac": "ee:ee:ee:ee:ee:ee"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.65.0.2/32", "interface": 1}],
        }));
        let stdin = br#"{"cniVersion":"0.3.1","name":"n","type":"wren",
            "prevResult":{"cniVersion":"0.3.1","interfaces":[{"name":"lo"}],"ips":[{"version":"4","address":"127.0.0.1/8","interface":0}]}}"#;
        let out = run(add_env(), stdin, |_| &agent);
        assert!(out.success, "{}", out.stdout);
        let v = parse(&out);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(
            v["ips"][1],
            serde_json::json!({"version": "4", "interface": 2, "address": "10.65.0.2/32"})
        );
        let (path, body) = &agent.seen.borrow()[0];
        assert_eq!(path, paths::ADD);
        assert_eq!(body["attachment"]["containerId"], "c1");
    }

    #[test]
    fn agent_errors_are_printed_with_the_config_version() {
        let agent = Scripted::answering(Ok(Reply {
            status: 409,
            body: br#"{"code":100,"msg":"pool exhausted"}"#.to_vec(),
        }));
        let out = run(
            add_env(),
            br#"{"cniVersion":"1.0.0","name":"n","type":"wren"}"#,
            |_| &agent,
        );
        assert!(!out.success);
        assert_eq!(
            parse(&out),
            serde_json::json!({"cniVersion": "1.0.0", "code": 100, "msg": "pool exhausted"})
        );
    }

    #[test]
    fn unreachable_agent_is_try_again_for_add_and_not_available_for_status() {
        fn refused() -> TransportError {
            TransportError::Unreachable {
                socket: "/run/wren/agent.sock".into(),
                source: std::io::ErrorKind::ConnectionRefused.into(),
            }
        }
        let agent = Scripted::answering(Err(refused));
        let out = run(
            add_env(),
            br#"{"cniVersion":"1.1.0","name":"n","type":"wren"}"#,
            |_| &agent,
        );
        let v = parse(&out);
        assert_eq!(v["code"], 11);
        assert!(v["msg"].as_str().unwrap().contains("/run/wren/agent.sock"));
        let out = run(
            env(&[("CNI_COMMAND", "STATUS")]),
            br#"{"cniVersion":"1.1.0","name":"n","type":"wren"}"#,
            |_| &agent,
        );
        assert_eq!(parse(&out)["code"], 50);
    }

    #[test]
    fn commands_are_gated_by_the_config_version() {
        let agent = ok(serde_json::json!({}));
        let check = env(&[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let out = run(
            check,
            br#"{"cniVersion":"0.3.1","name":"n","type":"wren"}"#,
            |_| &agent,
        );
        assert_eq!(parse(&out)["code"], 1);
        let gc = env(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")]);
        let out = run(
            gc,
            br#"{"cniVersion":"1.0.0","name":"n","type":"wren"}"#,
            |_| &agent,
        );
        assert_eq!(parse(&out)["code"], 1);
        assert!(agent.seen.borrow().is_empty(), "nothing reaches the agent");
    }

    #[test]
    fn non_json_agent_replies_become_io_errors() {
        let agent = Scripted::answering(Ok(Reply {
            status: 502,
            body: b"gateway trouble".to_vec(),
        }));
        let out = run(
            add_env(),
            br#"{"cniVersion":"1.0.0","name":"n","type":"wren"}"#,
            |_| &agent,
        );
        let v = parse(&out);
        assert_eq!(v["code"], 5);
        assert_eq!(v["details"], "gateway trouble");
    }

    #[test]
    fn version_echoes_the_asked_version() {
        let agent = ok(serde_json::json!({}));
        let out = run(
            env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
            |_| &agent,
        );
        let v = parse(&out);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        let out = run(env(&[("CNI_COMMAND", "VERSION")]), b"", |_| &agent);
        assert_eq!(parse(&out)["cniVersion"], "1.1.0");
    }
}
