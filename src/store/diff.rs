//! A directory tree becomes a layer tar: the upper dir of a mount (a diff over the image's
//! layers) or a plain directory (a base layer for `import`).
//!
//! CONTRACT (the store calls only [`write_layer`]):
//! - Deterministic: entries sorted by name (bytes), depth first, a directory's whiteouts
//!   and opaque marker right after the directory's own entry; fixed header fields (ustar,
//!   PAX where names are long; uname/gname empty; no atime/ctime); the same tree gives
//!   the same bytes. The layer root itself is not an entry.
//! - [`Source::Diff`]: an upper dir in the kernel overlay format over `lowers` (top
//!   first). A 0/0 char device becomes an empty `.wh.NAME`; an opaque dir
//!   (`trusted.overlay.opaque=y`, or `user.overlay.opaque`) gets `.wh..wh..opq`; a
//!   directory with a redirect (it was renamed) is written whole, as the union shows it,
//!   and opaque; a metacopy file's data is read through the union (the upper holds only
//!   its metadata). Overlay xattrs (`trusted.overlay.*`, `user.overlay.*`) are never
//!   written; other xattrs as PAX `SCHILY.xattr.*`.
//! - [`Source::Base`]: a plain directory written whole; whiteouts and opaque markers in it
//!   hide nothing below a base layer and are left out.
//! - Regular files, dirs, symlinks, hard links (a second name of an inode in this tar is a
//!   link to the first name), fifos, char/block devices (major/minor); sockets skipped.
//! - A regular file that changes while it is read (size, mtime or ctime differ before and
//!   after) is read again, so the tar never holds a half-written file; after a few tries
//!   the error names it.
//!
//! The bytes: ustar headers (name split into prefix/name where it fits, as Go does),
//! one PAX header before an entry that needs records (xattrs, a `path` or `linkpath` too
//! long for ustar), records sorted by key. A directory is written as: its header, its
//! opaque marker, its whiteouts, then its other children, each group sorted by name.
//! Whiteouts and markers are empty regular files with mode 0, owner 0:0 and mtime 0 (as
//! umoci writes them).
//!
//! Consistency: a tar entry cannot be taken back once its header is out, so a file's data
//! is first taken into a snapshot and only then written: files up to [`MEM_MAX`] into a
//! reused memory buffer, larger ones into an anonymous `O_TMPFILE` spool in the directory
//! the caller names (the store's `tmp/`; reflinked where that filesystem is the file's,
//! else copied in the kernel). A file changed less than [`SETTLE`] ago is taken again
//! once it has been quiet that long: a write in progress when the copy began stamped the
//! times before it, so only its age shows it. The file is `fstat`ed before and after the copy (and, for a file read
//! through the union, its metadata asked again); the snapshot counts only if size, mtime
//! and ctime (and the header fields) did not move and all the bytes were there; else it
//! is taken again, [`TRIES`] times at most, then [`DiffError::Unstable`]. So the tar holds
//! each file as it was at one moment (to the resolution of the file's timestamps, which
//! kernels since 6.13 make fine-grained as soon as someone looks). Nothing is ever written
//! into the upper dir or the lowers: files are opened read-only with `O_NOATIME` where
//! allowed, and the union used for redirects and metadata-only copies is read-only.
//!
//! Names the format cannot carry are refused ([`DiffError::Unrepresentable`]), never
//! dropped: in a diff, a user file named `.wh.*` (it would read back as a whiteout), and
//! an xattr name holding `=`.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::error::Errno;
use crate::sys;
use crate::union::inode::ROOT_ID;
use crate::union::layer::{self, WH_OPAQUE, WH_PREFIX};
use crate::union::{Attr, Creds, Stack, StackPaths, Union, UnionOptions};

/// What to write.
#[derive(Clone, Debug)]
pub enum Source {
    /// An upper directory over its lower layers (top first).
    Diff {
        upper: PathBuf,
        lowers: Vec<PathBuf>,
    },
    /// A plain directory, as a base layer.
    Base(PathBuf),
}

/// What a written layer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries in the tar (whiteouts and opaque markers included, PAX headers not).
    pub entries: u64,
    /// The sum of the sizes of the regular files written.
    pub bytes: u64,
}

/// Why a tree could not be written; names the path.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} kept changing while it was read; try again when it is quiet")]
    Unstable(String),
    #[error("{path}: {why}")]
    Unrepresentable { path: String, why: &'static str },
}

/// Files up to this size are read into memory; larger ones go through a spool file.
const MEM_MAX: u64 = 16 << 20;
/// How often a file that changes while it is read is read again.
const TRIES: usize = 5;
/// The piece of a spooled file copied into the tar at a time.
const CHUNK: usize = 1 << 20;
/// The output buffer: headers and small files are gathered, large data goes straight out.
const OUT_BUF: usize = 128 << 10;
const BLOCK: usize = 512;
/// The name of every PAX extended header (its records name the entry).
const PAX_NAME: &[u8] = b"././@PaxHeader";
/// The ustar name and prefix fields, and the link name field.
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;

const REDIRECT_XATTRS: [&str; 2] = [layer::REDIRECT_XATTR, "user.overlay.redirect"];
const METACOPY_XATTRS: [&str; 2] = [layer::METACOPY_XATTR, "user.overlay.metacopy"];
/// A zero-size regular file with this xattr is a whiteout (kernels since 6.7).
const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// Writes the layer tar of `src` to `out` (the end-of-archive marker included); files too
/// large to hold in memory are taken through an anonymous file in `spool`.
///
/// # Errors
/// See [`DiffError`].
pub fn write_layer(
    src: &Source,
    spool: &Path,
    out: &mut dyn Write,
) -> Result<DiffStats, DiffError> {
    write_with(src, spool, out, MEM_MAX)
}

/// [`write_layer`], with files above `mem_max` bytes going through the spool.
fn write_with(
    src: &Source,
    spool: &Path,
    out: &mut dyn Write,
    mem_max: u64,
) -> Result<DiffStats, DiffError> {
    let tree = match src {
        Source::Diff { upper, lowers } => Tree {
            kind: Kind::Diff,
            root: upper.clone(),
            lowers: lowers.clone(),
            union: OnceCell::new(),
        },
        Source::Base(dir) => Tree {
            kind: Kind::Base,
            root: dir.clone(),
            lowers: Vec::new(),
            union: OnceCell::new(),
        },
    };
    let mut w = Writer {
        tar: TarOut {
            out: io::BufWriter::with_capacity(OUT_BUF, out),
            stats: DiffStats::default(),
            links: HashMap::new(),
        },
        data: Snapshot {
            buf: Vec::new(),
            spool: None,
            spool_dir: spool.to_path_buf(),
            mem_max,
            held: Held::Mem(0),
        },
    };
    tree.run(&mut w)?;
    w.tar.finish().map_err(|e| tree.io(b"", e))?;
    Ok(w.tar.stats)
}

// ---------------------------------------------------------------------------------------
// The tar format: pure helpers over bytes.

/// The ustar (prefix, name) fields for `name`, if it fits them: the name field alone up to
/// 100 bytes, else split at the last `/` that leaves at most 155 bytes before it and 1 to
/// 100 after it (Go's rule).
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= NAME_LEN {
        return Some((&[], name));
    }
    let mut end = name.len().min(PREFIX_LEN + 1);
    if end == name.len() && name.ends_with(b"/") {
        end -= 1;
    }
    let i = name[..end].iter().rposition(|b| *b == b'/')?;
    let rest = name.len() - i - 1;
    (i > 0 && rest > 0 && rest <= NAME_LEN && i <= PREFIX_LEN).then(|| (&name[..i], &name[i + 1..]))
}

/// Appends one PAX record `LEN KEY=VALUE\n` to `out`; LEN counts the whole record,
/// its own digits included.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let digits = |n: usize| n.to_string().len();
    let mut len = body + digits(body);
    if digits(len) != digits(body) {
        len = body + digits(len);
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// True for the xattrs of the overlay format, never written into a layer. Escaped user
/// xattrs (`trusted.overlay.overlay.*`) go too: a layer tar has no way to say them.
fn overlay_private(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

/// An entry's xattrs to write: (name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Whether the NUL-separated xattr name list `names` holds one of `wanted`.
fn lists_any(names: &[u8], wanted: &[&str]) -> bool {
    names
        .split(|b| *b == 0)
        .any(|n| wanted.iter().any(|w| w.as_bytes() == n))
}

/// The fields of an entry's header, from `lstat` or from the union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    /// The full `st_mode`.
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u64),
    ctime: (i64, u64),
    rdev: u64,
    nlink: u64,
    /// The inode, for hard links.
    key: LinkKey,
}

/// What identifies an inode among the entries of one tar: a file of a directory tree, or
/// a node of the union (whose numbers are its own). So an upper file with a name below a
/// renamed directory (read through the union) and another one elsewhere is written twice,
/// as two files: correct, only not shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LinkKey {
    Disk(u64, u64),
    Node(u64),
}

impl Meta {
    fn of_stat(st: &sys::Stat) -> Meta {
        Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            rdev: st.st_rdev,
            nlink: st.st_nlink,
            key: LinkKey::Disk(st.st_dev, st.st_ino),
        }
    }

    fn of_attr(a: &Attr) -> Meta {
        Meta {
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            mtime: (a.mtime.0, u64::from(a.mtime.1)),
            ctime: (a.ctime.0, u64::from(a.ctime.1)),
            rdev: a.rdev,
            nlink: u64::from(a.nlink),
            key: LinkKey::Node(a.ino),
        }
    }

    /// A whiteout or an opaque marker.
    fn marker() -> Meta {
        Meta {
            mode: libc::S_IFREG,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            rdev: 0,
            nlink: 1,
            key: LinkKey::Node(0),
        }
    }

    fn fmt(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// What follows a header.
enum Body<'a> {
    /// A regular file of this size (its data written separately).
    File(u64),
    Dir,
    Symlink(&'a [u8]),
    /// A hard link to an earlier entry.
    Link(&'a [u8]),
    Char,
    Block,
    Fifo,
}

/// The ustar header of entry `name`, and the PAX records (key, value) it needs besides the
/// `extra` ones: a name or a link target that does not fit the header.
fn header(
    name: &[u8],
    meta: &Meta,
    body: &Body<'_>,
    records: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    let ustar = h
        .as_ustar_mut()
        .ok_or_else(|| io::Error::other("not a ustar header"))?;
    match ustar_split(name) {
        Some((prefix, rest)) => {
            ustar.prefix[..prefix.len()].copy_from_slice(prefix);
            ustar.name[..rest.len()].copy_from_slice(rest);
        }
        None => {
            // Readers that know PAX take the record; the field keeps the start of it.
            ustar.name.copy_from_slice(&name[..NAME_LEN]);
            records.push((b"path".to_vec(), name.to_vec()));
        }
    }
    let (ty, size, link) = match body {
        Body::File(size) => (tar::EntryType::Regular, *size, None),
        Body::Dir => (tar::EntryType::Directory, 0, None),
        Body::Symlink(t) => (tar::EntryType::Symlink, 0, Some(*t)),
        Body::Link(t) => (tar::EntryType::Link, 0, Some(*t)),
        Body::Char => (tar::EntryType::Char, 0, None),
        Body::Block => (tar::EntryType::Block, 0, None),
        Body::Fifo => (tar::EntryType::Fifo, 0, None),
    };
    if let Some(target) = link {
        let field = &mut ustar.linkname;
        match target.len() <= NAME_LEN {
            true => field[..target.len()].copy_from_slice(target),
            false => {
                field.copy_from_slice(&target[..NAME_LEN]);
                records.push((b"linkpath".to_vec(), target.to_vec()));
            }
        }
    }
    h.set_entry_type(ty);
    h.set_mode(meta.mode & 0o7777);
    h.set_uid(u64::from(meta.uid));
    h.set_gid(u64::from(meta.gid));
    h.set_mtime(u64::try_from(meta.mtime.0).unwrap_or(0));
    h.set_size(size);
    if matches!(body, Body::Char | Body::Block) {
        h.set_device_major(rustix::fs::major(meta.rdev))?;
        h.set_device_minor(rustix::fs::minor(meta.rdev))?;
    }
    h.set_cksum();
    Ok(h)
}

/// The tar being written.
struct TarOut<'w> {
    out: io::BufWriter<&'w mut dyn Write>,
    stats: DiffStats,
    /// The first name written of each inode with more than one link.
    links: HashMap<LinkKey, Vec<u8>>,
}

impl TarOut<'_> {
    /// Writes the header(s) of entry `name` with its `xattrs` (name, value), sorted by name;
    /// a regular file's data follows with [`TarOut::data`].
    fn entry(
        &mut self,
        name: &[u8],
        meta: &Meta,
        body: &Body<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = xattrs
            .iter()
            .map(|(n, v)| ([b"SCHILY.xattr.", &n[..]].concat(), v.clone()))
            .collect();
        let h = header(name, meta, body, &mut records)?;
        if !records.is_empty() {
            records.sort();
            let mut pax = Vec::new();
            for (k, v) in &records {
                pax_record(&mut pax, k, v);
            }
            let mut ph = tar::Header::new_ustar();
            if let Some(u) = ph.as_ustar_mut() {
                u.name[..PAX_NAME.len()].copy_from_slice(PAX_NAME);
            }
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(0);
            ph.set_size(pax.len() as u64);
            ph.set_cksum();
            self.out.write_all(ph.as_bytes())?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        self.out.write_all(h.as_bytes())?;
        self.stats.entries += 1;
        Ok(())
    }

    /// The zeroes that fill the last block of `len` bytes of data.
    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][rem..])?;
        }
        Ok(())
    }

    /// `.wh.NAME` in directory `prefix` for each of `names`.
    fn whiteouts(&mut self, prefix: &[u8], names: &[OsString]) -> io::Result<()> {
        for n in names {
            let name = [prefix, WH_PREFIX, n.as_bytes()].concat();
            self.entry(&name, &Meta::marker(), &Body::File(0), &[])?;
        }
        Ok(())
    }

    /// The opaque marker of directory `dir` (its name ends with `/`).
    fn opaque(&mut self, dir: &[u8]) -> io::Result<()> {
        let name = [dir, WH_OPAQUE].concat();
        self.entry(&name, &Meta::marker(), &Body::File(0), &[])
    }

    /// The end-of-archive marker (two zero blocks), and everything out.
    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()
    }
}

// ---------------------------------------------------------------------------------------
// Snapshots of regular files.

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
enum FileSrc<'a> {
    /// The entry `name` of directory `dir`: data and metadata.
    Disk(BorrowedFd<'a>, &'a OsStr),
    /// The entry `name` of directory node `parent` of the union: the metadata of its top
    /// copy, the data where the union finds it (below, for a metadata-only copy).
    Node(&'a Union, u64, &'a OsStr),
}

fn uerr(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.code())
}

impl FileSrc<'_> {
    /// Opens the data; with the metadata of the entry.
    fn open(&self) -> io::Result<(OwnedFd, Meta)> {
        match self {
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
                let meta = Meta::of_stat(&sys::stat_fd(fd.as_fd())?);
                Ok((fd, meta))
            }
            FileSrc::Node(u, parent, name) => {
                let attr = u.lookup(*parent, name).map_err(uerr)?;
                let fh = u.open(attr.ino, libc::O_RDONLY).map_err(uerr)?;
                let fd = u.with_settled_fd(fh, true, |fd| fd.try_clone_to_owned());
                u.release(fh);
                let fd = fd.ok_or_else(|| io::Error::other("the union gave no descriptor"))??;
                Ok((fd, Meta::of_attr(&attr)))
            }
        }
    }

    /// The metadata of the entry now (after its data was read through `fd`).
    fn meta_again(&self, fd: BorrowedFd<'_>, before: &Meta) -> io::Result<Meta> {
        match (self, before.key) {
            (FileSrc::Node(u, ..), LinkKey::Node(id)) => {
                Ok(Meta::of_attr(&u.getattr(id).map_err(uerr)?))
            }
            _ => Ok(Meta::of_stat(&sys::stat_fd(fd)?)),
        }
    }
}

/// The mutable state of a write: the tar and the snapshot buffers.
struct Writer<'w> {
    tar: TarOut<'w>,
    data: Snapshot,
}

impl Writer<'_> {
    /// Writes the regular file `name` from `src`: a snapshot first, taken again while it
    /// moves; `Ok(false)` when it never held still.
    fn file(
        &mut self,
        name: &[u8],
        src: &FileSrc<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<bool> {
        for _ in 0..TRIES {
            let (fd, meta) = src.open()?;
            let before = sys::stat_fd(fd.as_fd())?;
            if before.st_mode & libc::S_IFMT != libc::S_IFREG {
                // Something else took the name: the tree is moving.
                continue;
            }
            let size = u64::try_from(before.st_size).unwrap_or(0);
            let whole = self.data.take(fd.as_fd(), size)?;
            let after = sys::stat_fd(fd.as_fd())?;
            let again = src.meta_again(fd.as_fd(), &meta)?;
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

// ---------------------------------------------------------------------------------------
// The walk.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Diff,
    Base,
}

/// What is being written: the tree, and the union over it (made at the first redirect or
/// metadata-only copy met).
struct Tree {
    kind: Kind,
    root: PathBuf,
    lowers: Vec<PathBuf>,
    union: OnceCell<Union>,
}

/// An entry of a directory of the tree.
struct DiskChild {
    name: OsString,
    st: sys::Stat,
    /// Its xattr names, NUL-terminated.
    xattrs: Vec<u8>,
}

/// An entry of a directory of the union.
struct NodeChild {
    name: OsString,
    attr: Attr,
}

/// A directory being written: the children not written yet.
enum Frame {
    Disk {
        fd: OwnedFd,
        prefix: Vec<u8>,
        children: std::vec::IntoIter<DiskChild>,
    },
    Node {
        id: u64,
        prefix: Vec<u8>,
        children: std::vec::IntoIter<NodeChild>,
    },
}

/// A step of the walk.
enum Step {
    /// The directory on top is done.
    Pop,
    /// A child was written; a directory to walk next, if it was one.
    Next(Option<Frame>),
}

/// The directory flags the walk opens with.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn is_dot(name: &OsStr) -> bool {
    name == "." || name == ".."
}

impl Tree {
    /// The path of `rel` (in the tar) in the tree, for messages.
    fn at(&self, rel: &[u8]) -> String {
        let rel = rel.strip_suffix(b"/").unwrap_or(rel);
        self.root.join(OsStr::from_bytes(rel)).display().to_string()
    }

    fn io(&self, rel: &[u8], e: impl Into<io::Error>) -> DiffError {
        DiffError::Io {
            path: self.at(rel),
            source: e.into(),
        }
    }

    /// The read-only union of the upper (as its top layer) over the lowers.
    fn union(&self) -> Result<&Union, DiffError> {
        if let Some(u) = self.union.get() {
            return Ok(u);
        }
        let mut lowers = vec![self.root.clone()];
        lowers.extend(self.lowers.iter().cloned());
        let paths = StackPaths {
            lowers,
            upper: None,
            work: None,
        };
        let stack = Stack::open_paths(&paths).map_err(|e| self.io(b"", e))?;
        let opts = UnionOptions {
            fsync: false,
            metacopy: false,
            index: false,
        };
        Ok(self.union.get_or_init(|| Union::new(stack, opts)))
    }

    /// The union node of the directory `rel` (a tar name: components separated by `/`).
    fn node_of(&self, rel: &[u8]) -> Result<u64, DiffError> {
        let u = self.union()?;
        let mut id = ROOT_ID;
        for c in rel.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            id = u
                .lookup(id, OsStr::from_bytes(c))
                .map_err(|e| self.io(rel, uerr(e)))?
                .ino;
        }
        Ok(id)
    }

    fn run(&self, w: &mut Writer<'_>) -> Result<(), DiffError> {
        let root = rustix::fs::open(&self.root, dir_flags(), Mode::empty())
            .map_err(|e| self.io(b"", e))?;
        let (whiteouts, children) = self.list_disk(root.as_fd(), b"")?;
        w.tar
            .whiteouts(b"", &whiteouts)
            .map_err(|e| self.io(b"", e))?;
        let mut stack = vec![Frame::Disk {
            fd: root,
            prefix: Vec::new(),
            children: children.into_iter(),
        }];
        while let Some(top) = stack.last_mut() {
            let step = match top {
                Frame::Disk {
                    fd,
                    prefix,
                    children,
                } => match children.next() {
                    None => Step::Pop,
                    Some(c) => Step::Next(self.disk_child(w, fd.as_fd(), prefix, c)?),
                },
                Frame::Node {
                    id,
                    prefix,
                    children,
                } => match children.next() {
                    None => Step::Pop,
                    Some(c) => Step::Next(self.node_child(w, *id, prefix, c)?),
                },
            };
            match step {
                Step::Pop => {
                    stack.pop();
                }
                Step::Next(Some(f)) => stack.push(f),
                Step::Next(None) => {}
            }
        }
        Ok(())
    }

    /// The entries of the tree's directory `dir` (tar name `prefix`) sorted by name: the
    /// names it whites out (a diff's), and the others.
    fn list_disk(
        &self,
        dir: BorrowedFd<'_>,
        prefix: &[u8],
    ) -> Result<(Vec<OsString>, Vec<DiskChild>), DiffError> {
        let mut raw = sys::read_dir(dir).map_err(|e| self.io(prefix, e))?;
        raw.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let mut whiteouts = Vec::new();
        let mut children = Vec::new();
        for e in raw {
            let rel = || [prefix, e.name.as_bytes()].concat();
            let st = match sys::stat_at(dir, &e.name) {
                Ok(st) => st,
                // Removed since the listing (a live mount): it is not there.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(err) => return Err(self.io(&rel(), err)),
            };
            let fmt = st.st_mode & libc::S_IFMT;
            if fmt == libc::S_IFSOCK {
                continue;
            }
            if layer::is_whiteout(&st) {
                if self.kind == Kind::Diff {
                    whiteouts.push(e.name);
                }
                continue;
            }
            if e.name.as_bytes().starts_with(WH_PREFIX) {
                match self.kind {
                    // An OCI whiteout or marker hides nothing in a base layer.
                    Kind::Base => continue,
                    Kind::Diff => {
                        return Err(DiffError::Unrepresentable {
                            path: self.at(&rel()),
                            why: "a name starting with .wh. reads back as a whiteout",
                        })
                    }
                }
            }
            let xattrs = match sys::xattr_names_at(dir, &e.name) {
                Ok(v) => v,
                Err(rustix::io::Errno::OPNOTSUPP) => Vec::new(),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(err) => return Err(self.io(&rel(), err)),
            };
            if self.kind == Kind::Diff
                && fmt == libc::S_IFREG
                && st.st_size == 0
                && lists_any(&xattrs, &WHITEOUT_XATTRS)
            {
                whiteouts.push(e.name);
                continue;
            }
            children.push(DiskChild {
                name: e.name,
                st,
                xattrs,
            });
        }
        Ok((whiteouts, children))
    }

    /// The xattrs (name, value) to write for `c` in `dir`, sorted by name.
    fn disk_xattrs(
        &self,
        dir: BorrowedFd<'_>,
        c: &DiskChild,
        rel: &[u8],
    ) -> Result<Xattrs, DiffError> {
        let mut out = Vec::new();
        for n in c.xattrs.split(|b| *b == 0) {
            if n.is_empty() || overlay_private(n) {
                continue;
            }
            let value = sys::xattr_get_at(dir, &c.name, OsStr::from_bytes(n))
                .map_err(|e| self.io(rel, e))?;
            if let Some(v) = value {
                out.push((n.to_vec(), v));
            }
        }
        self.checked_xattrs(out, rel)
    }

    /// The xattrs of union node `id`, as [`Tree::disk_xattrs`].
    fn node_xattrs(&self, id: u64, rel: &[u8]) -> Result<Xattrs, DiffError> {
        let u = self.union()?;
        let root = Creds {
            uid: 0,
            gid: 0,
            umask: 0,
        };
        let names = u.listxattr(id, root).map_err(|e| self.io(rel, uerr(e)))?;
        let mut out = Vec::new();
        for n in names.split(|b| *b == 0) {
            if n.is_empty() || overlay_private(n) {
                continue;
            }
            match u.getxattr(id, OsStr::from_bytes(n)) {
                Ok(v) => out.push((n.to_vec(), v)),
                Err(e) if e == Errno::ENODATA => {}
                Err(e) => return Err(self.io(rel, uerr(e))),
            }
        }
        self.checked_xattrs(out, rel)
    }

    fn checked_xattrs(&self, mut xattrs: Xattrs, rel: &[u8]) -> Result<Xattrs, DiffError> {
        if xattrs.iter().any(|(n, _)| n.contains(&b'=')) {
            return Err(DiffError::Unrepresentable {
                path: self.at(rel),
                why: "an xattr name holding '=' cannot be a PAX record",
            });
        }
        xattrs.sort();
        Ok(xattrs)
    }

    /// Whether the tree's directory `c` (in `dir`) is opaque.
    fn is_opaque(&self, dir: BorrowedFd<'_>, c: &DiskChild, rel: &[u8]) -> Result<bool, DiffError> {
        for attr in [layer::OPAQUE_XATTR, layer::OPAQUE_XATTR_USER] {
            if !lists_any(&c.xattrs, &[attr]) {
                continue;
            }
            let v =
                sys::xattr_get_at(dir, &c.name, OsStr::new(attr)).map_err(|e| self.io(rel, e))?;
            if v.as_deref() == Some(b"y") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Writes the child `c` of the tree's directory `dir` (tar name `prefix`); a directory
    /// to walk next, if it is one.
    fn disk_child(
        &self,
        w: &mut Writer<'_>,
        dir: BorrowedFd<'_>,
        prefix: &[u8],
        c: DiskChild,
    ) -> Result<Option<Frame>, DiffError> {
        let mut name = [prefix, c.name.as_bytes()].concat();
        let meta = Meta::of_stat(&c.st);
        let diff = self.kind == Kind::Diff;
        if meta.fmt() == libc::S_IFDIR {
            let xattrs = self.disk_xattrs(dir, &c, &name)?;
            name.push(b'/');
            let io = |e| self.io(&name, e);
            w.tar.entry(&name, &meta, &Body::Dir, &xattrs).map_err(io)?;
            if diff && lists_any(&c.xattrs, &REDIRECT_XATTRS) {
                // A renamed directory: an OCI layer has no redirect, so the directory is
                // written whole, as the union shows it, over nothing.
                w.tar.opaque(&name).map_err(io)?;
                let id = self.node_of(&name)?;
                let children = self.list_node(id, &name)?;
                return Ok(Some(Frame::Node {
                    id,
                    prefix: name,
                    children: children.into_iter(),
                }));
            }
            if diff && self.is_opaque(dir, &c, &name)? {
                w.tar.opaque(&name).map_err(io)?;
            }
            let fd = rustix::fs::openat(dir, &c.name, dir_flags(), Mode::empty())
                .map_err(|e| self.io(&name, e))?;
            let (whiteouts, children) = self.list_disk(fd.as_fd(), &name)?;
            w.tar
                .whiteouts(&name, &whiteouts)
                .map_err(|e| self.io(&name, e))?;
            return Ok(Some(Frame::Disk {
                fd,
                prefix: name,
                children: children.into_iter(),
            }));
        }
        if self.link(w, &name, &meta)? {
            return Ok(None);
        }
        let xattrs = self.disk_xattrs(dir, &c, &name)?;
        let io = |e| self.io(&name, e);
        match meta.fmt() {
            libc::S_IFREG => {
                let metacopy = diff && lists_any(&c.xattrs, &METACOPY_XATTRS);
                let node_parent;
                let src = match metacopy {
                    // Only the metadata is in the upper: the union finds the data.
                    true => {
                        node_parent = self.node_of(prefix)?;
                        FileSrc::Node(self.union()?, node_parent, &c.name)
                    }
                    false => FileSrc::Disk(dir, &c.name),
                };
                if !w.file(&name, &src, &xattrs).map_err(io)? {
                    return Err(DiffError::Unstable(self.at(&name)));
                }
            }
            libc::S_IFLNK => {
                let target = rustix::fs::readlinkat(dir, &c.name, Vec::new())
                    .map_err(|e| self.io(&name, e))?;
                w.tar
                    .entry(&name, &meta, &Body::Symlink(target.as_bytes()), &xattrs)
                    .map_err(io)?;
            }
            _ => self.special(w, &name, &meta, &xattrs)?,
        }
        self.linked(w, name, &meta);
        Ok(None)
    }

    /// Writes a fifo or device.
    fn special(
        &self,
        w: &mut Writer<'_>,
        name: &[u8],
        meta: &Meta,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), DiffError> {
        let body = match meta.fmt() {
            libc::S_IFCHR => Body::Char,
            libc::S_IFBLK => Body::Block,
            libc::S_IFIFO => Body::Fifo,
            // Sockets were left out of the listing; nothing else exists.
            _ => return Ok(()),
        };
        w.tar
            .entry(name, meta, &body, xattrs)
            .map_err(|e| self.io(name, e))
    }

    /// Writes `name` as a hard link if its inode was written before under another name.
    fn link(&self, w: &mut Writer<'_>, name: &[u8], meta: &Meta) -> Result<bool, DiffError> {
        if meta.nlink <= 1 {
            return Ok(false);
        }
        let Some(first) = w.tar.links.get(&meta.key).cloned() else {
            return Ok(false);
        };
        w.tar
            .entry(name, meta, &Body::Link(&first), &[])
            .map_err(|e| self.io(name, e))?;
        Ok(true)
    }

    /// Records `name` as the first name of its inode, if it has several.
    fn linked(&self, w: &mut Writer<'_>, name: Vec<u8>, meta: &Meta) {
        if meta.nlink > 1 {
            w.tar.links.entry(meta.key).or_insert(name);
        }
    }

    /// The entries of directory node `id` of the union, sorted by name.
    fn list_node(&self, id: u64, rel: &[u8]) -> Result<Vec<NodeChild>, DiffError> {
        let u = self.union()?;
        let fh = u.opendir(id).map_err(|e| self.io(rel, uerr(e)))?;
        let entries = u.readdir(fh, 0);
        u.releasedir(fh);
        let entries = entries.map_err(|e| self.io(rel, uerr(e)))?;
        let mut out = Vec::new();
        for e in entries.iter().filter(|e| !is_dot(&e.name)) {
            match u.lookup_listed(id, e) {
                Ok(attr) if attr.mode & libc::S_IFMT == libc::S_IFSOCK => {}
                Ok(attr) => out.push(NodeChild {
                    name: e.name.clone(),
                    attr,
                }),
                Err(err) if err == Errno::ENOENT => {}
                Err(err) => {
                    let rel = [rel, e.name.as_bytes()].concat();
                    return Err(self.io(&rel, uerr(err)));
                }
            }
        }
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        Ok(out)
    }

    /// Writes the child `c` of directory node `parent` of the union (below a renamed
    /// directory: everything whole, no whiteouts); a directory to walk next, if it is one.
    fn node_child(
        &self,
        w: &mut Writer<'_>,
        parent: u64,
        prefix: &[u8],
        c: NodeChild,
    ) -> Result<Option<Frame>, DiffError> {
        let u = self.union()?;
        let mut name = [prefix, c.name.as_bytes()].concat();
        let meta = Meta::of_attr(&c.attr);
        let id = c.attr.ino;
        if meta.fmt() == libc::S_IFDIR {
            let xattrs = self.node_xattrs(id, &name)?;
            name.push(b'/');
            w.tar
                .entry(&name, &meta, &Body::Dir, &xattrs)
                .map_err(|e| self.io(&name, e))?;
            let children = self.list_node(id, &name)?;
            return Ok(Some(Frame::Node {
                id,
                prefix: name,
                children: children.into_iter(),
            }));
        }
        if self.link(w, &name, &meta)? {
            return Ok(None);
        }
        let xattrs = self.node_xattrs(id, &name)?;
        match meta.fmt() {
            libc::S_IFREG => {
                let src = FileSrc::Node(u, parent, &c.name);
                if !w
                    .file(&name, &src, &xattrs)
                    .map_err(|e| self.io(&name, e))?
                {
                    return Err(DiffError::Unstable(self.at(&name)));
                }
            }
            libc::S_IFLNK => {
                let target = u.readlink(id).map_err(|e| self.io(&name, uerr(e)))?;
                w.tar
                    .entry(&name, &meta, &Body::Symlink(&target), &xattrs)
                    .map_err(|e| self.io(&name, e))?;
            }
            _ => self.special(w, &name, &meta, &xattrs)?,
        }
        self.linked(w, name, &meta);
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// An entry read back with the `tar` crate.
    #[derive(Debug)]
    struct Ent {
        path: Vec<u8>,
        ty: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        size: u64,
        link: Option<Vec<u8>>,
        dev: Option<(u32, u32)>,
        /// Every PAX key of the entry.
        pax: Vec<String>,
        xattrs: Vec<(String, Vec<u8>)>,
        data: Vec<u8>,
    }

    fn read_tar(bytes: &[u8]) -> Vec<Ent> {
        assert_eq!(bytes.len() % 512, 0);
        assert!(bytes.ends_with(&[0u8; 1024]), "no end-of-archive marker");
        let mut ar = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let mut pax = Vec::new();
            let mut xattrs = Vec::new();
            if let Some(exts) = e.pax_extensions().unwrap() {
                for x in exts {
                    let x = x.unwrap();
                    let key = x.key().unwrap().to_string();
                    if let Some(n) = key.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((n.to_string(), x.value_bytes().to_vec()));
                    }
                    pax.push(key);
                }
            }
            let h = e.header();
            let ty = h.entry_type();
            let dev = match ty {
                tar::EntryType::Char | tar::EntryType::Block => Some((
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                )),
                _ => None,
            };
            let mut ent = Ent {
                path: e.path_bytes().to_vec(),
                ty,
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                size: h.size().unwrap(),
                link: e.link_name_bytes().map(|l| l.to_vec()),
                dev,
                pax,
                xattrs,
                data: Vec::new(),
            };
            e.read_to_end(&mut ent.data).unwrap();
            out.push(ent);
        }
        out
    }

    fn names(ents: &[Ent]) -> Vec<String> {
        ents.iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect()
    }

    fn find<'a>(ents: &'a [Ent], name: &str) -> &'a Ent {
        ents.iter()
            .find(|e| e.path == name.as_bytes())
            .unwrap_or_else(|| panic!("{name} not in the tar: {:?}", names(ents)))
    }

    fn write(src: &Source) -> (Vec<u8>, DiffStats) {
        let mut out = Vec::new();
        let stats = write_layer(src, &std::env::temp_dir(), &mut out).unwrap();
        (out, stats)
    }

    fn set_mtime(p: &Path, secs: i64) {
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            p,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    fn set_xattr(p: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
    }

    fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        match rustix::fs::lgetxattr(p, name, &mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(rustix::io::Errno::NODATA) => None,
            Err(e) => panic!("{}: {e}", p.display()),
        }
    }

    fn mknod(p: &Path, ft: rustix::fs::FileType, mode: u32, dev: u64) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            ft,
            rustix::fs::Mode::from_raw_mode(mode),
            dev,
        )
        .unwrap();
    }

    #[test]
    fn ustar_names_split_as_go_does() {
        let long_dir = format!("{}/{}", "d".repeat(60), "f".repeat(70));
        let cases: Vec<(String, Option<(String, String)>)> = vec![
            ("a".into(), Some(("".into(), "a".into()))),
            ("x".repeat(100), Some(("".into(), "x".repeat(100)))),
            // One byte too long for the name field and no '/' to split at.
            ("x".repeat(101), None),
            (long_dir.clone(), Some(("d".repeat(60), "f".repeat(70)))),
            // A directory's trailing '/' stays in the name part.
            (
                format!("{long_dir}/"),
                Some(("d".repeat(60), format!("{}/", "f".repeat(70)))),
            ),
            // The part after the last usable '/' is longer than 100 bytes.
            (format!("a/{}", "x".repeat(101)), None),
            // The prefix would be longer than 155 bytes.
            (format!("{}/b{}", "p".repeat(156), "c".repeat(50)), None),
            // The last '/' within the first 156 bytes is taken.
            (
                format!("a/b/{}", "c".repeat(99)),
                Some(("a/b".into(), "c".repeat(99))),
            ),
        ];
        for (name, want) in cases {
            let got = ustar_split(name.as_bytes()).map(|(p, n)| {
                (
                    String::from_utf8(p.to_vec()).unwrap(),
                    String::from_utf8(n.to_vec()).unwrap(),
                )
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn pax_records_count_their_own_length() {
        // From the POSIX text: "30 mtime=1350244992.023960108\n".
        let mut v = Vec::new();
        pax_record(&mut v, b"mtime", b"1350244992.023960108");
        assert_eq!(v, b"30 mtime=1350244992.023960108\n");
        // Around the lengths where the count gains a digit.
        for n in 0..1200 {
            let mut v = Vec::new();
            pax_record(&mut v, b"path", &vec![b'p'; n]);
            let sp = v.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&v[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, v.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn a_base_tree_of_every_kind() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("base");
        let p = |s: &str| root.join(s);
        fs::create_dir(&root).unwrap();
        for dir in ["bin", "data", "dev", "etc", "opq", "run"] {
            fs::create_dir(p(dir)).unwrap();
        }
        fs::write(p("bin/su"), b"hello").unwrap();
        // chown clears set-id bits: owner first.
        std::os::unix::fs::lchown(p("bin/su"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(p("bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
        set_mtime(&p("bin/su"), 1_000_000_000);
        fs::write(p("data/a"), vec![b'x'; 1000]).unwrap();
        fs::hard_link(p("data/a"), p("data/b")).unwrap();
        std::os::unix::fs::symlink("../bin/su", p("etc/link")).unwrap();
        set_xattr(&p("etc"), "user.note", b"n1");
        set_mtime(&p("etc"), 1_200_000_000);
        mknod(&p("run/fifo"), rustix::fs::FileType::Fifo, 0o640, 0);
        let null = rustix::fs::makedev(1, 3);
        mknod(
            &p("dev/null"),
            rustix::fs::FileType::CharacterDevice,
            0o666,
            null,
        );
        let deep = format!("deep/{}/{}", "d".repeat(60), "f".repeat(70));
        fs::create_dir_all(p(&deep).parent().unwrap()).unwrap();
        fs::write(p(&deep), b"deep").unwrap();
        let long = "n".repeat(200);
        fs::write(p(&long), b"long").unwrap();
        let target = "t".repeat(150);
        std::os::unix::fs::symlink(&target, p("tlink")).unwrap();
        // What hides nothing in a base layer, and overlay xattrs: left out.
        mknod(&p("gone"), rustix::fs::FileType::CharacterDevice, 0, 0);
        fs::write(p(".wh.x"), b"").unwrap();
        set_xattr(&p("opq"), "trusted.overlay.opaque", b"y");
        fs::write(p("opq/f"), b"f").unwrap();
        set_xattr(&p("opq/f"), "trusted.overlay.origin", b"o");
        set_xattr(&p("opq/f"), "user.keep", b"k");
        let _sock = std::os::unix::net::UnixListener::bind(p("sock")).unwrap();

        let (bytes, stats) = write(&Source::Base(root.clone()));
        let ents = read_tar(&bytes);
        let d60 = format!("deep/{}/", "d".repeat(60));
        let want = vec![
            "bin/".to_string(),
            "bin/su".into(),
            "data/".into(),
            "data/a".into(),
            "data/b".into(),
            "deep/".into(),
            d60,
            deep.clone(),
            "dev/".into(),
            "dev/null".into(),
            "etc/".into(),
            "etc/link".into(),
            long.clone(),
            "opq/".into(),
            "opq/f".into(),
            "run/".into(),
            "run/fifo".into(),
            "tlink".into(),
        ];
        assert_eq!(names(&ents), want);
        assert_eq!(
            stats,
            DiffStats {
                entries: want.len() as u64,
                bytes: 5 + 1000 + 4 + 4 + 1,
            }
        );

        let su = find(&ents, "bin/su");
        assert_eq!(su.ty, tar::EntryType::Regular);
        assert_eq!(
            (su.mode, su.uid, su.gid, su.mtime),
            (0o4755, 1234, 5678, 1_000_000_000)
        );
        assert_eq!(su.data, b"hello");
        let a = find(&ents, "data/a");
        assert_eq!((a.ty, a.data.len()), (tar::EntryType::Regular, 1000));
        let b = find(&ents, "data/b");
        assert_eq!(b.ty, tar::EntryType::Link);
        assert_eq!(b.link.as_deref(), Some(&b"data/a"[..]));
        assert_eq!(b.size, 0);
        let etc = find(&ents, "etc/");
        assert_eq!(etc.ty, tar::EntryType::Directory);
        assert_eq!(etc.mtime, 1_200_000_000);
        assert_eq!(etc.xattrs, vec![("user.note".to_string(), b"n1".to_vec())]);
        let link = find(&ents, "etc/link");
        assert_eq!(link.ty, tar::EntryType::Symlink);
        assert_eq!(link.link.as_deref(), Some(&b"../bin/su"[..]));
        let tlink = find(&ents, "tlink");
        assert_eq!(tlink.link.as_deref(), Some(target.as_bytes()));
        assert_eq!(tlink.pax, vec!["linkpath".to_string()]);
        let fifo = find(&ents, "run/fifo");
        assert_eq!((fifo.ty, fifo.mode), (tar::EntryType::Fifo, 0o640));
        let dnull = find(&ents, "dev/null");
        assert_eq!(dnull.ty, tar::EntryType::Char);
        assert_eq!(dnull.dev, Some((1, 3)));
        assert_eq!(find(&ents, &deep).data, b"deep");
        // 131 bytes fit ustar's prefix and name; 200 bytes in one name need PAX.
        assert!(find(&ents, &deep).pax.is_empty());
        assert_eq!(find(&ents, &long).pax, vec!["path".to_string()]);
        assert_eq!(find(&ents, &long).data, b"long");
        let opq = find(&ents, "opq/");
        assert!(opq.pax.is_empty(), "{:?}", opq.pax);
        let f = find(&ents, "opq/f");
        assert_eq!(f.xattrs, vec![("user.keep".to_string(), b"k".to_vec())]);
        for e in &ents {
            assert!(!e.path.starts_with(b"./") && !e.path.starts_with(b"/"));
            assert_eq!(
                e.ty == tar::EntryType::Directory,
                e.path.ends_with(b"/"),
                "{:?}",
                e.path
            );
        }

        let (again, _) = write(&Source::Base(root));
        assert!(again == bytes, "two writes of one tree differ");
    }

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

    /// A kernel overlay mount, unmounted on drop.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            if let Err(e) = sys::unmount(&self.0, false) {
                eprintln!("umount {}: {e}; detaching", self.0.display());
                if let Err(e) = sys::unmount(&self.0, true) {
                    eprintln!("umount -l {}: {e}", self.0.display());
                }
            }
        }
    }

    /// (path, mtime, ctime, size) of everything below `root`.
    fn snapshot(root: &Path) -> Vec<(PathBuf, i64, i64, i64, u64)> {
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(p) = todo.pop() {
            let m = fs::symlink_metadata(&p).unwrap();
            out.push((
                p.clone(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime_nsec() + m.ctime() * 1_000_000_000,
                m.size(),
            ));
            if m.is_dir() {
                for e in fs::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn the_upper_of_a_kernel_mount() {
        let d = tempfile::tempdir().unwrap();
        let dir = |s: &str| {
            let p = d.path().join(s);
            fs::create_dir(&p).unwrap();
            p
        };
        let (lower, upper, work, mnt) = (dir("lower"), dir("upper"), dir("work"), dir("mnt"));
        let l = |s: &str| lower.join(s);
        fs::write(l("gone"), b"g").unwrap();
        fs::create_dir(l("dir1")).unwrap();
        fs::write(l("dir1/a"), b"a").unwrap();
        fs::write(l("dir1/b"), b"b").unwrap();
        fs::create_dir_all(l("old/sub")).unwrap();
        fs::write(l("old/x"), b"xdata").unwrap();
        set_xattr(&l("old/x"), "user.lx", b"lv");
        fs::write(l("old/sub/y"), b"ydata").unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(l("big"), &big).unwrap();
        fs::set_permissions(l("big"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(l("keep"), b"keepdata").unwrap();

        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=on,metacopy=on,index=on",
            lower.display(),
            upper.display(),
            work.display()
        );
        let data = std::ffi::CString::new(opts).unwrap();
        rustix::mount::mount(
            "overlay",
            &mnt,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap();
        let mounted = Mounted(mnt.clone());
        let m = |s: &str| mnt.join(s);
        fs::remove_file(m("gone")).unwrap();
        fs::remove_dir_all(m("dir1")).unwrap();
        fs::create_dir(m("dir1")).unwrap();
        fs::write(m("dir1/-new"), b"new").unwrap();
        fs::rename(m("old"), m("newname")).unwrap();
        fs::set_permissions(m("big"), fs::Permissions::from_mode(0o600)).unwrap();
        set_xattr(&m("keep"), "user.new", b"nv");
        fs::write(m("!new"), b"bang").unwrap();

        // The upper holds what the test is about (else it proves nothing).
        let u = |s: &str| upper.join(s);
        let gone = fs::symlink_metadata(u("gone")).unwrap();
        assert_eq!(
            (gone.mode() & libc::S_IFMT, gone.rdev()),
            (libc::S_IFCHR, 0)
        );
        assert_eq!(
            get_xattr(&u("dir1"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert!(get_xattr(&u("newname"), "trusted.overlay.redirect").is_some());
        assert!(
            !u("newname/x").exists(),
            "the renamed directory was copied whole"
        );
        assert!(get_xattr(&u("big"), "trusted.overlay.metacopy").is_some());
        assert!(get_xattr(&u("keep"), "trusted.overlay.metacopy").is_some());

        let before = (snapshot(&upper), snapshot(&lower));
        let src = Source::Diff {
            upper: upper.clone(),
            lowers: vec![lower.clone()],
        };
        let (bytes, stats) = write(&src);
        let ents = read_tar(&bytes);
        assert_eq!(
            names(&ents),
            [
                ".wh.gone",
                ".wh.old",
                "!new",
                "big",
                "dir1/",
                "dir1/.wh..wh..opq",
                "dir1/-new",
                "keep",
                "newname/",
                "newname/.wh..wh..opq",
                "newname/sub/",
                "newname/sub/y",
                "newname/x",
            ]
        );
        assert_eq!(stats.entries, 13);
        assert_eq!(stats.bytes, 4 + big.len() as u64 + 3 + 8 + 5 + 5);
        for wh in [
            ".wh.gone",
            ".wh.old",
            "dir1/.wh..wh..opq",
            "newname/.wh..wh..opq",
        ] {
            let e = find(&ents, wh);
            assert_eq!(e.ty, tar::EntryType::Regular, "{wh}");
            assert_eq!(
                (e.mode, e.mtime, e.size, e.uid, e.gid),
                (0, 0, 0, 0, 0),
                "{wh}"
            );
            assert!(e.pax.is_empty(), "{wh}");
        }
        let b = find(&ents, "big");
        assert_eq!(b.mode, 0o600);
        assert!(b.data == big, "the data of a metadata-only copy");
        let k = find(&ents, "keep");
        assert_eq!(k.data, b"keepdata");
        assert_eq!(k.xattrs, vec![("user.new".to_string(), b"nv".to_vec())]);
        assert_eq!(find(&ents, "dir1/-new").data, b"new");
        let x = find(&ents, "newname/x");
        assert_eq!(x.data, b"xdata");
        assert_eq!(x.xattrs, vec![("user.lx".to_string(), b"lv".to_vec())]);
        assert_eq!(find(&ents, "newname/sub/y").data, b"ydata");
        assert_eq!(find(&ents, "newname/").ty, tar::EntryType::Directory);
        for e in &ents {
            assert!(
                !e.pax.iter().any(|k| k.contains("overlay.")),
                "{:?}: {:?}",
                e.path,
                e.pax
            );
        }

        let (again, _) = write(&src);
        assert!(again == bytes, "two writes of one upper differ");
        assert_eq!(
            (snapshot(&upper), snapshot(&lower)),
            before,
            "the layers were touched"
        );
        drop(mounted);
        let (unmounted, _) = write(&src);
        assert!(unmounted == bytes, "the same upper, unmounted, differs");
    }
}
