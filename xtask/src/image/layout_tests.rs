//! Tests of layout.rs: digests, reproducibility, the tar and gzip bytes.
use super::*;

fn image(binary: &[u8], epoch: u64) -> Image {
    Image {
        architecture: "amd64",
        variant: None,
        files: vec![
            File {
                path: "usr/bin/d".into(),
                bytes: binary.to_vec(),
                mode: 0o755,
            },
            File {
                path: "etc/d/config.toml".into(),
                bytes: b"# defaults\n".to_vec(),
                mode: 0o644,
            },
        ],
        config: json!({"Entrypoint": ["/usr/bin/d"]}),
        epoch,
        annotations: BTreeMap::new(),
    }
}

fn write(dir: &Path, img: &Image) -> Written {
    let mut l = Layout::create(dir).unwrap();
    let w = l.add_image(img, "t").unwrap();
    l.finish().unwrap();
    w
}

fn scratch(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ka-oci-test-{tag}-{}", std::process::id()))
}

#[test]
fn same_input_same_digest_and_any_change_shows() {
    let (a, b) = (scratch("a"), scratch("b"));
    let first = write(&a, &image(b"\x7fELF one", 1_700_000_000));
    let again = write(&b, &image(b"\x7fELF one", 1_700_000_000));
    assert_eq!(first.manifest, again.manifest);
    assert_eq!(
        fs::read(a.join("index.json")).unwrap(),
        fs::read(b.join("index.json")).unwrap()
    );
    let other_binary = write(&b, &image(b"\x7fELF two", 1_700_000_000));
    assert_ne!(first.layer, other_binary.layer);
    let other_time = write(&b, &image(b"\x7fELF one", 1_700_000_001));
    assert_ne!(first.diff_id, other_time.diff_id);
    assert_ne!(first.config, other_time.config);
    for d in [&a, &b] {
        let _ = fs::remove_dir_all(d);
    }
}

#[test]
fn blobs_are_named_by_their_digest_and_the_layer_lists_parents() {
    let dir = scratch("blobs");
    let w = write(&dir, &image(b"bin", 0));
    for d in [&w.manifest, &w.config, &w.layer] {
        let bytes = fs::read(Layout::blob_path(&dir, &d.digest)).unwrap();
        assert_eq!(sha256(&bytes), d.digest);
        assert_eq!(bytes.len() as u64, d.size);
    }
    let tar = layer_tar(&image(b"bin", 0).files, 0).unwrap();
    assert_eq!(sha256(&tar), w.diff_id);
    let mut names = Vec::new();
    for e in tar::Archive::new(&tar[..]).entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(
            (e.header().uid().unwrap(), e.header().gid().unwrap()),
            (0, 0)
        );
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(
        names,
        [
            "etc/",
            "etc/d/",
            "etc/d/config.toml",
            "usr/",
            "usr/bin/",
            "usr/bin/d"
        ]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn bad_paths_are_refused() {
    for p in ["/usr/bin/d", "usr/../etc", "usr//d"] {
        let f = File {
            path: p.into(),
            bytes: Vec::new(),
            mode: 0o644,
        };
        assert!(layer_tar(&[f], 0).is_err(), "{p}");
    }
}

#[test]
fn rfc3339_matches_known_dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(1_733_355_135), "2024-12-04T23:32:15Z");
}
