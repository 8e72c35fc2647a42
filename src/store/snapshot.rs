//! A regular file's data taken whole, as it was at one moment, before any of it goes into
//! the layer tar: the tree may be live (the upper dir of a running mount).
//!
//! A tar entry cannot be taken back once its header is out, so a file's data is first
//! taken into a snapshot and only then written: files up to [`MEM_MAX`] into a reused
//! memory buffer, larger ones into an anonymous `O_TMPFILE` spool in the directory the
//! caller names (the store's `tmp/`; reflinked where that filesystem is the file's, else
//! copied in the kernel). A file changed less than [`SETTLE`] ago is taken again once it
//! has been quiet that long: a write in progress when the copy began stamped the times
//! before it, so only its age shows it. The file is `fstat`ed before and after the copy
//! (and, for a file read through the union, its metadata asked again); the snapshot counts
//! only if size, mtime and ctime (and the header fields) did not move and all the bytes
//! were there; else it is taken again, [`TRIES`] times at most, then `diff` refuses the
//! file (`DiffError::Unstable`). So the tar holds each file as it was at one moment (to
//! the resolution of the file's timestamps, which kernels since 6.13 make fine-grained as
//! soon as someone looks). Files are opened read-only, with `O_NOATIME` where allowed:
//! nothing here writes into the tree.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::tarwrite::{Body, LinkKey, Meta, TarOut};
use crate::error::Errno;
use crate::sys;
use crate::union::Union;

/// Files up to this size are read into memory; larger ones go through a spool file.
pub(super) const MEM_MAX: u64 = 16 << 20;
/// How often a file that changes while it is read is read again.
const TRIES: usize = 5;
/// The piece of a spooled file copied into the tar at a time.
const CHUNK: usize = 1 << 20;

/// Where the current snapshot is.
enum Held {
    Mem(usize),
    Spool(u64),
}

/// A regular file's data taken whole before any of it goes into the tar.
struct Snapshot {
    buf: Vec<u8>,
    /// An anonymous file in `spool_dir`, made at the first large file.
    spool: Option<OwnedFd>,
    spool_dir: PathBuf,
    mem_max: u64,
    held: Held,
}

impl Snapshot {
    /// Takes `size` bytes of `fd`; false when the file had fewer (it shrank meanwhile).
    fn take(&mut self, fd: BorrowedFd<'_>, size: u64) -> io::Result<bool> {
        if size <= self.mem_max {
            let len = usize::try_from(size).map_err(io::Error::other)?;
            if self.buf.len() < len {
                self.buf.resize(len, 0);
            }
            let got = pread_full(fd, &mut self.buf[..len], 0)?;
            self.held = Held::Mem(len);
            return Ok(got == len);
        }
        let spool = match &self.spool {
            Some(s) => s,
            None => {
                let dir = &self.spool_dir;
                let fd = rustix::fs::open(
                    dir,
                    OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("a spool file in {}: {e}", dir.display()),
                    )
                })?;
                self.spool.insert(fd)
            }
        };
        rustix::fs::ftruncate(spool, 0)?;
        sys::copy_data(fd, spool.as_fd(), size)?;
        self.held = Held::Spool(size);
        // A short copy leaves a hole the truncate filled: the stat check catches the change.
        Ok(true)
    }

    /// Writes the snapshot's data (with its padding) into the tar.
    fn write_to(&mut self, tar: &mut TarOut<'_>) -> io::Result<()> {
        match self.held {
            Held::Mem(len) => {
                tar.out.write_all(&self.buf[..len])?;
                tar.pad(len as u64)
            }
            Held::Spool(size) => {
                let Some(spool) = &self.spool else {
                    return Err(io::Error::other("no spool file"));
                };
                if self.buf.len() < CHUNK {
                    self.buf.resize(CHUNK, 0);
                }
                let mut off = 0u64;
                while off < size {
                    let want = usize::try_from(size - off).unwrap_or(CHUNK).min(CHUNK);
                    let got = pread_full(spool.as_fd(), &mut self.buf[..want], off)?;
                    if got < want {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the spool file is short",
                        ));
                    }
                    tar.out.write_all(&self.buf[..want])?;
                    off += want as u64;
                }
                tar.pad(size)
            }
        }
    }
}

/// Reads into all of `buf` from `off` on, short only at the end of the file.
fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(fd, &mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// How long after its last change a file is taken to be quiet: longer than one write call
/// takes, with the timestamp granularity of the filesystem on top.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// How long to wait before a file changed less than [`SETTLE`] ago can be trusted to hold
/// no write in progress; `None` when it has been quiet long enough. (Only the first file of
/// a freshly written tree waits: the wait lets everything changed before it settle.)
fn unsettled(st: &sys::Stat) -> Option<std::time::Duration> {
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(st.st_ctime).unwrap_or(0),
            u32::try_from(st.st_ctime_nsec).unwrap_or(0),
        );
    // A change stamped in the future means the clock was set back: nothing to wait for.
    let age = std::time::SystemTime::now().duration_since(changed).ok()?;
    (age < SETTLE).then(|| SETTLE - age)
}

/// What must not move while a file is read: size, mtime and ctime.
fn stamp(st: &sys::Stat) -> (i64, i64, u64, i64, u64) {
    (
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
    )
}

/// Where a regular file is read from.
pub(super) enum FileSrc<'a> {
    /// The entry `name` of directory `dir`: data and metadata.
    Disk(BorrowedFd<'a>, &'a OsStr),
    /// The entry `name` of directory node `parent` of the union: the metadata of its top
    /// copy, the data where the union finds it (below, for a metadata-only copy).
    Node(&'a Union, u64, &'a OsStr),
}

pub(super) fn uerr(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.code())
}

impl FileSrc<'_> {
    /// Opens the data; with the data's `fstat` and the metadata of the entry.
    fn open(&self) -> io::Result<(OwnedFd, sys::Stat, Meta)> {
        let (fd, meta) = match self {
            FileSrc::Disk(dir, name) => {
                // O_NONBLOCK: should a fifo have taken the name, the open must not hang.
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let fd =
                    match rustix::fs::openat(*dir, *name, flags | OFlags::NOATIME, Mode::empty()) {
                        Err(rustix::io::Errno::PERM) => {
                            rustix::fs::openat(*dir, *name, flags, Mode::empty())
                        }
                        r => r,
                    }?;
                (fd, None)
            }
            FileSrc::Node(u, parent, name) => {
                let attr = u.lookup(*parent, name).map_err(uerr)?;
                let fh = u.open(attr.ino, libc::O_RDONLY).map_err(uerr)?;
                let fd = u.with_settled_fd(fh, true, |fd| fd.try_clone_to_owned());
                u.release(fh);
                let fd = fd.ok_or_else(|| io::Error::other("the union gave no descriptor"))??;
                (fd, Some(Meta::of_attr(&attr)))
            }
        };
        let st = sys::stat_fd(fd.as_fd())?;
        let meta = meta.unwrap_or_else(|| Meta::of_stat(&st));
        Ok((fd, st, meta))
    }

    /// The metadata of the entry now, `after` being the `fstat` of its data after the read.
    fn meta_again(&self, after: &sys::Stat, before: &Meta) -> io::Result<Meta> {
        match (self, before.key) {
            (FileSrc::Node(u, ..), LinkKey::Node(id)) => {
                Ok(Meta::of_attr(&u.getattr(id).map_err(uerr)?))
            }
            _ => Ok(Meta::of_stat(after)),
        }
    }
}

/// The mutable state of a write: the tar and the snapshot buffers.
pub(super) struct Writer<'w> {
    pub(super) tar: TarOut<'w>,
    data: Snapshot,
}

impl<'w> Writer<'w> {
    /// A write into `out`, files above `mem_max` bytes taken through a spool file made in
    /// `spool`.
    pub(super) fn new(out: &'w mut dyn Write, spool: &Path, mem_max: u64) -> Writer<'w> {
        Writer {
            tar: TarOut::new(out),
            data: Snapshot {
                buf: Vec::new(),
                spool: None,
                spool_dir: spool.to_path_buf(),
                mem_max,
                held: Held::Mem(0),
            },
        }
    }

    /// Writes the regular file `name` from `src`: a snapshot first, taken again while it
    /// moves; `Ok(false)` when it never held still.
    pub(super) fn file(
        &mut self,
        name: &[u8],
        src: &FileSrc<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<bool> {
        for _ in 0..TRIES {
            // One `fstat` before the read and one after serve both the stamp check and,
            // for a file of the tree, its metadata.
            let (fd, before, meta) = src.open()?;
            if before.st_mode & libc::S_IFMT != libc::S_IFREG {
                // Something else took the name: the tree is moving.
                continue;
            }
            let size = u64::try_from(before.st_size).unwrap_or(0);
            let whole = self.data.take(fd.as_fd(), size)?;
            let after = sys::stat_fd(fd.as_fd())?;
            let again = src.meta_again(&after, &meta)?;
            if whole && stamp(&before) == stamp(&after) && again == meta {
                if let Some(wait) = unsettled(&after) {
                    // A write that began just before `before` may still have been copying
                    // its data while the file was read (the kernel stamps the times first).
                    std::thread::sleep(wait);
                    continue;
                }
                self.tar.entry(name, &meta, &Body::File(size), xattrs)?;
                self.data.write_to(&mut self.tar)?;
                self.tar.stats.bytes += size;
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use crate::store::diff::{write_layer, write_with, DiffError, Source};
    use crate::store::tartest::{find, read_tar, write};

    #[test]
    fn large_files_through_the_spool_give_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("base");
        fs::create_dir(&root).unwrap();
        let big: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        fs::write(root.join("big"), &big).unwrap();
        fs::write(root.join("small"), b"0123456789").unwrap();
        fs::write(root.join("empty"), b"").unwrap();
        let src = Source::Base(root);
        let (mem, _) = write(&src);
        let mut spooled = Vec::new();
        let stats = write_with(&src, &std::env::temp_dir(), &mut spooled, 0).unwrap();
        assert_eq!(stats.bytes, big.len() as u64 + 10);
        assert!(mem == spooled, "the spool changed the bytes");
        assert_eq!(find(&read_tar(&spooled), "big").data, big);
    }

    #[test]
    fn a_file_that_keeps_changing_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("base");
        fs::create_dir(&root).unwrap();
        let path = root.join("busy");
        fs::write(&path, vec![7u8; 32 << 20]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (stop, path) = (Arc::clone(&stop), path.clone());
            std::thread::spawn(move || {
                let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    f.write_all(b"x").unwrap();
                }
            })
        };
        while fs::metadata(&path).unwrap().len() == 32 << 20 {
            std::thread::yield_now();
        }
        let r = write_layer(&Source::Base(root), &std::env::temp_dir(), &mut io::sink());
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        match r {
            Err(DiffError::Unstable(p)) => assert!(p.ends_with("/busy"), "{p}"),
            other => panic!("{other:?}"),
        }
    }
}
