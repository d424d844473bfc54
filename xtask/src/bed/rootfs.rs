//! The test bed's Debian system: a root file system built with `mmdebstrap` from the same mirror
//! apt uses, with the suite's own cloud kernel (the one the VM harness boots for that kernel
//! name), systemd as PID 1 and the services the checks need, packed into an ext4 disk image
//! with `mke2fs -d` (no loop mount). Cached under target/bed/<kernel>/ and booted with QEMU's
//! `snapshot=on`, so every boot starts from the same pristine disk.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    exec::{exec, privileged},
    vm::{self, kernels::Kernel},
};

/// Bump when the image's contents change in a way its inputs below do not show.
const REVISION: u32 = 1;

/// What the system under test holds beyond `minbase`: systemd as init, the kernel and its
/// initramfs, and what the guest script uses. `redis-server` is the real service whose
/// connections the checks watch; `redis-tools` the client in the other namespace.
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "initramfs-tools",
    "iproute2",
    "nftables",
    "curl",
    "bpftool",
    "procps",
    "redis-server",
    "redis-tools",
];

/// The unit that runs the guest script from the payload disk (/dev/vdb) once the system is up.
/// `Type=simple`: a oneshot would keep the boot "not finished" and `is-system-running --wait`
/// in the script would wait for itself.
const TEST_UNIT: &str = "\
[Unit]
Description=keepalive-daemon test bed: install the package and check the service
After=multi-user.target

[Service]
Type=simple
ExecStart=/bin/sh -c 'mkdir -p /bed && mount /dev/vdb /bed && exec /bin/bash /bed/guest.sh'
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
";

pub struct Image {
    pub disk: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

/// The cached image for `kernel`, built first when missing, stale or `refresh` is set.
pub fn prepare(kernel: &Kernel, refresh: bool) -> Result<Image> {
    let dir = PathBuf::from("target/bed").join(kernel.name);
    let image = Image {
        disk: dir.join("root.img"),
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    let stamp = dir.join("stamp");
    let inputs = format!(
        "revision {REVISION}\nsuite {}\nkernel {}\npackages {}\n",
        kernel.suite,
        kernel.metapackage,
        PACKAGES.join(",")
    );
    let cached = [&image.disk, &image.vmlinuz, &image.initrd]
        .iter()
        .all(|p| p.is_file());
    if !refresh && cached && fs::read_to_string(&stamp).is_ok_and(|s| s == inputs) {
        eprintln!(
            "bed: using the cached {} image ({})",
            kernel.name,
            dir.display()
        );
        return Ok(image);
    }
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(&dir)?;
    let root = dir.join("rootfs");
    if root.exists() {
        exec(privileged("rm").arg("-rf").arg(&root))?;
    }
    let mut cmd = privileged("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--format=directory"])
        .arg(format!(
            "--include={},{}",
            kernel.metapackage,
            PACKAGES.join(",")
        ))
        .arg(kernel.suite)
        .arg(&root);
    // One argument per sources.list line; mmdebstrap reads each as a line.
    for line in vm::sources_for(kernel.suite)?.lines() {
        cmd.arg(line);
    }
    exec(&mut cmd)?;
    customize(&root)?;
    copy_boot_file(&root, "vmlinuz-", &image.vmlinuz)?;
    copy_boot_file(&root, "initrd.img-", &image.initrd)?;
    let _ = fs::remove_file(&image.disk);
    // The tree is root's (mmdebstrap ran as root): reading it all takes root too.
    exec(
        privileged("mke2fs")
            .args([
                "-q",
                "-t",
                "ext4",
                "-L",
                "bedroot",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&root)
            .arg(&image.disk)
            .arg("3G"),
    )?;
    exec(privileged("rm").arg("-rf").arg(&root))?;
    fs::write(&stamp, inputs)?;
    Ok(image)
}

/// What makes the system a test bed: the serial login prompt masked (it would hang up the
/// console the results are reported on) and the test unit enabled.
fn customize(root: &Path) -> Result<()> {
    let units = root.join("etc/systemd/system");
    let getty = units.join("serial-getty@ttyS0.service");
    let _ = fs::remove_file(&getty);
    symlink("/dev/null", &getty)?;
    fs::write(units.join("bed-test.service"), TEST_UNIT)?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let link = wants.join("bed-test.service");
    let _ = fs::remove_file(&link);
    symlink("/etc/systemd/system/bed-test.service", link)?;
    fs::write(root.join("etc/hostname"), "bed\n")?;
    Ok(())
}

/// Copies /boot/<prefix><release> out of the root file system: the kernel and the initramfs
/// the suite's own initramfs-tools built for it.
fn copy_boot_file(root: &Path, prefix: &str, to: &Path) -> Result<()> {
    let boot = root.join("boot");
    let mut found: Vec<PathBuf> = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    let Some(from) = found.pop() else {
        bail!("no {prefix}* in {}", boot.display());
    };
    fs::copy(&from, to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}
