//! Process isolation for python grader workers, applied between fork and exec.
//!
//! Two levels, tried in order:
//! - `Root` (the service runs as root): new mount + network namespaces, every mount made
//!   read-only and nosuid recursively (`mount_setattr`), a size-capped tmpfs as the only
//!   writable place, root's home hidden under an empty tmpfs, then a drop to a per-slot
//!   unprivileged uid so that RLIMIT_NPROC applies (the kernel ignores it for root) and the
//!   worker cannot signal or ptrace anything but its own slot's processes.
//! - `UserNamespace` (not root): the same namespaces and mounts inside a new user
//!   namespace that maps only the caller's uid; RLIMIT_NPROC then counts the caller's
//!   processes.
//!
//! A grader environment (a virtualenv made by `lathe graders setup-python`, in the data
//! dir whose 0700 mode the slot uids cannot traverse) is bind-mounted read-only at
//! [`ENV_MOUNT`] inside the scratch tmpfs, and the worker's interpreter is the one there.
//!
//! rlimits (address space, CPU, file size, processes, open files, no core dumps) apply at
//! every level, including `Unsandboxed`, which exists only for development machines
//! without namespaces and must be asked for explicitly.
//!
//! Everything in `apply` runs in the forked child, so it only makes raw syscalls on data
//! prepared beforehand: no allocation, no locks.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxLevel {
    Root,
    UserNamespace,
    Unsandboxed,
}

/// What a running worker is actually confined by, for logs and the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    pub level: SandboxLevel,
    pub network_namespace: bool,
    pub read_only_filesystem: bool,
    pub scratch_tmpfs: bool,
    pub uid: Option<u32>,
}

impl SandboxReport {
    pub fn for_level(level: SandboxLevel, uid: u32) -> SandboxReport {
        let isolated = level != SandboxLevel::Unsandboxed;
        SandboxReport {
            level,
            network_namespace: isolated,
            read_only_filesystem: isolated,
            scratch_tmpfs: isolated,
            uid: (level == SandboxLevel::Root).then_some(uid),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub address_space_bytes: u64,
    pub cpu_seconds_hard: u64,
    pub file_size_bytes: u64,
    pub processes: u64,
    pub open_files: u64,
}

/// Everything the child needs, prepared in the parent.
pub struct Plan {
    level: SandboxLevel,
    limits: Limits,
    uid: u32,
    outer_uid: u32,
    outer_gid: u32,
    scratch: CString,
    tmpfs_options: CString,
    uid_map: CString,
    gid_map: CString,
    /// The grader environment to bind-mount (source) and where (target, in the scratch).
    env: Option<(CString, CString)>,
}

/// Where a grader environment appears inside a worker's scratch directory.
pub const ENV_MOUNT: &str = ".python-env";

const ROOT: &[u8] = b"/\0";
const ROOT_HOME: &[u8] = b"/root\0";
const TMPFS: &[u8] = b"tmpfs\0";
const HIDE_OPTIONS: &[u8] = b"size=64k,mode=0755\0";
const SETGROUPS: &[u8] = b"/proc/self/setgroups\0";
const UID_MAP: &[u8] = b"/proc/self/uid_map\0";
const GID_MAP: &[u8] = b"/proc/self/gid_map\0";
const DENY: &[u8] = b"deny";

// mount_setattr(2) has the same number on every architecture Lathe targets.
const SYS_MOUNT_SETATTR: libc::c_long = 442;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

impl Plan {
    /// `env`: a grader environment directory to mount at `scratch/ENV_MOUNT` (levels with
    /// a mount namespace; `Unsandboxed` runs it in place).
    pub fn new(
        level: SandboxLevel,
        limits: Limits,
        uid: u32,
        scratch: &Path,
        scratch_bytes: u64,
        env: Option<&Path>,
    ) -> io::Result<Plan> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (outer_uid, outer_gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let owner = if level == SandboxLevel::Root { uid } else { outer_uid };
        let cstr = |s: String| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
        let path = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        let env = match env {
            Some(dir) if level != SandboxLevel::Unsandboxed => Some((path(dir)?, path(&scratch.join(ENV_MOUNT))?)),
            _ => None,
        };
        Ok(Plan {
            level,
            limits,
            uid,
            outer_uid,
            outer_gid,
            scratch: CString::new(scratch.as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            tmpfs_options: cstr(format!("size={scratch_bytes},mode=0700,uid={owner},gid={owner}"))?,
            uid_map: cstr(format!("{outer_uid} {outer_uid} 1"))?,
            gid_map: cstr(format!("{outer_gid} {outer_gid} 1"))?,
            env,
        })
    }

    /// Runs in the child between fork and exec.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: raw syscalls on pointers to NUL-terminated buffers owned by `self`,
        // which outlives the call; nothing here allocates or takes a lock.
        unsafe {
            check(libc::setpgid(0, 0))?;
            // Fires when the spawning *thread* exits: spawn from runtime worker threads (as
            // the pool does), not from short-lived blocking threads.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            match self.level {
                SandboxLevel::Root => {
                    check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET))?;
                    self.isolate_filesystem()?;
                }
                SandboxLevel::UserNamespace => {
                    check(libc::unshare(
                        libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWNET,
                    ))?;
                    write_file(SETGROUPS, DENY)?;
                    write_file(UID_MAP, self.uid_map.as_bytes())?;
                    write_file(GID_MAP, self.gid_map.as_bytes())?;
                    self.isolate_filesystem()?;
                }
                SandboxLevel::Unsandboxed => {}
            }
            let l = &self.limits;
            set_limit(libc::RLIMIT_AS, l.address_space_bytes)?;
            set_limit(libc::RLIMIT_CPU, l.cpu_seconds_hard)?;
            set_limit(libc::RLIMIT_FSIZE, l.file_size_bytes)?;
            set_limit(libc::RLIMIT_NPROC, l.processes)?;
            set_limit(libc::RLIMIT_NOFILE, l.open_files)?;
            set_limit(libc::RLIMIT_CORE, 0)?;
            if self.level == SandboxLevel::Root {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(self.uid))?;
                check(libc::setuid(self.uid))?;
            }
            let _ = (self.outer_uid, self.outer_gid);
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            check(libc::chdir(self.scratch.as_ptr()))?;
        }
        Ok(())
    }

    unsafe fn isolate_filesystem(&self) -> io::Result<()> {
        // SAFETY: see `apply`.
        unsafe {
            check(libc::mount(
                std::ptr::null(),
                ROOT.as_ptr().cast(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // Hide the service account's home (credentials, caches) before freezing.
            let _ = libc::mount(
                TMPFS.as_ptr().cast(),
                ROOT_HOME.as_ptr().cast(),
                TMPFS.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                HIDE_OPTIONS.as_ptr().cast(),
            );
            set_recursively(ROOT.as_ptr().cast(), MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)?;
            // Mounted after the freeze, so it is the one writable place.
            check(libc::mount(
                TMPFS.as_ptr().cast(),
                self.scratch.as_ptr(),
                TMPFS.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.tmpfs_options.as_ptr().cast(),
            ))?;
            if let Some((source, target)) = &self.env {
                // A bind mount reaches the environment whatever the modes of the
                // directories above it; then it is frozen like the rest.
                check(libc::mkdir(target.as_ptr(), 0o755))?;
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                set_recursively(
                    target.as_ptr(),
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                )?;
            }
        }
        Ok(())
    }
}

/// `mount_setattr(path, AT_RECURSIVE)` setting `attr_set` on the mount at `path` and
/// every mount below it.
///
/// # Safety
/// `path` must point at a NUL-terminated string; raw syscall, no allocation.
unsafe fn set_recursively(path: *const libc::c_char, attr_set: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is NUL-terminated (the caller's promise) and `attr` lives across the call.
    let rc = unsafe {
        libc::syscall(
            SYS_MOUNT_SETATTR,
            libc::AT_FDCWD,
            path,
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

unsafe fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit on the stack.
    check(unsafe { libc::setrlimit(resource, &lim) })
}

unsafe fn write_file(path: &[u8], data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; `data` is a valid slice.
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n < 0 || n as usize != data.len() {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Kills every process running as `uid` (a fork bomb's children may have left the
/// worker's process group). Runs a short-lived helper that takes the uid and signals -1.
pub async fn kill_uid(uid: u32) {
    let mut cmd = tokio::process::Command::new("/bin/true");
    // SAFETY: only async-signal-safe syscalls on plain integers.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(1);
            }
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0);
        });
    }
    if let Ok(mut child) = cmd.spawn() {
        let _ = child.wait().await;
    }
}
