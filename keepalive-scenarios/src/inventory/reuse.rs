//! Namespace inodes are recycled: the kernel hands a new namespace the lowest free number, so
//! the namespace created right after one is deleted usually has the dead one's inode. What the
//! daemon learnt about the dead namespace's sysctls must not leak onto the new one's sockets.

use super::clients::socat_client;
use super::view::{Key, Want};
use super::{Ctx, set_ns_sysctl, settings_events};
use crate::{cleanup, cmd, sock};
use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// A bare namespace with loopback up, deleted on drop.
struct Netns {
    name: String,
    ip_bin: String,
}

impl Netns {
    fn create(ip_bin: &str, name: &str) -> Result<Netns> {
        cleanup::register_netns(name);
        if let Err(e) = cmd::run(ip_bin, &["netns", "add", name], None) {
            cleanup::unregister_netns(name);
            return Err(e);
        }
        let ns = Netns {
            name: name.to_owned(),
            ip_bin: ip_bin.to_owned(),
        };
        cmd::run(ip_bin, &["-n", name, "link", "set", "lo", "up"], None)?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        cleanup::delete_netns(&self.ip_bin, &self.name);
        cleanup::unregister_netns(&self.name);
    }
}

/// One socat with SO_KEEPALIVE only, over loopback inside `ns`; returns its key once listed
/// as `want` says, after closing everything again.
fn one_socket(ctx: &mut Ctx, ns: &str, ino: u64, want_idle: u32, label: &str) -> Result<Key> {
    let obs = ctx.main_obs();
    let listener = crate::sock::listen(ns, Ipv4Addr::LOCALHOST.into())?;
    let dst: SocketAddr = listener.local_addr()?;
    let from = ctx.main.received_len();
    let mut p = socat_client(ctx, ns, dst, "keepalive")?;
    let server = sock::accept(&listener, Duration::from_secs(5))?;
    let t0 = Instant::now();
    let key = Key {
        netns: ino,
        local: server.peer_addr()?,
        peer: dst,
    };
    let mut want = Want::inherited("ESTABLISHED", true).owned_by(p.pid, &p.comm);
    want.idle.0 = want_idle;
    let (found, _) = obs.expect(key, &want, t0)?;
    ctx.record(label, found);
    // A wrong default would be corrected by the daemon's next sysctl poll (every 0.5 s), with a
    // `settings` event for a change that never happened: give it two polls to show.
    std::thread::sleep(Duration::from_millis(1200));
    ctx.record(
        &format!("{label} events"),
        settings_events(ctx.main, from, key, &want, Some(0)),
    );
    p.stop()?;
    sock::abort(server);
    drop(listener);
    let closed = Instant::now();
    let server_key = Key {
        netns: ino,
        local: dst,
        peer: key.local,
    };
    ctx.gone(&format!("{label} close"), &obs, &[key, server_key], closed)?;
    Ok(key)
}

fn inode(name: &str) -> Result<u64> {
    Ok(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(
        format!("/run/netns/{name}"),
    )?))
}

/// First namespace: tcp_keepalive_time 600 and a socket, so the daemon learns its defaults.
/// Then a namespace with the same inode, at compiled-in defaults: its socket must show 7200
/// from the start, and no `settings` event may "correct" it afterwards.
pub fn recycled_inode(ctx: &mut Ctx) -> Result<()> {
    let name = format!("{}x", ctx.topo.client);
    let first = Netns::create(&ctx.env.ip_bin, &name)?;
    let ino = inode(&name)?;
    set_ns_sysctl(&name, "tcp_keepalive_time", 600)?;
    one_socket(ctx, &name, ino, 600, "namespace before deletion")?;
    drop(first);
    // The kernel hands out the lowest free inode, and frees a deleted namespace's only once its
    // cleanup work has run. Holding every namespace that gets another number makes the first
    // one's number the lowest free as soon as it is freed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = Vec::new();
    let again = loop {
        let try_name = format!("{name}{}", held.len());
        let ns = Netns::create(&ctx.env.ip_bin, &try_name)?;
        if inode(&try_name)? == ino {
            break (ns, try_name);
        }
        held.push(ns);
        // Another program creating namespaces meanwhile may take the number first: that
        // leaves this check unexercised (said on stderr), not the daemon wrong.
        if Instant::now() > deadline || held.len() >= 64 {
            ctx.notes.push(format!(
                "namespace inode {ino} not handed out again within 5 s ({} tries): recycling not exercised",
                held.len()
            ));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(held);
    ctx.notes.push(format!("namespace inode {ino} recycled"));
    one_socket(ctx, &again.1, ino, 7200, "recycled namespace")?;
    drop(again);
    Ok(())
}
