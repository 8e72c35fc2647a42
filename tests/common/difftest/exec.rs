//! Runs operations on one mount (one "side") with ordinary system calls and turns each into
//! a comparable result: `Ok(value)` or `Err(errno)`. A side also holds the descriptors that
//! descriptor operations use (a few numbered slots), and runs an operation as another user
//! on a thread of its own that drops root for good (per-thread credentials, so the rest of
//! the test keeps root).
//!
//! The kernel side leaves out of listings the names it cannot look up: the kernel lists the
//! whiteouts of a lower directory that is not merged with anything (it reads that directory
//! as it is) and then answers `ENOENT` for them. strata never lists them; that side's
//! listings are taken as they are, so a name strata lists but cannot find still shows.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FallocateFlags, Gid, Mode, OFlags, RenameFlags, Timespec, Timestamps, Uid, XattrFlags,
    CWD,
};
use rustix::io::Errno;

use super::ops::{AllocMode, CreateFlag, Op, OpenMode, RenameFlag, Step, XattrFlag};
use super::rng;

/// How many descriptor slots a side has.
pub const SLOTS: usize = 4;

/// Times below this (2017) were set by the test (layers and operations use 2001..2010);
/// later ones are "now" and differ between the two runs, so they are not compared.
pub const OLD_LIMIT: i64 = 1_500_000_000;

/// What `stat` shows that both mounts must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatV {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Not for directories: their size depends on the history of the backing directory.
    pub size: Option<u64>,
    pub nlink: u64,
    /// Only a time the test set (see [`OLD_LIMIT`]), in nanoseconds.
    pub mtime: Option<i64>,
}

impl StatV {
    pub fn of(st: &rustix::fs::Stat) -> StatV {
        let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        StatV {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: (!dir).then_some(st.st_size as u64),
            nlink: st.st_nlink,
            mtime: (st.st_mtime < OLD_LIMIT)
                .then(|| st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Unit,
    Data { len: usize, digest: u64 },
    Names(Vec<String>),
    Stat(StatV),
    Bytes(Vec<u8>),
}

pub type Res = Result<Val, i32>;

/// The name of an errno.
pub fn errno_name(e: i32) -> String {
    let names = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::ENXIO, "ENXIO"),
        (libc::E2BIG, "E2BIG"),
        (libc::EBADF, "EBADF"),
        (libc::EACCES, "EACCES"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENODEV, "ENODEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ETXTBSY, "ETXTBSY"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EROFS, "EROFS"),
        (libc::EMLINK, "EMLINK"),
        (libc::ERANGE, "ERANGE"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ELOOP, "ELOOP"),
        (libc::ENODATA, "ENODATA"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ESTALE, "ESTALE"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == e)
        .map_or_else(|| format!("errno {e}"), |(_, s)| s.to_string())
}

/// A result as a reproducer shows it.
pub fn show(r: &Res) -> String {
    match r {
        Err(e) => errno_name(*e),
        Ok(Val::Unit) => "ok".into(),
        Ok(Val::Data { len, digest }) => format!("ok {len} bytes #{digest:016x}"),
        Ok(Val::Names(n)) => format!("ok {n:?}"),
        Ok(Val::Stat(st)) => format!(
            "ok mode={:o} uid={} gid={} size={:?} nlink={} mtime={:?}",
            st.mode, st.uid, st.gid, st.size, st.nlink, st.mtime
        ),
        Ok(Val::Bytes(b)) => format!("ok {}", rng::hex(b)),
    }
}

struct Slot {
    fd: OwnedFd,
    path: String,
    ino: u64,
    dir: bool,
}

/// One mount and the descriptors opened on it.
pub struct Side {
    pub root: PathBuf,
    /// The kernel's side (listings leave out names it cannot look up, see the module doc).
    pub kernel: bool,
    slots: Vec<Option<Slot>>,
}

type R<T> = Result<T, Errno>;

fn ts(t: Option<i64>) -> Timespec {
    match t {
        Some(s) => Timespec {
            tv_sec: s,
            tv_nsec: 0,
        },
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    }
}

fn times(a: Option<i64>, m: Option<i64>) -> Timestamps {
    Timestamps {
        last_access: ts(a),
        last_modification: ts(m),
    }
}

fn ids(u: Option<u32>, g: Option<u32>) -> (Option<Uid>, Option<Gid>) {
    (u.map(Uid::from_raw), g.map(Gid::from_raw))
}

const OPEN: OFlags = OFlags::NONBLOCK.union(OFlags::CLOEXEC);

/// Reads all of `fd` from offset 0.
fn read_all(fd: impl AsFd) -> R<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = rustix::io::pread(fd.as_fd(), &mut buf[..], out.len() as u64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() > 16 << 20 {
            return Err(Errno::FBIG);
        }
    }
}

fn data(b: &[u8]) -> Val {
    Val::Data {
        len: b.len(),
        digest: rng::digest(b),
    }
}

/// Drops root on this thread for good: groups, gid, uid (per-thread system calls).
fn become_user(uid: u32, gid: u32) {
    let g = Gid::from_raw(gid);
    let u = Uid::from_raw(uid);
    rustix::thread::set_thread_groups(&[g]).expect("setgroups");
    rustix::thread::set_thread_res_gid(g, g, g).expect("setresgid");
    rustix::thread::set_thread_res_uid(u, u, u).expect("setresuid");
}

impl Side {
    pub fn new(root: &Path, kernel: bool) -> Side {
        Side {
            root: root.to_path_buf(),
            kernel,
            slots: (0..SLOTS).map(|_| None).collect(),
        }
    }

    /// For each slot: open on a directory (`Some(true)`), on a file, or empty.
    pub fn slot_kinds(&self) -> Vec<Option<bool>> {
        self.slots
            .iter()
            .map(|s| s.as_ref().map(|s| s.dir))
            .collect()
    }

    /// The path slot `i` was opened by, and whether that name no longer leads to the
    /// file open there (only used to recognise accepted differences).
    pub fn slot_name(&self, i: usize) -> Option<(String, bool)> {
        let s = self.slot(i).ok()?;
        let gone = rustix::fs::statat(CWD, self.p(&s.path), AtFlags::SYMLINK_NOFOLLOW)
            .map_or(true, |now| now.st_ino != s.ino);
        Some((s.path.clone(), gone))
    }

    /// Closes every descriptor.
    pub fn close_all(&mut self) {
        for s in &mut self.slots {
            *s = None;
        }
    }

    pub fn run(&mut self, step: &Step) -> Res {
        let r = match step.user {
            None => self.exec(&step.op),
            Some((u, g)) => std::thread::scope(|sc| {
                sc.spawn(|| {
                    become_user(u, g);
                    self.exec(&step.op)
                })
                .join()
                .expect("operation thread")
            }),
        };
        r.map_err(|e| e.raw_os_error())
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn slot(&self, i: usize) -> R<&Slot> {
        self.slots
            .get(i)
            .and_then(Option::as_ref)
            .ok_or(Errno::BADF)
    }

    /// The sorted names in the directory open as `fd` (read from its start).
    fn list(&self, fd: &OwnedFd) -> R<Vec<String>> {
        let mut d = rustix::fs::Dir::new(rustix::io::dup(fd)?)?;
        d.rewind();
        let mut out = Vec::new();
        while let Some(e) = d.read() {
            let e = e?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n == "." || n == ".." {
                continue;
            }
            if self.kernel
                && rustix::fs::statat(fd, n.as_str(), AtFlags::SYMLINK_NOFOLLOW).err()
                    == Some(Errno::NOENT)
            {
                continue; // a whiteout in a lower dir that is not merged (module doc)
            }
            out.push(n);
        }
        out.sort();
        Ok(out)
    }

    fn open_path(&self, rel: &str, flags: OFlags, mode: u32) -> R<OwnedFd> {
        rustix::fs::openat(CWD, self.p(rel), flags | OPEN, Mode::from_raw_mode(mode))
    }

    fn rmrf(&self, p: &Path) -> R<()> {
        let st = rustix::fs::statat(CWD, p, AtFlags::SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let fd = rustix::fs::openat(
                CWD,
                p,
                OFlags::RDONLY | OFlags::DIRECTORY | OPEN,
                Mode::empty(),
            )?;
            for n in self.list(&fd)? {
                self.rmrf(&p.join(n))?;
            }
            rustix::fs::unlinkat(CWD, p, AtFlags::REMOVEDIR)
        } else {
            rustix::fs::unlinkat(CWD, p, AtFlags::empty())
        }
    }

    fn exec(&mut self, op: &Op) -> R<Val> {
        use rustix::fs as f;
        let nofollow = |follow: bool| {
            if follow {
                AtFlags::empty()
            } else {
                AtFlags::SYMLINK_NOFOLLOW
            }
        };
        match op {
            Op::Create {
                p,
                mode,
                flag,
                off,
                data: d,
            } => {
                let extra = match flag {
                    CreateFlag::None => OFlags::empty(),
                    CreateFlag::Excl => OFlags::EXCL,
                    CreateFlag::Trunc => OFlags::TRUNC,
                    CreateFlag::Append => OFlags::APPEND,
                };
                let fd = self.open_path(p, OFlags::WRONLY | OFlags::CREATE | extra, *mode)?;
                if *off > 0 {
                    rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(*off))?;
                }
                if d.len > 0 {
                    rustix::io::write(&fd, &d.bytes())?;
                }
                Ok(Val::Unit)
            }
            Op::Write { p, off, data: d } => {
                let fd = self.open_path(p, OFlags::WRONLY, 0)?;
                rustix::io::pwrite(&fd, &d.bytes(), *off)?;
                Ok(Val::Unit)
            }
            Op::Append { p, data: d } => {
                let fd = self.open_path(p, OFlags::WRONLY | OFlags::APPEND, 0)?;
                rustix::io::write(&fd, &d.bytes())?;
                Ok(Val::Unit)
            }
            Op::Truncate { p, len } => {
                let fd = self.open_path(p, OFlags::WRONLY, 0)?;
                f::ftruncate(&fd, *len)?;
                Ok(Val::Unit)
            }
            Op::OTrunc { p } => {
                self.open_path(p, OFlags::WRONLY | OFlags::TRUNC, 0)?;
                Ok(Val::Unit)
            }
            Op::Read { p } => {
                let fd = self.open_path(p, OFlags::RDONLY, 0)?;
                Ok(data(&read_all(&fd)?))
            }
            Op::Stat { p, follow } => {
                let st = f::statat(CWD, self.p(p), nofollow(*follow))?;
                Ok(Val::Stat(StatV::of(&st)))
            }
            Op::Ls { p } => {
                let fd = self.open_path(p, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
                Ok(Val::Names(self.list(&fd)?))
            }
            Op::Mkdir { p, mode } => {
                f::mkdirat(CWD, self.p(p), Mode::from_raw_mode(*mode))?;
                Ok(Val::Unit)
            }
            Op::Rmdir { p } => {
                f::unlinkat(CWD, self.p(p), AtFlags::REMOVEDIR)?;
                Ok(Val::Unit)
            }
            Op::Unlink { p } => {
                f::unlinkat(CWD, self.p(p), AtFlags::empty())?;
                Ok(Val::Unit)
            }
            Op::RmRf { p } => {
                self.rmrf(&self.p(p))?;
                Ok(Val::Unit)
            }
            Op::Mkfifo { p, mode } => {
                f::mknodat(
                    CWD,
                    self.p(p),
                    f::FileType::Fifo,
                    Mode::from_raw_mode(*mode),
                    0,
                )?;
                Ok(Val::Unit)
            }
            Op::Mknod { p, mode } => {
                f::mknodat(
                    CWD,
                    self.p(p),
                    f::FileType::CharacterDevice,
                    Mode::from_raw_mode(*mode),
                    f::makedev(1, 3),
                )?;
                Ok(Val::Unit)
            }
            Op::Rename { a, b, flag } => {
                let fl = match flag {
                    RenameFlag::Plain => RenameFlags::empty(),
                    RenameFlag::NoReplace => RenameFlags::NOREPLACE,
                    RenameFlag::Exchange => RenameFlags::EXCHANGE,
                };
                f::renameat_with(CWD, self.p(a), CWD, self.p(b), fl)?;
                Ok(Val::Unit)
            }
            Op::Link { a, b } => {
                f::linkat(CWD, self.p(a), CWD, self.p(b), AtFlags::empty())?;
                Ok(Val::Unit)
            }
            Op::Symlink { target, p } => {
                f::symlinkat(target.as_str(), CWD, self.p(p))?;
                Ok(Val::Unit)
            }
            Op::Chmod { p, mode } => {
                f::chmodat(CWD, self.p(p), Mode::from_raw_mode(*mode), AtFlags::empty())?;
                Ok(Val::Unit)
            }
            Op::Chown {
                p,
                uid,
                gid,
                follow,
            } => {
                let (u, g) = ids(*uid, *gid);
                f::chownat(CWD, self.p(p), u, g, nofollow(*follow))?;
                Ok(Val::Unit)
            }
            Op::Utimens {
                p,
                atime,
                mtime,
                follow,
            } => {
                f::utimensat(CWD, self.p(p), &times(*atime, *mtime), nofollow(*follow))?;
                Ok(Val::Unit)
            }
            Op::SetXattr {
                p,
                name,
                value,
                flag,
                follow,
            } => {
                let fl = match flag {
                    XattrFlag::Any => XattrFlags::empty(),
                    XattrFlag::Create => XattrFlags::CREATE,
                    XattrFlag::Replace => XattrFlags::REPLACE,
                };
                if *follow {
                    f::setxattr(self.p(p), name.as_str(), value, fl)?;
                } else {
                    f::lsetxattr(self.p(p), name.as_str(), value, fl)?;
                }
                Ok(Val::Unit)
            }
            Op::RemoveXattr { p, name, follow } => {
                if *follow {
                    f::removexattr(self.p(p), name.as_str())?;
                } else {
                    f::lremovexattr(self.p(p), name.as_str())?;
                }
                Ok(Val::Unit)
            }
            Op::GetXattr { p, name, follow } => {
                let mut buf = vec![0u8; 65536];
                let n = if *follow {
                    f::getxattr(self.p(p), name.as_str(), &mut buf[..])?
                } else {
                    f::lgetxattr(self.p(p), name.as_str(), &mut buf[..])?
                };
                buf.truncate(n);
                Ok(Val::Bytes(buf))
            }
            Op::ListXattr { p, follow } => {
                let mut buf = vec![0u8; 65536];
                let n = if *follow {
                    f::listxattr(self.p(p), &mut buf[..])?
                } else {
                    f::llistxattr(self.p(p), &mut buf[..])?
                };
                Ok(Val::Names(xattr_names(&buf[..n])))
            }
            Op::Fallocate { p, mode, off, len } => {
                let fd = self.open_path(p, OFlags::WRONLY, 0)?;
                let fl = match mode {
                    AllocMode::Alloc => FallocateFlags::empty(),
                    AllocMode::KeepSize => FallocateFlags::KEEP_SIZE,
                    AllocMode::Punch => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                };
                f::fallocate(&fd, fl, *off, *len)?;
                Ok(Val::Unit)
            }
            Op::Open { slot, p, mode } => {
                let fl = match mode {
                    OpenMode::Read => OFlags::RDONLY,
                    OpenMode::Write => OFlags::WRONLY,
                    OpenMode::ReadWrite => OFlags::RDWR,
                    OpenMode::WriteAppend => OFlags::WRONLY | OFlags::APPEND,
                    OpenMode::WriteTrunc => OFlags::WRONLY | OFlags::TRUNC,
                };
                self.open_slot(*slot, p, fl)
            }
            Op::OpenDir { slot, p } => self.open_slot(*slot, p, OFlags::RDONLY | OFlags::DIRECTORY),
            Op::Close { slot } => {
                self.slot(*slot)?;
                self.slots[*slot] = None;
                Ok(Val::Unit)
            }
            Op::FRead { slot } => Ok(data(&read_all(&self.slot(*slot)?.fd)?)),
            Op::FLs { slot } => Ok(Val::Names(self.list(&self.slot(*slot)?.fd)?)),
            Op::FWrite { slot, off, data: d } => {
                rustix::io::pwrite(&self.slot(*slot)?.fd, &d.bytes(), *off)?;
                Ok(Val::Unit)
            }
            Op::FTrunc { slot, len } => {
                f::ftruncate(&self.slot(*slot)?.fd, *len)?;
                Ok(Val::Unit)
            }
            Op::FStat { slot } => Ok(Val::Stat(StatV::of(&f::fstat(&self.slot(*slot)?.fd)?))),
            Op::FChmod { slot, mode } => {
                f::fchmod(&self.slot(*slot)?.fd, Mode::from_raw_mode(*mode))?;
                Ok(Val::Unit)
            }
            Op::FChown { slot, uid, gid } => {
                let (u, g) = ids(*uid, *gid);
                f::fchown(&self.slot(*slot)?.fd, u, g)?;
                Ok(Val::Unit)
            }
            Op::FUtimens { slot, atime, mtime } => {
                f::futimens(&self.slot(*slot)?.fd, &times(*atime, *mtime))?;
                Ok(Val::Unit)
            }
            Op::FSetXattr { slot, name, value } => {
                f::fsetxattr(
                    &self.slot(*slot)?.fd,
                    name.as_str(),
                    value,
                    XattrFlags::empty(),
                )?;
                Ok(Val::Unit)
            }
        }
    }

    fn open_slot(&mut self, slot: usize, p: &str, flags: OFlags) -> R<Val> {
        if slot >= SLOTS {
            return Err(Errno::BADF);
        }
        let fd = self.open_path(p, flags, 0)?;
        let st = rustix::fs::fstat(&fd)?;
        self.slots[slot] = Some(Slot {
            fd,
            path: p.to_string(),
            ino: st.st_ino,
            dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
        });
        Ok(Val::Unit)
    }
}

/// The sorted names of a `listxattr` buffer.
pub fn xattr_names(buf: &[u8]) -> Vec<String> {
    let mut v: Vec<String> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    v.sort();
    v
}
