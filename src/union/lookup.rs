//! Name resolution over the stack, and merged directory listings.
//!
//! [`Union::resolve`] is the one rule for "what does NAME in this directory refer to":
//! walk the directory's layers top-down; a whiteout (a 0/0 character device, or an OCI
//! `.wh.NAME` beside it) ends the walk; the first real entry wins; if it is a directory,
//! the walk goes on collecting lower directories of the same name until a non-directory,
//! a whiteout or an opaque directory. A directory's redirect (a renamed directory) says
//! where the layers below look instead: another name, or a path from the layer roots. A
//! metadata-only copy goes on the same way to find its data; a lower hard link copied up
//! into the index resolves to its index entry. [`Union::list`] applies the same rule to
//! whole directories, so a name is listed exactly when it can be looked up.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::OFlags;

use super::inode::{DataLayer, DirLayer, Identity, NodeKind, ROOT_ID};
use super::layer::{self, DirFd, LayerIdx, Redirect};
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
    /// A lower hard link while strata keeps its names together: each name is linked to
    /// the copy in the index when a call through it changes the file (as the kernel
    /// does), so which name a call came through matters.
    pub per_name: bool,
    /// The name is in the upper layer (for an indexed hard link: linked to the copy).
    pub upper_name: bool,
}

/// One entry of a merged listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: OsString,
    pub ino: u64,
    /// The top-most layer holding the name when the listing was taken.
    pub layer: LayerIdx,
    /// The `S_IFMT` bits of the entry's type.
    pub fmt: u32,
}

fn is_dir(st: &sys::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// The index directory, which a found index entry shows exists.
fn index_dir(u: &Union) -> Result<BorrowedFd<'_>> {
    u.stack.index_dir(false)?.ok_or(Errno::ENOENT)
}

fn is_reg(st: &sys::Stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// What the walk of [`Union::resolve`] found for a name that is not a directory.
struct FoundFile<'a> {
    layer: LayerIdx,
    st: sys::Stat,
    /// The directory it was found in, in that layer.
    dir: &'a Path,
    name: &'a OsStr,
    /// The inode number its origin xattr names (an upper copy).
    origin: Option<u64>,
    /// For a metadata-only copy: its data below, with that file's stat, if found.
    data: Option<(DataLayer, sys::Stat)>,
    /// It is a metadata-only copy.
    wants_data: bool,
}

/// What a layer holds on a redirect's path.
enum RedirectDir {
    /// The path's directory is not in this layer: look in the next.
    Missing,
    /// A whiteout or a non-directory on the way: the lookup ends.
    Stop,
    /// The directory, and whether an opaque directory is on the way (then no layer
    /// below this one counts).
    Found(DirFd, bool),
}

/// Where a lookup goes on in the layers below: the name to look for, in the parent's
/// directories, or after a redirect to a path, in that path's directory in every layer
/// below the one holding the redirect.
struct Walk {
    name: OsString,
    /// (first layer, directory) after a redirect to a path.
    redirected: Option<(LayerIdx, PathBuf)>,
    /// The position in the parent's layers (or in the layers below the redirect).
    next: usize,
}

impl Walk {
    /// The next layer to look in and the directory there, if any is left.
    fn next_layer(
        &mut self,
        layers: &[(LayerIdx, PathBuf)],
        stack_len: usize,
    ) -> Option<(LayerIdx, PathBuf)> {
        let found = match &self.redirected {
            None => layers.get(self.next).cloned(),
            Some((from, dir)) => {
                (from + self.next < stack_len).then(|| (from + self.next, dir.clone()))
            }
        };
        self.next += 1;
        found
    }

    /// Follows `redirect`, found in layer `l`, for the layers below.
    fn follow(&mut self, redirect: Option<Redirect>, l: LayerIdx) {
        match redirect {
            Some(Redirect::Name(n)) => self.name = n,
            Some(Redirect::Path(p)) => {
                let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
                self.name = p.file_name().unwrap_or_default().to_os_string();
                self.redirected = Some((l + 1, parent));
                self.next = 0;
            }
            None => {}
        }
    }
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
        self.resolve_from(layers, name, None)
    }

    /// [`Union::resolve`], told by a listing that `name`'s top-most copy was in layer
    /// `listed`: the lower layers above it are skipped (lower layers never change; the
    /// upper layer, which may have changed since, is always looked at).
    fn resolve_from(
        &self,
        layers: &[(LayerIdx, PathBuf)],
        name: &OsStr,
        listed: Option<LayerIdx>,
    ) -> Result<Option<Resolved>> {
        let mut skip_to = listed.filter(|l| !self.stack.is_upper(*l));
        if is_marker(name) {
            return Ok(None);
        }
        let mut walk = Walk {
            name: name.to_os_string(),
            redirected: None,
            next: 0,
        };
        let mut top: Option<(LayerIdx, sys::Stat)> = None;
        let mut top_dir = PathBuf::new();
        let mut dir_layers: Vec<DirLayer> = Vec::new();
        let mut bottom_ino = 0;
        let mut origin = None;
        // For a metadata-only copy: whether its data is still to be found, and where.
        let mut wants_data = false;
        let mut data: Option<(DataLayer, sys::Stat)> = None;
        let mut last_layer = false;
        while let Some((l, dir)) = walk.next_layer(layers, self.stack.len()) {
            if last_layer {
                break;
            }
            if let Some(want) = skip_to {
                if top.is_some() || walk.redirected.is_some() || l == want {
                    skip_to = None;
                } else if !self.stack.is_upper(l) {
                    continue;
                }
            }
            let dfd = match walk.redirected {
                None => skip_missing(self.stack.open_dir(l, &dir))?,
                // After a redirect to a path, the path's directories in this layer decide
                // (as the kernel walks them): a whiteout or a non-directory on the way ends
                // the lookup; an opaque directory on the way makes this layer the last.
                Some(_) => match self.redirect_dir(l, &dir)? {
                    RedirectDir::Missing => None,
                    RedirectDir::Stop => break,
                    RedirectDir::Found(fd, opaque) => {
                        last_layer = opaque;
                        Some(fd)
                    }
                },
            };
            let Some(dfd) = dfd else {
                continue;
            };
            let dfd = dfd.as_fd();
            let st = match sys::stat_at(dfd, &walk.name) {
                Ok(st) if layer::is_whiteout(&st) => break,
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) if layer::has_oci_whiteout(dfd, &walk.name)? => break,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let path = dir.join(&walk.name);
            let top_is_dir = match &top {
                Some((_, t)) => is_dir(t),
                None => {
                    top = Some((l, st));
                    top_dir = dir.clone();
                    if !is_dir(&st) {
                        // A metadata-only copy: its data is below (where its redirect says).
                        // An upper file lists its xattrs first: most have none to read.
                        wants_data = if self.stack.is_upper(l) {
                            let names = layer::XattrNames::of(dfd, &walk.name)?;
                            if names.has(layer::ORIGIN_XATTR) {
                                origin = self.origin_ino(dfd, &walk.name);
                            }
                            is_reg(&st) && names.has(layer::METACOPY_XATTR)
                        } else {
                            is_reg(&st) && self.is_metacopy(dfd, &walk.name)?
                        };
                        if !wants_data {
                            break;
                        }
                        walk.follow(self.file_redirect(dfd, &walk.name)?, l);
                        continue;
                    }
                    true
                }
            };
            if top_is_dir {
                if !is_dir(&st) {
                    break;
                }
                let child = sys::open_beneath(
                    dfd,
                    Path::new(&walk.name),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                    0,
                )?;
                bottom_ino = st.st_ino;
                dir_layers.push(DirLayer {
                    layer: l,
                    path: (!self.stack.is_upper(l)).then(|| Arc::from(path.as_path())),
                });
                // An OCI whiteout beside a directory makes it replace what is below.
                let names = layer::XattrNames::of(dfd, &walk.name)?;
                if layer::is_opaque_at(dfd, &walk.name, &names, child.as_fd())?
                    || layer::has_oci_whiteout(dfd, &walk.name)?
                {
                    break;
                }
                walk.follow(layer::redirect_at(dfd, &walk.name, &names)?, l);
                continue;
            }
            // The data of a metadata-only copy: a regular file, itself possibly one.
            if !is_reg(&st) {
                break;
            }
            if self.is_metacopy(dfd, &walk.name)? {
                walk.follow(self.file_redirect(dfd, &walk.name)?, l);
                continue;
            }
            let path = Arc::from(path.as_path());
            data = Some((DataLayer { layer: l, path }, st));
            break;
        }
        let Some((l, st)) = top else {
            return Ok(None);
        };
        if is_dir(&st) {
            let bottom = dir_layers.last().map_or(l, |d| d.layer);
            return Ok(Some(Resolved {
                layer: l,
                st,
                ident: self.stack.ino_of(bottom, bottom_ino),
                shared: true,
                per_name: false,
                upper_name: self.stack.is_upper(l),
                kind: NodeKind::Dir { layers: dir_layers },
            }));
        }
        self.resolve_file(FoundFile {
            layer: l,
            st,
            dir: &top_dir,
            name,
            origin,
            data,
            wants_data,
        })
        .map(Some)
    }

    /// The rest of [`Union::resolve`] for a name that is not a directory: a metadata-only
    /// copy's data, a lower hard link's copy in the index, the count of names.
    fn resolve_file(&self, found: FoundFile<'_>) -> Result<Resolved> {
        let FoundFile {
            layer: l,
            mut st,
            dir: top_dir,
            name,
            origin,
            data,
            wants_data,
        } = found;
        let mut data = match data {
            Some((d, data_st)) => {
                // As the kernel: the blocks are those of the data.
                st.st_blocks = data_st.st_blocks;
                Some(d)
            }
            None if wants_data => {
                log::warn!("the data of metadata-only copy {name:?} is missing below it");
                return Err(Errno::EIO);
            }
            None => None,
        };
        let upper = self.stack.is_upper(l);
        let hard_link = !upper && st.st_nlink > 1;
        let ident = origin.or_else(|| self.stack.ino_of(l, st.st_ino));
        // A hard link copied up into the index: its one copy is there, for every name.
        let mut index = None;
        let mut layer = l;
        if st.st_nlink > 1 && self.indexing() {
            let dir = self.stack.open_dir(l, top_dir)?;
            if let Some((key, ist)) = self.index_entry_of(l, dir.as_fd(), name, &st)? {
                layer = self.stack.index_layer();
                // A metadata-only copy in the index: its data is the lower file.
                if data.is_none() && !upper && self.is_metacopy(index_dir(self)?, &key)? {
                    let path = Arc::from(top_dir.join(name).as_path());
                    data = Some(DataLayer { layer: l, path });
                }
                let blocks = st.st_blocks;
                st = ist;
                if data.is_some() {
                    st.st_blocks = blocks;
                }
                index = Some(Arc::from(key.as_os_str()));
            }
        }
        // An upper file with several links, or an index entry (whose names may all be
        // lower ones): its count of names through the mount.
        if index.is_some() || (upper && st.st_nlink > 1) {
            st.st_nlink = self.overlay_nlink(layer, top_dir, name, &index, st.st_nlink);
        }
        Ok(Resolved {
            layer,
            st,
            ident,
            // Without an index, lower hard links part ways on copy-up: a node per name.
            shared: !hard_link || self.indexing() || !self.stack.has_upper(),
            per_name: self.indexing() && (hard_link || index.is_some()),
            upper_name: upper,
            kind: NodeKind::NotDir {
                fmt: st.st_mode & libc::S_IFMT,
                data,
                index,
            },
        })
    }

    /// For `name` in `dir` of layer `l` (stat `st`): its index entry (name and stat) if it
    /// is a hard link whose copy is in the index: a lower file the index holds a copy of,
    /// or an upper name linked to an index entry.
    fn index_entry_of(
        &self,
        l: LayerIdx,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &sys::Stat,
    ) -> Result<Option<(OsString, sys::Stat)>> {
        let Some(index) = self.stack.index_dir(false)? else {
            return Ok(None);
        };
        let key = if self.stack.is_upper(l) {
            match layer::upper_index_key(dir, name)? {
                Some(key) => key,
                None => return Ok(None),
            }
        } else {
            let fd = sys::open_beneath(dir, Path::new(name), OFlags::PATH | OFlags::NOFOLLOW, 0)?;
            match self.stack.index_name(l, fd.as_fd()) {
                Some(key) => key,
                None => return Ok(None),
            }
        };
        match sys::stat_at(index, &key) {
            // An upper name must be a link of the entry itself.
            Ok(ist) if !self.stack.is_upper(l) || ist.st_ino == st.st_ino => Ok(Some((key, ist))),
            Ok(_) | Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The link count through the mount of the upper (or index) file `name` in `dir` (or
    /// `index`) with `links` links: what its nlink xattr says, if it has one.
    fn overlay_nlink(
        &self,
        l: LayerIdx,
        dir: &Path,
        name: &OsStr,
        index: &Option<Arc<OsStr>>,
        links: u64,
    ) -> u64 {
        let attr = OsStr::new(layer::NLINK_XATTR);
        let value = match index {
            Some(key) => self
                .stack
                .open(l, Path::new(key.as_ref()), OFlags::PATH)
                .ok()
                .and_then(|fd| sys::xattr_get(fd.as_fd(), attr).ok().flatten()),
            None => self
                .stack
                .open_dir(l, dir)
                .ok()
                .and_then(|d| sys::xattr_get_at(d.as_fd(), name, attr).ok().flatten()),
        };
        value
            .and_then(|v| layer::overlay_nlink(&v, links, None))
            .unwrap_or(links)
    }

    /// Whether lower hard links keep together through copy-up (the index is in use).
    pub(super) fn indexing(&self) -> bool {
        self.opts.index && self.root && self.stack.has_upper()
    }

    /// The directory `dir` of layer `l` as a redirect's path reaches it, walking its
    /// components (see [`RedirectDir`]).
    fn redirect_dir(&self, l: LayerIdx, dir: &Path) -> Result<RedirectDir> {
        let mut fd = self.stack.open_dir(l, Path::new(""))?;
        let mut opaque = false;
        for c in dir.components() {
            let name = c.as_os_str();
            let st = match sys::stat_at(fd.as_fd(), name) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) if layer::has_oci_whiteout(fd.as_fd(), name)? => {
                    return Ok(RedirectDir::Stop)
                }
                Err(rustix::io::Errno::NOENT) => return Ok(RedirectDir::Missing),
                Err(e) => return Err(e.into()),
            };
            if !is_dir(&st) {
                return Ok(RedirectDir::Stop);
            }
            fd = DirFd::Owned(sys::open_beneath(
                fd.as_fd(),
                Path::new(name),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                0,
            )?);
            opaque |= layer::is_opaque(fd.as_fd())?;
        }
        Ok(RedirectDir::Found(fd, opaque))
    }

    /// Whether the regular file `name` in `dir` is a metadata-only copy.
    fn is_metacopy(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
        Ok(layer::overlay_xattr_at(dir, name, layer::METACOPY_XATTR)?.is_some())
    }

    /// The redirect of the file `name` in `dir` (a renamed metadata-only copy).
    fn file_redirect(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Redirect>> {
        let value = layer::overlay_xattr_at(dir, name, layer::REDIRECT_XATTR)?;
        Ok(value.and_then(|v| Redirect::parse(&v)))
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
        let mut inodes = self.inodes.lock();
        let id = inodes.found(
            parent,
            &name.to_os_string(),
            ident,
            r.kind.clone(),
            r.layer,
            count,
        );
        if let Some(n) = inodes.get_mut(id) {
            n.per_name = r.per_name;
            // Which name a call came through matters only for a lower hard link (see
            // `Inodes::take_call_name`); other nodes keep no copy of it.
            if !r.per_name {
                n.last_name = None;
            }
        }
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

    /// [`Union::lookup`] of an entry of a listing of `parent` (see [`DirEntry::layer`]).
    ///
    /// # Errors
    /// As for [`Union::lookup`].
    pub fn lookup_listed(&self, parent: u64, e: &DirEntry) -> Result<Attr> {
        let _ns = self.ns.read();
        let layers = self.dir_info(parent)?;
        let r = self
            .resolve_from(&layers, &e.name, Some(e.layer))?
            .ok_or(Errno::ENOENT)?;
        Ok(self.remember(parent, &e.name, r, true))
    }

    /// Whether the kernel should look `id` up again at every use of a name of it: a lower
    /// hard link whose names are linked to its copy one by one, as calls come through them.
    pub fn per_name(&self, id: u64) -> bool {
        let inodes = self.inodes.lock();
        inodes.get(id).is_some_and(|n| n.per_name)
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
        if kind.dir_len() > 0 {
            // A directory's descriptor may be cached (lower layers).
            let st = sys::stat_fd(self.stack.open_dir(layer, &path)?.as_fd())?;
            return Ok(Attr::of_node(id, &st, &kind));
        }
        let fd = self.stack.open(layer, &path, OFlags::PATH)?;
        let mut st = sys::stat_fd(fd.as_fd())?;
        let indexed = kind.index().is_some();
        if indexed || (self.stack.is_upper(layer) && st.st_nlink > 1) {
            // An indexed hard link: its names through the mount, not its upper links.
            if let Ok(Some(v)) = sys::xattr_get(fd.as_fd(), OsStr::new(layer::NLINK_XATTR)) {
                st.st_nlink = layer::overlay_nlink(&v, st.st_nlink, None).unwrap_or(st.st_nlink);
            }
        }
        if let Some(d) = kind.data() {
            // A metadata-only copy has the blocks of its data, as with the kernel.
            let data = self.stack.open(d.layer, &d.path, OFlags::PATH)?;
            st.st_blocks = sys::stat_fd(data.as_fd())?.st_blocks;
        }
        Ok(Attr::of_node(id, &st, &kind))
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
            return inodes
                .get(id)
                .and_then(|n| n.removed.as_deref().copied())
                .ok_or(Errno::ENOENT);
        };
        let (removed, metacopy) = {
            let inodes = self.inodes.lock();
            let node = inodes.get(id);
            let metacopy = node.is_some_and(|n| n.kind.data().is_some());
            (node.and_then(|n| n.removed.as_deref().copied()), metacopy)
        };
        if let (false, true, Some(attr)) = (self.stack.is_upper(layer), metacopy, removed) {
            // A metadata-only copy read through its lower data: the metadata was the
            // copy's, as it was when its last name went.
            return Ok(attr);
        }
        let mut attr = Attr::from_stat(id, &sys::stat_fd(fd.as_fd())?);
        if layer == self.stack.index_layer() {
            // A lower hard link: the names left through the mount, as its entry counts them.
            if let Ok(Some(v)) = sys::xattr_get(fd.as_fd(), OsStr::new(layer::NLINK_XATTR)) {
                let links = u64::from(attr.nlink);
                let nlink = layer::overlay_nlink(&v, links, None).unwrap_or(links);
                attr.nlink = u32::try_from(nlink).unwrap_or(u32::MAX);
            }
        }
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
                layer: v.layer,
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
        layer: 0,
        fmt: libc::S_IFDIR,
    };
    vec![dir(".", id), dir("..", parent)]
}
