//! Finds the kernel's connection-tracking functions for BPF (`bpf_skb_ct_lookup`,
//! `bpf_ct_release`, Linux 5.18 and later; `bpf_ct_change_timeout`, 6.0, where there) and
//! the layout the program needs to use them.
//!
//! They live in the kernel's BTF when conntrack is built in, or in the `nf_conntrack`
//! module's when it is a module; a module not loaded yet is loaded, as the first NAT rule
//! would load it. A kernel without them cannot tell the program which connections netfilter
//! translated, and the fast path is then not used at all (forwarding such a connection past
//! the stack would break it).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::btf::{Btf, BtfError};
use crate::program::{ConntrackCalls, Kfunc};
use crate::sys;

const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
const MODULE: &str = "nf_conntrack";
const LOOKUP: &str = "bpf_skb_ct_lookup";
const RELEASE: &str = "bpf_ct_release";
/// Linux 6.0 and later; without it the program carries no reset.
const CHANGE_TIMEOUT: &str = "bpf_ct_change_timeout";
/// `struct bpf_ct_opts` before Linux 6.12 added zone ids (and its size the kernel still
/// accepts).
const OPTS_LEN_ORIGINAL: u32 = 12;

/// Why the conntrack functions could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// A BTF file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The read's error.
        source: io::Error,
    },
    /// A BTF file could not be parsed.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        source: BtfError,
    },
    /// Neither the kernel nor a loaded `nf_conntrack` module offers the functions.
    #[error(
        "the kernel offers BPF programs no conntrack lookup ({LOOKUP}): it needs Linux 5.18 or \
         later with nf_conntrack built in or loaded (`modprobe nf_conntrack`)"
    )]
    Missing,
    /// The functions are there but a type the program reads is not.
    #[error("the kernel's BTF has no {0}")]
    Layout(&'static str),
    /// The module's BTF object could not be opened for the program.
    #[error("opening the BTF object of module {MODULE}: {0}")]
    ModuleObject(io::Error),
}

/// The conntrack functions as the program calls them, and the module BTF object its calls
/// name (kept open as long as a program may be loaded against it).
#[derive(Debug)]
pub struct KernelConntrack {
    /// What the program is assembled with.
    pub calls: ConntrackCalls,
    module: Option<OwnedFd>,
}

impl KernelConntrack {
    /// Looks the functions up in the running kernel, loading `nf_conntrack` if it is a
    /// module that is not loaded yet.
    pub fn find() -> Result<Self, ConntrackError> {
        let kernel = read_btf(Path::new(KERNEL_BTF), None)?;
        if kernel.func_id(LOOKUP).is_some() {
            let calls = calls(&kernel, None, 0)?;
            return Ok(Self {
                calls,
                module: None,
            });
        }
        let module_path = Path::new("/sys/kernel/btf").join(MODULE);
        if !module_path.exists() {
            load_module();
        }
        if !module_path.exists() {
            return Err(ConntrackError::Missing);
        }
        let module = read_btf(&module_path, Some(&kernel))?;
        let object = sys::module_btf(MODULE)
            .map_err(ConntrackError::ModuleObject)?
            .ok_or(ConntrackError::Missing)?;
        let calls = calls(&module, Some(&kernel), 1)?;
        Ok(Self {
            calls,
            module: Some(object),
        })
    }

    /// The fd array the program is loaded with: the module's BTF object at index 1.
    pub fn fd_array(&self) -> Vec<i32> {
        match &self.module {
            Some(fd) => vec![-1, fd.as_raw_fd()],
            None => Vec::new(),
        }
    }
}

/// The calls and layout from `btf` (a module's, with the kernel's as `base`), whose
/// functions sit at fd array index `btf_index`.
fn calls(btf: &Btf, base: Option<&Btf>, btf_index: i16) -> Result<ConntrackCalls, ConntrackError> {
    let kfunc = |name: &'static str| -> Result<Kfunc, ConntrackError> {
        let btf_id = btf.func_id(name).ok_or(ConntrackError::Missing)?;
        Ok(Kfunc { btf_id, btf_index })
    };
    // A module's types may be defined in the module or in the kernel it builds on.
    let both = |f: &dyn Fn(&Btf, Option<&Btf>) -> Option<u32>| {
        f(btf, base).or_else(|| base.and_then(|kernel| f(kernel, None)))
    };
    let status_offset = both(&|b, base| b.member_offset("nf_conn", "status", base))
        .and_then(|offset| i16::try_from(offset).ok())
        .ok_or(ConntrackError::Layout(
            "struct nf_conn with a status member",
        ))?;
    let opts_len = both(&|b, _| b.struct_size("bpf_ct_opts")).unwrap_or(OPTS_LEN_ORIGINAL);
    // Absent without CONFIG_NF_CONNTRACK_MARK: policed endpoints then stay on the stack.
    let mark_offset = both(&|b, base| b.member_offset("nf_conn", "mark", base))
        .and_then(|offset| i16::try_from(offset).ok());
    Ok(ConntrackCalls {
        lookup: kfunc(LOOKUP)?,
        release: kfunc(RELEASE)?,
        opts_len: opts_len as i32,
        status_offset,
        mark_offset,
        change_timeout: kfunc(CHANGE_TIMEOUT).ok(),
    })
}

fn read_btf(path: &Path, base: Option<&Btf>) -> Result<Btf, ConntrackError> {
    let data = std::fs::read(path).map_err(|source| ConntrackError::Read {
        path: path.to_owned(),
        source,
    })?;
    match base {
        Some(base) => Btf::parse_split(&data, base),
        None => Btf::parse(&data),
    }
    .map_err(|source| ConntrackError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Best effort: a kernel without the module (or without modprobe) is reported by the
/// caller as missing the functions.
fn load_module() {
    let _ = Command::new("modprobe")
        .arg(MODULE)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_offers_the_lookup_with_a_known_layout() {
        let found = KernelConntrack::find().expect("conntrack kfuncs on this kernel");
        let calls = found.calls;
        assert!(calls.lookup.btf_id > 0 && calls.release.btf_id > 0);
        assert_ne!(calls.lookup, calls.release);
        assert!([12, 16].contains(&calls.opts_len), "{calls:?}");
        // `status` follows the reference count and the lock of `struct nf_conn`.
        assert!(
            calls.status_offset > 0 && calls.status_offset % 8 == 0,
            "{calls:?}"
        );
        assert_eq!(found.fd_array().is_empty(), calls.lookup.btf_index == 0);
        // The connection mark (a u32) lies after the status in this kernel's layout.
        let mark = calls.mark_offset.expect("CONFIG_NF_CONNTRACK_MARK");
        assert!(mark > calls.status_offset && mark % 4 == 0, "{calls:?}");
        // Linux 6.0 and later let the program shorten an entry.
        let change = calls.change_timeout.expect("bpf_ct_change_timeout");
        assert_eq!(change.btf_index, calls.lookup.btf_index);
        assert!(
            ![calls.lookup, calls.release].contains(&change),
            "{calls:?}"
        );
    }
}
