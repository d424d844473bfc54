//! The socket table, laid out for a million sockets: the entries in one dense vector and an
//! index of 4-byte positions hashed by socket, instead of a `HashMap<u64, Entry>` (whose
//! buckets hold key and entry and stay up to half empty: 180 bytes a socket for a 112-byte
//! entry). A removal moves the last entry into the hole, so the vector never has gaps; its
//! unused capacity is never touched, so it costs address space, not memory. Local addresses,
//! which a host has few of, are kept once (`Addrs`) and named by a number in each entry.
use std::net::IpAddr;

use hashbrown::{HashMap, HashTable};

use super::Entry;

fn hash(sk: u64) -> u64 {
    // Kernel pointers share their high bits and are 64-byte aligned: mixed so that both the
    // bucket (low bits) and the tag (high 7 bits) vary.
    let x = (sk ^ (sk >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^ (x >> 32)
}

#[derive(Default)]
pub struct Table {
    entries: Vec<Entry>,
    index: HashTable<u32>,
}

impl Table {
    fn find(&self, sk: u64) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(hash(sk), |&i| entries[i as usize].sk == sk)
            .map(|&i| i as usize)
    }

    pub fn get(&self, sk: u64) -> Option<&Entry> {
        self.find(sk).map(|i| &self.entries[i])
    }

    pub fn get_mut(&mut self, sk: u64) -> Option<&mut Entry> {
        self.find(sk).map(|i| &mut self.entries[i])
    }

    pub fn contains_key(&self, sk: u64) -> bool {
        self.find(sk).is_some()
    }

    /// Inserts or replaces the entry of `e.sk`; returns the one replaced.
    pub fn insert(&mut self, e: Entry) -> Option<Entry> {
        if let Some(i) = self.find(e.sk) {
            return Some(std::mem::replace(&mut self.entries[i], e));
        }
        let at = u32::try_from(self.entries.len()).expect("fewer than 2^32 sockets");
        let entries = &self.entries;
        self.index
            .insert_unique(hash(e.sk), at, |&i| hash(entries[i as usize].sk));
        self.entries.push(e);
        None
    }

    pub fn remove(&mut self, sk: u64) -> Option<Entry> {
        let entries = &self.entries;
        let Ok(slot) = self
            .index
            .find_entry(hash(sk), |&i| entries[i as usize].sk == sk)
        else {
            return None;
        };
        let (at, _) = slot.remove();
        let at = at as usize;
        let last = self.entries.len() - 1;
        if at != last {
            // The last entry takes the hole: its index now points there.
            let moved = self.entries[last].sk;
            if let Some(i) = self.index.find_mut(hash(moved), |&i| i as usize == last) {
                *i = at as u32;
            }
        }
        let gone = self.entries.swap_remove(at);
        // A table that shrank a lot gives its memory back (after a partition's closes).
        if self.entries.capacity() > 4 * self.entries.len().max(1024) {
            self.entries.shrink_to_fit();
            let entries = &self.entries;
            self.index.shrink_to_fit(|&i| hash(entries[i as usize].sk));
        }
        Some(gone)
    }

    /// Room for `n` more entries at once (the startup walk knows how many).
    pub fn reserve(&mut self, n: usize) {
        self.entries.reserve_exact(n);
        let entries = &self.entries;
        self.index.reserve(n, |&i| hash(entries[i as usize].sk));
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// The entry at a position below `count` (positions move only when an entry is removed).
    pub fn at(&self, i: usize) -> &Entry {
        &self.entries[i]
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Entry> {
        self.entries.iter()
    }

    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Entry> {
        self.entries.iter_mut()
    }

    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|e| e.sk)
    }
}

/// Local addresses, each once, with how many entries name it.
#[derive(Default)]
pub struct Addrs {
    ids: HashMap<IpAddr, u32>,
    list: Vec<(IpAddr, u32)>,
    free: Vec<u32>,
}

impl Addrs {
    pub fn hold(&mut self, a: IpAddr) -> u32 {
        if let Some(&id) = self.ids.get(&a) {
            self.list[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.list[id as usize] = (a, 1);
                id
            }
            None => {
                self.list.push((a, 1));
                (self.list.len() - 1) as u32
            }
        };
        self.ids.insert(a, id);
        id
    }

    pub fn release(&mut self, id: u32) {
        let Some(slot) = self.list.get_mut(id as usize) else {
            return;
        };
        slot.1 -= 1;
        if slot.1 == 0 {
            self.ids.remove(&slot.0);
            self.free.push(id);
        }
    }

    pub fn get(&self, id: u32) -> IpAddr {
        self.list
            .get(id as usize)
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        ingest::decode::Kind,
        state::inventory::{Inventory, tests::ev},
    };

    /// The budget: 88 bytes an entry, 4 (and a control byte) per index slot.
    #[test]
    fn entries_stay_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 88);
    }

    /// Removals move the last entry into the hole: every socket stays found, and only those.
    #[test]
    fn removals_keep_the_index_right() {
        let mut inv = Inventory::new(Duration::from_secs(350));
        for sk in 0..3000u64 {
            inv.apply(&ev(Kind::Open, sk * 64, (sk % 3) as u32 + 1), None);
        }
        for sk in (0..3000u64).filter(|sk| sk % 7 != 0) {
            inv.apply(&ev(Kind::Gone, sk * 64, (sk % 3) as u32 + 1), None);
        }
        for sk in 0..3000u64 {
            let found = inv.get(sk * 64).map(|e| (e.sk, e.sport));
            let want = (sk % 7 == 0).then_some((sk * 64, (sk * 64) as u16));
            assert_eq!(found, want, "socket {sk}");
        }
        assert_eq!(inv.entries().count(), 3000usize.div_ceil(7));
        // The local address is kept once, and forgotten with its last socket.
        assert_eq!(inv.addrs.ids.len(), 1);
        for sk in (0..3000u64).filter(|sk| sk % 7 == 0) {
            inv.apply(&ev(Kind::Gone, sk * 64, (sk % 3) as u32 + 1), None);
        }
        assert!(inv.addrs.ids.is_empty());
    }

    fn rss_kb() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    /// The table's own cost at a million sockets, away from a host's other sockets:
    /// `cargo test --release -p keepalive-daemon --lib -- --ignored --nocapture million`.
    #[test]
    #[ignore = "a measurement: a million sockets, about a second"]
    fn a_million_sockets() {
        const N: u64 = 1_000_000;
        let events: Vec<_> = (0..N)
            .map(|i| {
                let mut e = ev(
                    Kind::Walked,
                    0xffff_8880_0000_0000 + i * 2304,
                    1 + (i % 4) as u32,
                );
                e.flow.sport = (i % 60_000) as u16;
                e.flow.daddr = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8].into();
                e.keepalive.idle_s = [60, 300, 600, 7200][(i % 4) as usize];
                e.info.sources.idle = true;
                e
            })
            .collect();
        crate::service::heap::release_freed();
        let before = rss_kb();
        let started = std::time::Instant::now();
        let mut inv = Inventory::new(Duration::from_secs(350));
        for e in &events {
            inv.apply(e, Some(crate::state::owners::Owner::new(7, "broker")));
        }
        let took = started.elapsed();
        crate::service::heap::release_freed();
        let per_socket = (rss_kb() - before) as f64 * 1024.0 / N as f64;
        let started = std::time::Instant::now();
        let moved = inv.retally(&inv.socket_ids());
        let retally = started.elapsed();
        println!(
            "{N} sockets: {per_socket:.0} B each; apply {:.0} ns each; re-tally {:.0} ns each ({moved} moved)",
            took.as_nanos() as f64 / N as f64,
            retally.as_nanos() as f64 / N as f64
        );
        assert!(per_socket <= 128.0, "{per_socket:.0} B a socket");
    }
}
