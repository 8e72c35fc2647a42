//! Shared harness for the integration tests: scratch directories, a strata mount guard and
//! a kernel overlayfs mount guard (both unmount on Drop, lazily as a last resort), and a
//! snapshot of a visible tree for comparisons.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The strata binary under test.
pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// Fails (never skips) when the machine cannot run mount tests.
pub fn require_root_and_fuse() {
    assert_eq!(
        unsafe_free_euid(),
        0,
        "these tests mount filesystems and must run as root"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: FUSE tests cannot run"
    );
}

fn unsafe_free_euid() -> u32 {
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// A scratch directory with `lowerN`, `upper`, `work` and `mnt` below it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        require_root_and_fuse();
        let dir = tempfile::Builder::new()
            .prefix("strata-test-")
            .tempdir_in("/tmp")
            .unwrap();
        for d in ["upper", "work", "mnt", "kwork", "kmnt"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        Scratch { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Creates (if needed) and returns lower layer `n`.
    pub fn lower(&self, n: usize) -> PathBuf {
        let p = self.path(&format!("lower{n}"));
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn upper(&self) -> PathBuf {
        self.path("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.path("work")
    }

    pub fn mnt(&self) -> PathBuf {
        self.path("mnt")
    }

    /// `lowerdir=…,upperdir=…,workdir=…` for lowers `0..n` (lower0 on top), plus
    /// [`with_test_opts`].
    pub fn opts(&self, n: usize) -> String {
        with_test_opts(format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir(n),
            self.upper().display(),
            self.work().display()
        ))
    }

    pub fn lowerdir(&self, n: usize) -> String {
        (0..n)
            .map(|i| self.lower(i).display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Mounts strata with lowers `0..n`, upper and work.
    pub fn mount(&self, n: usize) -> StrataMount {
        StrataMount::new(&["mount", "-o", &self.opts(n), self.mnt().to_str().unwrap()])
    }
}

/// Strata mount options `opts` plus those in `STRATA_TEST_OPTS` (to run the suites under
/// other data paths, e.g. `passthrough=off`).
pub fn with_test_opts(opts: String) -> String {
    match std::env::var("STRATA_TEST_OPTS") {
        Ok(extra) => format!("{opts},{extra}"),
        Err(_) => opts,
    }
}

/// Runs strata with `args`; returns the output.
pub fn strata(args: &[&str]) -> Output {
    Command::new(strata_bin()).args(args).output().unwrap()
}

fn is_mounted(mnt: &Path) -> bool {
    let canon = fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1).map(Path::new) == Some(canon.as_path()))
}

fn unmount(mnt: &Path) {
    for _ in 0..50 {
        if !is_mounted(mnt) {
            return;
        }
        if Command::new("umount")
            .arg(mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Last resort: detach it so no test leaves a mount behind.
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
}

/// A live strata mount; unmounted on Drop.
pub struct StrataMount {
    pub mnt: PathBuf,
}

impl StrataMount {
    /// Runs `strata ARGS` (the last argument is the mountpoint) and waits for the mount.
    pub fn new(args: &[&str]) -> StrataMount {
        let out = strata(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mnt = PathBuf::from(args.last().unwrap());
        assert!(
            is_mounted(&mnt),
            "strata returned before {} was mounted",
            mnt.display()
        );
        StrataMount { mnt }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Unmounts now and waits until the daemon has let go of the mountpoint.
    pub fn unmount(self) {
        drop(self);
    }
}

/// A guard for a strata mount made some other way (mount(8), a test's own command).
pub struct StrataMountGuard;

impl StrataMountGuard {
    /// Takes charge of the live mount at `mnt`: unmounted when the guard drops.
    pub fn adopt(mnt: PathBuf) -> StrataMount {
        assert!(is_mounted(&mnt), "{} is not mounted", mnt.display());
        StrataMount { mnt }
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        unmount(&self.mnt);
        // Give the daemon a moment to exit after the kernel ended the session.
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_mounted(&self.mnt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A live kernel overlayfs mount; unmounted on Drop.
pub struct KernelMount {
    pub mnt: PathBuf,
}

impl KernelMount {
    pub fn new(opts: &str, mnt: &Path) -> KernelMount {
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", opts])
            .arg(mnt)
            .status()
            .unwrap();
        assert!(st.success(), "kernel overlay mount failed: {opts}");
        KernelMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

/// What a tree comparison looks at for one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// File contents, or the symlink target.
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<OsString, Vec<u8>>,
}

fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else {
        "socket"
    }
}

/// The user-visible xattrs of `p` (not following symlinks), overlay-private ones excluded.
pub fn xattrs(p: &Path) -> BTreeMap<OsString, Vec<u8>> {
    let mut out = BTreeMap::new();
    for n in llistxattr(p).unwrap_or_default() {
        if n.starts_with("trusted.overlay.") || n.starts_with("user.overlay.") {
            continue;
        }
        if let Ok(v) = lgetxattr(p, &n) {
            out.insert(OsString::from(n), v);
        }
    }
    out
}

/// A snapshot of everything visible below `root`, keyed by relative path.
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let m = fs::symlink_metadata(&p).unwrap();
        let kind = kind_of(m.file_type());
        let data = match kind {
            "file" => fs::read(&p).unwrap(),
            "symlink" => fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec(),
            _ => Vec::new(),
        };
        let size = if kind == "dir" { 0 } else { m.size() };
        let seen = Seen {
            kind,
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size,
            data,
            xattrs: xattrs(&p),
        };
        out.insert(p.strip_prefix(root).unwrap().to_path_buf(), seen);
        if kind == "dir" {
            walk(root, &p, out);
        }
    }
}

/// Makes a kernel-format whiteout (char device 0/0) at `p`.
pub fn mknod_whiteout(p: &Path) {
    let st = Command::new("mknod")
        .arg(p)
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Sets an xattr on `p` (not following symlinks).
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", p.display()));
}

/// Writes `data` to `p`, creating parents.
pub fn put(p: &Path, data: &str) {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// The errno of an io::Error.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

// ---------------------------------------------------------------------------------------------
// Helpers added for the mount, semantics, error and kernel-format suites.
// ---------------------------------------------------------------------------------------------

/// The kernel overlayfs options that match what strata implements: directory renames by
/// redirect, metadata-only copy-up, the hard-link index; no xino.
pub const KERNEL_OPTS: &str = "redirect_dir=on,index=on,metacopy=on,xino=off";

impl Scratch {
    /// Mounts kernel overlayfs on `kmnt` with lowers `0..n`, the given upper and
    /// [`KERNEL_OPTS`] options.
    pub fn kernel_mount_opts(&self, n: usize, upper: &Path) -> KernelMount {
        let kwork = self.path("kwork");
        let _ = fs::remove_dir_all(&kwork);
        fs::create_dir(&kwork).unwrap();
        self.kernel_mount_with_work(n, upper, &kwork)
    }

    /// The same with a given work directory (strata's, to share its hard-link index).
    pub fn kernel_mount_with_work(&self, n: usize, upper: &Path, work: &Path) -> KernelMount {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{KERNEL_OPTS}",
            self.lowerdir(n),
            upper.display(),
            work.display()
        );
        KernelMount::new(&opts, &self.path("kmnt"))
    }

    /// Mounts kernel overlayfs on `kmnt` with lowers `0..n` only (read-only).
    pub fn kernel_mount_lowers(&self, n: usize) -> KernelMount {
        KernelMount::new(
            &format!("lowerdir={}", self.lowerdir(n)),
            &self.path("kmnt"),
        )
    }

    /// Creates (if needed) and returns the directory `rel` below the scratch dir.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

impl StrataMount {
    /// Runs `strata ARGS` where the mountpoint is not the last argument.
    pub fn at(args: &[&str], mnt: &Path) -> StrataMount {
        let out = strata(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            is_mounted(mnt),
            "strata returned before {} was mounted",
            mnt.display()
        );
        StrataMount {
            mnt: mnt.to_path_buf(),
        }
    }

    /// Takes charge of a mount made some other way (e.g. a foreground daemon).
    pub fn adopt(mnt: &Path) -> StrataMount {
        StrataMount {
            mnt: mnt.to_path_buf(),
        }
    }
}

/// Whether `mnt` is a mountpoint right now (per /proc/self/mounts).
pub fn mounted(mnt: &Path) -> bool {
    is_mounted(mnt)
}

/// Mounts a small tmpfs on `p` (created if needed); unmounted when the guard drops.
pub fn tmpfs(p: &Path) -> KernelMount {
    fs::create_dir_all(p).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs on {} failed", p.display());
    KernelMount {
        mnt: p.to_path_buf(),
    }
}

/// Polls `cond` until it holds or `secs` pass; returns whether it held. Used only to
/// wait for events (a daemon exiting, a mount appearing), never to assert speed.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of live strata processes whose command line names `mnt`.
pub fn daemon_pids(mnt: &Path) -> Vec<u32> {
    let want = mnt.as_os_str().as_bytes();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_strata = args
            .first()
            .map(|a| a.ends_with(b"/strata") || *a == b"strata")
            .unwrap_or(false);
        if is_strata && args.contains(&want) && !process_gone(pid) {
            out.push(pid);
        }
    }
    out
}

/// The one strata daemon serving `mnt`.
pub fn daemon_pid(mnt: &Path) -> u32 {
    let pids = daemon_pids(mnt);
    assert_eq!(
        pids.len(),
        1,
        "expected exactly one strata daemon for {}, found {pids:?}",
        mnt.display()
    );
    pids[0]
}

/// Whether process `pid` has exited (gone, or a zombie waiting for its reaper).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
            .unwrap_or(true),
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// A child process killed (and reaped) on Drop unless it already exited.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads an xattr of `p` (not following symlinks), overlay-private ones included.
pub fn lgetxattr(p: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..])?;
    buf.truncate(n);
    Ok(buf)
}

/// Sets an xattr of `p` (not following symlinks).
pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    Ok(rustix::fs::lsetxattr(
        p,
        name,
        value,
        rustix::fs::XattrFlags::empty(),
    )?)
}

/// Removes an xattr of `p` (not following symlinks).
pub fn lremovexattr(p: &Path, name: &str) -> std::io::Result<()> {
    Ok(rustix::fs::lremovexattr(p, name)?)
}

/// Every xattr name of `p` (not following symlinks), overlay-private ones included.
pub fn llistxattr(p: &Path) -> std::io::Result<Vec<String>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..])?;
    Ok(buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// Whether `p` is a kernel-format whiteout (character device 0/0).
pub fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// The sorted names in directory `p`.
pub fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The errno of `r`, which must be an error.
pub fn err_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => errno(&e),
    }
}

/// Runs `sh -c SCRIPT` as uid/gid 65534 (nobody); returns the output.
pub fn sh_as_nobody(script: &str) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .uid(65534)
        .gid(65534)
        .env_clear()
        .output()
        .unwrap()
}

/// Runs `sh -c SCRIPT` as the current user; returns the output.
pub fn sh(script: &str) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap()
}

impl Scratch {
    /// The kernel's upper directory for [`on_kernel_then_strata`].
    pub fn kupper(&self) -> PathBuf {
        self.path("kupper")
    }

    /// Replaces `kupper` with an exact copy (`cp -a`) of `upper`.
    pub fn copy_upper_to_kupper(&self) {
        let _ = fs::remove_dir_all(self.kupper());
        let st = Command::new("cp")
            .arg("-a")
            .arg(self.upper())
            .arg(self.kupper())
            .status()
            .unwrap();
        assert!(st.success(), "copying the upper");
    }
}
/// Runs `check` first on a kernel overlayfs mount of lowers `0..n` ([`KERNEL_OPTS`], upper
/// `kupper`, a copy of the starting upper), then on a strata mount of the same layers with
/// `upper`. The kernel run checks the test's expectations; the strata run checks strata.
/// Afterwards `kupper` and `upper` hold what each wrote.
pub fn on_kernel_then_strata(s: &Scratch, n: usize, check: impl Fn(&Path)) {
    s.copy_upper_to_kupper();
    {
        let k = s.kernel_mount_opts(n, &s.kupper());
        eprintln!("--- checking kernel overlayfs at {}", k.mnt.display());
        check(&k.mnt);
    }
    let m = s.mount(n);
    eprintln!("--- checking strata at {}", m.mnt.display());
    check(&m.mnt);
}

/// Whether the file at `p` has any data extent (a metadata-only copy has none; its
/// xattrs may still take a block, so `st_blocks` does not tell).
pub fn has_data(p: &Path) -> bool {
    let f = fs::File::open(p).unwrap();
    match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)) {
        Ok(_) => true,
        Err(rustix::io::Errno::NXIO) => false,
        Err(e) => panic!("SEEK_DATA on {}: {e}", p.display()),
    }
}

/// A strata daemon in the foreground with `-d` (every request logged), over lower 0 of
/// `s` (plus mount options `extra`), its log in a file; unmounted (and the daemon waited
/// for) on Drop.
pub struct LoggedMount {
    child: Child,
    log: PathBuf,
    mount: Option<StrataMount>,
}

impl LoggedMount {
    pub fn new(s: &Scratch, extra: &str) -> LoggedMount {
        let log = s.path("daemon.log");
        let opts = match extra {
            "" => s.opts(1),
            _ => format!("{},{extra}", s.opts(1)),
        };
        let child = Command::new(strata_bin())
            .args(["-d", "-o", &opts])
            .arg(s.mnt())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = LoggedMount {
            child,
            log,
            mount: None,
        };
        assert!(
            wait_for(20, || mounted(&s.mnt())),
            "strata -d did not mount {}",
            s.mnt().display()
        );
        m.mount = Some(StrataMount::adopt(&s.mnt()));
        m
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts, waits for the daemon, and returns its log.
    pub fn finish(mut self) -> String {
        self.mount.take();
        self.child.wait().unwrap();
        fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for LoggedMount {
    fn drop(&mut self) {
        if self.mount.take().is_none() && matches!(self.child.try_wait(), Ok(None)) {
            // Never mounted (or finished): do not wait for a daemon that will not end.
            if let Err(e) = self.child.kill() {
                eprintln!("killing the strata daemon: {e}");
            }
        }
        if let Err(e) = self.child.wait() {
            eprintln!("waiting for the strata daemon: {e}");
        }
    }
}
