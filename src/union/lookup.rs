//! Name resolution over the stack, and merged directory listings.
//!
//! [`Union::resolve`] is the one rule for "what does NAME in this directory refer to":
//! walk the directory's layers top-down; a whiteout (a 0/0 character device, or an OCI
//! `.wh.NAME` beside it) ends the walk; the first real entry wins; if it is a directory,
//! the walk goes on collecting lower directories of the same name until a non-directory,
//! a whiteout or an opaque directory. [`Union::list`] applies the same rule to whole
//! directories, so a name is listed exactly when it can be looked up.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::OFlags;

use super::inode::{DirLayer, Identity, NodeKind, ROOT_ID};
use super::layer::{self, LayerIdx, Redirect};
use super::{check_name, is_marker, Attr, Union};
use crate::error::{Errno, Result};
use crate::sys;

/// What a name resolved to.
#[derive(Clone, Debug)]
pub(super) struct Resolved {
    /// The layer of the visible (top-most) copy.
    pub layer: LayerIdx,
    pub st: sys::Stat,
    pub kind: NodeKind,
    /// The identity the node id is derived from (`None` if it does not map).
    pub ident: Option<u64>,
    /// Whether every name with this identity is the same file (see `Inodes::found`).
    pub shared: bool,
}

/// One entry of a merged listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// The `S_IFMT` bits of the entry's type.
    pub fmt: u32,
}

fn is_dir(st: &sys::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn skip_missing<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        // The layer lacks the directory (or has something else there): it adds nothing.
        Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR || e == Errno::ELOOP => Ok(None),
        Err(e) => Err(e),
    }
}

fn dtype_fmt(dtype: u8) -> u32 {
    match dtype {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        _ => libc::S_IFREG,
    }
}

impl Union {
    /// Resolves `name` in a directory merged from `layers` (top first, each with the
    /// directory's path in that layer).
    pub(super) fn resolve(
        &self,
        layers: &[(LayerIdx, PathBuf)],
        name: &OsStr,
    ) -> Result<Option<Resolved>> {
        if is_marker(name) {
            return Ok(None);
        }
        let mut top: Option<(LayerIdx, sys::Stat)> = None;
        let mut dir_layers: Vec<DirLayer> = Vec::new();
        let mut bottom_ino = 0;
        let mut origin = None;
        // Where the layers below look: the parent's directories (`layers`), or after a
        // redirect to a path, that path in every layer below the one holding the redirect.
        let mut name = name.to_os_string();
        let mut redirected: Option<(LayerIdx, PathBuf)> = None;
        let mut i = 0;
        loop {
            let (l, dir) = match &redirected {
                None => match layers.get(i) {
                    Some((l, dir)) => (*l, dir.clone()),
                    None => break,
                },
                Some((from, dir)) if from + i < self.stack.len() => (from + i, dir.clone()),
                Some(_) => break,
            };
            i += 1;
            let Some(dfd) = skip_missing(self.stack.open_dir(l, &dir))? else {
                continue;
            };
            match sys::stat_at(dfd.as_fd(), &name) {
                Ok(st) if layer::is_whiteout(&st) => break,
                Ok(st) => {
                    if top.is_none() {
                        top = Some((l, st));
                        if !is_dir(&st) && self.stack.is_upper(l) {
                            origin = self.origin_ino(dfd.as_fd(), &name);
                        }
                    }
                    if !is_dir(&st) {
                        break;
                    }
                    let path = dir.join(&name);
                    let child = sys::open_beneath(
                        dfd.as_fd(),
                        Path::new(&name),
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                        0,
                    )?;
                    bottom_ino = st.st_ino;
                    dir_layers.push(DirLayer {
                        layer: l,
                        path: (!self.stack.is_upper(l)).then(|| Arc::from(path.as_path())),
                    });
                    if layer::is_opaque(child.as_fd())? {
                        break;
                    }
                    match layer::redirect(child.as_fd())? {
                        Some(Redirect::Name(n)) => name = n,
                        Some(Redirect::Path(p)) => {
                            let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
                            name = p.file_name().unwrap_or_default().to_os_string();
                            redirected = Some((l + 1, parent));
                            i = 0;
                        }
                        None => {}
                    }
                    continue;
                }
                Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            if layer::has_oci_whiteout(dfd.as_fd(), &name)? {
                break;
            }
        }
        let Some((l, st)) = top else {
            return Ok(None);
        };
        Ok(Some(if is_dir(&st) {
            let bottom = dir_layers.last().map_or(l, |d| d.layer);
            Resolved {
                layer: l,
                st,
                ident: self.stack.ino_of(bottom, bottom_ino),
                shared: true,
                kind: NodeKind::Dir { layers: dir_layers },
            }
        } else {
            Resolved {
                layer: l,
                st,
                ident: origin.or_else(|| self.stack.ino_of(l, st.st_ino)),
                // Lower hard links part ways on copy-up: one node per name.
                shared: self.stack.is_upper(l) || st.st_nlink <= 1,
                kind: NodeKind::NotDir {
                    fmt: st.st_mode & libc::S_IFMT,
                },
            }
        }))
    }

    /// The inode number recorded by the origin xattr of the upper file `name` in `dir`,
    /// if it has one that names a lower file: a copied-up file keeps the number of the
    /// file it came from, across remounts too.
    fn origin_ino(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Option<u64> {
        let attr = OsStr::new(layer::ORIGIN_XATTR);
        match sys::xattr_get_at(dir, name, attr) {
            Ok(Some(v)) => self.stack.ino_of_origin(&v),
            Ok(None) | Err(_) => None,
        }
    }

    /// Resolves `name` in directory node `parent`.
    pub(super) fn resolve_in(&self, parent: u64, name: &OsStr) -> Result<Option<Resolved>> {
        self.resolve(&self.dir_info(parent)?, name)
    }

    /// Whether `name` in directory node `parent` exists in a lower layer, below the upper:
    /// removing or renaming it then needs a whiteout.
    pub(super) fn lower_has(&self, parent: u64, name: &OsStr) -> Result<bool> {
        let mut layers = self.dir_info(parent)?;
        layers.retain(|(l, _)| !self.stack.is_upper(*l));
        Ok(self.resolve(&layers, name)?.is_some())
    }

    /// Records `r`, found as `name` in `parent`, in the inode table; returns its attributes.
    pub(super) fn remember(&self, parent: u64, name: &OsStr, r: Resolved, count: bool) -> Attr {
        let ident = Identity {
            ino: r.ident,
            shared: r.shared,
        };
        let id = self.inodes.lock().found(
            parent,
            &name.to_os_string(),
            ident,
            r.kind.clone(),
            r.layer,
            count,
        );
        Attr::of_node(id, &r.st, &r.kind)
    }
    /// Looks `name` up in directory `parent`; the kernel now holds one more reference.
    ///
    /// # Errors
    /// `ENOENT` when the name is not visible, `ENAMETOOLONG`, or the errno of a layer.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr> {
        check_name(name)?;
        let _ns = self.ns.read();
        let r = self.resolve_in(parent, name)?.ok_or(Errno::ENOENT)?;
        Ok(self.remember(parent, name, r, true))
    }

    /// Attributes of node `id`.
    ///
    /// # Errors
    /// `ENOENT` for a node that is gone, or the errno of `fstat`.
    pub fn getattr(&self, id: u64) -> Result<Attr> {
        let info = self.node_info(id);
        let (layer, path, kind) = match info {
            Ok(i) => i,
            Err(e) if e == Errno::ENOENT => return self.getattr_removed(id),
            Err(e) => return Err(e),
        };
        let fd = self.stack.open(layer, &path, OFlags::PATH)?;
        Ok(Attr::of_node(id, &sys::stat_fd(fd.as_fd())?, &kind))
    }

    pub(super) fn is_removed(&self, id: u64) -> bool {
        self.inodes
            .lock()
            .get(id)
            .is_some_and(|n| n.removed.is_some())
    }

    /// Attributes of a node that has no name left but is still open somewhere.
    fn getattr_removed(&self, id: u64) -> Result<Attr> {
        let Some((layer, fd)) = self.open_copy_of_removed(id, false) else {
            // Nothing open to ask: what it looked like when its last name went.
            let inodes = self.inodes.lock();
            return inodes.get(id).and_then(|n| n.removed).ok_or(Errno::ENOENT);
        };
        let mut attr = Attr::from_stat(id, &sys::stat_fd(fd.as_fd())?);
        if !self.stack.is_upper(layer) {
            // The lower file itself lives on; through the mount it has no name left.
            attr.nlink = 0;
        }
        if attr.is_dir() {
            attr.size = 0;
        }
        Ok(attr)
    }

    /// The target of symlink `id`.
    ///
    /// # Errors
    /// `EINVAL` when it is not a symlink, or the errno of `readlinkat`.
    pub fn readlink(&self, id: u64) -> Result<Vec<u8>> {
        let (layer, path, _) = self.node_info(id)?;
        let fd = self.stack.open(layer, &path, OFlags::PATH)?;
        Ok(rustix::fs::readlinkat(fd.as_fd(), c"", Vec::new())?.into_bytes())
    }

    /// The merged listing of directory `id`, with `.` and `..` first.
    pub(super) fn list(&self, id: u64) -> Result<Vec<DirEntry>> {
        let _ns = self.ns.read();
        let layers = match self.dir_info(id) {
            Ok(info) => info,
            // A removed directory that is still open lists as empty, as on any filesystem.
            Err(e) if e == Errno::ENOENT && self.is_removed(id) => return Ok(dots(id, id)),
            Err(e) => return Err(e),
        };
        let parent = if id == ROOT_ID {
            ROOT_ID
        } else {
            self.first_name(id).map(|(p, _)| p).unwrap_or(ROOT_ID)
        };
        let mut found = Vec::new();
        self.merge(&layers, |v| {
            found.push(v);
            ControlFlow::Continue(())
        })?;
        // Copied-up files keep the numbers of their origins; the upper directory says
        // (impure) whether it holds any, sparing a look at every entry otherwise.
        let upper_dir = match layers.first() {
            Some((l, path)) if self.stack.is_upper(*l) => Some(self.stack.open_dir(*l, path)?),
            _ => None,
        };
        let impure = upper_dir.as_ref().filter(|d| {
            matches!(sys::xattr_get(d.as_fd(), OsStr::new(layer::IMPURE_XATTR)), Ok(Some(v)) if v == b"y")
        });
        let mut out = dots(id, parent);
        for v in found {
            let known = self.inodes.lock().child(id, &v.name);
            let ino = match known {
                Some(k) => k,
                None if v.fmt == libc::S_IFDIR => {
                    // A directory's number comes from its bottom layer: resolve it fully.
                    match self.resolve(&layers, &v.name)? {
                        Some(r) => self.inodes.lock().peek_id(r.ident),
                        None => continue,
                    }
                }
                None => {
                    let origin = match impure {
                        Some(dir) if self.stack.is_upper(v.layer) => {
                            self.origin_ino(dir.as_fd(), &v.name)
                        }
                        _ => None,
                    };
                    let ident = origin.or_else(|| self.stack.ino_of(v.layer, v.ino));
                    self.inodes.lock().peek_id(ident)
                }
            };
            out.push(DirEntry {
                name: v.name,
                ino,
                fmt: v.fmt,
            });
        }
        Ok(out)
    }

    /// Whether the directory merged from `layers` (with its path in each) shows no entry.
    pub(super) fn is_empty_dir(&self, layers: &[(LayerIdx, PathBuf)]) -> Result<bool> {
        let mut empty = true;
        self.merge(layers, |_| {
            empty = false;
            ControlFlow::Break(())
        })?;
        Ok(empty)
    }

    /// Walks the directory merged from `layers` (top first, with its path in each) and hands every
    /// visible name, in its top-most copy, to `visit` until it breaks. The rule is
    /// [`Union::resolve`]'s: whiteouts (0/0 devices, `.wh.` names) hide a name in the
    /// layers below theirs; the layer list already ends at the first opaque directory.
    fn merge(
        &self,
        layers: &[(LayerIdx, PathBuf)],
        mut visit: impl FnMut(Visible) -> ControlFlow<()>,
    ) -> Result<()> {
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        for (l, path) in layers {
            let l = *l;
            let dir = self.stack.open(l, path, OFlags::RDONLY | OFlags::DIRECTORY);
            let Some(fd) = skip_missing(dir)? else {
                continue;
            };
            let mut whited = Vec::new();
            for e in sys::read_dir(fd.as_fd())? {
                let b = e.name.as_bytes();
                if let Some(target) = b.strip_prefix(layer::WH_PREFIX) {
                    if b != layer::WH_OPAQUE {
                        whited.push(OsStr::from_bytes(target).to_os_string());
                    }
                    continue;
                }
                if seen.contains(&e.name) || hidden.contains(&e.name) {
                    continue;
                }
                let mut fmt = dtype_fmt(e.dtype);
                if e.dtype == libc::DT_CHR || e.dtype == libc::DT_UNKNOWN {
                    let st = sys::stat_at(fd.as_fd(), &e.name)?;
                    if layer::is_whiteout(&st) {
                        whited.push(e.name);
                        continue;
                    }
                    fmt = st.st_mode & libc::S_IFMT;
                }
                seen.insert(e.name.clone());
                let v = Visible {
                    name: e.name,
                    layer: l,
                    ino: e.ino,
                    fmt,
                };
                if visit(v).is_break() {
                    return Ok(());
                }
            }
            hidden.extend(whited);
        }
        Ok(())
    }
}

/// A visible name of a merged directory, in its top-most copy.
struct Visible {
    name: OsString,
    layer: LayerIdx,
    /// The inode number in that layer.
    ino: u64,
    fmt: u32,
}

/// The `.` and `..` entries of a listing.
fn dots(id: u64, parent: u64) -> Vec<DirEntry> {
    let dir = |name: &str, ino| DirEntry {
        name: name.into(),
        ino,
        fmt: libc::S_IFDIR,
    };
    vec![dir(".", id), dir("..", parent)]
}
