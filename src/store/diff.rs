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
//! A directory is written as: its header, its opaque marker, its whiteouts, then its other
//! children, each group sorted by name. The bytes of the tar (headers, PAX records,
//! whiteouts, markers, hard links) are `tarwrite`'s; a regular file's data is first taken
//! whole into a snapshot (`snapshot`), so the tar holds each file as it was at one moment.
//! Nothing is ever written into the upper dir or the lowers: files are opened read-only
//! with `O_NOATIME` where allowed, and the union used for redirects and metadata-only
//! copies is read-only.
//!
//! Names the format cannot carry are refused ([`DiffError::Unrepresentable`]), never
//! dropped: in a diff, a user file named `.wh.*` (it would read back as a whiteout), and
//! an xattr name holding `=`.

use std::cell::OnceCell;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use super::snapshot::{uerr, FileSrc, Writer, MEM_MAX};
use super::tarwrite::{Body, Meta};
use crate::error::Errno;
use crate::sys;
use crate::union::inode::ROOT_ID;
use crate::union::layer::{self, WH_PREFIX};
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
pub(super) fn write_with(
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
    let mut w = Writer::new(out, spool, mem_max);
    tree.run(&mut w)?;
    w.tar.finish().map_err(|e| tree.io(b"", e))?;
    Ok(w.tar.stats)
}

/// An entry's xattrs to write: (name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Whether the NUL-separated xattr name list `names` holds one of `wanted`.
fn lists_any(names: &[u8], wanted: &[&str]) -> bool {
    names
        .split(|b| *b == 0)
        .any(|n| wanted.iter().any(|w| w.as_bytes() == n))
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
        dir: DiskDir,
        children: std::vec::IntoIter<DiskChild>,
    },
    Node {
        id: u64,
        prefix: Vec<u8>,
        children: std::vec::IntoIter<NodeChild>,
    },
}

/// A directory of the tree being written.
struct DiskDir {
    fd: OwnedFd,
    /// Its tar name (empty for the root, else ending with `/`).
    prefix: Vec<u8>,
    /// Its union node, once a metadata-only copy in it needed one.
    node: Option<u64>,
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
        let mut stack = vec![self.enter_disk(w, root, Vec::new())?];
        while let Some(top) = stack.last_mut() {
            let step = match top {
                Frame::Disk { dir, children } => match children.next() {
                    None => Step::Pop,
                    Some(c) => Step::Next(self.disk_child(w, dir, c)?),
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

    /// Starts the tree's directory `fd` (tar name `prefix`, its header written): writes its
    /// whiteouts; the frame of its other children.
    fn enter_disk(
        &self,
        w: &mut Writer<'_>,
        fd: OwnedFd,
        prefix: Vec<u8>,
    ) -> Result<Frame, DiffError> {
        let (whiteouts, children) = self.list_disk(fd.as_fd(), &prefix)?;
        w.tar
            .whiteouts(&prefix, &whiteouts)
            .map_err(|e| self.io(&prefix, e))?;
        Ok(Frame::Disk {
            dir: DiskDir {
                fd,
                prefix,
                node: None,
            },
            children: children.into_iter(),
        })
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
            if n.is_empty() || layer::in_overlay_namespace(n) {
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
            if n.is_empty() || layer::in_overlay_namespace(n) {
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

    /// Writes the child `c` of the tree's directory `parent`; a directory to walk next, if
    /// it is one.
    fn disk_child(
        &self,
        w: &mut Writer<'_>,
        parent: &mut DiskDir,
        c: DiskChild,
    ) -> Result<Option<Frame>, DiffError> {
        let dir = parent.fd.as_fd();
        let mut name = [&parent.prefix[..], c.name.as_bytes()].concat();
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
                return self.enter_node(id, name).map(Some);
            }
            if diff && self.is_opaque(dir, &c, &name)? {
                w.tar.opaque(&name).map_err(io)?;
            }
            let fd = rustix::fs::openat(dir, &c.name, dir_flags(), Mode::empty())
                .map_err(|e| self.io(&name, e))?;
            return self.enter_disk(w, fd, name).map(Some);
        }
        if w.tar.link(&name, &meta).map_err(|e| self.io(&name, e))? {
            return Ok(None);
        }
        let xattrs = self.disk_xattrs(dir, &c, &name)?;
        let io = |e| self.io(&name, e);
        match meta.fmt() {
            libc::S_IFREG => {
                let metacopy = diff && lists_any(&c.xattrs, &METACOPY_XATTRS);
                let src = match metacopy {
                    // Only the metadata is in the upper: the union finds the data. The walk
                    // from the union's root to the directory is made once per directory.
                    true => {
                        let node = match parent.node {
                            Some(id) => id,
                            None => *parent.node.insert(self.node_of(&parent.prefix)?),
                        };
                        FileSrc::Node(self.union()?, node, &c.name)
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
        w.tar.linked(name, &meta);
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

    /// Starts directory node `id` of the union (tar name `prefix`, its header written): the
    /// frame of its entries, sorted by name.
    fn enter_node(&self, id: u64, prefix: Vec<u8>) -> Result<Frame, DiffError> {
        let rel = &prefix[..];
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
        Ok(Frame::Node {
            id,
            prefix,
            children: out.into_iter(),
        })
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
            return self.enter_node(id, name).map(Some);
        }
        if w.tar.link(&name, &meta).map_err(|e| self.io(&name, e))? {
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
        w.tar.linked(name, &meta);
        Ok(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use crate::store::tartest::{find, names, read_tar, write, xattr};

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

    /// A kernel overlay mount, unmounted on drop.
    struct Mounted(PathBuf);

    impl Mounted {
        /// Mounts `lower`, `upper` and `work` (made by the caller) at `mnt` with redirects,
        /// metadata-only copies and the index on.
        fn overlay(lower: &Path, upper: &Path, work: &Path, mnt: &Path) -> Mounted {
            let opts = format!(
                "lowerdir={},upperdir={},workdir={},redirect_dir=on,metacopy=on,index=on",
                lower.display(),
                upper.display(),
                work.display()
            );
            let data = std::ffi::CString::new(opts).unwrap();
            rustix::mount::mount(
                "overlay",
                mnt,
                "overlay",
                rustix::mount::MountFlags::empty(),
                data.as_c_str(),
            )
            .unwrap();
            Mounted(mnt.to_path_buf())
        }
    }

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

        let mounted = Mounted::overlay(&lower, &upper, &work, &mnt);
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
            xattr(&u("dir1"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert!(xattr(&u("newname"), "trusted.overlay.redirect").is_some());
        assert!(
            !u("newname/x").exists(),
            "the renamed directory was copied whole"
        );
        assert!(xattr(&u("big"), "trusted.overlay.metacopy").is_some());
        assert!(xattr(&u("keep"), "trusted.overlay.metacopy").is_some());

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

    #[test]
    fn metadata_only_copies_in_nested_directories() {
        let d = tempfile::tempdir().unwrap();
        let dir = |s: &str| {
            let p = d.path().join(s);
            fs::create_dir(&p).unwrap();
            p
        };
        let (lower, upper, work, mnt) = (dir("lower"), dir("upper"), dir("work"), dir("mnt"));
        // Two files in each of two nested directories: the union node of a directory
        // serves both of its files, and only its own.
        let files = ["a/b/1", "a/b/2", "a/c/1", "a/c/2"];
        for f in files {
            let p = lower.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, format!("data of {f}")).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let mounted = Mounted::overlay(&lower, &upper, &work, &mnt);
        for f in files {
            fs::set_permissions(mnt.join(f), fs::Permissions::from_mode(0o600)).unwrap();
        }
        for f in files {
            let u = upper.join(f);
            assert!(xattr(&u, "trusted.overlay.metacopy").is_some(), "{f}");
            let want = format!("data of {f}");
            assert_ne!(
                fs::read(&u).unwrap(),
                want.as_bytes(),
                "{f}: data in the upper"
            );
        }

        let src = Source::Diff {
            upper: upper.clone(),
            lowers: vec![lower.clone()],
        };
        let (bytes, _) = write(&src);
        drop(mounted);
        let ents = read_tar(&bytes);
        assert_eq!(
            names(&ents),
            ["a/", "a/b/", "a/b/1", "a/b/2", "a/c/", "a/c/1", "a/c/2"]
        );
        for f in files {
            let e = find(&ents, f);
            assert_eq!(e.mode, 0o600, "{f}");
            assert_eq!(e.data, format!("data of {f}").as_bytes(), "{f}");
        }
    }

    #[test]
    fn names_a_layer_cannot_carry_are_refused() {
        let refused = |src: &Source, entry: &str| {
            let r = write_layer(src, &std::env::temp_dir(), &mut io::sink());
            match r {
                Err(DiffError::Unrepresentable { path, .. }) => {
                    assert!(path.ends_with(entry), "{path}")
                }
                other => panic!("{other:?}"),
            }
        };
        let d = tempfile::tempdir().unwrap();
        // A user file named `.wh.*` in a diff would read back as a whiteout.
        let upper = d.path().join("upper");
        fs::create_dir_all(upper.join("dir")).unwrap();
        fs::write(upper.join("dir/.wh.x"), b"").unwrap();
        let diff = Source::Diff {
            upper: upper.clone(),
            lowers: Vec::new(),
        };
        refused(&diff, "dir/.wh.x");
        // An xattr name holding '=' cannot be a PAX record, in a diff or a base.
        fs::remove_file(upper.join("dir/.wh.x")).unwrap();
        fs::write(upper.join("dir/f"), b"f").unwrap();
        set_xattr(&upper.join("dir/f"), "user.a=b", b"v");
        refused(&diff, "dir/f");
        refused(&Source::Base(upper), "dir/f");
    }
}
