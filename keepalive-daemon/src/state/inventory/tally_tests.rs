//! The tally against a full recount, over random sequences of real inventory operations.
use std::{collections::HashMap, time::Duration};

use proptest::prelude::*;

use super::*;
use crate::{
    ingest::{decode::Kind, sysctl::NsDefaults},
    state::{inventory::tests::ev, owners::Owner},
};

#[derive(Debug, Clone)]
enum Op {
    /// kind, socket, namespace, listening, keepalive on, own idle (0 = namespace's), peer.
    Event(u8, u64, u32, bool, bool, u32, u8),
    Owner(u64, u32),
    Defaults(u32, u32),
    Refresh(u64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 0u64..24, 1u32..3, prop::bool::weighted(0.15), any::<bool>(), 0u32..3, 0u8..3)
            .prop_map(|(k, sk, ns, l, on, idle, peer)| Op::Event(k, sk, ns, l, on, idle * 300, peer)),
        1 => (0u64..24, 1u32..4).prop_map(|(sk, pid)| Op::Owner(sk, pid)),
        1 => (1u32..3, 0u32..3).prop_map(|(ns, idle)| Op::Defaults(ns, 200 + idle * 300)),
        1 => (0u64..24, 0u8..3).prop_map(|(sk, st)| Op::Refresh(sk, st)),
    ]
}

fn run(inv: &mut Inventory, op: &Op) {
    match *op {
        Op::Event(k, sk, ns, listening, on, idle, peer) => {
            let kind = [
                Kind::Open,
                Kind::Settings,
                Kind::Walked,
                Kind::Gone,
                Kind::Probe,
                Kind::Answered,
            ][k as usize];
            let mut e = ev(kind, sk, ns);
            e.flow.daddr = [[127, 0, 0, 1], [8, 8, 8, 8], [10, 0, 0, 2]][peer as usize].into();
            // Accepted sockets share a listener's port: a listener on 80 makes them servers.
            e.flow.sport = if sk % 3 == 0 { 80 } else { sk as u16 };
            e.info.state = if listening { 10 } else { 1 };
            e.info.keepalive_on = on;
            e.info.sources.idle = idle != 0;
            e.keepalive.idle_s = idle;
            inv.apply(&e, None);
        }
        Op::Owner(sk, pid) => inv.set_owner(sk, Owner::new(pid, format!("p{pid}"))),
        Op::Defaults(ns, idle_s) => {
            inv.set_defaults(
                ns,
                NsDefaults {
                    idle_s,
                    intvl_s: 75,
                    cnt: 9,
                },
            );
        }
        Op::Refresh(sk, state) => {
            if let Some(e) = inv.get(sk) {
                let mut w = ev(Kind::Walked, sk, e.netns);
                w.flow = inv.flow(e);
                w.info.state = [1, 8, 4][state as usize];
                inv.refresh(&[w]);
            }
        }
    }
}

fn recount(inv: &Inventory) -> HashMap<Class, u64> {
    let mut m = HashMap::new();
    for e in inv.entries() {
        *m.entry(inv.class_of(e)).or_default() += 1;
    }
    m
}

fn counted(inv: &Inventory) -> HashMap<Class, u64> {
    inv.tally().classes().map(|(c, n)| (c.clone(), n)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Every operation keeps the tally right by itself, except for what a neighbour changes
    /// (a listener coming or going makes other sockets servers or clients): after the re-tally
    /// the scrape runs, the tally equals a full recount, and it never counts a socket twice or
    /// loses one.
    #[test]
    fn tally_equals_a_full_recount(ops in prop::collection::vec(op(), 1..120)) {
        let mut inv = Inventory::new(Duration::from_secs(350));
        for op in &ops {
            run(&mut inv, op);
            let total: u64 = inv.tally().classes().map(|(_, n)| n).sum();
            prop_assert_eq!(total, inv.entries().count() as u64);
            let listeners = ops.iter().any(|o| matches!(o, Op::Event(_, _, _, true, ..)));
            if !listeners {
                prop_assert_eq!(counted(&inv), recount(&inv), "after {:?}", op);
            }
        }
        inv.retally(&inv.socket_ids());
        prop_assert_eq!(counted(&inv), recount(&inv));
    }
}
