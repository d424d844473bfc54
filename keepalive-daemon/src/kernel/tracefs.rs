//! Field offsets of the syscall tracepoints, read from their `format` files: these records
//! are laid out by the kernel's tracing code, not by any struct in BTF.
use std::{fs, path::PathBuf};

use keepalive_common::Offsets;

use crate::error::{Error, Result};

const ROOTS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Mounts tracefs at /sys/kernel/tracing when nothing is there (minimal systems, VMs): the
/// syscall tracepoints are attached through it.
pub fn ensure_mounted() {
    let root = std::path::Path::new(ROOTS[0]);
    if root.join("events").exists() || !root.exists() {
        return;
    }
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (src, target, fstype) = (c("tracefs"), c(ROOTS[0]), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; a failure only leaves tracefs unmounted.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        log::debug!("mounting tracefs: {}", std::io::Error::last_os_error());
    }
}

fn format(event: &str) -> Result<String> {
    for root in ROOTS {
        let path = PathBuf::from(root)
            .join("events/syscalls")
            .join(event)
            .join("format");
        if let Ok(text) = fs::read_to_string(&path) {
            return Ok(text);
        }
    }
    Err(Error::MissingType(format!(
        "tracepoint syscalls:{event} (needs CONFIG_FTRACE_SYSCALLS and tracefs mounted at /sys/kernel/tracing)"
    )))
}

/// Offset of field `name` in a `format` file: `field:<type> <name>;\toffset:<n>;...`.
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl.rsplit([' ', '*']).next()?;
        if ident != name {
            return None;
        }
        rest.trim()
            .strip_prefix("offset:")?
            .split(';')
            .next()?
            .parse()
            .ok()
    })
}

pub fn fill(o: &mut Offsets) -> Result<()> {
    let enter = format("sys_enter_setsockopt")?;
    let exit = format("sys_exit_setsockopt")?;
    let get = |text: &str, event: &str, name: &str| {
        field_offset(text, name)
            .ok_or_else(|| Error::MissingType(format!("field {name} of syscalls:{event}")))
    };
    o.tp_setsockopt_fd = get(&enter, "sys_enter_setsockopt", "fd")?;
    o.tp_setsockopt_level = get(&enter, "sys_enter_setsockopt", "level")?;
    o.tp_setsockopt_optname = get(&enter, "sys_enter_setsockopt", "optname")?;
    o.tp_setsockopt_ret = get(&exit, "sys_exit_setsockopt", "ret")?;
    // The accept hooks read `ret` at the same offset: every sys_exit record has one layout.
    for event in ["sys_exit_accept", "sys_exit_accept4"] {
        if get(&format(event)?, event, "ret")? != o.tp_setsockopt_ret {
            return Err(Error::MissingType(format!(
                "ret of syscalls:{event} at the setsockopt offset"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTER: &str = "name: sys_enter_setsockopt\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
        \tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\
        \tfield:int level;\toffset:24;\tsize:8;\tsigned:0;\n\
        \tfield:char * optval;\toffset:40;\tsize:8;\tsigned:0;\n";

    #[test]
    fn parses_format_lines() {
        assert_eq!(field_offset(ENTER, "fd"), Some(16));
        assert_eq!(field_offset(ENTER, "level"), Some(24));
        assert_eq!(field_offset(ENTER, "optval"), Some(40));
        assert_eq!(field_offset(ENTER, "optname"), None);
    }

    /// On the real kernel (tracefs mounted): every field is found.
    #[test]
    fn host_tracefs_has_the_syscall_fields() {
        // A freshly booted host has nothing at /sys/kernel/tracing until someone mounts it;
        // the daemon does so at start, and so does this test.
        ensure_mounted();
        let mut o = Offsets::default();
        fill(&mut o).expect("syscall tracepoints");
        assert!(o.tp_setsockopt_fd >= 8 && o.tp_setsockopt_ret >= 8);
        assert_ne!(o.tp_setsockopt_level, o.tp_setsockopt_optname);
    }
}
