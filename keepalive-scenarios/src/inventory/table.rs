//! The `keepalive-daemon sockets` table, read back column by column.

use super::view::{SYSCTL, Want, detect_after};
use std::net::SocketAddr;

/// Where the table's Workload column is (one token: `pod:…`, `container:…`, a unit or `-`);
/// the attribution scenario checks workloads through /sockets, so rows come back without it.
const WORKLOAD_COLUMN: usize = 4;

/// The row of a `keepalive-daemon sockets` table for `local` → `peer`, as its columns, the
/// Workload column left out.
pub fn table_row(table: &str, local: SocketAddr, peer: SocketAddr) -> Option<Vec<String>> {
    let mut row = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cols| {
            cols.len() >= 12 && cols[1] == local.to_string() && cols[2] == peer.to_string()
        })?;
    row.remove(WORKLOAD_COLUMN);
    Some(row)
}

/// The columns the table must show for a socket matching `want` (State … TTD; Next varies).
pub fn table_expect(want: &Want, local: SocketAddr, peer: SocketAddr) -> Vec<String> {
    let src = |(v, from): (u32, &str)| {
        if from == SYSCTL {
            format!("{v}*")
        } else {
            v.to_string()
        }
    };
    let owner = want
        .owner
        .as_ref()
        .map_or("-".to_owned(), |(pid, comm)| format!("{comm}/{pid}"));
    let ttd = detect_after(
        want.on,
        want.idle.0,
        want.intvl.0,
        want.cnt.0,
        want.user_timeout_ms,
    );
    vec![
        want.state.to_owned(),
        local.to_string(),
        peer.to_string(),
        owner,
        if want.on { "on" } else { "off" }.to_owned(),
        src(want.idle),
        src(want.intvl),
        src(want.cnt),
        want.user_timeout_ms.to_string(),
        ttd.map_or("-".to_owned(), |t| t.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_are_found_by_endpoints() {
        let t = "State Local Peer Process Workload KA Idle Intvl Cnt UserTO TTD Next Risk\n\
                 ESTABLISHED 192.0.2.2:4000 198.51.100.2:80 socat/7 - on 11 4 5 0 31 10.9s\n";
        let (l, p) = (
            "192.0.2.2:4000".parse().unwrap(),
            "198.51.100.2:80".parse().unwrap(),
        );
        let row = table_row(t, l, p).unwrap();
        assert_eq!(
            row[..10],
            table_expect(&Want::own(11, 4, 5, 0).owned_by(7, "socat"), l, p)[..]
        );
    }
}
