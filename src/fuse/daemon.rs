//! Mounting and serving: the daemon's life from validated options to a clean exit.
//!
//! By default the command forks before any thread exists; the child mounts and reports
//! over a pipe, and the parent exits 0 only once the mount is live (or prints the child's
//! error and exits non-zero). The daemon ends when the mount goes away (`umount`,
//! `strata umount`) or on SIGTERM/SIGINT/SIGHUP, which unmount it; if the session does not
//! end after that (the mount was captured by another mount namespace), the connection is
//! aborted through fusectl.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{Config, MountOption, Session, SessionACL};

use super::options::{is_work_leftover, MountOptions};
use super::{CachePolicy, StrataFs};
use crate::error::MountError;
use crate::sys;
use crate::union::{Stack, StackPaths, Union, UnionOptions};

/// The default entry/attribute timeout: strata makes every change itself, so the
/// kernel's caches stay right for as long as it keeps them.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(86400);

/// A mount to make.
#[derive(Clone, Debug)]
pub struct MountRequest {
    pub options: MountOptions,
    pub mountpoint: PathBuf,
    /// Stay in the foreground instead of returning once mounted.
    pub foreground: bool,
}

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Options(#[from] MountError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Child(String),
}

fn os(context: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> DaemonError {
    let context = context.into();
    move |e| DaemonError::Io {
        context,
        source: e.into(),
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Io { context, source }
}

/// Validates, mounts and (in the background unless `foreground`) serves the mount.
///
/// # Errors
/// Bad options or paths (nothing is mounted or changed then), or the mount failing.
pub fn mount(req: &MountRequest) -> Result<(), DaemonError> {
    let paths = req.options.validate(&req.mountpoint)?;
    // The daemon leaves the caller's directory; every path it keeps is absolute.
    let mountpoint = std::fs::canonicalize(&req.mountpoint)
        .map_err(io(format!("mountpoint {}", req.mountpoint.display())))?;
    let req = &MountRequest {
        mountpoint,
        ..req.clone()
    };
    if req.foreground {
        return serve(req, &paths, None);
    }
    let (rd, wr) = rustix::pipe::pipe().map_err(os("pipe"))?;
    match sys::fork().map_err(os("fork"))? {
        sys::Forked::Parent(_) => {
            drop(wr);
            let mut msg = String::new();
            std::fs::File::from(rd)
                .read_to_string(&mut msg)
                .map_err(io("reading the daemon's status"))?;
            match msg.strip_prefix("ok") {
                Some(_) => Ok(()),
                None if msg.is_empty() => Err(DaemonError::Child(
                    "the strata daemon exited before the mount was ready".into(),
                )),
                None => Err(DaemonError::Child(msg.trim_end().to_string())),
            }
        }
        sys::Forked::Child => {
            drop(rd);
            let r = detach().and_then(|()| serve(req, &paths, Some(wr)));
            // The parent has reported any error before the mount was ready; later ones
            // can only be logged (stderr is /dev/null unless debugging).
            if let Err(e) = &r {
                log::error!("{e}");
            }
            r
        }
    }
}

/// Starts a new session and points the standard descriptors at /dev/null.
fn detach() -> Result<(), DaemonError> {
    sys::setsid().map_err(os("setsid"))?;
    // Do not keep the caller's working directory (and its filesystem) busy.
    std::env::set_current_dir("/").map_err(io("chdir /"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(io("/dev/null"))?;
    for fd in [0, 1, 2] {
        sys::redirect_stdio(null.as_fd(), fd).map_err(os("dup2"))?;
    }
    Ok(())
}

/// Removes what an interrupted earlier run left in the work directory.
fn clean_work(work: &Path) -> Result<(), DaemonError> {
    let dir = rustix::fs::open(
        work,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(os(format!("workdir {}", work.display())))?;
    let entries = sys::read_dir(dir.as_fd()).map_err(os(format!("workdir {}", work.display())))?;
    for e in entries.iter().filter(|e| is_work_leftover(&e.name)) {
        sys::remove_tree_at(dir.as_fd(), &e.name).map_err(|err| DaemonError::Io {
            context: format!("cleaning {:?} from workdir {}", e.name, work.display()),
            source: err.into(),
        })?;
    }
    Ok(())
}

/// How the mount is made, decided once from the options. The defaults are
/// fuse-overlayfs's: `nodev`, `suid`, `exec`; `default_permissions` and `allow_other`
/// as root.
struct MountPlan {
    flags: sys::FuseMountFlags,
    default_permissions: bool,
    allow_other: bool,
}

impl MountPlan {
    fn new(o: &MountOptions, read_only: bool) -> MountPlan {
        let root = sys::euid() == 0;
        MountPlan {
            flags: sys::FuseMountFlags {
                read_only,
                nosuid: !o.suid.unwrap_or(true),
                nodev: !o.dev.unwrap_or(false),
                noexec: !o.exec.unwrap_or(true),
                noatime: o.noatime,
            },
            default_permissions: o.default_permissions.unwrap_or(root),
            allow_other: o.allow_other.unwrap_or(root),
        }
    }

    /// The FUSE options of the kernel mount after `fd=…,rootmode=…,user_id=…,group_id=…`.
    fn kernel_options(&self) -> String {
        let mut v = Vec::new();
        if self.default_permissions {
            v.push("default_permissions");
        }
        if self.allow_other {
            v.push("allow_other");
        }
        v.join(",")
    }

    /// The session configuration; its mount options are used only by fuser's own mount.
    fn fuser_config(&self) -> Config {
        let f = &self.flags;
        let pick = |on: bool, yes: MountOption, no: MountOption| if on { yes } else { no };
        let mut opts = vec![
            MountOption::FSName("strata".into()),
            MountOption::Subtype("strata".into()),
            pick(f.read_only, MountOption::RO, MountOption::RW),
            pick(f.nodev, MountOption::NoDev, MountOption::Dev),
            pick(f.nosuid, MountOption::NoSuid, MountOption::Suid),
            pick(f.noexec, MountOption::NoExec, MountOption::Exec),
        ];
        if f.noatime {
            opts.push(MountOption::NoAtime);
        }
        if self.default_permissions {
            opts.push(MountOption::DefaultPermissions);
        }
        let mut c = Config::default();
        c.mount_options = opts;
        c.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        // One request loop per core, each on its own cloned descriptor: more loops than
        // cores only add wake-ups (measured: a warm stat walk takes twice as long with 4
        // loops on 2 cores as with 2).
        c.n_threads = Some(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2),
        );
        c.clone_fd = true;
        c
    }
}

/// Mounts and serves until the mount ends. `ready` (the pipe to the waiting parent) gets
/// `ok` once the mount is live, or the error.
fn serve(
    req: &MountRequest,
    paths: &StackPaths,
    ready: Option<OwnedFd>,
) -> Result<(), DaemonError> {
    let mut ready = ready.map(std::fs::File::from);
    let r = start(req, paths);
    let session = match r {
        Ok(s) => s,
        Err(e) => {
            if let Some(p) = ready.as_mut() {
                if let Err(werr) = write!(p, "{e}") {
                    log::error!("cannot report to the parent: {werr}");
                }
            }
            return Err(e);
        }
    };
    let mnt = req.mountpoint.clone();
    let conn = connection_id(&mnt);
    if let Some(c) = &conn {
        raise_readahead(c);
    }
    std::thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || on_termination(&mnt, conn))
        .map_err(io("starting the signal thread"))?;
    if let Some(mut p) = ready.take() {
        if let Err(e) = p.write_all(b"ok") {
            log::warn!("cannot report readiness: {e}");
        }
    }
    session.run().map_err(io("serving the mount"))
}

fn start(req: &MountRequest, paths: &StackPaths) -> Result<Session<StrataFs>, DaemonError> {
    let o = &req.options;
    let level = if o.debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    if let Err(e) = env_logger::Builder::new().filter_level(level).try_init() {
        eprintln!("strata: logging unavailable: {e}");
    }
    // The daemon applies exact modes; the kernel already applied the caller's umask.
    sys::set_umask(0);
    // Every file open through the mount holds a descriptor in the daemon: the usual soft
    // limit of 1024 would refuse opens long before the system does.
    if let Err(e) = sys::raise_fd_limit() {
        log::warn!("cannot raise the open file limit: {e}");
    }
    sys::block_termination_signals().map_err(os("signal mask"))?;
    if let Some(w) = &paths.work {
        clean_work(w)?;
    }
    let stack = Stack::open_paths(paths).map_err(io("opening the layers"))?;
    let opts = UnionOptions {
        fsync: !o.no_fsync,
        metacopy: !o.no_metacopy,
        index: !o.no_index,
    };
    let union = Union::new(stack, opts);
    let notifier = Arc::new(OnceLock::new());
    let read_only = paths.upper.is_none();
    let policy = CachePolicy {
        ttl: o.timeout.unwrap_or(DEFAULT_TIMEOUT),
        passthrough: o.passthrough,
    };
    let fs = StrataFs::new(Arc::new(union), policy, Arc::clone(&notifier));
    let plan = MountPlan::new(o, read_only);
    let config = plan.fuser_config();
    let what = format!("mounting on {}", req.mountpoint.display());
    // strata makes the mount itself (type `fuse.strata`): fuser's session would unmount
    // the mountpoint path when it ends, even when the mount there is a newer one by then.
    let mounted = sys::mount_fuse(
        "strata",
        "strata",
        &req.mountpoint,
        plan.flags,
        &plan.kernel_options(),
    );
    let session = match mounted {
        Ok(dev) => Session::from_fd(fs, dev, config.acl, config).map_err(|e| {
            // The mount exists but will never be served: take it away again.
            if let Err(u) = sys::unmount(&req.mountpoint, true) {
                log::error!("cannot undo the mount on {}: {u}", req.mountpoint.display());
            }
            DaemonError::Io {
                context: what,
                source: e,
            }
        })?,
        // Without the right to mount(2), fuser's own mount goes through fusermount3.
        Err(rustix::io::Errno::PERM) => {
            Session::new(fs, &req.mountpoint, &config).map_err(io(what))?
        }
        Err(e) => {
            return Err(DaemonError::Io {
                context: what,
                source: e.into(),
            })
        }
    };
    if notifier.set(session.notifier()).is_err() {
        log::warn!("notifier already set");
    }
    Ok(session)
}

/// The fusectl connection number of the mount at `mnt` (its device minor).
fn connection_id(mnt: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(mnt).ok()?;
    let table = sys::mount_table();
    let m = table.into_iter().rev().find(|m| m.mount_point == canon)?;
    Some(m.minor)
}

/// Lets the kernel read ahead 1 MiB at a time through the page cache (the FUSE default is
/// 128 KiB), so a sequential read of a file served by strata takes a quarter of the
/// round trips. Files passed through read ahead by their own filesystem's rules.
fn raise_readahead(conn: &str) {
    let knob = format!("/sys/class/bdi/0:{conn}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, b"1024") {
        log::info!("cannot raise the readahead ({knob}): {e}");
    }
}

/// Waits for SIGTERM/SIGINT/SIGHUP, then unmounts; aborts the connection if the session
/// has not ended a few seconds later.
fn on_termination(mnt: &Path, conn: Option<String>) {
    let sig = sys::wait_termination_signal();
    log::info!("signal {sig}: unmounting {}", mnt.display());
    if let Err(e) = sys::unmount(mnt, false) {
        log::info!("unmount of {} failed ({e}), detaching it", mnt.display());
        if let Err(e) = sys::unmount(mnt, true) {
            log::warn!("lazy unmount of {} failed: {e}", mnt.display());
        }
    }
    std::thread::sleep(Duration::from_secs(5));
    if let Some(c) = conn {
        let abort = format!("/sys/fs/fuse/connections/{c}/abort");
        log::warn!("session still running 5 s after unmounting: aborting through {abort}");
        if let Err(e) = std::fs::write(&abort, b"1") {
            log::error!("cannot abort the FUSE connection: {e}");
        }
    }
}

/// `strata umount MNT`: unmounts a strata mount (lazily with `lazy`).
///
/// # Errors
/// When `mnt` is not a strata mount, or the unmount fails (e.g. busy).
pub fn umount(mnt: &Path, lazy: bool) -> Result<(), DaemonError> {
    let canon = std::fs::canonicalize(mnt).map_err(io(format!("mountpoint {}", mnt.display())))?;
    let ours = sys::mount_table().iter().any(|m| {
        m.mount_point == canon
            && m.fs_type.starts_with("fuse")
            && (m.source == "strata" || m.fs_type == "fuse.strata")
    });
    if !ours {
        return Err(DaemonError::Child(format!(
            "{} is not a strata mount",
            mnt.display()
        )));
    }
    sys::unmount(&canon, lazy).map_err(os(format!("unmounting {}", mnt.display())))
}
