//! The socket inventory: the `iter/tcp` program run in every network namespace.
use aya::{
    Ebpf,
    programs::{Iter, ProgramError},
};
use log::warn;

use super::{ladder::ITER, program::describe};

/// Runs the `iter/tcp` program once per network namespace: one record per TCP socket. The
/// kernel walks the namespace of the task that creates the iterator file, so each file is
/// created on a thread that entered the namespace. A namespace that cannot be entered (gone
/// meanwhile) is skipped with a warning. Returns the records and the namespaces walked.
pub fn inventory(ebpf: &mut Ebpf) -> std::result::Result<(Vec<u8>, Vec<u32>), String> {
    let it: &mut Iter = ebpf
        .program_mut(ITER)
        .ok_or("iterator missing")?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    let (mut out, mut walked_ns) = (Vec::new(), Vec::new());
    for (ino, path) in crate::kernel::netns::discover() {
        let link = it.attach().map_err(|e| describe(&e))?;
        let link = it.take_link(link).map_err(|e| describe(&e))?;
        let walked = std::thread::scope(|scope| {
            scope
                .spawn(move || -> std::result::Result<Vec<u8>, String> {
                    let ns = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                    // SAFETY: valid fd; changes only this short-lived thread.
                    if unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                    } != 0
                    {
                        return Err(std::io::Error::last_os_error().to_string());
                    }
                    let mut file = link.into_file().map_err(|e| e.to_string())?;
                    let mut buf = Vec::new();
                    std::io::Read::read_to_end(&mut file, &mut buf).map_err(|e| e.to_string())?;
                    Ok(buf)
                })
                .join()
                .unwrap_or_else(|_| Err("iterator thread panicked".into()))
        });
        match walked {
            Ok(buf) => {
                out.extend_from_slice(&buf);
                walked_ns.push(ino);
            }
            Err(e) => warn!("inventory of netns {ino} skipped: {e}"),
        }
    }
    Ok((out, walked_ns))
}
