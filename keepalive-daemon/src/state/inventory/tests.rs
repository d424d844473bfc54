use super::*;

pub(super) fn ev(kind: Kind, sk: u64, netns: u32) -> KernelEvent {
    let flow = Flow {
        netns,
        saddr: [10, 0, 0, 1].into(),
        sport: sk as u16,
        daddr: [10, 0, 0, 2].into(),
        dport: 80,
    };
    KernelEvent {
        ino: sk + 1000,
        ..crate::ingest::decode::sample(kind, sk, flow, 0)
    }
}

#[test]
fn owners_are_named_once_per_process() {
    let mut inv = Inventory::new(Duration::from_secs(350));
    let redis = || Some(Owner::new(42, "redis-server"));
    inv.apply(&ev(Kind::Open, 1, 7), redis());
    inv.apply(&ev(Kind::Open, 2, 7), redis());
    inv.apply(&ev(Kind::Walked, 3, 7), None);
    inv.set_owner(3, Owner::new(43, "curl"));
    assert_eq!(inv.procs.len(), 2);
    assert_eq!(inv.procs[&42].sockets, 2);
    // A settings event without a caller keeps the owner.
    inv.apply(&ev(Kind::Settings, 1, 7), None);
    assert_eq!(inv.owner(inv.get(1).unwrap()), redis());
    inv.apply(&ev(Kind::Gone, 1, 7), None);
    assert_eq!(
        inv.view(inv.get(2).unwrap()).comm.as_deref(),
        Some("redis-server")
    );
    inv.apply(&ev(Kind::Gone, 2, 7), None);
    assert!(!inv.procs.contains_key(&42));
    // A pid reused by another program: its sockets show the new name.
    inv.apply(&ev(Kind::Open, 4, 7), Some(Owner::new(43, "python3")));
    assert_eq!(
        inv.view(inv.get(3).unwrap()).comm.as_deref(),
        Some("python3")
    );
    inv.apply(&ev(Kind::Gone, 3, 7), None);
    inv.apply(&ev(Kind::Gone, 4, 7), None);
    assert!(inv.procs.is_empty() && inv.members.is_empty());
}

#[test]
fn options_set_before_connect_name_the_owner() {
    let mut inv = Inventory::new(Duration::from_secs(350));
    let curl = Some(Owner::new(7, "curl"));
    let mut syn_sent = ev(Kind::Settings, 1, 7);
    syn_sent.info.state = 2;
    inv.apply(&syn_sent, curl.clone());
    assert!(inv.get(1).is_none());
    // ESTABLISHED comes from softirq, with no caller.
    inv.apply(&ev(Kind::Open, 1, 7), None);
    assert_eq!(inv.owner(inv.get(1).unwrap()), curl);
    assert!(inv.pending.is_empty());
    // A connect that fails closes before it is ever tracked.
    let mut failing = ev(Kind::Settings, 2, 7);
    failing.info.state = 2;
    inv.apply(&failing, curl);
    assert_eq!(inv.pending.len(), 1);
    inv.apply(&ev(Kind::Gone, 2, 7), None);
    assert!(inv.pending.is_empty() && inv.get(2).is_none());
}

#[test]
fn an_entry_stays_small() {
    // The table is most of the daemon's memory (BENCHMARKS.md, section 4). 96 B before the
    // activity ages (3 × u32, padded to 16) that real idle time and risk need.
    assert!(
        std::mem::size_of::<Entry>() <= 112,
        "{} B",
        std::mem::size_of::<Entry>()
    );
}

fn eff(on: bool, idle: u32, intvl: u32, cnt: u8, ut: u32) -> Effective {
    Effective {
        on,
        idle_s: idle,
        intvl_s: intvl,
        cnt,
        user_timeout_ms: ut,
    }
}

#[test]
fn detection_time_follows_the_kernel_rules() {
    assert_eq!(time_to_detect(&eff(true, 7200, 75, 9, 0)), Some(7875));
    assert_eq!(time_to_detect(&eff(true, 1, 1, 3, 0)), Some(4));
    assert_eq!(time_to_detect(&eff(false, 1, 1, 3, 0)), None);
    // user timeout 10 s with idle 5, intvl 2: firings at 5 (probe 1), 7, 9, 11 → gives up at 11.
    assert_eq!(time_to_detect(&eff(true, 5, 2, 9, 10_000)), Some(11));
    // A user timeout shorter than idle still needs the first probe out: idle + intvl.
    assert_eq!(time_to_detect(&eff(true, 60, 10, 9, 1_000)), Some(70));
}

#[test]
fn risk_follows_the_budget() {
    assert!(config_at_risk(&eff(false, 1, 1, 1, 0), 350));
    assert!(config_at_risk(&eff(true, 7200, 75, 9, 0), 350));
    assert!(!config_at_risk(&eff(true, 300, 75, 9, 0), 350));
}
