//! The socket inventory: the `iter/tcp` program run in every network namespace.
use aya::{
    Ebpf,
    programs::{Iter, ProgramError},
};
use log::warn;

use super::{ladder::ITER, program::describe};

/// Records handed on per read: the walk holds this many records, however many sockets the
/// host has (a million sockets buffered whole cost the daemon 150 MB and more per walk).
pub const CHUNK_RECORDS: usize = 4096;

/// Runs the `iter/tcp` program once per network namespace: one record per TCP socket. The
/// kernel walks the namespace of the task that creates the iterator file, so each file is
/// created on a thread that entered the namespace. A namespace that cannot be entered (gone
/// meanwhile) is skipped with a warning. Returns the records and the namespaces walked.
pub fn inventory(ebpf: &mut Ebpf) -> std::result::Result<(Vec<u8>, Vec<u32>), String> {
    let mut out = Vec::new();
    let walked = inventory_each(ebpf, keepalive_common::RawEvent::SIZE, &mut |recs| {
        out.extend_from_slice(recs);
        true
    })?;
    Ok((out, walked))
}

/// The same walk, handed on in slices of at most `CHUNK_RECORDS` whole records of `record`
/// bytes as the kernel produces them. `each` returning false ends the walk (its reader is
/// gone); the namespaces walked so far are returned.
pub fn inventory_each(
    ebpf: &mut Ebpf,
    record: usize,
    each: &mut (dyn FnMut(&[u8]) -> bool + Send),
) -> std::result::Result<Vec<u32>, String> {
    let it: &mut Iter = ebpf
        .program_mut(ITER)
        .ok_or("iterator missing")?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    let mut walked_ns = Vec::new();
    for (ino, path) in crate::kernel::netns::discover() {
        let link = it.attach().map_err(|e| describe(&e))?;
        let link = it.take_link(link).map_err(|e| describe(&e))?;
        let each = &mut *each;
        let walked = std::thread::scope(|scope| {
            scope
                .spawn(move || -> std::result::Result<bool, String> {
                    let ns = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                    // SAFETY: valid fd; changes only this short-lived thread.
                    if unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET)
                    } != 0
                    {
                        return Err(std::io::Error::last_os_error().to_string());
                    }
                    let mut file = link.into_file().map_err(|e| e.to_string())?;
                    read_records(&mut file, record, each).map_err(|e| e.to_string())
                })
                .join()
                .unwrap_or_else(|_| Err("iterator thread panicked".into()))
        });
        match walked {
            Ok(more) => {
                walked_ns.push(ino);
                if !more {
                    break;
                }
            }
            Err(e) => warn!("inventory of netns {ino} skipped: {e}"),
        }
    }
    Ok(walked_ns)
}

/// Reads `file` to its end, handing on whole records as they fill the buffer; a record split
/// across two reads is kept for the next. Returns false when `each` asked to stop.
fn read_records(
    file: &mut impl std::io::Read,
    record: usize,
    each: &mut (dyn FnMut(&[u8]) -> bool + Send),
) -> std::io::Result<bool> {
    let record = record.max(1);
    let mut buf = vec![0u8; record * CHUNK_RECORDS];
    let mut filled = 0;
    loop {
        let n = match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        let whole = filled - filled % record;
        if filled == buf.len() || whole >= record * (CHUNK_RECORDS / 2) {
            if !each(&buf[..whole]) {
                return Ok(false);
            }
            buf.copy_within(whole..filled, 0);
            filled -= whole;
        }
    }
    let whole = filled - filled % record;
    Ok(whole == 0 || each(&buf[..whole]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records cut across reads of any size come out whole, in order, each once.
    #[test]
    fn records_survive_short_reads() {
        struct Dribble(Vec<u8>, usize);
        impl std::io::Read for Dribble {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(out.len()).min(self.0.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let data: Vec<u8> = (0..10_000u32 * 3).map(|i| (i / 3) as u8).collect();
        for step in [1, 7, 3 * 4096, 100_000] {
            let mut got = Vec::new();
            let mut each = |r: &[u8]| {
                assert_eq!(r.len() % 3, 0);
                got.extend_from_slice(r);
                true
            };
            assert!(read_records(&mut Dribble(data.clone(), step), 3, &mut each).unwrap());
            assert_eq!(got, data, "reads of {step} bytes");
        }
        let mut calls = 0;
        let mut stop = |_: &[u8]| {
            calls += 1;
            false
        };
        assert!(!read_records(&mut Dribble(data.clone(), 3 * 4096), 3, &mut stop).unwrap());
        assert_eq!(calls, 1);
    }
}
