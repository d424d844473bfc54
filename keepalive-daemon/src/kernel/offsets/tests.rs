//! Cross-checks against `bpftool btf dump ... format raw`: a different parser of the same file,
//! walked here by flattening anonymous members rather than searching them.
use super::*;
use std::{collections::HashSet, path::Path, sync::OnceLock};

const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Default)]
struct RefType {
    kind: String,
    name: String,
    attrs: Vec<(String, String)>,
    /// Member, parameter or enumerator lines: name and attributes.
    items: Vec<(String, Vec<(String, String)>)>,
}

fn attr(attrs: &[(String, String)], key: &str) -> Option<u64> {
    let (_, v) = attrs.iter().find(|(k, _)| k == key)?;
    v.parse().ok()
}

/// Splits `'name' k=v k=v` (the name may hold spaces; unquoted lines have none).
fn named(text: &str) -> (String, Vec<(String, String)>) {
    let (name, rest) = match text.strip_prefix('\'').and_then(|t| t.split_once('\'')) {
        Some((name, rest)) => (name.to_string(), rest),
        None => (String::new(), text),
    };
    let attrs = rest.split_whitespace().filter_map(|kv| kv.split_once('='));
    let attrs = attrs.map(|(k, v)| (k.to_string(), v.trim_end_matches(',').to_string()));
    (name, attrs.collect())
}

/// `bpftool`'s view of the host BTF, indexed by type id (index 0 is void).
fn reference() -> &'static Vec<RefType> {
    static REF: OnceLock<Vec<RefType>> = OnceLock::new();
    REF.get_or_init(|| {
        let out = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX, "format", "raw"])
            .output()
            .expect("bpftool runs");
        assert!(out.status.success(), "bpftool failed");
        let mut types = vec![RefType::default()];
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(item) = line.strip_prefix('\t') {
                types.last_mut().expect("a type").items.push(named(item));
                continue;
            }
            let header = line.strip_prefix('[').and_then(|l| l.split_once("] "));
            let (id, rest) = header.expect("type header");
            assert_eq!(id.parse::<usize>().ok(), Some(types.len()), "ids are dense");
            let (kind, rest) = rest.split_once(' ').expect("kind");
            let (name, attrs) = named(rest);
            let kind = kind.to_string();
            types.push(RefType {
                kind,
                name,
                attrs,
                items: Vec::new(),
            });
        }
        types
    })
}

fn strip_modifiers(types: &[RefType], mut id: u64) -> &RefType {
    loop {
        let t = &types[id as usize];
        match t.kind.as_str() {
            "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                id = attr(&t.attrs, "type_id").expect("modifier target");
            }
            _ => return t,
        }
    }
}

fn ref_size(types: &[RefType], id: u64) -> Option<u64> {
    let t = strip_modifiers(types, id);
    match t.kind.as_str() {
        "PTR" => Some(8),
        "ARRAY" => Some(ref_size(types, attr(&t.attrs, "type_id")?)? * attr(&t.attrs, "nr_elems")?),
        _ => attr(&t.attrs, "size"),
    }
}

/// Name, bit offset and type id of one member as seen from an aggregate.
type Flat = (String, u64, u64);

/// Every member reachable by name from `agg`, anonymous members expanded in place.
fn flat_members(types: &[RefType], agg: &RefType, base: u64, out: &mut Vec<Flat>) {
    for (name, attrs) in &agg.items {
        let bits = base + attr(attrs, "bits_offset").expect("bits_offset");
        let type_id = attr(attrs, "type_id").expect("type_id");
        if name == "(anon)" {
            flat_members(types, strip_modifiers(types, type_id), bits, out);
        } else {
            out.push((name.clone(), bits, type_id));
        }
    }
}

fn first_aggregate<'a>(types: &'a [RefType], name: &str) -> Option<&'a RefType> {
    types.iter().find(|t| {
        matches!(t.kind.as_str(), "STRUCT" | "UNION")
            && t.name == name
            && attr(&t.attrs, "size") > Some(0)
    })
}

/// Byte offset and size of `outer.path` according to bpftool.
fn ref_member(outer: &str, path: &str) -> Option<(u32, u64)> {
    let types = reference();
    let mut agg = first_aggregate(types, outer)?;
    let (mut bits, mut type_id) = (0, 0);
    for step in path.split('.') {
        if type_id != 0 {
            agg = strip_modifiers(types, type_id);
        }
        let mut flat = Vec::new();
        flat_members(types, agg, 0, &mut flat);
        let (_, off, id) = flat.into_iter().find(|(n, _, _)| n == step)?;
        (bits, type_id) = (bits + off, id);
    }
    Some(((bits / 8) as u32, ref_size(types, type_id)?))
}

fn host() -> Btf {
    Btf::from_file(Path::new(VMLINUX)).expect("host BTF parses")
}

#[test]
fn offsets_match_bpftool() {
    let got = resolve(&host()).expect("host kernel resolves");
    let off = |outer: &str, path: &str| ref_member(outer, path).map(|(off, _)| off);
    let need = |outer: &str, path: &str| {
        off(outer, path).unwrap_or_else(|| panic!("bpftool has no {outer}.{path}"))
    };
    let sk = |field: &str| need("sock", &format!("__sk_common.{field}"));
    let v6 = |field: &str| off("sock", &format!("__sk_common.{field}")).unwrap_or(ABSENT);
    let want = Offsets {
        skc_family: sk("skc_family"),
        skc_state: sk("skc_state"),
        inet_sport: need("inet_sock", "inet_sport"),
        skc_dport: sk("skc_dport"),
        skc_rcv_saddr: sk("skc_rcv_saddr"),
        skc_daddr: sk("skc_daddr"),
        skc_v6_rcv_saddr: v6("skc_v6_rcv_saddr"),
        skc_v6_daddr: v6("skc_v6_daddr"),
        skc_net: sk("skc_net"),
        sk_err: need("sock", "sk_err"),
        sk_socket: need("sock", "sk_socket"),
        keepalive_timer: off("inet_connection_sock", "icsk_keepalive_timer")
            .unwrap_or_else(|| need("sock", "sk_timer")),
        icsk_probes_out: need("inet_connection_sock", "icsk_probes_out"),
        icsk_user_timeout: need("inet_connection_sock", "icsk_user_timeout"),
        tp_keepalive_time: need("tcp_sock", "keepalive_time"),
        tp_keepalive_intvl: need("tcp_sock", "keepalive_intvl"),
        tp_keepalive_probes: need("tcp_sock", "keepalive_probes"),
        tp_segs_out: need("tcp_sock", "segs_out"),
        net_inum: need("net", "ns.inum"),
        net_keepalive_time: need("net", "ipv4.sysctl_tcp_keepalive_time"),
        net_keepalive_intvl: need("net", "ipv4.sysctl_tcp_keepalive_intvl"),
        net_keepalive_probes: need("net", "ipv4.sysctl_tcp_keepalive_probes"),
        socket_to_inode: need("socket_alloc", "vfs_inode") - need("socket_alloc", "socket"),
        inode_ino: need("inode", "i_ino"),
        timer_function: need("timer_list", "function"),
        sk_err_soft: need("sock", "sk_err_soft"),
        ..Offsets::default()
    };
    println!("{got:#?}");
    assert_eq!(got, want);
    for &(outer, path, size) in FIXED_WIDTHS {
        let found = ref_member(outer, path).map(|(_, n)| n);
        assert_eq!(
            found,
            Some(u64::from(size)),
            "bpftool's size of {outer}.{path}"
        );
    }
}

/// Every member of every named aggregate, anonymous ones included, at the offset and with
/// the size bpftool reports: a mis-sized record anywhere would shift everything after it.
#[test]
fn every_member_matches_bpftool() {
    let (btf, types) = (host(), reference());
    let (mut seen, mut checked) = (HashSet::new(), 0);
    let aggregates = types
        .iter()
        .filter(|t| matches!(t.kind.as_str(), "STRUCT" | "UNION"));
    for agg in aggregates {
        let complete = agg.name != "(anon)" && attr(&agg.attrs, "size") != Some(0);
        if !complete || !seen.insert(&agg.name) {
            continue;
        }
        let mut flat = Vec::new();
        flat_members(types, agg, 0, &mut flat);
        for (member, bits, type_id) in flat {
            let at = format!("{}.{member}", agg.name);
            let offset = Some((bits / 8) as u32);
            assert_eq!(btf.member_offset(&agg.name, &member), offset, "{at}");
            let size = ref_size(types, type_id).map(|n| n as u32);
            assert_eq!(btf.member_size(&agg.name, &member), size, "size of {at}");
            checked += 1;
        }
    }
    assert!(checked > 50_000, "only {checked} members compared");
}

#[test]
fn enums_and_funcs_match_bpftool() {
    let (btf, types) = (host(), reference());
    let mut seen = HashSet::new();
    let enums = types.iter().filter(|t| t.kind.starts_with("ENUM"));
    let values = enums
        .flat_map(|t| &t.items)
        .filter(|(name, _)| seen.insert(name));
    // Lookups scan linearly: a sample keeps the debug build quick; the MIB is always checked.
    let sample = values
        .enumerate()
        .filter(|(i, (n, _))| i % 7 == 0 || n == "LINUX_MIB_TCPKEEPALIVE");
    for (_, (name, attrs)) in sample {
        let (_, raw) = attrs.iter().find(|(k, _)| k == "val").expect("val");
        let value: i128 = raw.trim_end_matches(['U', 'L']).parse().expect("number");
        assert_eq!(btf.enum_value(name), Some(value as i64), "{name}");
        if name == "LINUX_MIB_TCPKEEPALIVE" {
            assert_eq!(mib_keepalive(&btf).ok().map(i128::from), Some(value));
        }
    }
    assert!(seen.iter().any(|n| *n == "LINUX_MIB_TCPKEEPALIVE"));
    for func in types.iter().filter(|t| t.kind == "FUNC").step_by(41) {
        assert!(btf.has_func(&func.name), "{}", func.name);
    }
    assert!(!btf.has_func("no_such_function_xyz"));
    assert_eq!(btf.enum_value("no_such_enumerator_xyz"), None);
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("kallsyms");
    let mut names = kallsyms.lines().filter_map(|l| l.split_whitespace().nth(2));
    assert_eq!(
        has_done_with_error(&btf),
        names.any(|n| n == "tcp_done_with_error")
    );
}

/// Values known for the development host, independent of both parsers.
#[test]
fn host_kernel_known_values() {
    let btf = host();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !release.starts_with("6.18.44") {
        return;
    }
    let got = resolve(&btf).expect("resolves");
    let fields = (got.sk_err, got.icsk_probes_out, got.tp_keepalive_time);
    assert_eq!(fields, (284, 1253, 2220));
    // No icsk_keepalive_timer here yet: the keepalive timer is still sock.sk_timer.
    let icsk_timer = btf.member_offset("inet_connection_sock", "icsk_keepalive_timer");
    assert_eq!(
        (icsk_timer, got.keepalive_timer, got.net_inum),
        (None, 448, 176)
    );
    assert_eq!(mib_keepalive(&btf).ok(), Some(114));
    assert!(has_done_with_error(&btf));
    let moved = expect_offset(&btf, "tcp_sock", "inet_conn", 8).expect_err("at 0");
    assert!(
        moved.to_string().contains("(this kernel has it at 0)"),
        "{moved}"
    );
    let resized = expect_size(&btf, "tcp_sock", "keepalive_time", 8).expect_err("4");
    assert!(
        resized.to_string().contains("(this kernel's is 4 bytes)"),
        "{resized}"
    );
}

#[test]
fn truncated_or_corrupt_host_btf_is_an_error() {
    let real = std::fs::read(VMLINUX).expect("host BTF");
    for len in [0, 1, 23, 24, 4096, real.len() / 2, real.len() - 1] {
        let got = Btf::parse(&real[..len], Path::new(VMLINUX));
        assert!(matches!(got, Err(Error::Btf { .. })), "truncated to {len}");
    }
    // First type's name offset, just past the 24-byte header this kernel writes.
    let mut bad_name = real;
    bad_name[24..28].copy_from_slice(&u32::MAX.to_ne_bytes());
    let got = Btf::parse(&bad_name, Path::new(VMLINUX));
    assert!(matches!(got, Err(Error::Btf { .. })));
}

/// The one copy per event covers every socket field the programs read, and no more than the
/// socket: the end of `keepalive_intvl`, the last of them in `tcp_sock` on 6.18.
#[test]
fn sock_span_covers_the_socket_fields() {
    let o = resolve(&host()).expect("resolves");
    let span = sock_span(&o);
    for off in [
        o.tp_keepalive_intvl,
        o.tp_segs_out,
        o.icsk_probes_out,
        o.sk_flags,
    ] {
        assert!(off < span, "{off} outside {span}");
    }
    let tcp_sock = reference()
        .iter()
        .find(|t| t.kind == "STRUCT" && t.name == "tcp_sock")
        .and_then(|t| attr(&t.attrs, "size"))
        .expect("tcp_sock in BTF");
    assert!(
        u64::from(span) <= tcp_sock,
        "{span} > sizeof(tcp_sock) {tcp_sock}"
    );
    // All zeros: the 16-byte v6 addresses at 0 end last.
    assert_eq!(sock_span(&Offsets::default()), 16);
}
