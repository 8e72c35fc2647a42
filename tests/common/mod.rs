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
use std::process::{Command, Output};
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

    /// `lowerdir=…,upperdir=…,workdir=…` for lowers `0..n` (lower0 on top).
    pub fn opts(&self, n: usize) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir(n),
            self.upper().display(),
            self.work().display()
        )
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

    /// Mounts kernel overlayfs with lowers `0..n` and the given upper (own work dir).
    pub fn kernel_mount(&self, n: usize, upper: &Path) -> KernelMount {
        let kwork = self.path("kwork");
        let _ = fs::remove_dir_all(&kwork);
        fs::create_dir(&kwork).unwrap();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lowerdir(n),
            upper.display(),
            kwork.display()
        );
        KernelMount::new(&opts, &self.path("kmnt"))
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
    let Ok(names) = xattr_names(p) else {
        return out;
    };
    for n in names {
        if n.as_bytes().starts_with(b"trusted.overlay.")
            || n.as_bytes().starts_with(b"user.overlay.")
        {
            continue;
        }
        if let Some(v) = xattr_get(p, &n) {
            out.insert(n, v);
        }
    }
    out
}

fn xattr_names(p: &Path) -> std::io::Result<Vec<OsString>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os,sys\nfor n in os.listxattr(sys.argv[1], follow_symlinks=False): print(n)",
        ])
        .arg(p)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(OsString::from)
        .collect())
}

fn xattr_get(p: &Path, n: &OsString) -> Option<Vec<u8>> {
    let out = Command::new("python3")
        .args(["-c", "import os,sys\nsys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False))"])
        .arg(p)
        .arg(n)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
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
    let st = Command::new("python3")
        .args(["-c", "import os,sys\nos.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode('latin-1'), follow_symlinks=False)"])
        .arg(p)
        .arg(name)
        .arg(String::from_utf8_lossy(value).as_ref())
        .status()
        .unwrap();
    assert!(st.success(), "setxattr {name} on {}", p.display());
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
