//! Byte offsets of a few kernel structure members, read from /sys/kernel/btf/vmlinux.
//!
//! The comparison programs and the bpftrace peer need three offsets (`timer_list.function`, the
//! keepalive timer inside the socket, `icsk_probes_out`). The daemon has its own BTF reader but is
//! a binary crate, and aya-obj keeps struct members private, so this is the smallest reader
//! that answers "offset of member M of struct S", anonymous unions included.
use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;

struct Ty {
    name_off: u32,
    kind: u32,
    kflag: bool,
    /// `type` for modifiers and typedefs.
    size_or_type: u32,
    /// (name_off, type, bit offset) for structs and unions.
    members: Vec<(u32, u32, u32)>,
}

pub struct Btf {
    types: Vec<Ty>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(off..off + 4).context("BTF truncated")?.try_into()?,
    ))
}

impl Btf {
    pub fn load() -> Result<Self> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").context("/sys/kernel/btf/vmlinux")?;
        Self::parse(&data)
    }

    fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != 0xeb9f {
            bail!("not little-endian BTF");
        }
        let hdr = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let t = b
            .get(hdr + type_off..hdr + type_off + type_len)
            .context("type section")?;
        let strings = b
            .get(hdr + str_off..hdr + str_off + str_len)
            .context("string section")?
            .to_vec();
        // Type id 0 is void; ids count from 1 in section order.
        let mut types = vec![Ty {
            name_off: 0,
            kind: 0,
            kflag: false,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut p = 0;
        while p + 12 <= t.len() {
            let (name_off, info, sot) = (u32_at(t, p)?, u32_at(t, p + 4)?, u32_at(t, p + 8)?);
            let (vlen, kind, kflag) = (
                (info & 0xffff) as usize,
                (info >> 24) & 0x1f,
                info >> 31 == 1,
            );
            p += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = p + i * 12;
                        members.push((u32_at(t, m)?, u32_at(t, m + 4)?, u32_at(t, m + 8)?));
                    }
                    12 * vlen
                }
                6 | 13 => 8 * vlen,
                15 | 19 => 12 * vlen,
                _ => 0,
            };
            p += extra;
            types.push(Ty {
                name_off,
                kind,
                kflag,
                size_or_type: sot,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if matches!(ty.kind, KIND_STRUCT | KIND_UNION) && ty.name_off != 0 {
                let name = btf.name(ty.name_off).to_string();
                btf.by_name.entry(name).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in struct `name`, looking into anonymous structs and unions.
    pub fn offset(&self, name: &str, member: &str) -> Option<u32> {
        let ids = self.by_name.get(name)?;
        ids.iter().find_map(|&id| self.find(id, member, 0))
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        let ty = self.types.get(id as usize)?;
        if depth > 8 {
            return None;
        }
        for &(name_off, mtype, raw) in &ty.members {
            let bits = if ty.kflag { raw & 0x00ff_ffff } else { raw };
            if name_off != 0 && self.name(name_off) == member {
                return Some(bits / 8);
            }
            if name_off == 0 {
                let inner = self.strip(mtype);
                if let Some(off) = self.find(inner, member, depth + 1) {
                    return Some(bits / 8 + off);
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t) if matches!(t.kind, KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST) => {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }
}

/// The offsets the comparison programs and the bpftrace script need.
pub struct Offsets {
    pub timer_function: u32,
    /// The keepalive `timer_list` inside the socket: `icsk_keepalive_timer` on kernels with the
    /// 2025 series, `sock.sk_timer` before (the same rule the daemon applies).
    pub keepalive_timer: u32,
    pub probes_out: u32,
}

pub fn offsets() -> Result<Offsets> {
    let btf = Btf::load()?;
    let keepalive_timer = btf
        .offset("inet_connection_sock", "icsk_keepalive_timer")
        .or_else(|| btf.offset("sock", "sk_timer"))
        .context("neither icsk_keepalive_timer nor sk_timer in BTF")?;
    Ok(Offsets {
        timer_function: btf
            .offset("timer_list", "function")
            .context("timer_list.function")?,
        keepalive_timer,
        probes_out: btf
            .offset("inet_connection_sock", "icsk_probes_out")
            .context("icsk_probes_out")?,
    })
}
