use super::*;

/// A hand-built blob: a kind_flag struct with a bitfield and an anonymous union, a typedef
/// that refers to itself, and a signed enum.
fn synthetic() -> Vec<u8> {
    #[rustfmt::skip]
    let types: [u32; 33] = [
        1, 1 << 24, 4, 32, // [1] int
        0, 5 << 24 | 1, 4, 9, 1, 0, // [2] union { int b; }
        5, 1 << 31 | 4 << 24 | 2, 8, 7, 1, 3 << 24 | 8, 0, 2, 32, // [3] struct s { a:3 @8; union }
        13, 8 << 24, 4, // [4] typedef T T
        11, 4 << 24 | 1, 4, 7, 4, 0, // [5] struct u { T a; }
        0, 1 << 31 | 6 << 24 | 1, 4, 7, -2i32 as u32, // [6] enum { a = -2 }
    ];
    let strings = b"\0int\0s\0a\0b\0u\0T\0";
    let mut blob: Vec<u8> = [MAGIC.to_ne_bytes().to_vec(), vec![1, 0]].concat();
    for w in [24, 0, 4 * 33, 4 * 33, strings.len() as u32] {
        blob.extend(w.to_ne_bytes());
    }
    blob.extend(types.iter().flat_map(|w| w.to_ne_bytes()));
    blob.extend(strings);
    blob
}

#[test]
fn synthetic_layout() {
    let btf = Btf::parse(&synthetic(), Path::new("synthetic")).expect("valid blob");
    // The width byte of a kind_flag member must not leak into its offset.
    assert_eq!(btf.member_offset("s", "a"), Some(1));
    assert_eq!(btf.member_offset("s", "b"), Some(4));
    assert_eq!(btf.member_size("s", "b"), Some(4));
    assert_eq!(btf.member_offset("s", "a.b"), None);
    assert_eq!(btf.member_offset("s", ""), None);
    assert_eq!(btf.member_offset("u", "a"), Some(0));
    assert_eq!(btf.member_size("u", "a"), None);
    assert_eq!(btf.enum_value("a"), Some(-2));
}

#[test]
fn mutated_and_truncated_blobs_never_panic() {
    let good = synthetic();
    for len in 0..good.len() {
        let cut = Btf::parse(&good[..len], Path::new("t"));
        assert!(cut.is_err(), "prefix {len}");
    }
    for at in 0..good.len() {
        for value in [0, 1, 0x7f, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] = value;
            if let Ok(btf) = Btf::parse(&bad, Path::new("m")) {
                let _ = (btf.member_size("s", "b"), btf.member_size("u", "a"));
                let _ = (btf.member_offset("s", "a"), btf.enum_value("a"));
            }
        }
    }
}

#[test]
fn garbage_and_missing_files_are_errors() {
    let dir = std::env::temp_dir().join(format!("btf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, b"this is not BTF at all, just text\n").expect("write");
    assert!(matches!(Btf::from_file(&garbage), Err(Error::Btf { .. })));
    let missing = dir.join("missing");
    assert!(matches!(Btf::from_file(&missing), Err(Error::Io { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}
