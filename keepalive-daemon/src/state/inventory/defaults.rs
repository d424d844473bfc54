//! The namespaces' keepalive sysctls, and what they make of each socket's effective settings.
use super::{Effective, Entry, Inventory, LINUX_DEFAULTS, NsDefaults};

impl Inventory {
    /// Records a namespace's sysctl values; returns the sockets whose effective config changed.
    pub fn set_defaults(&mut self, netns: u32, d: NsDefaults) -> Vec<(u64, Effective, Effective)> {
        // A poll that raced the namespace's last close must not leave defaults behind for a
        // new namespace that reuses the inode number.
        if !self.members.contains_key(&netns) {
            return Vec::new();
        }
        let Some(old) = self.defaults.insert(netns, d) else {
            return Vec::new();
        };
        if old == d {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for e in self.sockets.iter().filter(|e| e.netns == netns) {
            let after = self.effective(e);
            let before = effective_with(e, &old);
            if before != after {
                changed.push((e.sk, before, after));
            }
        }
        for (sk, _, _) in &changed {
            self.reclass(*sk);
        }
        changed
    }

    pub(super) fn leave(&mut self, netns: u32) {
        if let Some(n) = self.members.get_mut(&netns) {
            *n -= 1;
            if *n == 0 {
                self.members.remove(&netns);
                self.defaults.remove(&netns);
            }
        }
    }

    pub fn effective(&self, e: &Entry) -> Effective {
        effective_with(e, self.defaults.get(&e.netns).unwrap_or(&LINUX_DEFAULTS))
    }
}

fn effective_with(e: &Entry, d: &NsDefaults) -> Effective {
    let pick = |own: u32, def: u32| if own != 0 { own } else { def };
    Effective {
        on: e.keepalive_on(),
        idle_s: pick(e.own_idle_s.into(), d.idle_s),
        intvl_s: pick(e.own_intvl_s.into(), d.intvl_s),
        cnt: if e.own_cnt != 0 { e.own_cnt } else { d.cnt },
        user_timeout_ms: e.user_timeout_ms,
    }
}
