//! Who each socket belongs to: its owning process (kept current from syscalls, /proc scans
//! and the owner check), its workload labels, and the listening ports that make an accepted
//! socket a server.

use super::{Entry, Inventory, LISTEN, Proc};
use crate::state::{
    labels::{Role, SocketLabels},
    owners::{Owner, Owners},
};

impl Inventory {
    pub(super) fn index(&mut self, e: &Entry) {
        if e.state == LISTEN {
            *self.listeners.entry((e.netns, e.sport)).or_default() += 1;
        }
        self.attribution.hold(e.cgroup);
    }

    pub(super) fn unindex(&mut self, e: &Entry) {
        if e.state == LISTEN
            && let Some(n) = self.listeners.get_mut(&(e.netns, e.sport))
        {
            *n -= 1;
            if *n == 0 {
                self.listeners.remove(&(e.netns, e.sport));
            }
        }
        self.attribution.release(e.cgroup);
        self.addrs.release(e.saddr);
    }

    /// Who the socket belongs to (see `state::labels`).
    pub fn labels(&self, e: &Entry) -> SocketLabels {
        let (role, port) = match e.state {
            LISTEN => (None, None),
            _ if self.listeners.contains_key(&(e.netns, e.sport)) => {
                (Some(Role::Server), Some(e.sport))
            }
            _ => (Some(Role::Client), None),
        };
        let process = self.procs.get(&e.pid).map(|p| p.comm.clone());
        // A listener has no peer.
        let peer_group = (e.state != LISTEN).then(|| self.peers.classify(e.daddr()).name.clone());
        self.attribution
            .labels(e.cgroup, process, role, port, peer_group)
    }

    /// The labels of a socket in the inventory, or closed in the last seconds.
    pub fn labels_of(&self, sk: u64) -> Option<SocketLabels> {
        match self.sockets.get(sk) {
            Some(e) => Some(self.labels(e)),
            None => self.recent.get(sk),
        }
    }

    /// Counts one more socket for the process; a pid reused by another program takes the
    /// new name.
    pub(super) fn adopt(&mut self, o: &Owner) -> u32 {
        let p = self.procs.entry(o.pid).or_insert_with(|| Proc {
            comm: o.comm.as_str().into(),
            sockets: 0,
        });
        if *p.comm != *o.comm {
            p.comm = o.comm.as_str().into();
        }
        p.sockets += 1;
        o.pid
    }

    pub(super) fn disown(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.sockets -= 1;
            if p.sockets == 0 {
                self.procs.remove(&pid);
            }
        }
    }

    /// Sockets with a file but no known owner yet: (socket, inode).
    pub fn unowned(&mut self) -> Vec<(u64, u64)> {
        // Here because it runs with every poll: the 32-bit timestamps' epoch moves on.
        self.rebase();
        // Looked up at polls 1, 2, 4, 8 and 16 after the socket appeared (0.5 to 8 s): each miss
        // is a scan of every descriptor of every process, tens of ms with 10 k sockets open,
        // which was most of a quiet daemon's CPU while it went on to poll 64. Accepted sockets
        // get their owner from the accept hook, connecting ones from their setsockopt; a socket
        // no process shows within 8 s is a kernel socket or a listener's backlog.
        const LAST_POLL: u8 = 16;
        let mut out = Vec::new();
        let sockets = &mut self.sockets;
        self.ownerless.retain(|sk| {
            let Some(e) = sockets
                .get_mut(*sk)
                .filter(|e| e.pid == 0 && e.ino != 0 && e.owner_tries() < LAST_POLL)
            else {
                return false;
            };
            let tries = e.owner_tries() + 1;
            e.set_owner_tries(tries);
            if tries.is_power_of_two() {
                out.push((*sk, e.ino.into()));
            }
            true
        });
        if self.ownerless.capacity() > 4 * self.ownerless.len().max(64) {
            self.ownerless.shrink_to_fit();
        }
        out
    }

    pub fn set_owner(&mut self, sk: u64, owner: Owner) {
        let Some((old, cgroup)) = self.sockets.get(sk).map(|e| (e.pid, e.cgroup)) else {
            return;
        };
        self.disown(old);
        let pid = self.adopt(&owner);
        // Without the socket's own cgroup (kernels before 5.15), the owner's stands in.
        let cgroup = match cgroup {
            0 => {
                let c = self.attribution.cgroup_of(pid);
                self.attribution.hold(c);
                c
            }
            c => c,
        };
        if let Some(e) = self.sockets.get_mut(sk) {
            e.pid = pid;
            e.cgroup = cgroup;
        }
        self.reclass(sk);
    }

    /// Resolves again workloads that were not known yet (see `Attribution::refresh`).
    pub fn refresh_attribution(&mut self) {
        self.attribution.refresh();
    }

    /// Processes on record as owners: the owner check looks whether any has exited.
    pub fn owner_pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// After a /proc rescan: every socket whose holder is now another process (or that had
    /// none, or whose name changed) takes the one `owners` names. Returns how many changed.
    pub fn reconcile_owners(&mut self, owners: &Owners) -> usize {
        self.reconcile_owners_at(owners, 0, usize::MAX).0
    }

    /// `reconcile_owners` for the sockets at positions `from..from + n`: a million sockets in
    /// one hold of the lock kept a re-walk's chunks and the HTTP readers waiting for it. Returns
    /// how many changed and the position to go on from (None at the end). A removal between
    /// two calls moves the last socket into the hole: at worst one is looked at twice or left
    /// to the next check.
    pub fn reconcile_owners_at(
        &mut self,
        owners: &Owners,
        from: usize,
        n: usize,
    ) -> (usize, Option<usize>) {
        // By position, with nothing collected: after start-up every socket moves, and a list
        // of them cost the heap 16 bytes a socket at the scan's peak (100 with owner names).
        // `set_owner` moves no entry, so positions hold.
        let end = from.saturating_add(n).min(self.sockets.count());
        let mut moved = 0;
        for at in from..end {
            let e = self.sockets.at(at);
            let Some(now) = (e.ino != 0).then(|| owners.cached(e.ino.into())).flatten() else {
                continue;
            };
            // Another holder, or the same one under a new name (it exec'd since).
            let renamed = self.procs.get(&e.pid).is_some_and(|p| *p.comm != *now.comm);
            if now.pid != e.pid || renamed {
                let sk = e.sk;
                self.set_owner(sk, now);
                moved += 1;
            }
        }
        (moved, (end < self.sockets.count()).then_some(end))
    }

    /// The process holding the socket, when known.
    pub fn owner(&self, e: &Entry) -> Option<Owner> {
        let p = self.procs.get(&e.pid)?;
        Some(Owner::new(e.pid, p.comm.to_string()))
    }
}
