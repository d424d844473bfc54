//! Picks the kernel modules the scenarios need out of a Debian kernel package and orders them so
//! that every module comes after the modules it depends on. The package ships no modules.dep
//! (depmod runs at install time), so dependencies come from each module's own .modinfo section.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Modules the scenario topologies use: veth pairs between namespaces, nftables with conntrack
/// and the reject expressions. Names that a kernel builds in or lacks are skipped.
pub const WANTED: &[&str] = &[
    "veth",
    "nf_tables",
    "nf_conntrack",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nft_ct",
    "nft_counter",
    "nft_limit",
    "nft_reject",
    "nft_reject_inet",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nf_reject_ipv4",
    "nf_reject_ipv6",
    "nft_chain_filter",
    // `ss -tieo` reads TCP_INFO through inet_diag; without it ss falls back to /proc/net/tcp,
    // which has no lastsnd/lastrcv for the idle checks to compare with.
    "inet_diag",
    "tcp_diag",
];

/// Without these no scenario can run at all.
const ESSENTIAL: &[&str] = &["veth", "nf_tables"];

pub struct Module {
    pub name: String,
    /// Uncompressed .ko contents.
    pub image: Vec<u8>,
}

pub struct Selection {
    /// In load order.
    pub modules: Vec<Module>,
    pub builtin: Vec<String>,
    pub absent: Vec<String>,
}

pub fn select(modules_dir: &Path) -> Result<Selection> {
    let mut index = HashMap::new();
    walk(&modules_dir.join("kernel"), &mut index)?;
    let builtin: HashSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(module_name)
        .collect();

    let mut sel = Selection {
        modules: Vec::new(),
        builtin: Vec::new(),
        absent: Vec::new(),
    };
    let mut done = HashSet::new();
    for &name in WANTED {
        if index.contains_key(name) {
            visit(name, &index, &mut done, &mut sel.modules)?;
        } else if builtin.contains(name) {
            sel.builtin.push(name.to_owned());
        } else {
            sel.absent.push(name.to_owned());
        }
    }
    for name in ESSENTIAL {
        if sel.absent.iter().any(|a| a == name) {
            bail!(
                "{} has neither a {name} module nor a built-in one",
                modules_dir.display()
            );
        }
    }
    Ok(sel)
}

fn visit(
    name: &str,
    index: &HashMap<String, PathBuf>,
    done: &mut HashSet<String>,
    out: &mut Vec<Module>,
) -> Result<()> {
    if !done.insert(name.to_owned()) {
        return Ok(());
    }
    let path = index
        .get(name)
        .with_context(|| format!("module {name} is needed but not shipped"))?;
    let image = decompress(path)?;
    for dep in depends(&image).with_context(|| format!("reading .modinfo of {}", path.display()))? {
        visit(&dep, index, done, out)?;
    }
    out.push(Module {
        name: name.to_owned(),
        image,
    });
    Ok(())
}

fn walk(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, index)?;
        } else if let Some(file) = path.file_name().and_then(|f| f.to_str())
            && file.contains(".ko")
        {
            index.insert(module_name(file), path);
        }
    }
    Ok(())
}

/// The kernel's name for a module file: no extension, dashes as underscores.
fn module_name(file: &str) -> String {
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out)
            .map_err(|e| anyhow::anyhow!("xz: {e:?}"))
            .with_context(|| format!("decompressing {name}"))?;
    } else if name.ends_with(".zst") {
        ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
            .map_err(|e| anyhow::anyhow!("zstd: {e}"))?
            .read_to_end(&mut out)
            .with_context(|| format!("decompressing {name}"))?;
    } else {
        out = raw;
    }
    Ok(out)
}

/// The `depends=` entry of the module's .modinfo ELF section.
fn depends(image: &[u8]) -> Result<Vec<String>> {
    let modinfo = section(image, ".modinfo").context("no .modinfo section")?;
    Ok(modinfo
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"depends="))
        .map(|deps| {
            String::from_utf8_lossy(deps)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default())
}

/// Minimal ELF64 little-endian section lookup: modules are relocatable objects of the host arch.
pub fn section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?) as usize);
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| shoff + i * shentsize;
    let body = |i: usize| -> Option<&[u8]> {
        let (off, size) = (u64_at(header(i) + 0x18)?, u64_at(header(i) + 0x20)?);
        elf.get(off..off.checked_add(size)?)
    };
    let names = body(shstrndx)?;
    (0..shnum).find_map(|i| {
        let name_off = u32_at(header(i))?;
        let name = names.get(name_off..)?.split(|&b| b == 0).next()?;
        (name == wanted.as_bytes()).then(|| body(i)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_the_kernel() {
        assert_eq!(module_name("nft_reject_inet.ko.xz"), "nft_reject_inet");
        assert_eq!(module_name("nf-foo.ko"), "nf_foo");
    }

    #[test]
    fn non_elf_has_no_sections() {
        assert!(section(b"not an elf file at all, just bytes", ".modinfo").is_none());
    }
}
