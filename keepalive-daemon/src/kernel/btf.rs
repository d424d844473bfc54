//! A small reader for the kernel's raw BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the daemon asks the running kernel where the fields it
//! reads live. Only what that needs is kept: aggregates and their members, the types needed to
//! size a member, enumerators and function names. The input is treated as untrusted: every
//! offset is bounds-checked, and walks over type chains are capped so that a crafted or corrupt
//! file yields an error or `None`, never a panic or a hang.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Real kernels nest typedefs and anonymous members a few levels deep; the caps only stop a
/// crafted file (cycles, anonymous members shared by many parents) from looping or exploding.
const MAX_DEPTH: u32 = 64;
const VISIT_BUDGET: u32 = 1 << 20;

enum Data {
    None,
    Members { start: u32, len: u32 },
    Array { elem: u32, nelems: u32 },
}

struct Type {
    kind: u8,
    size_or_type: u32,
    data: Data,
}

struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset from the start of the aggregate, with any bitfield size already stripped.
    bit_offset: u32,
}

/// The parsed type graph of one BTF blob.
pub struct Btf {
    strings: Vec<u8>,
    /// `types[i]` is type id `i + 1`; id 0 is `void` and has no record.
    types: Vec<Type>,
    members: Vec<Member>,
    enumerators: Vec<(u32, i64)>,
    funcs: Vec<u32>,
    /// First non-empty STRUCT/UNION of each name: vmlinux can keep same-named types that dedup
    /// could not merge, and zero-sized ones are configured-out stubs (e.g. `lockdep_map`).
    aggregates: HashMap<Box<[u8]>, u32>,
    /// BTF has no pointer size; the kernel's `long` has the same width.
    pointer_size: u32,
}

/// The kernel's BTF, read from disk once at start-up and parsed once by each of its two
/// readers: our own index answers the offset questions (`offsets`, `inventory_offsets`),
/// aya's parse goes to the loader for the BTF-typed programs (calibration and the hook
/// ladder). aya keeps its type table private, so one parser cannot serve both.
pub struct KernelBtf {
    pub index: Btf,
    pub loader: aya::Btf,
}

impl KernelBtf {
    pub fn read(path: &Path) -> Result<KernelBtf> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let index = Btf::parse(&bytes, path)?;
        let loader =
            aya::Btf::parse(&bytes, aya::Endianness::default()).map_err(|e| Error::Btf {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(KernelBtf { index, loader })
    }
}

impl Btf {
    /// Reads and parses a BTF file: `Error::Io` if it cannot be read, `Error::Btf` if malformed.
    pub fn from_file(path: &Path) -> Result<Btf> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&bytes, path)
    }

    /// Parses a BTF blob; `path` only labels errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Btf> {
        parse_blob(bytes).map_err(|reason| Error::Btf {
            path: PathBuf::from(path),
            reason,
        })
    }

    /// Byte offset of `path` ("a.b.c", each step a member name) inside struct/union `outer`.
    ///
    /// Each step searches the current aggregate's members, descending transparently into
    /// anonymous struct/union members (as C name lookup does); a named step then continues in
    /// that member's type, looking through typedef/const/volatile/restrict/type-tag modifiers but
    /// never through pointers. A bitfield reports the byte holding its first bit (the bit offset
    /// divided by 8): every field the daemon reads is byte-aligned, so this never truncates.
    pub fn member_offset(&self, outer: &str, path: &str) -> Option<u32> {
        let (bits, _) = self.member(outer, path)?;
        u32::try_from(bits / 8).ok()
    }

    /// Size in bytes of the type of the member at `path` (see [`Btf::member_offset`]), after
    /// resolving typedefs and modifiers; arrays are element size times length. A bitfield
    /// reports the size of its declared integer type, not its width.
    pub fn member_size(&self, outer: &str, path: &str) -> Option<u32> {
        let (_, type_id) = self.member(outer, path)?;
        self.size_of(type_id, 0)
    }

    /// Value of the first enumerator called `enumerator` in any ENUM/ENUM64 type. Unsigned
    /// 64-bit values above `i64::MAX` come back reinterpreted (two's complement).
    pub fn enum_value(&self, enumerator: &str) -> Option<i64> {
        let wanted = enumerator.as_bytes();
        self.enumerators
            .iter()
            .find(|(name_off, _)| self.name(*name_off) == Some(wanted))
            .map(|&(_, value)| value)
    }

    /// Whether a BTF_KIND_FUNC called `name` exists.
    pub fn has_func(&self, name: &str) -> bool {
        let wanted = name.as_bytes();
        self.funcs.iter().any(|&off| self.name(off) == Some(wanted))
    }

    fn ty(&self, id: u32) -> Option<&Type> {
        self.types.get(usize::try_from(id.checked_sub(1)?).ok()?)
    }

    /// Bytes of the string at `off`; parsing guaranteed the section ends in a NUL.
    fn name(&self, off: u32) -> Option<&[u8]> {
        let rest = self.strings.get(usize::try_from(off).ok()?..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        rest.get(..end)
    }

    /// Follows modifier kinds to the type they decorate.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..MAX_DEPTH {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Walks `path` from aggregate `outer`: total bit offset and the last member's type id.
    fn member(&self, outer: &str, path: &str) -> Option<(u64, u32)> {
        let mut type_id = *self.aggregates.get(outer.as_bytes())?;
        let mut bits = 0u64;
        let mut budget = VISIT_BUDGET;
        for step in path.split('.') {
            if step.is_empty() {
                return None;
            }
            let agg = self.resolve(type_id)?;
            let (off, next) = self.find_member(agg, step.as_bytes(), 0, &mut budget)?;
            bits = bits.checked_add(off)?;
            type_id = next;
        }
        Some((bits, type_id))
    }

    fn find_member(
        &self,
        agg: &Type,
        name: &[u8],
        depth: u32,
        budget: &mut u32,
    ) -> Option<(u64, u32)> {
        let Data::Members { start, len } = agg.data else {
            return None;
        };
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        for m in self.members.get(start..end)? {
            *budget = budget.checked_sub(1)?;
            let member_name = self.name(m.name_off)?;
            if member_name == name {
                return Some((u64::from(m.bit_offset), m.type_id));
            }
            if member_name.is_empty()
                && depth < MAX_DEPTH
                && let Some(inner) = self.resolve(m.type_id)
                && let Some((off, id)) = self.find_member(inner, name, depth + 1, budget)
            {
                return Some((u64::from(m.bit_offset) + off, id));
            }
        }
        None
    }

    fn size_of(&self, type_id: u32, depth: u32) -> Option<u32> {
        let t = self.resolve(type_id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(t.size_or_type)
            }
            KIND_PTR => Some(self.pointer_size),
            KIND_ARRAY if depth < MAX_DEPTH => match t.data {
                Data::Array { elem, nelems } => self.size_of(elem, depth + 1)?.checked_mul(nelems),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Bounds-checked read. The file comes from the running kernel, so it is in host byte order; a
/// foreign-order file fails the magic check instead of being half supported.
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    raw.try_into().ok().map(u32::from_ne_bytes)
}

fn parse_blob(bytes: &[u8]) -> std::result::Result<Btf, String> {
    match bytes.get(..2) {
        Some(&[a, b]) if u16::from_ne_bytes([a, b]) == MAGIC => {}
        Some(&[a, b]) if u16::from_ne_bytes([b, a]) == MAGIC => {
            return Err("BTF is in the other byte order than this machine".into());
        }
        _ => return Err("not a BTF file (bad magic)".into()),
    }
    let field = |at: usize| u32_at(bytes, at).ok_or_else(|| "truncated header".to_string());
    if bytes.get(2) != Some(&1) {
        return Err(format!("unsupported BTF version {:?}", bytes.get(2)));
    }
    let hdr_len = field(4)? as usize;
    if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
        return Err(format!("header length {hdr_len} out of range"));
    }
    let section = |off_at: usize, what: &str| -> std::result::Result<&[u8], String> {
        let (off, len) = (field(off_at)? as usize, field(off_at + 4)? as usize);
        hdr_len
            .checked_add(off)
            .and_then(|start| bytes.get(start..start.checked_add(len)?))
            .ok_or_else(|| format!("{what} section ({len} bytes at {off}) runs past end of file"))
    };
    let types = section(8, "type")?;
    let strings = section(16, "string")?;
    // The kernel enforces both: offset 0 is the empty name, and every string is terminated.
    if strings.first() != Some(&0) || strings.last() != Some(&0) {
        return Err("string section does not start and end with NUL".into());
    }
    let mut btf = Btf {
        strings: strings.to_vec(),
        types: Vec::new(),
        members: Vec::new(),
        enumerators: Vec::new(),
        funcs: Vec::new(),
        aggregates: HashMap::new(),
        pointer_size: std::mem::size_of::<usize>() as u32,
    };
    let mut pos = 0usize;
    while pos < types.len() {
        let id = btf.types.len() + 1;
        let word = |at: usize| {
            u32_at(types, at).ok_or_else(|| format!("type {id} is truncated at byte {pos}"))
        };
        let name = |at: usize| {
            let off = word(at)?;
            let fits = (off as usize) < strings.len();
            fits.then_some(off)
                .ok_or_else(|| format!("type {id}: name offset {off} out of range"))
        };
        let (name_off, info, size_or_type) = (name(pos)?, word(pos + 4)?, word(pos + 8)?);
        let vlen = (info & 0xffff) as usize;
        let kind = ((info >> 24) & 0x1f) as u8;
        let kind_flag = info >> 31 == 1;
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
            KIND_PTR | KIND_FWD..=KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            other => return Err(format!("type {id} has unknown kind {other}")),
        };
        let (body, end) = (pos + 12, pos + 12 + extra);
        if end > types.len() {
            return Err(format!("type {id} is truncated at byte {pos}"));
        }
        let mut data = Data::None;
        match kind {
            KIND_INT => {
                if matches!(btf.name(name_off), Some(b"long int" | b"long unsigned int")) {
                    btf.pointer_size = size_or_type;
                }
            }
            KIND_ARRAY => {
                let (elem, nelems) = (word(body)?, word(body + 8)?);
                data = Data::Array { elem, nelems };
            }
            KIND_STRUCT | KIND_UNION => {
                let start = btf.members.len() as u32;
                // With kind_flag the top byte is the bitfield width, not part of the offset.
                let mask = if kind_flag { 0xff_ffff } else { u32::MAX };
                for at in (body..end).step_by(12) {
                    btf.members.push(Member {
                        name_off: name(at)?,
                        type_id: word(at + 4)?,
                        bit_offset: word(at + 8)? & mask,
                    });
                }
                let len = vlen as u32;
                data = Data::Members { start, len };
                let key = btf.name(name_off).unwrap_or_default();
                if !key.is_empty() && size_or_type > 0 && !btf.aggregates.contains_key(key) {
                    btf.aggregates.insert(key.into(), id as u32);
                }
            }
            KIND_ENUM | KIND_ENUM64 => {
                for at in (body..end).step_by(if kind == KIND_ENUM { 8 } else { 12 }) {
                    let low = word(at + 4)?;
                    // kind_flag marks a signed enum; 64-bit values are stored low word first.
                    let value = match (kind == KIND_ENUM, kind_flag) {
                        (true, true) => i64::from(low as i32),
                        (true, false) => i64::from(low),
                        (false, _) => ((u64::from(word(at + 8)?) << 32) | u64::from(low)) as i64,
                    };
                    btf.enumerators.push((name(at)?, value));
                }
            }
            KIND_FUNC_PROTO => {
                for at in (body..end).step_by(8) {
                    name(at)?;
                }
            }
            KIND_FUNC => btf.funcs.push(name_off),
            _ => {}
        }
        btf.types.push(Type {
            kind,
            size_or_type,
            data,
        });
        pos = end;
    }
    Ok(btf)
}

#[cfg(test)]
mod tests;
