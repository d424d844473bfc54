//! systemd's readiness protocol (sd_notify): `READY=1` once every hook is attached, `STATUS=`
//! lines while starting and running, `STOPPING=1` on the way out. Only when NOTIFY_SOCKET is
//! set (Type=notify units); otherwise every call does nothing.
use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
};

use log::debug;

fn target() -> Option<String> {
    std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Sends one datagram of `KEY=value` lines. Failures are logged at debug level and otherwise
/// ignored: a missing notification is systemd's timeout to handle, not a reason to stop.
pub fn notify(state: &str) {
    let Some(path) = target() else { return };
    if let Err(e) = send(&path, state) {
        debug!("sd_notify to {path}: {e}");
    }
}

fn send(path: &str, state: &str) -> io::Result<()> {
    let addr = match path.strip_prefix('@') {
        // Abstract namespace socket.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

pub fn status(text: &str) {
    notify(&format!("STATUS={}", one_line(text)));
}

pub fn ready(text: &str) {
    notify(&format!(
        "READY=1\nSTATUS={}\nMAINPID={}",
        one_line(text),
        std::process::id()
    ));
}

pub fn stopping(text: &str) {
    notify(&format!("STOPPING=1\nSTATUS={}", one_line(text)));
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("ka-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("ka-notify-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
