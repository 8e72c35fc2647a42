//! A layer tar becomes a directory in the kernel overlay format, ready to be a lower dir.
//!
//! CONTRACT (the store calls only [`unpack`]):
//! - `src` is an *uncompressed* tar stream (the caller decompresses and hashes).
//!   `unpack` reads entries until the end-of-archive marker (the first zero block) and not a
//!   byte further; the caller drains the rest. A stream that ends before that marker, in a
//!   header or in a file's data, or a header with a bad checksum, is corrupt.
//! - `dest` is an existing, empty directory the caller made in the store's `tmp/`; on an
//!   error the caller removes it, so `unpack` never has to clean up.
//! - Every name goes through `tarpath::entry_path`; symlink targets through
//!   `tarpath::symlink_stays_inside`; hard link targets must name an earlier non-directory
//!   entry of the same tar. `.wh.NAME` becomes a 0/0 char device NAME; `.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on its directory. Regular files, dirs, symlinks, hard links,
//!   fifos, char/block devices; owner (when run as root), mode (incl. set-id bits), mtime,
//!   PAX `SCHILY.xattr.*` (overlay xattrs, `trusted.overlay.*` and `user.overlay.*`, are
//!   dropped, never applied). A hard link entry adds a name, not metadata.
//! - Nothing is ever written outside `dest`: every directory is opened with
//!   `sys::open_beneath` (no symlink followed), every create is a `*at` call on one plain
//!   name in it, never following a symlink. Parents the tar omits are created as
//!   directories (0755). Directories get their mode, owner and times last, deepest first,
//!   so writing their children changes nothing afterwards.
//! - Refused with an [`UnpackError`] naming the entry: bad names, links leaving the layer,
//!   duplicate entries (a directory entry for a directory made implicitly is not a
//!   duplicate; `.wh.x` and `x` are), oversized entries (see [`Limits`]; a name component
//!   over 255 bytes), kinds the overlay format cannot hold (GNU sparse files, volume labels,
//!   a plain 0/0 char device, which would read as a whiteout), a truncated or corrupt
//!   stream.
//!
//! The tar framing (headers, GNU long names, PAX records, the end-of-archive marker) is
//! read by `tarread`; this module writes what it reads.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use super::tarpath::{self, Marker};
use super::tarread::{Member, Meta, TarReader};
use crate::sys;
use crate::union::layer::OPAQUE_XATTR;

/// Bounds on what one tar may contain.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest PAX extended header, in bytes.
    pub max_pax: u64,
    /// The largest xattr value.
    pub max_xattr: usize,
    /// The longest entry path, in bytes.
    pub max_path: usize,
    /// The most entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_pax: 1 << 20,
            max_xattr: 64 << 10,
            max_path: 4096,
            max_entries: 10_000_000,
        }
    }
}

/// What an unpacked layer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// The sum of the sizes of the regular files (docker's layer size).
    pub bytes: u64,
}

/// Why a tar was refused; names the entry (or the stream position) that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Name(#[from] super::tarpath::TarPathError),
    #[error("tar entry {name:?}: {why}")]
    Entry { name: String, why: String },
    #[error("the tar is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn bad(name: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Entry {
        name: name.to_owned(),
        why: why.into(),
    }
}

/// A failed system call on behalf of the entry `name`.
fn sys_err<'a>(name: &'a str, op: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        path: format!("tar entry {name:?}: {op}"),
        source: e.into(),
    }
}

pub(super) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Unpacks the tar `src` into the empty directory `dest`.
///
/// # Errors
/// See [`UnpackError`].
pub fn unpack(
    src: &mut dyn Read,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        path: dest.display().to_string(),
        source: e.into(),
    })?;
    let mut tar = TarReader::new(src, limits);
    let mut out = Out::new(root);
    let mut stats = UnpackStats::default();
    while let Some(m) = tar.next_member()? {
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(bad(
                &m.shown(),
                format!("over the limit of {} entries", limits.max_entries),
            ));
        }
        stats.bytes += out.entry(&m, &mut tar)?;
    }
    out.finish()?;
    Ok(stats)
}

// ---------------------------------------------------------------------------------------
// Writing the layer.

/// The copy buffer for file data: large, since layers reach gigabytes.
const COPY_BUF: usize = 1 << 20;
/// The longest file name the kernel takes (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// What an earlier entry made at a path of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    /// A parent the tar did not list (yet).
    ImplicitDir,
    Dir,
    File,
    Symlink,
    /// A fifo or a device.
    Node,
    Whiteout,
    /// The `.wh..wh..opq` marker itself.
    Opaque,
}

impl Made {
    fn what(self) -> &'static str {
        match self {
            Made::ImplicitDir => "a directory (the parent of an earlier entry)",
            Made::Dir => "a directory",
            Made::File => "a regular file",
            Made::Symlink => "a symlink",
            Made::Node => "a fifo or device",
            Made::Whiteout => "a whiteout",
            Made::Opaque => "an opaque marker",
        }
    }
}

/// The layer being written.
struct Out {
    root: OwnedFd,
    made: HashMap<PathBuf, Made>,
    /// Directories listed in the tar, their metadata set once everything is written.
    dirs: Vec<(PathBuf, String, Meta)>,
    /// The directory of the previous entry: consecutive entries mostly share one.
    last_dir: Option<(PathBuf, Rc<OwnedFd>)>,
    /// Whether owners are applied (only root may give files away).
    chown: bool,
    buf: Vec<u8>,
}

impl Out {
    fn new(root: OwnedFd) -> Out {
        Out {
            root,
            made: HashMap::new(),
            dirs: Vec::new(),
            last_dir: None,
            chown: sys::euid() == 0,
            buf: vec![0u8; COPY_BUF],
        }
    }

    /// Writes one entry, reading its data from `tar`; returns the bytes of a regular file.
    fn entry(&mut self, m: &Member, tar: &mut TarReader<'_>) -> Result<u64, UnpackError> {
        let shown = m.shown();
        // Old tars mark a directory by the trailing slash of a regular entry's name.
        let kind = match m.kind {
            b'\0' if m.name.ends_with(b"/") => b'5',
            k => k,
        };
        // `tar` of `.` lists the root itself as `./`: its metadata is the layer root's.
        if is_root_name(&m.name) && kind == b'5' {
            self.dir(&shown, Path::new(""), m)?;
            return Ok(0);
        }
        let path = tarpath::entry_path(&m.name)?;
        let mut comps = path.iter().peekable();
        while let Some(c) = comps.next() {
            if c.len() > NAME_MAX {
                return Err(bad(
                    &shown,
                    format!(
                        "a name component of {} bytes, over the limit of {NAME_MAX}",
                        c.len()
                    ),
                ));
            }
            if comps.peek().is_some() && tarpath::marker(c) != Marker::Plain {
                return Err(bad(
                    &shown,
                    format!("the whiteout name {c:?} used as a directory"),
                ));
            }
        }
        let (parent, name) = split(&path);
        match tarpath::marker(name) {
            Marker::Opaque => return self.opaque(&shown, &path, parent).map(|()| 0),
            Marker::Whiteout(n) => return self.whiteout(&shown, parent, &n).map(|()| 0),
            Marker::Plain => {}
        }
        if !matches!(kind, b'0' | b'\0' | b'7') && m.size != 0 {
            return Err(bad(
                &shown,
                format!("{} with {} bytes of data", kind_name(kind), m.size),
            ));
        }
        match kind {
            b'0' | b'\0' | b'7' => self.file(&shown, &path, m, tar),
            b'5' => self.dir(&shown, &path, m).map(|()| 0),
            b'2' => self.symlink(&shown, &path, m).map(|()| 0),
            b'1' => self.hard_link(&shown, &path, m).map(|()| 0),
            b'3' | b'4' | b'6' => self.node(&shown, &path, kind, m).map(|()| 0),
            k => Err(bad(
                &shown,
                format!("{} (type {:?}) is not supported", kind_name(k), k as char),
            )),
        }
    }

    /// Records that `path` is made by this entry; an earlier entry for it is a duplicate.
    fn claim(&mut self, shown: &str, path: &Path, made: Made) -> Result<(), UnpackError> {
        match self.made.get(path) {
            None => {}
            Some(Made::ImplicitDir) if made == Made::Dir => {}
            Some(prev) => {
                return Err(bad(
                    shown,
                    format!(
                        "a duplicate: an earlier entry already made {path:?} {}",
                        prev.what()
                    ),
                ))
            }
        }
        self.made.insert(path.to_path_buf(), made);
        Ok(())
    }

    /// Opens a directory of the layer, never through a symlink.
    fn open_dir(&self, shown: &str, dir: &Path) -> Result<OwnedFd, UnpackError> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        sys::open_beneath(self.root.as_fd(), dir, flags, 0).map_err(|e| match e {
            Errno::LOOP | Errno::XDEV => bad(
                shown,
                format!("{dir:?} is a symlink or leads through one: nothing is written through a symlink"),
            ),
            Errno::NOTDIR => bad(shown, format!("{dir:?} is not a directory")),
            e => sys_err(shown, "open its directory")(e),
        })
    }

    /// The directory `dir` (made as needed) to create the entry `shown` in.
    fn parent(&mut self, shown: &str, dir: &Path) -> Result<Rc<OwnedFd>, UnpackError> {
        if let Some((p, fd)) = &self.last_dir {
            if p == dir {
                return Ok(fd.clone());
            }
        }
        self.make_dirs(shown, dir)?;
        let fd = Rc::new(self.open_dir(shown, dir)?);
        self.last_dir = Some((dir.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// Makes `dir` and its parents where no entry made them yet (0755, like the kernel's
    /// `mkdir -p` under a umask of 022); refuses when an earlier non-directory is in the way.
    fn make_dirs(&mut self, shown: &str, dir: &Path) -> Result<(), UnpackError> {
        if matches!(self.made.get(dir), Some(Made::Dir | Made::ImplicitDir)) {
            return Ok(());
        }
        let mut cur = PathBuf::new();
        for c in dir.iter() {
            cur.push(c);
            match self.made.get(&cur) {
                Some(Made::Dir | Made::ImplicitDir) => continue,
                Some(other) => {
                    return Err(bad(
                        shown,
                        format!(
                            "{cur:?} is not a directory: an earlier entry made it {}",
                            other.what()
                        ),
                    ))
                }
                None => {}
            }
            let up = self.open_dir(shown, cur.parent().unwrap_or(Path::new("")))?;
            match rustix::fs::mkdirat(&up, c, Mode::from_raw_mode(0o755)) {
                Ok(()) => rustix::fs::chmodat(&up, c, Mode::from_raw_mode(0o755), AtFlags::empty())
                    .map_err(sys_err(shown, "chmod a parent"))?,
                // Not made by this tar (`dest` was not empty): a directory will do; a symlink
                // or anything else is refused by the confined open.
                Err(Errno::EXIST) => drop(self.open_dir(shown, &cur)?),
                Err(e) => return Err(sys_err(shown, "mkdir a parent")(e)),
            }
            self.made.insert(cur.clone(), Made::ImplicitDir);
        }
        Ok(())
    }

    fn file(
        &mut self,
        shown: &str,
        path: &Path,
        m: &Member,
        tar: &mut TarReader<'_>,
    ) -> Result<u64, UnpackError> {
        self.claim(shown, path, Made::File)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(
            &*dir,
            name,
            flags | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(sys_err(shown, "create"))?;
        let mut file = std::fs::File::from(fd);
        loop {
            let n = tar.data(&mut self.buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(|source| UnpackError::Io {
                    path: format!("tar entry {shown:?}: write"),
                    source,
                })?;
        }
        let fd = file.as_fd();
        if self.chown {
            sys::chown_fd(fd, Some(m.meta.uid), Some(m.meta.gid))
                .map_err(sys_err(shown, "chown"))?;
        }
        // After chown, which clears the set-id bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m.meta.mode))
            .map_err(sys_err(shown, "chmod"))?;
        for (xname, value) in kept_xattrs(shown, &m.meta) {
            rustix::fs::fsetxattr(fd, xname, value, XattrFlags::empty())
                .map_err(sys_err(shown, "set an xattr"))?;
        }
        rustix::fs::futimens(fd, &timestamps(m.meta.mtime)).map_err(sys_err(shown, "set times"))?;
        Ok(m.size)
    }

    fn dir(&mut self, shown: &str, path: &Path, m: &Member) -> Result<(), UnpackError> {
        let before = self.made.get(path).copied();
        self.claim(shown, path, Made::Dir)?;
        if before.is_none() && !path.as_os_str().is_empty() {
            let (parent, name) = split(path);
            let dir = self.parent(shown, parent)?;
            // Owner-writable until its metadata is set at the end.
            rustix::fs::mkdirat(&*dir, name, Mode::RWXU).map_err(sys_err(shown, "mkdir"))?;
        }
        self.dirs
            .push((path.to_path_buf(), shown.to_owned(), m.meta.clone()));
        Ok(())
    }

    fn symlink(&mut self, shown: &str, path: &Path, m: &Member) -> Result<(), UnpackError> {
        let target = match m.link.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => return Err(bad(shown, "a symlink without a target")),
        };
        if target.contains(&0) {
            return Err(bad(shown, "a NUL byte in the symlink target"));
        }
        if !tarpath::symlink_stays_inside(path, target) {
            return Err(bad(
                shown,
                format!(
                    "a symlink to {:?}: a symlink or hard link pointing outside the layer",
                    lossy(target)
                ),
            ));
        }
        self.claim(shown, path, Made::Symlink)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), &*dir, name)
            .map_err(sys_err(shown, "symlink"))?;
        self.set_meta_at(shown, &dir, name, &m.meta, true)
    }

    fn hard_link(&mut self, shown: &str, path: &Path, m: &Member) -> Result<(), UnpackError> {
        let raw = match m.link.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => return Err(bad(shown, "a hard link without a target")),
        };
        let target = tarpath::entry_path(raw).map_err(|e| {
            bad(
                shown,
                format!(
                    "a hard link to {:?} ({}): a symlink or hard link pointing outside the layer",
                    lossy(raw),
                    e.why
                ),
            )
        })?;
        let made = match self.made.get(&target) {
            Some(k @ (Made::File | Made::Symlink | Made::Node)) => *k,
            Some(k) => {
                return Err(bad(
                    shown,
                    format!("a hard link to {target:?}, which is {}", k.what()),
                ))
            }
            None => {
                return Err(bad(
                    shown,
                    format!(
                        "a hard link to {target:?}, which is not an earlier entry of this layer"
                    ),
                ))
            }
        };
        self.claim(shown, path, made)?;
        let (tparent, tname) = split(&target);
        let tdir = self.open_dir(shown, tparent)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        rustix::fs::linkat(&tdir, tname, &*dir, name, AtFlags::empty())
            .map_err(sys_err(shown, "link"))
    }

    fn node(&mut self, shown: &str, path: &Path, kind: u8, m: &Member) -> Result<(), UnpackError> {
        let (ftype, rdev) = match kind {
            b'6' => (libc::S_IFIFO, 0),
            _ => {
                let Some((major, minor)) = m.dev else {
                    return Err(bad(shown, "a device without major and minor numbers"));
                };
                if kind == b'3' && (major, minor) == (0, 0) {
                    return Err(bad(
                        shown,
                        "a character device 0/0, which is a whiteout in the overlay format \
                         (a deleted name is a .wh. entry in a layer tar)",
                    ));
                }
                let ftype = match kind {
                    b'3' => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                (ftype, rustix::fs::makedev(major, minor))
            }
        };
        self.claim(shown, path, Made::Node)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        sys::mknod_at(dir.as_fd(), name, ftype | 0o600, rdev).map_err(sys_err(shown, "mknod"))?;
        self.set_meta_at(shown, &dir, name, &m.meta, false)
    }

    fn whiteout(&mut self, shown: &str, parent: &Path, name: &OsStr) -> Result<(), UnpackError> {
        if name == "." || name == ".." {
            return Err(bad(shown, "a whiteout of '.' or '..'"));
        }
        self.claim(shown, &parent.join(name), Made::Whiteout)?;
        let dir = self.parent(shown, parent)?;
        sys::mknod_whiteout(dir.as_fd(), name).map_err(sys_err(shown, "mknod the whiteout"))
    }

    fn opaque(&mut self, shown: &str, path: &Path, parent: &Path) -> Result<(), UnpackError> {
        self.claim(shown, path, Made::Opaque)?;
        let dir = self.parent(shown, parent)?;
        sys::xattr_set(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0)
            .map_err(sys_err(shown, "set the opaque xattr"))
    }

    /// Owner, mode (not on a symlink), xattrs and times of the inode `name` in `dir`.
    fn set_meta_at(
        &self,
        shown: &str,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), UnpackError> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(sys_err(shown, "open"))?;
        self.set_meta(shown, fd.as_fd(), meta, symlink)
    }

    /// The same through an `O_PATH` descriptor of the inode itself.
    fn set_meta(
        &self,
        shown: &str,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), UnpackError> {
        if self.chown {
            sys::chown_fd(fd, Some(meta.uid), Some(meta.gid)).map_err(sys_err(shown, "chown"))?;
        }
        if !symlink {
            sys::chmod_fd(fd, meta.mode).map_err(sys_err(shown, "chmod"))?;
        }
        for (xname, value) in kept_xattrs(shown, meta) {
            sys::xattr_set(fd, xname, value, 0).map_err(sys_err(shown, "set an xattr"))?;
        }
        let (s, n) = meta.mtime;
        sys::utimens_fd(fd, sys::SetTime::At(s, n), sys::SetTime::At(s, n))
            .map_err(sys_err(shown, "set times"))
    }

    /// Sets the metadata of the directories listed in the tar, deepest first, now that
    /// nothing is written in them any more.
    fn finish(mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, shown, meta) in &dirs {
            let fd = self.open_dir(shown, path)?;
            self.set_meta(shown, fd.as_fd(), meta, false)?;
        }
        Ok(())
    }
}

/// The parent directory and the file name of a clean entry path.
fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("")),
        path.file_name().unwrap_or(path.as_os_str()),
    )
}

/// Whether a tar name means the layer root itself (`.`, `./`).
fn is_root_name(raw: &[u8]) -> bool {
    !raw.is_empty() && raw.split(|b| *b == b'/').all(|c| c.is_empty() || c == b".")
}

/// The xattrs of an entry that are applied: never the overlay's own.
fn kept_xattrs<'m>(
    shown: &'m str,
    meta: &'m Meta,
) -> impl Iterator<Item = (&'m OsStr, &'m [u8])> + 'm {
    meta.xattrs.iter().filter_map(move |(xname, value)| {
        let b = xname.as_bytes();
        if crate::union::layer::in_overlay_namespace(b) {
            log::warn!("tar entry {shown:?}: the overlay xattr {xname:?} is not applied");
            return None;
        }
        Some((xname.as_os_str(), value.as_slice()))
    })
}

fn timestamps((s, n): (i64, i64)) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: n as _,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// A tar type flag in words, for errors.
fn kind_name(kind: u8) -> &'static str {
    match kind {
        b'0' | b'\0' | b'7' => "a regular file",
        b'1' => "a hard link",
        b'2' => "a symlink",
        b'3' => "a character device",
        b'4' => "a block device",
        b'5' => "a directory",
        b'6' => "a fifo",
        b'S' => "a GNU sparse file",
        b'D' => "a GNU dump directory",
        b'M' => "a GNU multi-volume continuation",
        b'V' => "a volume label",
        b'N' => "an old GNU long name",
        _ => "an entry of an unknown kind",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::EntryType;

    use crate::store::tartest::{header, refused, scene, xattr, Tar};

    #[test]
    fn every_kind_round_trips() {
        let s = scene();
        let long = format!("long/{}", "n".repeat(150));
        let mut t = Tar::new();
        t.pax(&[("SCHILY.xattr.user.note", b"hi")]);
        let mut h = header(EntryType::Directory, 0o750);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1000);
        t.add(h, "d/", b"");
        let mut h = header(EntryType::Regular, 0o4755);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mtime(1_600_000_000);
        t.add(h, "d/f", b"hello world");
        let mut h = header(EntryType::Symlink, 0o777);
        h.set_uid(11);
        h.set_gid(12);
        h.set_mtime(1234);
        t.0.append_link(&mut h, "d/s", "f").unwrap();
        t.link(EntryType::Link, "d/h", "d/f")
            .add(header(EntryType::Fifo, 0o640), "p", b"")
            .node(EntryType::Char, "null", 1, 3)
            .node(EntryType::Block, "sda", 8, 0)
            .file("d/.wh.gone", b"")
            .file("o/.wh..wh..opq", b"")
            .file(&long, b"data")
            .file("i/j/k", b"k");
        let stats = s.unpack(&t.bytes()).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                entries: 11,
                bytes: 11 + 4 + 1
            }
        );

        let f = fs::symlink_metadata(s.p("d/f")).unwrap();
        assert!(f.is_file());
        assert_eq!(fs::read(s.p("d/f")).unwrap(), b"hello world");
        assert_eq!(f.mode() & 0o7777, 0o4755);
        assert_eq!((f.uid(), f.gid()), (1234, 5678));
        assert_eq!(f.mtime(), 1_600_000_000);

        let d = fs::symlink_metadata(s.p("d")).unwrap();
        assert!(d.is_dir());
        assert_eq!(d.mode() & 0o7777, 0o750);
        assert_eq!((d.uid(), d.gid()), (7, 8));
        assert_eq!(
            d.mtime(),
            1000,
            "the directory's mtime is set after its children"
        );
        assert_eq!(xattr(&s.p("d"), "user.note").as_deref(), Some(&b"hi"[..]));

        let l = fs::symlink_metadata(s.p("d/s")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!(fs::read_link(s.p("d/s")).unwrap(), Path::new("f"));
        assert_eq!((l.uid(), l.gid(), l.mtime()), (11, 12, 1234));
        // The symlink's own times changed, not its target's.
        assert_eq!(fs::metadata(s.p("d/s")).unwrap().mtime(), 1_600_000_000);

        let hl = fs::symlink_metadata(s.p("d/h")).unwrap();
        assert_eq!(hl.ino(), f.ino());
        assert_eq!(hl.nlink(), 2);

        let p = fs::symlink_metadata(s.p("p")).unwrap();
        assert!(p.file_type().is_fifo());
        assert_eq!(p.mode() & 0o7777, 0o640);
        let null = fs::symlink_metadata(s.p("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        let sda = fs::symlink_metadata(s.p("sda")).unwrap();
        assert!(sda.file_type().is_block_device());
        assert_eq!(sda.rdev(), rustix::fs::makedev(8, 0));

        let wh = fs::symlink_metadata(s.p("d/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!s.p("d/.wh.gone").exists());

        assert!(s.p("o").is_dir());
        assert_eq!(xattr(&s.p("o"), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
        assert!(!s.p("o/.wh..wh..opq").exists());
        assert_eq!(xattr(&s.p("d"), OPAQUE_XATTR), None);

        assert_eq!(fs::read(s.p(&long)).unwrap(), b"data");
        for implicit in ["i", "i/j", "long", "o"] {
            let m = fs::symlink_metadata(s.p(implicit)).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o7777, 0o755, "{implicit}");
        }
        assert_eq!(fs::read(s.p("i/j/k")).unwrap(), b"k");
        s.outside_untouched();
    }

    #[test]
    fn overlay_xattrs_in_a_tar_are_dropped() {
        let s = scene();
        let mut t = Tar::new();
        let records: &[(&str, &[u8])] = &[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/x"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.keep", b"1"),
        ];
        t.pax(records).dir("d").pax(records).file("f", b"");
        s.unpack(&t.bytes()).unwrap();
        for p in [s.p("d"), s.p("f")] {
            assert_eq!(xattr(&p, "trusted.overlay.opaque"), None, "{p:?}");
            assert_eq!(xattr(&p, "trusted.overlay.redirect"), None, "{p:?}");
            assert_eq!(xattr(&p, "user.overlay.opaque"), None, "{p:?}");
            assert_eq!(xattr(&p, "user.keep").as_deref(), Some(&b"1"[..]), "{p:?}");
        }
    }

    #[test]
    fn names_that_leave_the_layer_are_refused() {
        let probe = scene();
        let abs = format!("{}/abs", probe.outside.display());
        for (name, kind) in [
            (abs.as_str(), b'0'),
            ("/etc/strata-unpack-test", b'0'),
            ("../outside/dotdot", b'0'),
            ("a/../../outside/x", b'0'),
            ("../outside/d", b'5'),
        ] {
            let s = if name.starts_with(&*probe.outside.to_string_lossy()) {
                // The absolute name points into this very scene.
                &probe
            } else {
                &scene()
            };
            let mut t = Tar::new();
            t.raw(name.as_bytes(), kind, b"data", b"");
            let msg = refused(s.unpack(&t.bytes()), name);
            assert!(msg.contains("absolute") || msg.contains("'..'"), "{msg}");
            s.outside_untouched();
            assert!(s.dest_names().is_empty());
        }
        assert!(!Path::new("/etc/strata-unpack-test").exists());
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        for entry in ["a/x", "a/sub/x", "a/.wh.x", "a/.wh..wh..opq"] {
            let s = scene();
            let mut t = Tar::new();
            t.link(EntryType::Symlink, "a", &s.outside.to_string_lossy());
            t.file(entry, b"evil");
            let msg = refused(s.unpack(&t.bytes()), entry);
            assert!(msg.contains("symlink"), "{msg}");
            s.outside_untouched();
        }
        // Also when the symlink was not made by this tar (the kernel refuses to follow it).
        let s = scene();
        std::os::unix::fs::symlink(&s.outside, s.p("b")).unwrap();
        let mut t = Tar::new();
        t.file("b/x", b"evil");
        let msg = refused(s.unpack(&t.bytes()), "b/x");
        assert!(msg.contains("symlink"), "{msg}");
        s.outside_untouched();
    }

    #[test]
    fn symlinks_climbing_out_of_the_layer_are_refused() {
        for (name, target) in [
            ("d/s", "../../outside/secret"),
            ("s", ".."),
            ("s", "a/../../x"),
        ] {
            let s = scene();
            let mut t = Tar::new();
            t.link(EntryType::Symlink, name, target);
            let msg = refused(s.unpack(&t.bytes()), name);
            assert!(msg.contains("outside the layer"), "{msg}");
            assert!(fs::symlink_metadata(s.p(name)).is_err());
            s.outside_untouched();
        }
    }

    #[test]
    fn hard_links_must_name_an_earlier_entry_of_the_layer() {
        let cases: [(&[u8], &str); 6] = [
            (b"missing", "not an earlier entry"),
            (b"later", "not an earlier entry"),
            (b"../outside/secret", "outside the layer"),
            (b"/etc/passwd", "outside the layer"),
            (b"d", "a directory"),
            (b"w", "a whiteout"),
        ];
        for (target, why) in cases {
            let s = scene();
            let mut t = Tar::new();
            t.dir("d").file(".wh.w", b"");
            t.raw(b"h", b'1', b"", target);
            t.file("later", b"");
            let msg = refused(s.unpack(&t.bytes()), "\"h\"");
            assert!(msg.contains(why), "{msg}");
            assert!(!s.p("h").exists());
            s.outside_untouched();
        }
    }

    #[test]
    fn duplicates_are_refused_but_explicit_parents_are_not() {
        let refused_cases: [(&[(&str, char)], &str); 7] = [
            (&[("f", 'f'), ("f", 'f')], "f"),
            (&[(".wh.x", 'f'), ("x", 'f')], "x"),
            (&[("x", 'f'), (".wh.x", 'f')], ".wh.x"),
            (&[("d", 'd'), ("d", 'd')], "d"),
            (&[("a/b", 'f'), ("a", 'f')], "a"),
            (
                &[("o/.wh..wh..opq", 'f'), ("o/.wh..wh..opq", 'f')],
                "o/.wh..wh..opq",
            ),
            (&[("./", 'd'), (".", 'd')], "."),
        ];
        for (entries, dup) in refused_cases {
            let s = scene();
            let mut t = Tar::new();
            for (name, kind) in entries {
                match kind {
                    'd' => t.raw(name.as_bytes(), b'5', b"", b""),
                    _ => t.raw(name.as_bytes(), b'0', b"", b""),
                };
            }
            let msg = refused(s.unpack(&t.bytes()), &format!("{dup:?}"));
            assert!(msg.contains("duplicate"), "{msg}");
        }

        let s = scene();
        let mut t = Tar::new();
        t.file("a/b", b"")
            .add(header(EntryType::Directory, 0o700), "a", b"");
        t.dir("o").file("o/.wh..wh..opq", b"");
        t.file("p/.wh..wh..opq", b"").dir("p");
        s.unpack(&t.bytes()).unwrap();
        assert_eq!(
            fs::symlink_metadata(s.p("a")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(xattr(&s.p("o"), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
        assert_eq!(xattr(&s.p("p"), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn kinds_the_overlay_format_cannot_hold_are_refused() {
        let cases: [(&[u8], u8, &[u8], &str); 6] = [
            (b"sparse", b'S', b"", "a GNU sparse file"),
            (b"label", b'V', b"", "a volume label"),
            (b"what", b'Z', b"", "unknown kind (type 'Z')"),
            (b"s", b'2', b"data", "a symlink with 4 bytes of data"),
            (b"null0", b'3', b"", "a character device 0/0"),
            (
                b"d/.wh.x/y",
                b'0',
                b"",
                "whiteout name \".wh.x\" used as a directory",
            ),
        ];
        for (name, kind, data, says) in cases {
            let s = scene();
            let mut t = Tar::new();
            t.raw(name, kind, data, b"t");
            let msg = refused(s.unpack(&t.bytes()), &lossy(name));
            assert!(msg.contains(says), "{msg}");
        }
        let s = scene();
        let mut t = Tar::new();
        t.pax(&[("GNU.sparse.major", b"1")]).file("sp", b"");
        let msg = refused(s.unpack(&t.bytes()), "sp");
        assert!(msg.contains("GNU sparse"), "{msg}");
    }

    #[test]
    fn a_root_entry_sets_the_layer_root() {
        let s = scene();
        let mut h = header(EntryType::Directory, 0o711);
        h.set_mtime(5);
        let mut t = Tar::new();
        t.add(h, "./", b"").file("./a", b"a");
        s.unpack(&t.bytes()).unwrap();
        let m = fs::metadata(&s.dest).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 5));
        assert_eq!(s.dest_names(), ["a"]);
        let mut t = Tar::new();
        t.raw(b"./", b'0', b"", b"");
        refused(scene().unpack(&t.bytes()), "an empty name");
        for (raw, root) in [
            (&b"."[..], true),
            (b"./", true),
            (b".//./", true),
            (b"", false),
            (b"./a", false),
        ] {
            assert_eq!(is_root_name(raw), root, "{:?}", lossy(raw));
        }
    }
}
