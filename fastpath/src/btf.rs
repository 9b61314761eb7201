//! Just enough of the kernel's BTF (BPF Type Format) to call kernel functions (kfuncs) from
//! the program: a function's type id, a structure's size, and a member's byte offset.
//!
//! The kernel publishes its own types in `/sys/kernel/btf/vmlinux` and each module's in
//! `/sys/kernel/btf/<module>`, the latter as *split* BTF: its type ids continue after the
//! kernel's and its string offsets after the kernel's string section. A kfunc's call
//! instruction names the function by that type id; a load through a pointer the verifier
//! types by BTF must use the member's offset in the running kernel's layout, which depends on
//! its configuration. No I/O here: callers hand in the bytes.
//!
//! Hand-written rather than taken from a BPF loader crate: wren assembles its program itself
//! and needs three look-ups, including split (module) BTF.

use std::collections::HashMap;

/// BTF that could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// The header is missing, or its magic or version is not BTF's.
    #[error("not BTF: {0}")]
    Header(&'static str),
    /// A section or a type runs past the end of the data.
    #[error("truncated BTF: {0}")]
    Truncated(&'static str),
    /// A type of a kind this reader does not know (newer than the reader).
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;

/// One parsed type: what the look-ups need of it.
#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    /// `size` for structures and unions (the `size_or_type` word).
    size: u32,
    /// Members of a structure or union: (name offset, bit offset).
    members: Vec<(u32, u32)>,
}

/// A parsed BTF blob: the kernel's own, or a module's on top of it.
#[derive(Debug, Clone)]
pub struct Btf {
    /// Id of the first type of this blob (1 for the kernel's, after the base for a module's).
    first_id: u32,
    types: Vec<Type>,
    /// This blob's string section, and where it starts in the combined string space.
    strings: Vec<u8>,
    strings_start: u32,
    /// Names of functions and structures → type ids (first of each name wins).
    by_name: HashMap<(u32, String), u32>,
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at + 4)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Btf {
    /// Parses the kernel's BTF (`/sys/kernel/btf/vmlinux`).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        Self::parse_on(data, None)
    }

    /// Parses a module's split BTF (`/sys/kernel/btf/<module>`) on top of the kernel's.
    pub fn parse_split(data: &[u8], base: &Btf) -> Result<Self, BtfError> {
        Self::parse_on(data, Some(base))
    }

    fn parse_on(data: &[u8], base: Option<&Btf>) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::Header("shorter than its header"))?;
        if magic != MAGIC {
            return Err(BtfError::Header("bad magic (or another byte order)"));
        }
        if data.get(2) != Some(&1) {
            return Err(BtfError::Header("version is not 1"));
        }
        let field = |at| u32_at(data, at).ok_or(BtfError::Header("shorter than its header"));
        let header_len = field(4)? as usize;
        if header_len < HEADER_LEN {
            return Err(BtfError::Header("header too short"));
        }
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize, what| {
            let start = header_len
                .checked_add(off)
                .ok_or(BtfError::Truncated(what))?;
            let end = start.checked_add(len).ok_or(BtfError::Truncated(what))?;
            data.get(start..end).ok_or(BtfError::Truncated(what))
        };
        let type_data = section(type_off, type_len, "type section")?;
        let strings = section(str_off, str_len, "string section")?.to_vec();
        let (first_id, strings_start) = match base {
            Some(base) => (base.next_id(), base.strings_end()),
            None => (1, 0),
        };
        let types = parse_types(type_data)?;
        let mut btf = Self {
            first_id,
            types,
            strings,
            strings_start,
            by_name: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        for (index, ty) in btf.types.iter().enumerate() {
            if matches!(ty.kind, KIND_FUNC | KIND_STRUCT | KIND_UNION)
                && let Some(name) = btf.own_string(ty.name)
            {
                by_name
                    .entry((ty.kind, name.to_owned()))
                    .or_insert(first_id + index as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    /// The id the next blob on top of this one starts at.
    fn next_id(&self) -> u32 {
        self.first_id + self.types.len() as u32
    }

    fn strings_end(&self) -> u32 {
        self.strings_start + self.strings.len() as u32
    }

    /// A string of this blob's own section (a split blob's names of its own types).
    fn own_string(&self, offset: u32) -> Option<&str> {
        let at = offset.checked_sub(self.strings_start)? as usize;
        let rest = self.strings.get(at..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id.checked_sub(self.first_id)? as usize)
    }

    /// The type id of function `name` defined in this blob.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(&(KIND_FUNC, name.to_owned())).copied()
    }

    /// The size in bytes of structure `name` defined in this blob.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        let id = *self.by_name.get(&(KIND_STRUCT, name.to_owned()))?;
        Some(self.get(id)?.size)
    }

    /// The byte offset of member `member` of structure `name` defined in this blob (`None`
    /// for a bit field that does not start on a byte).
    pub fn member_offset(&self, name: &str, member: &str, base: Option<&Btf>) -> Option<u32> {
        let id = *self.by_name.get(&(KIND_STRUCT, name.to_owned()))?;
        let ty = self.get(id)?;
        ty.members.iter().find_map(|&(name_off, bits)| {
            let member_name = self
                .own_string(name_off)
                .or_else(|| base.and_then(|b| b.own_string(name_off)))?;
            (member_name == member && bits % 8 == 0).then_some(bits / 8)
        })
    }
}

/// Walks the type section: each type is 12 bytes (name, info, size or type) and a tail
/// whose length its kind and member count give.
fn parse_types(data: &[u8]) -> Result<Vec<Type>, BtfError> {
    let mut types = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let word = |off: usize| u32_at(data, at + off).ok_or(BtfError::Truncated("type"));
        let (name, info, size) = (word(0)?, word(4)?, word(8)?);
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let tail = match kind {
            // void-like and reference kinds: PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT,
            // FUNC, FLOAT, TYPE_TAG
            2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
            // INT, VAR, DECL_TAG
            1 | 14 | 17 => 4,
            // ARRAY
            3 => 12,
            KIND_STRUCT | KIND_UNION => 12 * vlen,
            // ENUM, FUNC_PROTO
            6 | 13 => 8 * vlen,
            // DATASEC, ENUM64
            15 | 19 => 12 * vlen,
            other => return Err(BtfError::UnknownKind(other)),
        };
        let mut members = Vec::new();
        if matches!(kind, KIND_STRUCT | KIND_UNION) {
            for m in 0..vlen {
                let base = 12 + 12 * m;
                let member_name = word(base)?;
                let offset = word(base + 8)?;
                // With kind_flag, the top byte holds a bit field's size.
                let bits = if kind_flag {
                    offset & 0x00ff_ffff
                } else {
                    offset
                };
                members.push((member_name, bits));
            }
        }
        if at + 12 + tail > data.len() {
            return Err(BtfError::Truncated("type"));
        }
        types.push(Type {
            kind,
            name,
            size,
            members,
        });
        at += 12 + tail;
    }
    Ok(types)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob from (kind, name, vlen, size, tail words) and a string section.
    pub(crate) fn blob(types: &[(u32, u32, u32, u32, Vec<u32>)], strings: &[u8]) -> Vec<u8> {
        let mut type_data = Vec::new();
        for (kind, name, vlen, size, tail) in types {
            for word in [*name, (kind << 24) | vlen, *size].iter().chain(tail) {
                type_data.extend_from_slice(&word.to_ne_bytes());
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [
            HEADER_LEN as u32,
            0,
            type_data.len() as u32,
            type_data.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&type_data);
        out.extend_from_slice(strings);
        out
    }

    // Strings: 0 "", 1 "int", 5 "nf_conn", 13 "status", 20 "bpf_ct_release", 35 "mark"
    const STRINGS: &[u8] = b"\0int\0nf_conn\0status\0bpf_ct_release\0mark\0";

    fn kernel() -> Btf {
        Btf::parse(&blob(
            &[
                // 1: int
                (1, 1, 0, 4, vec![32]),
                // 2: struct nf_conn { int mark @ 0; int status @ 128 bits }, 24 bytes
                (KIND_STRUCT, 5, 2, 24, vec![35, 1, 0, 13, 1, 128]),
                // 3: func_proto (void)(int)
                (13, 0, 1, 0, vec![0, 1]),
                // 4: func bpf_ct_release
                (KIND_FUNC, 20, 0, 3, vec![]),
            ],
            STRINGS,
        ))
        .unwrap()
    }

    #[test]
    fn finds_functions_structures_and_members() {
        let btf = kernel();
        assert_eq!(btf.func_id("bpf_ct_release"), Some(4));
        assert_eq!(btf.func_id("nf_conn"), None, "a structure is no function");
        assert_eq!(btf.struct_size("nf_conn"), Some(24));
        assert_eq!(btf.member_offset("nf_conn", "status", None), Some(16));
        assert_eq!(btf.member_offset("nf_conn", "mark", None), Some(0));
        assert_eq!(btf.member_offset("nf_conn", "zone", None), None);
    }

    #[test]
    fn split_btf_numbers_after_its_base_and_reads_both_string_sections() {
        let base = kernel();
        // A module: its own strings start after the kernel's; it names the kernel's
        // "status" (offset 13) and its own "bpf_skb_ct_lookup".
        let own = b"\0bpf_skb_ct_lookup\0bpf_ct_opts\0";
        let at = |s: usize| STRINGS.len() as u32 + s as u32;
        let module = Btf::parse_split(
            &blob(
                &[
                    // 5: func_proto
                    (13, 0, 0, 0, vec![]),
                    // 6: func bpf_skb_ct_lookup
                    (KIND_FUNC, at(1), 0, 5, vec![]),
                    // 7: struct bpf_ct_opts, 12 bytes, member "status" at 32 bits
                    (KIND_STRUCT, at(19), 1, 12, vec![13, 1, 32]),
                ],
                own,
            ),
            &base,
        )
        .unwrap();
        assert_eq!(module.func_id("bpf_skb_ct_lookup"), Some(6));
        assert_eq!(module.func_id("bpf_ct_release"), None);
        assert_eq!(module.struct_size("bpf_ct_opts"), Some(12));
        assert_eq!(
            module.member_offset("bpf_ct_opts", "status", Some(&base)),
            Some(4)
        );
    }

    #[test]
    fn bad_blobs_are_errors_not_panics() {
        assert!(matches!(Btf::parse(&[]), Err(BtfError::Header(_))));
        let mut good = blob(&[(1, 1, 0, 4, vec![32])], STRINGS);
        good[0] ^= 0xff;
        assert!(matches!(Btf::parse(&good), Err(BtfError::Header(_))));
        let good = blob(&[(1, 1, 0, 4, vec![32])], STRINGS);
        for cut in 0..good.len() {
            let _ = Btf::parse(&good[..cut]);
        }
        let unknown = blob(&[(31, 1, 0, 0, vec![])], STRINGS);
        assert_eq!(Btf::parse(&unknown).unwrap_err(), BtfError::UnknownKind(31));
    }

    #[test]
    fn reads_this_kernels_btf() {
        // Every kernel the fast path runs on publishes its BTF (CONFIG_DEBUG_INFO_BTF).
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("the kernel's BTF");
        let btf = Btf::parse(&data).expect("the running kernel's BTF parses");
        assert!(btf.struct_size("sk_buff").is_some());
        assert!(btf.member_offset("sk_buff", "len", None).is_some());
    }
}
