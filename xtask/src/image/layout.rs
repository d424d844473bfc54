//! An OCI image layout (image-spec v1.1, `image-layout.md`) written directly: `oci-layout`,
//! `index.json` and content-addressed blobs under `blobs/sha256/`. No container daemon and no
//! builder: the image is one layer holding a static binary and its config file, so a tar
//! writer, gzip and sha256 are all it takes, and every byte follows from the inputs (file
//! contents, the epoch, the labels): the same commit gives the same digests.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation an `oci:DIR:TAG` reference looks up in index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A file of the image's single layer.
pub struct File {
    /// Path in the image, without the leading `/`.
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// What goes into one platform's image.
pub struct Image {
    /// GOARCH spelling, as the image config wants it: `amd64`, `arm64`.
    pub architecture: &'static str,
    /// `v8` for arm64, as registries and runtimes match it.
    pub variant: Option<&'static str>,
    pub files: Vec<File>,
    /// The image config's `config` object (Entrypoint, Cmd, ExposedPorts, Labels, …).
    pub config: Value,
    /// Seconds since the epoch: `created`, and every file's mtime.
    pub epoch: u64,
    /// Manifest annotations (the OCI `org.opencontainers.image.*` keys).
    pub annotations: BTreeMap<String, String>,
}

/// A content descriptor: what index.json and manifests point with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: &'static str,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// What was written for one platform, for the checks that follow.
#[derive(Debug, Clone)]
pub struct Written {
    pub architecture: &'static str,
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layer: Descriptor,
    /// sha256 of the uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_id: String,
}

pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An image layout directory being written.
pub struct Layout {
    dir: PathBuf,
    /// index.json's entries, in the order added.
    entries: Vec<Value>,
}

impl Layout {
    /// Starts a fresh layout at `dir` (whatever was there is removed: blobs of an earlier
    /// build would otherwise linger unreferenced).
    pub fn create(dir: &Path) -> Result<Self> {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
        })
    }

    pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn put(&self, media_type: &'static str, bytes: &[u8]) -> Result<Descriptor> {
        let digest = sha256(bytes);
        let path = Self::blob_path(&self.dir, &digest);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(Descriptor {
            media_type,
            digest,
            size: bytes.len() as u64,
        })
    }

    /// Writes one platform's layer, config and manifest; the manifest is tagged `tag` in
    /// index.json.
    pub fn add_image(&mut self, image: &Image, tag: &str) -> Result<Written> {
        let tar = layer_tar(&image.files, image.epoch)?;
        let diff_id = sha256(&tar);
        let layer = self.put(MEDIA_LAYER, &gzip(&tar)?)?;
        let created = rfc3339(image.epoch);
        let mut config = json!({
            "created": created,
            "architecture": image.architecture,
            "os": "linux",
            "config": image.config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "cargo xtask image"}],
        });
        if let Some(v) = image.variant {
            config["variant"] = json!(v);
        }
        let config = self.put(MEDIA_CONFIG, &serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": config.json(),
            "layers": [layer.json()],
            "annotations": image.annotations,
        });
        let manifest = self.put(MEDIA_MANIFEST, &serde_json::to_vec(&manifest)?)?;
        let mut entry = manifest.json();
        entry["platform"] = platform(image.architecture, image.variant);
        entry["annotations"] = json!({ REF_NAME: tag });
        self.entries.push(entry);
        Ok(Written {
            architecture: image.architecture,
            manifest,
            config,
            layer,
            diff_id,
        })
    }

    /// Adds an image index of the given platform manifests, tagged `tag`: the multi-platform
    /// reference that `skopeo copy --all` pushes and runtimes resolve to their platform.
    pub fn add_index(
        &mut self,
        images: &[(&Written, Option<&'static str>)],
        tag: &str,
    ) -> Result<Descriptor> {
        let manifests: Vec<Value> = images
            .iter()
            .map(|(w, variant)| {
                let mut m = w.manifest.json();
                m["platform"] = platform(w.architecture, *variant);
                m
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests});
        let d = self.put(MEDIA_INDEX, &serde_json::to_vec(&index)?)?;
        let mut entry = d.json();
        entry["annotations"] = json!({ REF_NAME: tag });
        self.entries.push(entry);
        Ok(d)
    }

    /// Writes index.json; the layout is complete afterwards.
    pub fn finish(self) -> Result<PathBuf> {
        let index =
            json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": self.entries});
        fs::write(self.dir.join("index.json"), serde_json::to_vec(&index)?)?;
        Ok(self.dir)
    }
}

fn platform(architecture: &str, variant: Option<&str>) -> Value {
    let mut p = json!({"architecture": architecture, "os": "linux"});
    if let Some(v) = variant {
        p["variant"] = json!(v);
    }
    p
}

/// The layer: every file with its parent directories, root-owned, mtime `epoch`, in path
/// order, so the tar (and its digest) depends on nothing but the inputs.
pub fn layer_tar(files: &[File], epoch: u64) -> Result<Vec<u8>> {
    let mut entries: BTreeMap<String, Option<(&[u8], u32)>> = BTreeMap::new();
    for f in files {
        ensure!(
            !f.path.starts_with('/') && !f.path.split('/').any(|c| c.is_empty() || c == ".."),
            "image path {:?} must be relative and plain",
            f.path
        );
        let parts: Vec<&str> = f.path.split('/').collect();
        for i in 1..parts.len() {
            entries
                .entry(format!("{}/", parts[..i].join("/")))
                .or_insert(None);
        }
        entries.insert(f.path.clone(), Some((&f.bytes, f.mode)));
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, file) in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)?;
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("root")?;
        h.set_groupname("root")?;
        h.set_mtime(epoch);
        match file {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                tar.append(&h, std::io::empty())?;
            }
            Some((bytes, mode)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(bytes.len() as u64);
                h.set_cksum();
                tar.append(&h, *bytes)?;
            }
        }
    }
    Ok(tar.into_inner()?)
}

/// gzip without a name or timestamp in its header: the same bytes give the same blob.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// The layout as one `oci-archive` tar (what `podman load` and `skopeo copy oci-archive:`
/// read), with fixed metadata like the layer.
pub fn archive(dir: &Path, out: &Path, epoch: u64) -> Result<()> {
    let mut files = Vec::new();
    for name in ["oci-layout", "index.json"] {
        files.push(File {
            path: name.into(),
            bytes: fs::read(dir.join(name))?,
            mode: 0o644,
        });
    }
    let mut blobs: Vec<PathBuf> = fs::read_dir(dir.join("blobs/sha256"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    blobs.sort();
    for b in blobs {
        let name = b.file_name().context("blob name")?.to_string_lossy();
        files.push(File {
            path: format!("blobs/sha256/{name}"),
            bytes: fs::read(&b)?,
            mode: 0o644,
        });
    }
    fs::write(out, layer_tar(&files, epoch)?).with_context(|| format!("writing {}", out.display()))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (civil-from-days, proleptic Gregorian).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
