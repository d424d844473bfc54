//! Who a socket belongs to, in the words operators search by: the process, the systemd unit
//! and slice, the container, the Kubernetes pod and namespace, whether the socket is the
//! server or the client end, and which group of peers it talks to.
//!
//! Sources, per field (docs/metrics-and-events.md has the table):
//! - `process`: the owner table (`owners`), the thread-group leader's name;
//! - `unit`, `slice`, `container`, `pod`, `k8s_namespace`: the socket's cgroup v2 id, which
//!   the kernel side reads from the socket itself (`sk_cgrp_data`, 5.15+), or else the
//!   owner's cgroup from /proc; resolved by `workload`;
//! - `role` and `port`: `server` when a listener in the socket's namespace has its local port
//!   (the socket was accepted from it), with that port; `client` otherwise; neither for a
//!   listener itself;
//! - `peer_group`: the peer address's group (`peers`).
use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use crate::state::workload::{Workload, Workloads};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Client,
    Server,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// One socket's attribution. Cheap to clone: shared strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct SocketLabels {
    pub process: Option<Arc<str>>,
    pub unit: Option<Arc<str>>,
    pub slice: Option<Arc<str>>,
    pub container: Option<Arc<str>>,
    pub pod: Option<Arc<str>>,
    pub k8s_namespace: Option<Arc<str>>,
    pub role: Option<Role>,
    /// The listening port, for servers.
    pub port: Option<u16>,
    pub peer_group: Option<Arc<str>>,
}

/// A cgroup's workload, shared by the sockets in it, in the strings labels are made of.
#[derive(Debug, Clone, Default)]
struct Held {
    unit: Option<Arc<str>>,
    slice: Option<Arc<str>>,
    container: Option<Arc<str>>,
    pod: Option<Arc<str>>,
    k8s_namespace: Option<Arc<str>>,
    sockets: u32,
    /// Not final yet: the cgroup was unknown (created after the last walk, within the walk's
    /// rate limit), or it is a pod whose name the kubelet's directory did not give yet.
    pending: bool,
}

impl Held {
    fn from(w: Option<&Workload>) -> Held {
        let s = |v: &Option<Box<str>>| v.as_deref().map(Arc::from);
        match w {
            Some(w) => Held {
                unit: s(&w.unit),
                slice: s(&w.slice),
                container: s(&w.container),
                // The pod's name when the kubelet's directories give it, else its uid.
                pod: s(&w.pod).or_else(|| s(&w.pod_uid)),
                k8s_namespace: s(&w.k8s_namespace),
                sockets: 0,
                pending: w.pod_uid.is_some() && w.pod.is_none(),
            },
            None => Held {
                pending: true,
                ..Held::default()
            },
        }
    }
}

/// The workloads of the inventory's sockets, resolved once per cgroup and kept while a socket
/// of that cgroup exists.
pub struct Attribution {
    workloads: Option<Workloads>,
    by_cgroup: HashMap<u64, Held>,
}

impl Attribution {
    pub fn new(workloads: Option<Workloads>) -> Attribution {
        Attribution {
            workloads,
            by_cgroup: HashMap::new(),
        }
    }

    /// A socket of `cgroup` joined the inventory: resolves the cgroup on its first socket.
    pub fn hold(&mut self, cgroup: u64) {
        if cgroup == 0 {
            return;
        }
        if let Some(h) = self.by_cgroup.get_mut(&cgroup) {
            h.sockets += 1;
            return;
        }
        let w = self.workloads.as_mut().and_then(|r| r.resolve(cgroup));
        let mut h = Held::from(w.as_deref());
        h.sockets = 1;
        self.by_cgroup.insert(cgroup, h);
    }

    pub fn release(&mut self, cgroup: u64) {
        if let Some(h) = self.by_cgroup.get_mut(&cgroup) {
            h.sockets -= 1;
            if h.sockets == 0 {
                self.by_cgroup.remove(&cgroup);
            }
        }
    }

    /// The cgroup of a process, for sockets whose own cgroup the kernel did not give (before
    /// 5.15).
    pub fn cgroup_of(&self, pid: u32) -> u64 {
        self.workloads
            .as_ref()
            .and_then(|w| w.cgroup_id_of_pid(pid))
            .unwrap_or(0)
    }

    /// The labels of a socket: its cgroup's workload, and the parts the caller knows.
    pub fn labels(
        &self,
        cgroup: u64,
        process: Option<Arc<str>>,
        role: Option<Role>,
        port: Option<u16>,
        peer_group: Option<Arc<str>>,
    ) -> SocketLabels {
        let h = self.by_cgroup.get(&cgroup);
        let s = |f: fn(&Held) -> &Option<Arc<str>>| h.and_then(|h| f(h).clone());
        SocketLabels {
            process,
            unit: s(|h| &h.unit),
            slice: s(|h| &h.slice),
            container: s(|h| &h.container),
            pod: s(|h| &h.pod),
            k8s_namespace: s(|h| &h.k8s_namespace),
            role,
            port,
            peer_group,
        }
    }

    /// Resolves again the cgroups that were not final (see `Held::pending`), a bounded number
    /// per call; the event loop calls it with each namespace poll. The resolver's own rate
    /// limit and negative cache keep this from walking the hierarchy more than once a second.
    pub fn refresh(&mut self) {
        const PER_CALL: usize = 4096;
        let Some(resolver) = self.workloads.as_mut() else {
            return;
        };
        let pending: Vec<u64> = self
            .by_cgroup
            .iter()
            .filter(|(_, h)| h.pending)
            .map(|(id, _)| *id)
            .take(PER_CALL)
            .collect();
        for id in pending {
            let Some(w) = resolver.resolve(id) else {
                continue;
            };
            if let Some(h) = self.by_cgroup.get_mut(&id) {
                let sockets = h.sockets;
                *h = Held::from(Some(&w));
                h.sockets = sockets;
            }
        }
    }

    /// Cgroups resolved and held now.
    pub fn cgroups(&self) -> usize {
        self.by_cgroup.len()
    }
}
