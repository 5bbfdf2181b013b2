//! Process isolation for python grader workers, applied between fork and exec.
//!
//! The threat is a hostile `grade()`: it must not reach the server (its pid, its data
//! dir, its database), other users' or other servers' files, host processes, any socket,
//! or the kernel's wider attack surface. Two levels, tried in order:
//! - `Root` (the service runs as root): new mount, network, IPC and PID namespaces, then a
//!   drop to a per-slot unprivileged uid without capabilities, so that RLIMIT_NPROC applies
//!   (the kernel ignores it for root) and host files are judged against a stranger's uid.
//! - `UserNamespace` (not root): the same namespaces inside a new user namespace that maps
//!   only the caller's uid. From the host the worker still carries the server's uid (an
//!   unprivileged process cannot take another without setuid helpers), so everything that
//!   uid could reach is taken out of view instead: the PID namespace leaves no server pid
//!   to signal or ptrace, the allowlist root leaves no data dir to read.
//!
//! At both levels the worker's root is an *allowlist*: a fresh read-only tmpfs, pivoted
//! into, holding read-only binds of what an interpreter needs (`/usr`, `/lib*`, `/bin`,
//! `/etc/ld.so.cache`, `/etc/alternatives`, four `/dev` nodes, the interpreter's prefix
//! when it lives elsewhere, the grader environment at [`ENV_MOUNT`]) and a size-capped
//! private tmpfs at `/tmp`, the only writable place (scratch, `HOME`, `TMPDIR`). There is no `/proc`, `/sys`, `/home`,
//! `/root`, `/var` or `/etc/passwd`, no host `/tmp` (so no Unix socket to connect to), no
//! data dir: what is not bound does not exist in the worker's world.
//!
//! The worker process is pid 1 of its PID namespace: `unshare(CLONE_NEWPID)` only moves
//! the caller's *children*, so the forked child forks once more; the middle process stays
//! in the host's PID namespace, holds no descriptors, waits for pid 1 and exits with its
//! status, so the pool's `Child` still reports how the worker died. When pid 1 dies, the
//! kernel kills everything in its namespace (a fork bomb's strays included).
//!
//! Last, a seccomp filter (built in the parent with `seccompiler`, installed in pid 1
//! after `PR_SET_NO_NEW_PRIVS`, inherited by everything it starts) answers EPERM to:
//! `socket` (every family: python runs without one; `socketpair` stays, it reaches
//! nothing), namespace creation and entry (`unshare`, `setns`, `clone` with any
//! `CLONE_NEW*` flag; `clone3`, whose flags sit behind a pointer the filter cannot read,
//! answers ENOSYS so libc falls back to `clone`), mounts and root changes, `ptrace`,
//! `process_vm_*`, `pidfd_getfd`, `kcmp`, `bpf`, `perf_event_open`, `userfaultfd`,
//! `io_uring_*`, keyrings, module and kexec loading, `personality` and other host-wide
//! knobs. x86-64's x32 numbers of the same calls are denied too (seccompiler only checks
//! the architecture, and x32 shares it). A second, stricter filter ([`grade_filter`]) is
//! handed to the worker, which installs it in each grading child: no `execve` there.
//!
//! rlimits (address space, CPU, file size, processes, open files, no core dumps) and the
//! seccomp filter apply at every level, including `Unsandboxed`, which exists only for
//! development machines without namespaces and must be asked for explicitly.
//!
//! Everything in `apply` runs in the forked child, so it only makes raw syscalls on data
//! prepared beforehand: no allocation, no locks.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
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
    pub pid_namespace: bool,
    /// The worker's root is an allowlist of read-only binds plus a private `/tmp`.
    pub allowlist_root: bool,
    pub read_only_filesystem: bool,
    pub scratch_tmpfs: bool,
    pub seccomp: bool,
    pub uid: Option<u32>,
}

impl SandboxReport {
    pub fn for_level(level: SandboxLevel, uid: u32) -> SandboxReport {
        let isolated = level != SandboxLevel::Unsandboxed;
        SandboxReport {
            level,
            network_namespace: isolated,
            pid_namespace: isolated,
            allowlist_root: isolated,
            read_only_filesystem: isolated,
            scratch_tmpfs: isolated,
            seccomp: true,
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

/// Where a grader environment appears in a worker's root.
pub const ENV_MOUNT: &str = "/python-env";
/// The worker's scratch directory (its private tmpfs) inside its root.
pub const SCRATCH: &str = "/tmp";

/// Host directories bound read-only into every worker's root (those that exist; a
/// symlink, as `/bin -> usr/bin` on merged-/usr systems, is recreated as one).
/// `/etc/alternatives` holds only symlinks, through which `/usr/bin/python3` may resolve.
const SYSTEM_DIRS: &[&str] = &[
    "/usr",
    "/bin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
];
/// Host files bound read-only, when they exist.
const SYSTEM_FILES: &[&str] = &["/etc/ld.so.cache"];
/// Device nodes bound (writable: writes to /dev/null are how output is discarded).
const DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"];

/// One thing to create in the new root before binding onto it.
enum Node {
    Dir(CString),
    /// An empty file, the mount point of a file bind.
    File(CString),
    /// (link path, target)
    Symlink(CString, CString),
}

struct Bind {
    source: CString,
    target: CString,
    /// Device nodes keep `dev`; everything else is `nodev` as well.
    device: bool,
}

/// Everything the child needs, prepared in the parent.
pub struct Plan {
    level: SandboxLevel,
    limits: Limits,
    uid: u32,
    /// The host directory the new root's tmpfs is mounted on (the slot's directory).
    root: CString,
    root_options: CString,
    /// `root` + `/tmp`.
    scratch: CString,
    scratch_options: CString,
    nodes: Vec<Node>,
    binds: Vec<Bind>,
    uid_map: CString,
    gid_map: CString,
    filters: [BpfProgram; 2],
}

const TMPFS: &[u8] = b"tmpfs\0";
const DOT: &[u8] = b".\0";
const SLASH: &[u8] = b"/\0";
const SCRATCH_C: &[u8] = b"/tmp\0";
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
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn c_string(s: String) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `path` inside the new root mounted at `root` (`path` is absolute).
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

impl Plan {
    /// `root`: an empty host directory for the slot, where its root tmpfs is mounted.
    /// `extra_dirs`: host directories bound read-only at the same path (an interpreter
    /// prefix outside `/usr`). `env`: a grader environment bound at [`ENV_MOUNT`].
    pub fn new(
        level: SandboxLevel,
        limits: Limits,
        uid: u32,
        root: &Path,
        scratch_bytes: u64,
        extra_dirs: &[PathBuf],
        env: Option<&Path>,
    ) -> io::Result<Plan> {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (outer_uid, outer_gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let owner = if level == SandboxLevel::Root { uid } else { outer_uid };
        let mut nodes = Vec::new();
        let mut binds = Vec::new();
        if level != SandboxLevel::Unsandboxed {
            let mut made = std::collections::HashSet::new();
            // Mount points for `path`: its parent directories, then itself.
            let mut mkdirs = |nodes: &mut Vec<Node>, path: &Path| -> io::Result<()> {
                for dir in path.ancestors().collect::<Vec<_>>().into_iter().rev().skip(1) {
                    if made.insert(dir.to_path_buf()) {
                        nodes.push(Node::Dir(c_path(&under(root, dir))?));
                    }
                }
                Ok(())
            };
            let dirs = SYSTEM_DIRS.iter().map(PathBuf::from).chain(extra_dirs.iter().cloned());
            for dir in dirs {
                let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                    continue;
                };
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&dir)?;
                    if let Some(parent) = dir.parent() {
                        mkdirs(&mut nodes, parent)?;
                    }
                    nodes.push(Node::Symlink(c_path(&under(root, &dir))?, c_path(&target)?));
                } else if meta.is_dir() {
                    mkdirs(&mut nodes, &dir)?;
                    binds.push(Bind {
                        source: c_path(&dir)?,
                        target: c_path(&under(root, &dir))?,
                        device: false,
                    });
                }
            }
            let files = SYSTEM_FILES
                .iter()
                .map(|f| (f, false))
                .chain(DEVICES.iter().map(|d| (d, true)));
            for (file, device) in files {
                let file = Path::new(file);
                if !file.exists() {
                    continue;
                }
                if let Some(parent) = file.parent() {
                    mkdirs(&mut nodes, parent)?;
                }
                nodes.push(Node::File(c_path(&under(root, file))?));
                binds.push(Bind {
                    source: c_path(file)?,
                    target: c_path(&under(root, file))?,
                    device,
                });
            }
            if let Some(env) = env {
                mkdirs(&mut nodes, Path::new(ENV_MOUNT))?;
                binds.push(Bind {
                    source: c_path(env)?,
                    target: c_path(&under(root, Path::new(ENV_MOUNT)))?,
                    device: false,
                });
            }
            mkdirs(&mut nodes, Path::new(SCRATCH))?;
        }
        Ok(Plan {
            level,
            limits,
            uid,
            root: c_path(root)?,
            root_options: c_string("size=1m,mode=0755".into())?,
            scratch: c_path(&under(root, Path::new(SCRATCH)))?,
            scratch_options: c_string(format!("size={scratch_bytes},mode=0700,uid={owner},gid={owner}"))?,
            nodes,
            binds,
            uid_map: c_string(format!("{outer_uid} {outer_uid} 1"))?,
            gid_map: c_string(format!("{outer_gid} {outer_gid} 1"))?,
            filters: worker_filters()?,
        })
    }

    /// Runs in the child between fork and exec. At the namespaced levels the child forks
    /// again here: the middle process never returns (it waits for its child, pid 1 of the
    /// new PID namespace, and exits with its status); pid 1 returns and is exec'd.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: raw syscalls on pointers to NUL-terminated buffers owned by `self`,
        // which outlives the call; nothing here allocates or takes a lock.
        unsafe {
            check(libc::setpgid(0, 0))?;
            // Fires when the spawning *thread* exits: spawn from runtime worker threads (as
            // the pool does), not from short-lived blocking threads.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            set_limit(libc::RLIMIT_CORE, 0)?;
            let namespaces = libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWPID;
            match self.level {
                SandboxLevel::Root => {
                    check(libc::unshare(namespaces))?;
                    self.build_root()?;
                    self.become_pid_one()?;
                }
                SandboxLevel::UserNamespace => {
                    check(libc::unshare(libc::CLONE_NEWUSER | namespaces))?;
                    write_file(SETGROUPS, DENY)?;
                    write_file(UID_MAP, self.uid_map.as_bytes())?;
                    write_file(GID_MAP, self.gid_map.as_bytes())?;
                    self.build_root()?;
                    self.become_pid_one()?;
                }
                SandboxLevel::Unsandboxed => {}
            }
            let l = &self.limits;
            set_limit(libc::RLIMIT_AS, l.address_space_bytes)?;
            set_limit(libc::RLIMIT_CPU, l.cpu_seconds_hard)?;
            set_limit(libc::RLIMIT_FSIZE, l.file_size_bytes)?;
            set_limit(libc::RLIMIT_NPROC, l.processes)?;
            set_limit(libc::RLIMIT_NOFILE, l.open_files)?;
            if self.level == SandboxLevel::Root {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(self.uid))?;
                check(libc::setuid(self.uid))?;
            }
            if self.level != SandboxLevel::Unsandboxed {
                check(libc::chdir(SCRATCH_C.as_ptr().cast()))?;
            }
        }
        // Last: each sets PR_SET_NO_NEW_PRIVS, then its filter; no allocation (seccompiler
        // passes the prepared program's pointer to the kernel).
        for filter in &self.filters {
            seccompiler::apply_filter(filter).map_err(|e| match e {
                seccompiler::Error::Prctl(e) | seccompiler::Error::Seccomp(e) => e,
                // Never boxes an error here: std reports only the errno from the child.
                _ => io::Error::from_raw_os_error(libc::EINVAL),
            })?;
        }
        Ok(())
    }

    /// Mounts a tmpfs on the slot's directory, fills it with the allowlist, freezes it
    /// read-only and pivots into it; the host's root is then detached.
    unsafe fn build_root(&self) -> io::Result<()> {
        // SAFETY: see `apply`.
        unsafe {
            // Nothing done here propagates back to the host's mounts.
            check(libc::mount(
                std::ptr::null(),
                SLASH.as_ptr().cast(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                TMPFS.as_ptr().cast(),
                self.root.as_ptr(),
                TMPFS.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.root_options.as_ptr().cast(),
            ))?;
            for node in &self.nodes {
                match node {
                    Node::Dir(path) => check(libc::mkdir(path.as_ptr(), 0o755))?,
                    Node::File(path) => {
                        let fd = libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                        check(fd)?;
                        libc::close(fd);
                    }
                    Node::Symlink(path, target) => check(libc::symlink(target.as_ptr(), path.as_ptr()))?,
                }
            }
            for bind in &self.binds {
                check(libc::mount(
                    bind.source.as_ptr(),
                    bind.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                let attrs = if bind.device {
                    MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC
                } else {
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
                };
                set_attrs(bind.target.as_ptr(), attrs, AT_RECURSIVE)?;
            }
            check(libc::mount(
                TMPFS.as_ptr().cast(),
                self.scratch.as_ptr(),
                TMPFS.as_ptr().cast(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.scratch_options.as_ptr().cast(),
            ))?;
            // Only the root tmpfs itself: `/tmp` under it stays writable.
            set_attrs(
                self.root.as_ptr(),
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                0,
            )?;
            // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves
            // the new root alone, with no path back to the host's tree.
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, DOT.as_ptr(), DOT.as_ptr()) as libc::c_int)?;
            check(libc::umount2(DOT.as_ptr().cast(), libc::MNT_DETACH))?;
            check(libc::chdir(SLASH.as_ptr().cast()))?;
        }
        Ok(())
    }

    /// After `unshare(CLONE_NEWPID)`: forks; the child (pid 1 there) returns, the parent
    /// waits for it and never returns. SIGTERM to the parent (the pool's way to stop a
    /// worker) kills pid 1; pid 1's exit kills and reaps its whole namespace, then the
    /// parent reaps pid 1, so no worker process is ever left to the host's init to reap
    /// (until it does, a zombie counts against the slot uid's RLIMIT_NPROC).
    unsafe fn become_pid_one(&self) -> io::Result<()> {
        // SAFETY: fork/waitpid/close/kill/_exit on plain integers.
        unsafe {
            let pid = libc::fork();
            check(pid)?;
            if pid == 0 {
                // Dies with the middle process (killed by the pool with its group).
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                return Ok(());
            }
            // The middle process keeps no descriptor: not the worker's pipes (the pool
            // must see EOF when pid 1 dies), not std's exec-status pipe (whose EOF tells
            // the spawner that pid 1's exec succeeded), whatever their numbers.
            if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
                // Before Linux 5.9: one by one, up to the descriptor limit.
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                for fd in 0..lim.rlim_cur.min(1 << 20) as libc::c_int {
                    libc::close(fd);
                }
            }
            PID_ONE.store(pid, Ordering::Relaxed);
            libc::signal(libc::SIGTERM, kill_pid_one as *const () as libc::sighandler_t);
            let mut status = 0;
            loop {
                let rc = libc::waitpid(pid, &mut status, 0);
                if rc == pid {
                    break;
                }
                if rc == -1 && *libc::__errno_location() != libc::EINTR {
                    libc::_exit(127);
                }
            }
            if libc::WIFSIGNALED(status) {
                // Die the same way, so the pool reads the worker's signal.
                let sig = libc::WTERMSIG(status);
                libc::signal(sig, libc::SIG_DFL);
                libc::kill(libc::getpid(), sig);
            }
            libc::_exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                127
            });
        }
    }
}

/// Pid 1's host pid, in the middle process (its own copy of this static).
static PID_ONE: AtomicI32 = AtomicI32::new(0);

/// The middle process's SIGTERM handler: only `kill`, which is async-signal-safe.
extern "C" fn kill_pid_one(_: libc::c_int) {
    let pid = PID_ONE.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The syscalls a worker never needs and a hostile grader would use to reach past its
/// namespaces or attack the kernel, on every architecture Lathe targets.
#[rustfmt::skip]
const DENIED: &[libc::c_long] = &[
    libc::SYS_socket,
    libc::SYS_unshare, libc::SYS_setns,
    libc::SYS_mount, libc::SYS_umount2, libc::SYS_pivot_root, libc::SYS_chroot,
    libc::SYS_open_tree, libc::SYS_move_mount, libc::SYS_fsopen, libc::SYS_fsconfig,
    libc::SYS_fsmount, libc::SYS_fspick, SYS_MOUNT_SETATTR,
    libc::SYS_ptrace, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd, libc::SYS_kcmp,
    libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register,
    libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key,
    libc::SYS_init_module, libc::SYS_finit_module, libc::SYS_delete_module,
    libc::SYS_kexec_load, libc::SYS_kexec_file_load,
    libc::SYS_personality, libc::SYS_acct, libc::SYS_quotactl, libc::SYS_syslog,
    libc::SYS_swapon, libc::SYS_swapoff, libc::SYS_reboot,
    libc::SYS_settimeofday, libc::SYS_clock_settime, libc::SYS_clock_adjtime, libc::SYS_adjtimex,
    libc::SYS_sethostname, libc::SYS_setdomainname,
    libc::SYS_open_by_handle_at, libc::SYS_name_to_handle_at,
    libc::SYS_fanotify_init, libc::SYS_vhangup,
];

#[cfg(target_arch = "x86_64")]
const DENIED_ARCH: &[libc::c_long] = &[
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_uselib,
    libc::SYS_ustat,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
];
#[cfg(not(target_arch = "x86_64"))]
const DENIED_ARCH: &[libc::c_long] = &[];

/// x86-64's x32 ABI shares the architecture value seccompiler checks, with this bit set
/// on syscall numbers: each denied call is denied under its x32 number too.
#[cfg(target_arch = "x86_64")]
const X32_BIT: libc::c_long = 0x4000_0000;

const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

fn target_arch() -> io::Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(io::Error::other)
}

/// `nr` and, on x86-64, its x32 twin.
fn numbers(nr: libc::c_long) -> Vec<i64> {
    #[cfg(target_arch = "x86_64")]
    return vec![nr, nr | X32_BIT];
    #[cfg(not(target_arch = "x86_64"))]
    return vec![nr];
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> io::Result<BpfProgram> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        target_arch()?,
    )
    .map_err(io::Error::other)?;
    BpfProgram::try_from(filter).map_err(io::Error::other)
}

/// The worker's filters: the calls in [`DENIED`] and namespace-creating `clone`s answer
/// EPERM, `clone3` ENOSYS (see the module docs). Two programs, as seccompiler gives one
/// errno per program; the kernel runs every installed filter and they never overlap.
fn worker_filters() -> io::Result<[BpfProgram; 2]> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED.iter().chain(DENIED_ARCH) {
        for n in numbers(nr) {
            rules.insert(n, Vec::new());
        }
    }
    // Any CLONE_NEW* bit in clone's flags (its first argument on every target).
    let namespaced: Vec<SeccompRule> = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = flag as u64;
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<_, _>>()
        .map_err(io::Error::other)?;
    for n in numbers(libc::SYS_clone) {
        rules.insert(n, namespaced.clone());
    }
    let mut clone3 = BTreeMap::new();
    for n in numbers(libc::SYS_clone3) {
        clone3.insert(n, Vec::new());
    }
    Ok([compile(rules, libc::EPERM)?, compile(clone3, libc::ENOSYS)?])
}

/// The filter the worker installs in each grading child, on top of its own: no program
/// can be executed from a grade (`execve`, `execveat`). Serialized as the kernel's
/// `struct sock_filter` array (8 bytes per instruction, native endian).
pub fn grade_filter() -> io::Result<Vec<u8>> {
    let mut rules = BTreeMap::new();
    for nr in [libc::SYS_execve, libc::SYS_execveat] {
        for n in numbers(nr) {
            rules.insert(n, Vec::new());
        }
    }
    let program = compile(rules, libc::EPERM)?;
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for ins in &program {
        bytes.extend_from_slice(&ins.code.to_ne_bytes());
        bytes.push(ins.jt);
        bytes.push(ins.jf);
        bytes.extend_from_slice(&ins.k.to_ne_bytes());
    }
    Ok(bytes)
}

/// `mount_setattr(path, flags)` setting `attr_set` on the mount at `path` (and, with
/// `AT_RECURSIVE`, every mount below it).
///
/// # Safety
/// `path` must point at a NUL-terminated string; raw syscall, no allocation.
unsafe fn set_attrs(path: *const libc::c_char, attr_set: u64, flags: libc::c_uint) -> io::Result<()> {
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
            flags,
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
