//! Packs the guest's root file system: a gzip'd cpio "newc" archive, written directly so that
//! device nodes and ownership come out right without root or mknod on the host.

use std::{collections::BTreeSet, fs, io::Write, path::Path};

use anyhow::{Context as _, Result};
use flate2::{Compression, write::GzEncoder};

use super::{modules::Selection, tools::Shipped};

/// Where vminit finds the modules and the order to load them in.
pub const MODULE_DIR: &str = "lib/modules/kat";

pub struct Payload<'a> {
    pub init: &'a Path,
    pub daemon: Option<&'a Path>,
    pub scenarios: Option<&'a Path>,
    /// keepalive-bench, for the kernel-cost run of `cargo xtask bench` (vm/bench.rs).
    pub bench: Option<&'a Path>,
    pub modules: &'a Selection,
    pub tools: &'a Shipped,
}

pub fn write(payload: &Payload, out: &Path) -> Result<u64> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Cpio::new(GzEncoder::new(
        std::io::BufWriter::new(file),
        Compression::fast(),
    ));

    for dir in [
        "dev", "proc", "sys", "run", "tmp", "bin", "etc", "root", "var", "usr",
    ] {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    cpio.node("dev/console", 0o020600, (5, 1))?;
    cpio.node("dev/null", 0o020666, (1, 3))?;
    cpio.symlink("sbin", "bin")?;
    cpio.symlink("usr/bin", "../bin")?;
    cpio.symlink("usr/sbin", "../bin")?;
    // iproute2 keeps named namespaces under /run/netns, older builds under /var/run/netns.
    cpio.symlink("var/run", "../run")?;

    cpio.file("init", 0o755, &read(payload.init)?)?;
    for (name, path) in [
        ("keepalive-daemon", payload.daemon),
        ("keepalive-scenarios", payload.scenarios),
        ("keepalive-bench", payload.bench),
    ] {
        if let Some(path) = path {
            cpio.file(&format!("bin/{name}"), 0o755, &read(path)?)?;
        }
    }

    for f in &payload.tools.files {
        cpio.file(&f.guest, f.mode, &read(&f.host)?)?;
    }

    let mut order = String::new();
    for module in &payload.modules.modules {
        cpio.file(
            &format!("{MODULE_DIR}/{}.ko", module.name),
            0o644,
            &module.image,
        )?;
        order.push_str(&module.name);
        order.push('\n');
    }
    cpio.file(&format!("{MODULE_DIR}/load-order"), 0o644, order.as_bytes())?;

    let gz = cpio.finish()?;
    let buf = gz.finish()?;
    buf.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(fs::metadata(out)?.len())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

struct Cpio<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, 0o040755, (0, 0), &[])
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> Result<()> {
        self.parent(path)?;
        self.entry(path, 0o100000 | perm, (0, 0), data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parent(path)?;
        self.entry(path, 0o120777, (0, 0), target.as_bytes())
    }

    fn node(&mut self, path: &str, mode: u32, rdev: (u32, u32)) -> Result<()> {
        self.parent(path)?;
        self.entry(path, mode, rdev, &[])
    }

    fn parent(&mut self, path: &str) -> Result<()> {
        match path.rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        // newc pads the header+name and the data each to a multiple of four bytes.
        self.pad(110 + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> Result<()> {
        self.out.write_all(&[0; 3][..(4 - len % 4) % 4])?;
        Ok(())
    }

    fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_terminated() {
        let mut c = Cpio::new(Vec::new());
        c.file("a/bc", 0o644, b"hello").unwrap();
        let out = c.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // the directory "a" is emitted before the file inside it
        let text = String::from_utf8_lossy(&out);
        assert!(text.find("a\0").unwrap() < text.find("a/bc\0").unwrap());
        assert!(text.contains("TRAILER!!!\0"));
    }
}
