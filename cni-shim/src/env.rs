//! The `CNI_*` environment a runtime invokes a plugin with, validated per command as the spec
//! requires.
//!
//! | command | required | optional |
//! |---|---|---|
//! | ADD, CHECK | `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` | `CNI_ARGS`, `CNI_PATH` |
//! | DEL | `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_IFNAME` | `CNI_NETNS`, `CNI_ARGS`, `CNI_PATH` |
//! | GC | `CNI_COMMAND`, `CNI_PATH` | |
//! | STATUS | `CNI_COMMAND` | `CNI_PATH` |
//! | VERSION | `CNI_COMMAND` | |
//!
//! An empty variable counts as missing, as it does for the reference plugins.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{CniError, ErrorCode};

/// `CNI_COMMAND`
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// `CNI_CONTAINERID`
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
/// `CNI_NETNS`
pub const CNI_NETNS: &str = "CNI_NETNS";
/// `CNI_IFNAME`
pub const CNI_IFNAME: &str = "CNI_IFNAME";
/// `CNI_ARGS`
pub const CNI_ARGS: &str = "CNI_ARGS";
/// `CNI_PATH`
pub const CNI_PATH: &str = "CNI_PATH";

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach a container from the network.
    Del,
    /// Verify an attachment is as ADD left it.
    Check,
    /// Report the spec versions the plugin speaks.
    Version,
    /// Report whether the plugin can serve ADD.
    Status,
    /// Release attachments the runtime no longer knows.
    Gc,
}

impl Command {
    /// The command as it appears in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The variables besides `CNI_COMMAND` that must be set and non-empty.
    fn required(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME],
            Command::Del => &[CNI_CONTAINERID, CNI_IFNAME],
            Command::Gc => &[CNI_PATH],
            Command::Status | Command::Version => &[],
        }
    }

    /// Whether the command is about one attachment (container id + interface).
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return Err(()),
        })
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`.
///
/// Keys wren does not know are kept and ignored (runtimes send `IgnoreUnknown`,
/// `K8S_POD_INFRA_CONTAINER_ID`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CniArgs(pub BTreeMap<String, String>);

/// `CNI_ARGS` key of the Kubernetes pod namespace.
pub const K8S_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
/// `CNI_ARGS` key of the Kubernetes pod name.
pub const K8S_POD_NAME: &str = "K8S_POD_NAME";
/// `CNI_ARGS` key of the Kubernetes pod's uid.
pub const K8S_POD_UID: &str = "K8S_POD_UID";

impl CniArgs {
    /// Parses `K=V;K=V`. Empty segments (a trailing `;`) are skipped; a segment without `=` or
    /// with an empty key is an error naming the segment.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    map.insert(key.to_string(), value.to_string());
                }
                _ => return Err(format!("{pair:?} is not a KEY=VALUE pair")),
            }
        }
        Ok(Self(map))
    }

    /// A value by key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The Kubernetes pod namespace, when the runtime passed one.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.get(K8S_POD_NAMESPACE)
    }

    /// The Kubernetes pod name, when the runtime passed one.
    pub fn pod_name(&self) -> Option<&str> {
        self.get(K8S_POD_NAME)
    }

    /// The Kubernetes pod's uid, when the runtime passed one.
    pub fn pod_uid(&self) -> Option<&str> {
        self.get(K8S_POD_UID)
    }

    /// `namespace/name` of the Kubernetes pod, as logs and tables show it; `-` without one.
    pub fn pod(&self) -> String {
        match (self.pod_namespace(), self.pod_name()) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            (None, Some(name)) => name.to_owned(),
            _ => "-".to_owned(),
        }
    }
}

/// The identity of one attachment: the container, its namespace and the interface inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS`; always set for ADD and CHECK, optional for DEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `CNI_ARGS`, parsed.
    #[serde(default)]
    pub args: CniArgs,
}

/// One validated plugin invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// The attachment, for ADD, DEL and CHECK.
    pub attachment: Option<Attachment>,
    /// `CNI_PATH`, split on `:`.
    pub cni_path: Vec<PathBuf>,
}

impl Invocation {
    /// Reads and validates the environment through `var` (`std::env::var` in the binary).
    /// Every problem is reported at once, as one error with code 4 naming the variables.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let raw_command = get(CNI_COMMAND).ok_or_else(|| {
            invalid_env(
                format!("{CNI_COMMAND} is not set"),
                "set it to ADD, DEL, CHECK, VERSION, STATUS or GC",
            )
        })?;
        let command: Command = raw_command.parse().map_err(|()| {
            invalid_env(
                format!("{CNI_COMMAND}={raw_command:?} is not a CNI command"),
                "expected ADD, DEL, CHECK, VERSION, STATUS or GC",
            )
        })?;

        let missing: Vec<&str> = command
            .required()
            .iter()
            .copied()
            .filter(|name| get(name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(invalid_env(
                format!(
                    "{command} needs {}, which {} not set",
                    missing.join(", "),
                    if missing.len() == 1 { "is" } else { "are" }
                ),
                "",
            ));
        }

        let cni_path = get(CNI_PATH)
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();

        let attachment = if command.is_per_attachment() {
            // `required()` guarantees both are present for these commands.
            let container_id = get(CNI_CONTAINERID).unwrap_or_default();
            let ifname = get(CNI_IFNAME).unwrap_or_default();
            validate_container_id(&container_id).map_err(|why| {
                invalid_env(format!("{CNI_CONTAINERID}: {why}"), container_id.clone())
            })?;
            validate_ifname(&ifname)
                .map_err(|why| invalid_env(format!("{CNI_IFNAME}: {why}"), ifname.clone()))?;
            let args = match get(CNI_ARGS) {
                Some(raw) => CniArgs::parse(&raw)
                    .map_err(|why| invalid_env(format!("{CNI_ARGS}: {why}"), raw.clone()))?,
                None => CniArgs::default(),
            };
            Some(Attachment {
                container_id,
                ifname,
                netns: get(CNI_NETNS),
                args,
            })
        } else {
            None
        };

        Ok(Self {
            command,
            attachment,
            cni_path,
        })
    }
}

fn invalid_env(msg: String, details: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::INVALID_ENVIRONMENT, msg).with_details(details)
}

/// Checks a container id as the spec defines it: non-empty, starting with an alphanumeric
/// character, then alphanumerics, `_`, `.` or `-`.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => return Err("is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(format!("must start with a letter or digit, not {c:?}"));
        }
        Some(_) => {}
    }
    match chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        Some(c) => Err(format!(
            "may hold only letters, digits, '_', '.' and '-', not {c:?}"
        )),
        None => Ok(()),
    }
}

/// Checks an interface name as the spec defines it: non-empty, not `.` or `..`, at most 15
/// bytes, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("{name:?} contains {c:?}"));
    }
    Ok(())
}

/// An environment made of fixed pairs, for tests of everything that reads `CNI_*`.
#[cfg(test)]
pub(crate) fn fixed_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    use fixed_env as env;

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let err = Invocation::from_env(env(&[(CNI_COMMAND, "ADD"), (CNI_CONTAINERID, "c1")]))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::INVALID_ENVIRONMENT);
        assert!(
            err.msg.contains("CNI_NETNS") && err.msg.contains("CNI_IFNAME"),
            "{}",
            err.msg
        );
        assert!(!err.msg.contains("CNI_CONTAINERID"), "{}", err.msg);
    }

    #[test]
    fn del_does_not_need_netns_and_gc_needs_path() {
        let del = Invocation::from_env(env(&[
            (CNI_COMMAND, "DEL"),
            (CNI_CONTAINERID, "c1"),
            (CNI_IFNAME, "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.attachment.unwrap().netns, None);
        let gc = Invocation::from_env(env(&[(CNI_COMMAND, "GC")])).unwrap_err();
        assert!(gc.msg.contains("CNI_PATH"), "{}", gc.msg);
        let status = Invocation::from_env(env(&[(CNI_COMMAND, "STATUS")])).unwrap();
        assert!(status.attachment.is_none());
    }

    #[test]
    fn empty_variables_count_as_missing() {
        let err = Invocation::from_env(env(&[
            (CNI_COMMAND, "DEL"),
            (CNI_CONTAINERID, ""),
            (CNI_IFNAME, "eth0"),
        ]))
        .unwrap_err();
        assert!(err.msg.contains("CNI_CONTAINERID"), "{}", err.msg);
        let err = Invocation::from_env(env(&[(CNI_COMMAND, "")])).unwrap_err();
        assert_eq!(err.code, ErrorCode::INVALID_ENVIRONMENT);
    }

    #[test]
    fn unknown_command_is_invalid_environment() {
        let err = Invocation::from_env(env(&[(CNI_COMMAND, "add")])).unwrap_err();
        assert_eq!(err.code, ErrorCode::INVALID_ENVIRONMENT);
        assert!(err.msg.contains("\"add\""), "{}", err.msg);
    }

    #[test]
    fn parses_cni_args_and_path() {
        let inv = Invocation::from_env(env(&[
            (CNI_COMMAND, "ADD"),
            (CNI_CONTAINERID, "abc_1.2-3"),
            (CNI_NETNS, "/run/netns/x"),
            (CNI_IFNAME, "eth0"),
            (CNI_ARGS, "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;"),
            (CNI_PATH, "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        let a = inv.attachment.unwrap();
        assert_eq!(a.args.pod_namespace(), Some("default"));
        assert_eq!(a.args.pod_name(), Some("web-0"));
        assert_eq!(a.args.get("IgnoreUnknown"), Some("1"));
        assert_eq!(
            inv.cni_path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
    }

    #[test]
    fn malformed_cni_args_are_rejected() {
        assert!(CniArgs::parse("A=1;B").is_err());
        assert!(CniArgs::parse("=1").is_err());
        assert_eq!(CniArgs::parse("A=x=y").unwrap().get("A"), Some("x=y"));
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn container_ids_and_ifnames_follow_the_spec() {
        assert!(validate_container_id("3f6940ab5ab4").is_ok());
        assert!(validate_container_id("a_b.c-d").is_ok());
        for bad in ["", "-abc", ".abc", "a b", "a/b", "a;b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a23456789012345").is_ok());
        for bad in ["", ".", "..", "a234567890123456", "et h0", "eth/0", "eth:0"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
