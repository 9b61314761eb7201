//! The `bpf(2)` system calls the fast path uses: maps, program load, tcx links, test runs.
//!
//! Every object is an owned file descriptor; closing it releases the object (a tcx link
//! detaches its program). `bpf_attr` is built as a zeroed, 8-byte aligned buffer with each
//! field written at its offset in `include/uapi/linux/bpf.h`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::asm::Insn;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_PROG_TYPE_SCHED_CLS`: a tc classifier.
const PROG_TYPE_SCHED_CLS: u32 = 3;
/// `BPF_TCX_INGRESS`
const ATTACH_TCX_INGRESS: u32 = 46;
/// `BPF_F_NO_PREALLOC`, required for LPM tries.
const F_NO_PREALLOC: u32 = 1;

/// A map type this crate creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapType {
    /// `BPF_MAP_TYPE_HASH`
    Hash,
    /// `BPF_MAP_TYPE_ARRAY`
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`
    PerCpuArray,
    /// `BPF_MAP_TYPE_LPM_TRIE`
    LpmTrie,
}

impl MapType {
    fn id(self) -> u32 {
        match self {
            MapType::Hash => 1,
            MapType::Array => 2,
            MapType::PerCpuArray => 6,
            MapType::LpmTrie => 11,
        }
    }
}

/// The size of `union bpf_attr` this crate passes; the kernel accepts a shorter one as long
/// as the rest would be zero.
const ATTR_LEN: usize = 128;

/// A zeroed `union bpf_attr`.
#[repr(C, align(8))]
struct Attr([u8; ATTR_LEN]);

impl Attr {
    fn new() -> Self {
        Self([0; ATTR_LEN])
    }
    fn u32(&mut self, off: usize, value: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, value: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }
    fn bytes(&mut self, off: usize, value: &[u8]) -> &mut Self {
        self.0[off..off + value.len()].copy_from_slice(value);
        self
    }
    fn read_u32(&self, off: usize) -> u32 {
        let mut out = [0; 4];
        out.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(out)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable buffer of ATTR_LEN bytes for the whole call; every
    // pointer stored in it refers to memory the caller keeps alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            ATTR_LEN as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a fresh file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Object names are at most 15 bytes plus a NUL.
fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (slot, byte) in out.iter_mut().zip(name.bytes().take(15)) {
        *slot = byte;
    }
    out
}

/// A BPF map.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl Map {
    /// Creates a map.
    pub fn create(
        kind: MapType,
        name: &str,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    ) -> io::Result<Self> {
        let flags = if kind == MapType::LpmTrie {
            F_NO_PREALLOC
        } else {
            0
        };
        let mut attr = Attr::new();
        attr.u32(0, kind.id())
            .u32(4, key_size)
            .u32(8, value_size)
            .u32(12, max_entries)
            .u32(16, flags)
            .bytes(28, &object_name(name));
        Ok(Self {
            fd: bpf_fd(BPF_MAP_CREATE, &mut attr)?,
            key_size: key_size as usize,
            value_size: value_size as usize,
        })
    }

    /// The map's file descriptor, for a program's map references.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The attribute of an element command on `key`, with `value` (a buffer's address, or 0)
    /// as the value pointer; a key of the wrong size is refused before the call.
    fn element(&self, key: &[u8], value: u64) -> io::Result<Attr> {
        if key.len() != self.key_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("key of {} bytes, map takes {}", key.len(), self.key_size),
            ));
        }
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32)
            .u64(8, key.as_ptr() as u64)
            .u64(16, value);
        Ok(attr)
    }

    /// Inserts or replaces `key`.
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if value.len() != self.value_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "value of {} bytes, map takes {}",
                    value.len(),
                    self.value_size
                ),
            ));
        }
        let mut attr = self.element(key, value.as_ptr() as u64)?;
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Removes `key`; a key that is not there is not an error.
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        let mut attr = self.element(key, 0)?;
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Reads `key` into `value` (for per-CPU maps, one 8-byte aligned value per possible
    /// CPU). `Ok(false)` when the key is absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
        let mut attr = self.element(key, value.as_mut_ptr() as u64)?;
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The BTF object the kernel holds for module `module` (its types, as
/// `/sys/kernel/btf/<module>` shows them), for kfunc calls into that module; `None` when no
/// loaded module has that name.
pub fn module_btf(module: &str) -> io::Result<Option<OwnedFd>> {
    let mut id = 0u32;
    loop {
        let mut attr = Attr::new();
        attr.u32(0, id);
        match bpf(BPF_BTF_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.read_u32(4),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        }
        let mut attr = Attr::new();
        attr.u32(0, id);
        let fd = match bpf_fd(BPF_BTF_GET_FD_BY_ID, &mut attr) {
            Ok(fd) => fd,
            // Freed between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        // struct bpf_btf_info: btf (u64), btf_size, id, name (u64), name_len, kernel_btf.
        let mut name = [0u8; 64];
        let mut info = [0u8; 32];
        info[16..24].copy_from_slice(&(name.as_mut_ptr() as u64).to_ne_bytes());
        info[24..28].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        let mut attr = Attr::new();
        attr.u32(0, fd.as_raw_fd() as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64);
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        let kernel = info[28..32] != [0; 4];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        if kernel && &name[..end] == module.as_bytes() {
            return Ok(Some(fd));
        }
    }
}

/// A loaded tc program.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
}

/// A program the kernel refused, with the verifier's account of why.
#[derive(Debug, thiserror::Error)]
#[error("{source}{}", if log.is_empty() { String::new() } else { format!("; verifier: {log}") })]
pub struct LoadError {
    /// The system call's error.
    pub source: io::Error,
    /// The tail of the verifier's log.
    pub log: String,
}

impl Program {
    /// Loads a tc classifier under `license` (helpers such as `bpf_fib_lookup` and every
    /// kfunc are only offered to GPL-compatible programs). `fd_array` holds the module BTF
    /// objects its kfunc calls name by index (index 0 is unused: it means the kernel's own).
    pub fn load_sched_cls(
        name: &str,
        insns: &[Insn],
        license: &str,
        fd_array: &[i32],
    ) -> Result<Self, LoadError> {
        let code: Vec<u8> = insns.iter().flat_map(|i| i.to_bytes()).collect();
        let license = CString::new(license).map_err(|e| LoadError {
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
            log: String::new(),
        })?;
        let attempt = |log: &mut Vec<u8>| {
            let mut attr = Attr::new();
            attr.u32(0, PROG_TYPE_SCHED_CLS)
                .u32(4, insns.len() as u32)
                .u64(8, code.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .bytes(48, &object_name(name));
            if !fd_array.is_empty() {
                attr.u64(120, fd_array.as_ptr() as u64);
            }
            if !log.is_empty() {
                attr.u32(24, 1)
                    .u32(28, log.len() as u32)
                    .u64(32, log.as_mut_ptr() as u64);
            }
            bpf_fd(BPF_PROG_LOAD, &mut attr)
        };
        match attempt(&mut Vec::new()) {
            Ok(fd) => Ok(Self { fd }),
            Err(source) => {
                // Load again with the verifier's log to say why.
                let mut log = vec![0u8; 1 << 20];
                let _ = attempt(&mut log);
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let text = String::from_utf8_lossy(&log[..end]);
                let tail: Vec<&str> = text.lines().rev().take(12).collect();
                let log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                Err(LoadError { source, log })
            }
        }
    }

    /// Attaches the program at tc ingress of `ifindex` (tcx, kernel 6.6 or later), after
    /// any programs already there. It stays attached until the link is dropped or the
    /// device goes away.
    pub fn attach_tcx_ingress(&self, ifindex: u32) -> io::Result<Link> {
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32)
            .u32(4, ifindex)
            .u32(8, ATTACH_TCX_INGRESS);
        Ok(Link {
            _fd: bpf_fd(BPF_LINK_CREATE, &mut attr)?,
        })
    }

    /// Runs the program once on `packet` (starting at the Ethernet header) as if it had
    /// arrived on `context.ifindex` of the calling thread's namespace (`BPF_PROG_TEST_RUN`);
    /// returns the program's verdict and the packet as the program left it. Redirects are
    /// reported, not carried out.
    pub fn test_run(&self, packet: &[u8], context: TestContext) -> io::Result<(i32, Vec<u8>)> {
        self.run(packet, context, 1)
            .map(|(verdict, out, _)| (verdict, out))
    }

    /// Runs the program `repeat` times on `packet` as [`Program::test_run`] does and returns
    /// the kernel's average time per run (what one packet costs, helpers included).
    pub fn time_run(
        &self,
        packet: &[u8],
        context: TestContext,
        repeat: u32,
    ) -> io::Result<std::time::Duration> {
        let (_, _, nanos) = self.run(packet, context, repeat.max(1))?;
        Ok(std::time::Duration::from_nanos(u64::from(nanos)))
    }

    /// `BPF_PROG_TEST_RUN`: the verdict, the packet as left, and the mean nanoseconds a run.
    fn run(
        &self,
        packet: &[u8],
        context: TestContext,
        repeat: u32,
    ) -> io::Result<(i32, Vec<u8>, u32)> {
        // struct __sk_buff as context: `ifindex` (offset 40), `gso_segs` (164), `gso_size`
        // (176).
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&context.ifindex.to_ne_bytes());
        ctx[164..168].copy_from_slice(&context.gso_segs.to_ne_bytes());
        ctx[176..180].copy_from_slice(&context.gso_size.to_ne_bytes());
        let mut out = vec![0u8; packet.len() + 256];
        let mut attr = Attr::new();
        attr.u32(0, self.fd.as_raw_fd() as u32)
            .u32(8, packet.len() as u32)
            .u32(12, out.len() as u32)
            .u64(16, packet.as_ptr() as u64)
            .u64(24, out.as_mut_ptr() as u64)
            .u32(32, repeat)
            .u32(40, ctx.len() as u32)
            .u64(48, ctx.as_ptr() as u64);
        bpf(BPF_PROG_TEST_RUN, &mut attr)?;
        let verdict = attr.read_u32(4) as i32;
        out.truncate(attr.read_u32(12) as usize);
        Ok((verdict, out, attr.read_u32(36)))
    }
}

/// What a test run pretends about the packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestContext {
    /// The device it arrived on.
    pub ifindex: u32,
    /// GSO segment size (0: not a GSO packet).
    pub gso_size: u32,
    /// GSO segments.
    pub gso_segs: u32,
}

/// A program attached to a device; dropping it detaches the program.
#[derive(Debug)]
pub struct Link {
    _fd: OwnedFd,
}

/// Number of possible CPUs: the number of values a per-CPU map lookup returns.
pub fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unreadable CPU list {text:?}"),
        )
    })
}

/// Counts the CPUs of a list such as `0-3,5` (highest index + 1, as the kernel sizes
/// per-CPU values).
fn parse_cpu_list(list: &str) -> Option<usize> {
    let mut highest = None;
    for part in list.split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<usize>().ok()?;
        highest = highest.max(Some(last));
    }
    highest.map(|h| h + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0-3,6-7"), Some(8));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn object_names_are_cut_to_fifteen_bytes() {
        let name = object_name("a-very-long-object-name");
        assert_eq!(&name[..15], b"a-very-long-obj");
        assert_eq!(name[15], 0);
    }
}
