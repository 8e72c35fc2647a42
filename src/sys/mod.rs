//! The system-call boundary: the only module allowed `unsafe` code.
//!
//! Most calls go through `rustix`, which is already safe; what lives here is the small set
//! of helpers the union layer needs on top (confined path resolution, xattrs on `O_PATH`
//! descriptors, fd-relative tree removal) and the few calls rustix does not offer safely
//! (`fork`, signal masks). Every path that reaches into a layer is resolved relative to the
//! layer's root descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so no
//! symlink in a layer can lead outside it.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno as RErrno;

pub use rustix::fs::Stat;

/// The longest path handed to one `openat2` call; longer relative paths are walked in
/// pieces so that trees deeper than `PATH_MAX` still work.
const PATH_CHUNK: usize = 3072;

/// The resolution rules for every path inside a layer.
fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Safe wrapper for `openat2(2)` confined to `root`: opens `rel` (a relative path of plain
/// components) below `root` without following any symlink.
///
/// # Errors
/// The errno of `openat2`; `ELOOP` when a component is a symlink.
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: u32,
) -> Result<OwnedFd, RErrno> {
    let bytes = rel.as_os_str().as_bytes();
    if bytes.is_empty() {
        return openat2_retry(root, c".", flags, mode);
    }
    if bytes.len() <= PATH_CHUNK {
        return openat2_retry(root, rel, flags, mode);
    }
    // Walk the long path a chunk of whole components at a time.
    let comps: Vec<&OsStr> = rel.iter().collect();
    let mut cur: Option<OwnedFd> = None;
    let mut start = 0;
    while start < comps.len() {
        let mut end = start;
        let mut len = 0;
        while end < comps.len() && (end == start || len + comps[end].len() < PATH_CHUNK) {
            len += comps[end].len() + 1;
            end += 1;
        }
        let piece: PathBuf = comps[start..end].iter().collect();
        let last = end == comps.len();
        let (f, m) = if last {
            (flags, mode)
        } else {
            (OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, 0)
        };
        let dir = match &cur {
            Some(fd) => fd.as_fd(),
            None => root,
        };
        let next = openat2_retry(dir, piece.as_path(), f, m)?;
        cur = Some(next);
        start = end;
    }
    cur.ok_or(RErrno::INVAL)
}

fn openat2_retry<P: rustix::path::Arg + Copy>(
    dir: BorrowedFd<'_>,
    path: P,
    flags: OFlags,
    mode: u32,
) -> Result<OwnedFd, RErrno> {
    loop {
        match rustix::fs::openat2(
            dir,
            path,
            flags | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
            beneath(),
        ) {
            // openat2 asks to retry when a concurrent rename raced the resolution.
            Err(RErrno::AGAIN) => continue,
            other => return other,
        }
    }
}

/// Safe wrapper for `fstatat(2)` on one name in a directory, not following symlinks.
///
/// # Errors
/// The errno of `fstatat`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Stat, RErrno> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Whether `name` exists in the directory `dir` (not following a symlink).
///
/// # Errors
/// The errno of `fstatat` other than `ENOENT`.
pub fn exists_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool, RErrno> {
    match stat_at(dir, name) {
        Ok(_) => Ok(true),
        Err(RErrno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Safe wrapper for `fstat(2)`.
///
/// # Errors
/// The errno of `fstat`.
pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<Stat, RErrno> {
    rustix::fs::fstat(fd)
}

/// The `/proc/self/fd/N` path of a descriptor. Following it reaches the very inode the
/// descriptor holds (even a symlink opened with `O_PATH`), which is how xattrs, modes and
/// times are changed through `O_PATH` descriptors.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never holds a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// Safe wrapper for `getxattr(2)` on the inode behind `fd` (any kind, `O_PATH` allowed).
/// Returns `None` when the attribute is absent.
///
/// # Errors
/// The errno of `getxattr`, other than `ENODATA`.
pub fn xattr_get(fd: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Vec<u8>>, RErrno> {
    read_xattr(&fd_path(fd), name, true)
}

/// The value of xattr `attr` of `path` (following a final symlink when `follow`).
fn read_xattr(path: &CStr, attr: &OsStr, follow: bool) -> Result<Option<Vec<u8>>, RErrno> {
    let r = sized(|buf| match follow {
        true => rustix::fs::getxattr(path, attr, buf),
        false => rustix::fs::lgetxattr(path, attr, buf),
    });
    match r {
        Ok(v) => Ok(Some(v)),
        Err(RErrno::NODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Calls `call` (an xattr call that fills a buffer and returns the length) with a buffer
/// large enough: on `ERANGE` it asks for the size (with an empty buffer) and grows.
fn sized(mut call: impl FnMut(&mut [u8]) -> Result<usize, RErrno>) -> Result<Vec<u8>, RErrno> {
    let mut buf = vec![0u8; 256];
    loop {
        match call(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(RErrno::RANGE) => {
                let n = call(&mut [])?;
                buf.resize(n.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `/proc/self/fd/N/NAME`: the entry `name` (one component) of the directory `dir`, for
/// the path-based calls.
fn entry_path(dir: BorrowedFd<'_>, name: &OsStr) -> Result<CString, RErrno> {
    let mut path = fd_path(dir).into_bytes();
    path.push(b'/');
    path.extend_from_slice(name.as_bytes());
    CString::new(path).map_err(|_| RErrno::INVAL)
}

/// A single path component as a C string.
fn component(name: &OsStr) -> Result<CString, RErrno> {
    if name.as_bytes().contains(&b'/') || name.is_empty() {
        return Err(RErrno::INVAL);
    }
    CString::new(name.as_bytes()).map_err(|_| RErrno::INVAL)
}

/// Safe wrapper for `lgetxattr(2)` of the entry `name` (one path component) in the
/// directory `dir` (an `O_PATH` descriptor is fine): the entry itself, never a symlink's
/// target. `None` when the attribute is absent.
///
/// One `getxattrat(2)` where the kernel has it (Linux 6.13), else `lgetxattr` through
/// `/proc/self/fd`.
///
/// # Errors
/// `EINVAL` for a name that is not a single component, or the errno of the call.
pub fn xattr_get_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    attr: &OsStr,
) -> Result<Option<Vec<u8>>, RErrno> {
    let cname = component(name)?;
    let cattr = CString::new(attr.as_bytes()).map_err(|_| RErrno::INVAL)?;
    // ENOSYS (the call is missing): the path-based call below.
    match sized(|buf| getxattrat(dir, &cname, &cattr, buf).unwrap_or(Err(RErrno::NOSYS))) {
        Ok(v) => return Ok(Some(v)),
        Err(RErrno::NODATA) => return Ok(None),
        Err(RErrno::NOSYS) => {}
        Err(e) => return Err(e),
    }
    read_xattr(&entry_path(dir, name)?, attr, false)
}

/// Whether `getxattrat(2)` may be there (cleared at its first `ENOSYS`).
static HAS_GETXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// `getxattrat(2)` of `name` in `dir` without following a final symlink; `None` when the
/// kernel does not have the call (before Linux 6.13).
fn getxattrat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> Option<Result<usize, RErrno>> {
    use std::sync::atomic::Ordering;
    // The number is the same on every architecture that has the call (new calls share one
    // table since Linux 5.1).
    const SYS_GETXATTRAT: libc::c_long = 464;
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    if !HAS_GETXATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: `name` and `attr` are NUL-terminated; `args` points at `buf`, which outlives
    // the call and has room for `args.size` bytes; the size passed is that of `args`.
    let r = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    new_call_result(r, &HAS_GETXATTRAT)
}

/// The result of a system call newer than the oldest kernel strata runs on: the count it
/// returned, its errno, or `None` (and `has` cleared, so it is not tried again) when the
/// kernel lacks it.
fn new_call_result(
    r: libc::c_long,
    has: &std::sync::atomic::AtomicBool,
) -> Option<Result<usize, RErrno>> {
    if r >= 0 {
        return Some(Ok(usize::try_from(r).unwrap_or(0)));
    }
    let e = RErrno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    if e == RErrno::NOSYS {
        has.store(false, std::sync::atomic::Ordering::Relaxed);
        return None;
    }
    Some(Err(e))
}

/// Safe wrapper for `listxattr(2)` on the inode behind `fd`: the attribute names.
///
/// # Errors
/// The errno of `listxattr`.
pub fn xattr_list(fd: BorrowedFd<'_>) -> Result<Vec<OsString>, RErrno> {
    let path = fd_path(fd);
    let list = sized(|buf| rustix::fs::listxattr(path.as_c_str(), buf))?;
    Ok(list
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsStr::from_bytes(s).to_os_string())
        .collect())
}

/// The names of the xattrs of the entry `name` in `dir` (never a symlink's target), as
/// the kernel lists them: NUL-terminated, one after another. One `listxattrat(2)` where
/// the kernel has it (Linux 6.13), else `llistxattr` through `/proc/self/fd`.
///
/// # Errors
/// `EINVAL` for a name that is not a single component, or the errno of the call.
pub fn xattr_names_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Vec<u8>, RErrno> {
    let cname = component(name)?;
    match sized(|buf| listxattrat(dir, &cname, buf).unwrap_or(Err(RErrno::NOSYS))) {
        Err(RErrno::NOSYS) => {}
        r => return r,
    }
    let path = entry_path(dir, name)?;
    sized(|buf| rustix::fs::llistxattr(path.as_c_str(), buf))
}

/// Whether `listxattrat(2)` may be there (cleared at its first `ENOSYS`).
static HAS_LISTXATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// `listxattrat(2)` of `name` in `dir` without following a final symlink; `None` when
/// the kernel does not have the call.
fn listxattrat(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> Option<Result<usize, RErrno>> {
    use std::sync::atomic::Ordering;
    // As for getxattrat: one number on every architecture that has the call.
    const SYS_LISTXATTRAT: libc::c_long = 465;
    if !HAS_LISTXATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: `name` is NUL-terminated; `buf` is valid for `buf.len()` bytes for the call.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    new_call_result(r, &HAS_LISTXATTRAT)
}

/// Safe wrapper for `setxattr(2)` on the inode behind `fd`.
///
/// # Errors
/// The errno of `setxattr`.
pub fn xattr_set(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> Result<(), RErrno> {
    let flags = rustix::fs::XattrFlags::from_bits_retain(flags as _);
    rustix::fs::setxattr(fd_path(fd).as_c_str(), name, value, flags)
}

/// Safe wrapper for `removexattr(2)` on the inode behind `fd`.
///
/// # Errors
/// The errno of `removexattr`.
pub fn xattr_remove(fd: BorrowedFd<'_>, name: &OsStr) -> Result<(), RErrno> {
    rustix::fs::removexattr(fd_path(fd).as_c_str(), name)
}

/// Safe wrapper for `fchmodat(2)` on the inode behind `fd`.
///
/// # Errors
/// The errno of `chmod`.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> Result<(), RErrno> {
    rustix::fs::chmod(fd_path(fd).as_c_str(), Mode::from_raw_mode(mode))
}

/// Safe wrapper for `fchownat(2)` with `AT_EMPTY_PATH`: changes the owner of the inode
/// behind `fd` itself (a symlink is not followed).
///
/// # Errors
/// The errno of `fchownat`.
pub fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> Result<(), RErrno> {
    let uid = uid.map(rustix::fs::Uid::from_raw);
    let gid = gid.map(rustix::fs::Gid::from_raw);
    rustix::fs::chownat(
        fd,
        c"",
        uid,
        gid,
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// A timestamp to set: a value, the current time, or leave it alone.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Omit,
    Now,
    At(i64, i64),
}

fn timespec(t: SetTime) -> rustix::fs::Timespec {
    match t {
        SetTime::Omit => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT as _,
        },
        SetTime::Now => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW as _,
        },
        SetTime::At(s, n) => rustix::fs::Timespec {
            tv_sec: s,
            tv_nsec: n as _,
        },
    }
}

/// Safe wrapper for `utimensat(2)` on the inode behind `fd` (a symlink itself is changed).
///
/// # Errors
/// The errno of `utimensat`.
pub fn utimens_fd(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> Result<(), RErrno> {
    let times = rustix::fs::Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        fd_path(fd).as_c_str(),
        &times,
        AtFlags::empty(),
    )
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    /// The `DT_*` type from `getdents64`, `DT_UNKNOWN` where the filesystem does not say.
    pub dtype: u8,
}

/// Reads every entry of the directory `dir` (an fd opened for reading), without `.`/`..`.
///
/// # Errors
/// The errno of `getdents64`.
pub fn read_dir(dir: BorrowedFd<'_>) -> Result<Vec<RawEntry>, RErrno> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let dtype = match ent.file_type() {
            rustix::fs::FileType::RegularFile => libc::DT_REG,
            rustix::fs::FileType::Directory => libc::DT_DIR,
            rustix::fs::FileType::Symlink => libc::DT_LNK,
            rustix::fs::FileType::Fifo => libc::DT_FIFO,
            rustix::fs::FileType::Socket => libc::DT_SOCK,
            rustix::fs::FileType::CharacterDevice => libc::DT_CHR,
            rustix::fs::FileType::BlockDevice => libc::DT_BLK,
            _ => libc::DT_UNKNOWN,
        };
        out.push(RawEntry {
            name: OsStr::from_bytes(name).to_os_string(),
            ino: ent.ino(),
            dtype,
        });
    }
    Ok(out)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, using only
/// descriptor-relative calls (so depth is unlimited).
///
/// # Errors
/// The first errno met; entries removed before it stay removed.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), RErrno> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(RErrno::ISDIR) | Err(RErrno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for ent in read_dir(sub.as_fd())? {
        remove_tree_at(sub.as_fd(), &ent.name)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Safe wrapper for `mknodat(2)` making a whiteout: a character device 0/0.
///
/// # Errors
/// The errno of `mknodat` (`EPERM` where device nodes may not be made).
pub fn mknod_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), RErrno> {
    rustix::fs::mknodat(
        dir,
        name,
        rustix::fs::FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
}

/// Safe wrapper for `mknodat(2)`.
///
/// # Errors
/// The errno of `mknodat`.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> Result<(), RErrno> {
    let ft = rustix::fs::FileType::from_raw_mode(mode);
    rustix::fs::mknodat(dir, name, ft, Mode::from_raw_mode(mode & 0o7777), rdev)
}

/// Safe wrapper for `renameat2(2)`.
///
/// # Errors
/// The errno of `renameat2`.
pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
    flags: rustix::fs::RenameFlags,
) -> Result<(), RErrno> {
    rustix::fs::renameat_with(old_dir, old, new_dir, new, flags)
}

/// Safe wrapper for `ioctl(FICLONE)`, then `copy_file_range(2)` over the data extents of
/// `src` (found with `SEEK_DATA`/`SEEK_HOLE`), so holes stay holes. `dst` must be empty.
///
/// # Errors
/// The errno of the copy.
pub fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, len: u64) -> Result<(), RErrno> {
    if len == 0 || rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(src, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(RErrno::NXIO) => break, // only a hole remains
            Err(_) => pos,              // no SEEK_DATA: copy everything
        };
        let hole = rustix::fs::seek(src, rustix::fs::SeekFrom::Hole(data))
            .unwrap_or(len)
            .min(len);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            let n = match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                dst,
                Some(&mut off_out),
                want,
            ) {
                Ok(n) => n,
                Err(RErrno::XDEV)
                | Err(RErrno::NOSYS)
                | Err(RErrno::OPNOTSUPP)
                | Err(RErrno::INVAL) => {
                    copy_by_hand(src, dst, &mut off_in, &mut off_out, hole)?;
                    break;
                }
                Err(RErrno::INTR) => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
        }
        pos = hole;
    }
    // A trailing hole: give the copy its full length (only if it lacks it: a truncate
    // to the same size would still set the file's modification time).
    if stat_fd(dst)?.st_size < i64::try_from(len).unwrap_or(i64::MAX) {
        rustix::fs::ftruncate(dst, len)?;
    }
    Ok(())
}

fn copy_by_hand(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    off_in: &mut u64,
    off_out: &mut u64,
    end: u64,
) -> Result<(), RErrno> {
    let mut buf = vec![0u8; 1 << 20];
    while *off_in < end {
        let want = usize::try_from(end - *off_in)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], *off_in)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(dst, &buf[done..n], *off_out + done as u64)?;
        }
        *off_in += n as u64;
        *off_out += n as u64;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Process control for the daemon.

/// The result of [`fork`].
pub enum Forked {
    Parent(i32),
    Child,
}

/// Safe wrapper for `fork(2)`.
///
/// Must be called while the process has a single thread: the child gets a copy of only
/// the calling thread, and any lock another thread held would stay locked forever.
///
/// # Errors
/// The errno of `fork`.
pub fn fork() -> Result<Forked, RErrno> {
    // SAFETY: callers fork before starting any thread (documented above); the child
    // continues with ordinary Rust code in a single-threaded process.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(last_errno()),
        0 => Ok(Forked::Child),
        p => Ok(Forked::Parent(p)),
    }
}

/// Safe wrapper for `setsid(2)`.
///
/// # Errors
/// The errno of `setsid`.
pub fn setsid() -> Result<(), RErrno> {
    rustix::process::setsid().map(|_| ())
}

/// Safe wrapper for `umask(2)`; returns the previous mask.
pub fn set_umask(mask: u32) -> u32 {
    rustix::process::umask(Mode::from_raw_mode(mask)).bits()
}

/// Raises the soft limit on open descriptors to the hard limit (`setrlimit(2)`); returns
/// the new limit. A daemon holds a descriptor for every file open through its mount.
///
/// # Errors
/// The errno of `setrlimit`.
pub fn raise_fd_limit() -> Result<u64, RErrno> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    setrlimit(Resource::Nofile, raised)?;
    Ok(lim.maximum.unwrap_or(u64::MAX))
}

/// Safe wrapper for `dup2(2)` onto a standard descriptor (0, 1 or 2).
///
/// # Errors
/// The errno of `dup2`.
pub fn redirect_stdio(from: BorrowedFd<'_>, to_std: i32) -> Result<(), RErrno> {
    // SAFETY: dup2 onto 0/1/2 only replaces a standard descriptor; Rust's std owns no
    // other state tied to those numbers.
    let r = unsafe { libc::dup2(from.as_raw_fd(), to_std) };
    if r < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in every thread it
/// starts afterwards), so that [`wait_termination_signal`] can take them synchronously.
///
/// # Errors
/// The errno of `pthread_sigmask`.
pub fn block_termination_signals() -> Result<(), RErrno> {
    let set = termination_set();
    // SAFETY: `set` is a fully initialised sigset_t; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(RErrno::from_raw_os_error(r));
    }
    Ok(())
}

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset fully initialises the zeroed set; sigaddset only sets bits.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Waits for one of the signals blocked by [`block_termination_signals`] and returns it.
pub fn wait_termination_signal() -> i32 {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// The minor number of the mount's device (a FUSE mount's fusectl connection).
    pub minor: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// The mounts this process sees, in mount order (a later one hides an earlier one on the
/// same point); empty when `/proc` cannot be read.
pub fn mount_table() -> Vec<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(parse_mountinfo).collect()
}

/// `ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS`
fn parse_mountinfo(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let f: Vec<&str> = head.split(' ').collect();
    let mut t = tail.split(' ');
    Some(MountEntry {
        minor: f.get(2)?.split(':').nth(1)?.to_string(),
        mount_point: PathBuf::from(OsString::from_vec(unescape_octal(f.get(4)?))),
        fs_type: t.next()?.to_string(),
        source: String::from_utf8_lossy(&unescape_octal(t.next()?)).into_owned(),
    })
}

/// Undoes the octal escapes (`\040` for a space) of a mount table field.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8)) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Safe wrapper for `umount2(2)`; `lazy` adds `MNT_DETACH`.
///
/// # Errors
/// The errno of `umount2`.
pub fn unmount(path: &Path, lazy: bool) -> Result<(), RErrno> {
    let flags = if lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    rustix::mount::unmount(path, flags)
}

/// Flags of a FUSE mount made with [`mount_fuse`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseMountFlags {
    pub read_only: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
}

/// Opens `/dev/fuse` and mounts a FUSE filesystem of type `fuse.SUBTYPE` from it at
/// `target` with `mount(2)`; returns the device descriptor for the session. `options`
/// are the FUSE mount options after `fd=`, `rootmode=`, `user_id=` and `group_id=`
/// (e.g. `default_permissions,allow_other`).
///
/// # Errors
/// The errno of `open` or `mount` (`EPERM` without `CAP_SYS_ADMIN`).
pub fn mount_fuse(
    source: &str,
    subtype: &str,
    target: &Path,
    flags: FuseMountFlags,
    options: &str,
) -> Result<OwnedFd, RErrno> {
    use rustix::mount::MountFlags;
    let dev = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={}",
        dev.as_raw_fd(),
        libc::S_IFDIR,
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw()
    );
    if !options.is_empty() {
        data.push(',');
        data.push_str(options);
    }
    let mut f = MountFlags::empty();
    for (on, flag) in [
        (flags.read_only, MountFlags::RDONLY),
        (flags.nosuid, MountFlags::NOSUID),
        (flags.nodev, MountFlags::NODEV),
        (flags.noexec, MountFlags::NOEXEC),
        (flags.noatime, MountFlags::NOATIME),
    ] {
        if on {
            f |= flag;
        }
    }
    let fstype = format!("fuse.{subtype}");
    let data = CString::new(data).map_err(|_| RErrno::INVAL)?;
    rustix::mount::mount(source, target, fstype.as_str(), f, data.as_c_str())?;
    Ok(dev)
}

/// Safe wrapper for `geteuid(2)`.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A file handle (`name_to_handle_at(2)`): names an inode of a filesystem for as long as
/// it exists, whatever its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHandle {
    /// The filesystem's handle type (`FILEID_*`).
    pub kind: i32,
    pub bytes: Vec<u8>,
}

/// The most bytes a handle can have (`MAX_HANDLE_SZ`).
pub const MAX_HANDLE_SZ: usize = 128;

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

fn last_errno() -> RErrno {
    RErrno::from_raw_os_error(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Safe wrapper for `name_to_handle_at(2)` on the inode behind `fd` (`O_PATH` allowed).
///
/// # Errors
/// The errno of the call (`EOPNOTSUPP` where the filesystem has no handles).
pub fn name_to_handle(fd: BorrowedFd<'_>) -> Result<FileHandle, RErrno> {
    let mut h = RawHandle {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a `struct file_handle` whose `handle_bytes` says how much room
    // follows; the path is a valid NUL-terminated empty string used with AT_EMPTY_PATH.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut h as *mut RawHandle,
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(last_errno());
    }
    let n = (h.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok(FileHandle {
        kind: h.handle_type,
        bytes: h.f_handle[..n].to_vec(),
    })
}

/// Safe wrapper for `open_by_handle_at(2)`: opens the inode `handle` names on the
/// filesystem of `mount_fd` (an open file or directory there, not `O_PATH`; the call
/// needs `CAP_DAC_READ_SEARCH`).
///
/// # Errors
/// The errno of the call: `ESTALE` once the inode is gone, `EPERM` without the capability.
pub fn open_by_handle(
    mount_fd: BorrowedFd<'_>,
    handle: &FileHandle,
    flags: OFlags,
) -> Result<OwnedFd, RErrno> {
    if handle.bytes.len() > MAX_HANDLE_SZ {
        return Err(RErrno::INVAL);
    }
    let mut h = RawHandle {
        handle_bytes: handle.bytes.len() as u32,
        handle_type: handle.kind,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    h.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
    // SAFETY: `h` is a valid `struct file_handle` with `handle_bytes` bytes of handle.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            &mut h as *mut RawHandle,
            (flags | OFlags::CLOEXEC).bits() as libc::c_int,
        )
    };
    if r < 0 {
        return Err(last_errno());
    }
    let fd = libc::c_int::try_from(r).map_err(|_| RErrno::INVAL)?;
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The UUID of the filesystem behind `fd` (`FS_IOC_GETFSUUID`; an open file or
/// directory, not `O_PATH`), or `None` where the filesystem has none (the kernel then
/// counts it as all zeroes).
pub fn fs_uuid(fd: BorrowedFd<'_>) -> Result<Option<[u8; 16]>, RErrno> {
    /// `struct fsuuid2`.
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    /// `_IOR(0x15, 0, struct fsuuid2)`.
    const FS_IOC_GETFSUUID: libc::c_ulong = 0x8011_1500;
    let mut u = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: FS_IOC_GETFSUUID writes at most one `struct fsuuid2` into `u`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, &mut u as *mut FsUuid2) };
    if r != 0 {
        return match last_errno() {
            RErrno::NOTTY | RErrno::INVAL | RErrno::NOSYS | RErrno::OPNOTSUPP => Ok(None),
            e => Err(e),
        };
    }
    Ok((u.len == 16).then_some(u.uuid))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_are_read_with_their_escapes_undone() {
        let line =
            r"36 35 0:52 / /tmp/a\040b rw,relatime shared:1 - fuse.strata strata rw,user_id=0";
        let m = parse_mountinfo(line).unwrap();
        assert_eq!(m.minor, "52");
        assert_eq!(m.mount_point, Path::new("/tmp/a b"));
        assert_eq!(
            (m.fs_type.as_str(), m.source.as_str()),
            ("fuse.strata", "strata")
        );
        assert_eq!(unescape_octal(r"/a\\b"), br"/a\\b");
        assert_eq!(parse_mountinfo("garbage"), None);
    }
}
