//! Every scenario the runner knows, across groups: the path scenarios (a connection whose path
//! breaks, checked against the kernel) and the inventory scenarios (third-party programs setting
//! keepalive options, checked against `/sockets`).

use crate::daemon::Daemon;
use crate::inventory;
use crate::report::Line;
use crate::scenarios::{self, Env};
use crate::topology::Family;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Path(scenarios::Kind),
    Inventory(inventory::Kind),
}

/// Default order: path scenarios first, they were there first and their timings are the
/// sensitive ones; the inventory group starts and stops processes and daemons of its own.
pub fn all() -> Vec<Scenario> {
    let path = scenarios::ALL.into_iter().map(Scenario::Path);
    path.chain(inventory::ALL.into_iter().map(Scenario::Inventory))
        .collect()
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Path(k) => k.name(),
            Scenario::Inventory(k) => k.name(),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Path(k) => k.describe(),
            Scenario::Inventory(k) => k.describe(),
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        all().into_iter().find(|s| s.name() == name)
    }

    pub fn run(self, family: Family, seq: usize, env: &Env, daemon: Option<&mut Daemon>) -> Line {
        match self {
            Scenario::Path(k) => scenarios::run(k, family, seq, env, daemon),
            Scenario::Inventory(k) => inventory::run(k, family, seq, env, daemon),
        }
    }
}
