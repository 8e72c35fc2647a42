//! Copy-up: bringing a lower entry into the upper layer before it changes.
//!
//! The copy is built under a temporary name in the work directory (data by `FICLONE`, else
//! `copy_file_range` over data extents so holes stay holes; then owner, mode, xattrs and
//! times, in that order because `chown` clears set-id bits and file capabilities) and
//! renamed into place with `RENAME_NOREPLACE`, so no reader ever sees a partial file.
//! Parents are copied up first. Callers hold the namespace lock for writing.
//!
//! Every copy records its origin (the lower file's handle). A change of metadata only
//! copies no data (`metacopy`): the data is copied into the copy at the first change of
//! data. A lower hard link is copied once, into the index in the work directory, and its
//! names are linked to that copy one by one, as calls through them change it (the
//! kernel's `index=on`).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::inode::{DataLayer, DirLayer, NodeKind, ROOT_ID};
use super::layer::{self, LayerIdx};
use super::Union;
use crate::error::{Errno, Result};
use crate::sys;

fn atime(st: &sys::Stat) -> sys::SetTime {
    sys::SetTime::At(st.st_atime, st.st_atime_nsec as i64)
}

fn mtime(st: &sys::Stat) -> sys::SetTime {
    sys::SetTime::At(st.st_mtime, st.st_mtime_nsec as i64)
}

/// Marks the upper directory `dir` as holding entries whose inode numbers come from
/// elsewhere (best effort: it only spares the kernel work when it mounts the upper).
pub(super) fn set_impure(dir: BorrowedFd<'_>) {
    let name = OsStr::new(layer::IMPURE_XATTR);
    if let Ok(None) = sys::xattr_get(dir, name) {
        if let Err(e) = sys::xattr_set(dir, name, b"y", 0) {
            log::debug!("cannot mark a directory impure: {e}");
        }
    }
}

/// What a copy-up copies: the entry `name` of `dir` in layer `layer`, with its stat and,
/// for a regular file whose data is copied, the open file to copy the data from.
struct Source<'a> {
    layer: LayerIdx,
    dir: BorrowedFd<'a>,
    name: &'a OsStr,
    st: &'a sys::Stat,
    data: Option<BorrowedFd<'a>>,
}

impl Union {
    /// Makes sure node `id` has its own complete copy in the upper layer, data included
    /// (the data of a metadata-only copy is copied now).
    pub(super) fn copy_up(&self, id: u64) -> Result<()> {
        self.copy_up_as(id, false, None)
    }

    /// Makes sure node `id` has its own copy in the upper layer, for a change of its
    /// metadata only: with `metacopy`, the data of a regular file stays where it is.
    pub(super) fn copy_up_meta(&self, id: u64) -> Result<()> {
        self.copy_up_as(id, self.opts.metacopy && self.root, None)
    }

    /// [`Union::copy_up_meta`] for an xattr change: as the kernel, a lower hard link
    /// already in the index links no further name for it.
    pub(super) fn copy_up_for_xattr(&self, id: u64) -> Result<()> {
        let indexed = self
            .inodes
            .lock()
            .get(id)
            .is_some_and(|n| n.kind.index().is_some());
        match indexed {
            true => Ok(()),
            false => self.copy_up_meta(id),
        }
    }

    /// [`Union::copy_up_meta`] for a call that always comes through a path (`link`): the
    /// name just looked up, even while the node is open through another.
    pub(super) fn copy_up_by_path(&self, id: u64) -> Result<()> {
        let via = self.inodes.lock().take_call_name(id, false);
        self.copy_up_as(id, self.opts.metacopy && self.root, via)
    }

    /// [`Union::copy_up_meta`] for a call that came through `name` in `parent` (which
    /// matters for a lower hard link: that name is the one linked to the copy).
    pub(super) fn copy_up_via(&self, id: u64, parent: u64, name: &OsStr) -> Result<()> {
        let via = (parent, name.to_os_string());
        self.copy_up_as(id, self.opts.metacopy && self.root, Some(via))
    }

    fn copy_up_as(&self, id: u64, meta_only: bool, via: Option<(u64, OsString)>) -> Result<()> {
        let upper = self.stack.upper()?;
        let open = !self.files_of(id).is_empty();
        let (layer, data, index, via) = {
            let mut inodes = self.inodes.lock();
            // The name the call came through: said, or as the lookups and opens tell.
            let via = via.or_else(|| inodes.take_call_name(id, open));
            let node = inodes.get(id).ok_or(Errno::ENOENT)?;
            let kind = &node.kind;
            (
                node.layer,
                kind.data().cloned(),
                kind.index().map(OsStr::to_os_string),
                via,
            )
        };
        if id == ROOT_ID {
            return Ok(());
        }
        if let Some(key) = index {
            // Copied into the index already: the data too if the call needs it, and the
            // name the call came through is linked to the copy.
            if let Some(d) = data.filter(|_| !meta_only) {
                self.copy_up_data(id, &d)?;
            }
            return match via {
                Some(name) => self.link_to_index(&key, &name, None),
                None => Ok(()),
            };
        }
        if layer == upper {
            return match data {
                Some(d) if !meta_only => self.copy_up_data(id, &d),
                _ => Ok(()),
            };
        }
        let (parent, name) = match via {
            Some(v) => v,
            None => self.first_name(id)?,
        };
        self.copy_up(parent)?;
        let dir = self.upper_path(parent)?;
        // Where the copy comes from: below a renamed directory, not the merged path.
        let src = self.path_in(&self.inodes.lock(), id, layer)?;
        let src_name = src.file_name().ok_or(Errno::EINVAL)?;
        let src_dir = self
            .stack
            .open_dir(layer, src.parent().unwrap_or(Path::new("")))?;
        let st = sys::stat_at(src_dir.as_fd(), src_name)?;
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if !is_dir && st.st_nlink > 1 && self.indexing() {
            // A lower hard link: one copy in the index, linked to by its names.
            let key = sys::open_beneath(
                src_dir.as_fd(),
                Path::new(src_name),
                OFlags::PATH | OFlags::NOFOLLOW,
                0,
            )
            .ok()
            .and_then(|fd| self.stack.index_name(layer, fd.as_fd()));
            if let Some(key) = key {
                let source = (src_dir.as_fd(), src_name, &st);
                let meta_only = meta_only && st.st_mode & libc::S_IFMT == libc::S_IFREG;
                let data = meta_only.then(|| DataLayer {
                    layer,
                    path: Arc::from(src.as_path()),
                });
                return self.copy_up_indexed(id, &key, source, data, (parent, name));
            }
        }
        let is_reg = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        // Only a file with one name can leave its data below: another name would not
        // find it.
        let meta_only = meta_only && is_reg && st.st_nlink == 1;
        let data_src = match (&data, is_reg && !meta_only) {
            (_, false) => None,
            (Some(d), true) => Some(self.stack.open(d.layer, &d.path, OFlags::RDONLY)?),
            (None, true) => Some(sys::open_beneath(
                src_dir.as_fd(),
                Path::new(src_name),
                OFlags::RDONLY | OFlags::NOFOLLOW,
                0,
            )?),
        };
        let work = self.stack.work()?;
        let tmp = self.stack.tmp_name();
        let source = Source {
            layer,
            dir: src_dir.as_fd(),
            name: src_name,
            st: &st,
            data: data_src.as_ref().map(|d| d.as_fd()),
        };
        let placed = self.copy_entry(&source, work, &tmp).and_then(|has_origin| {
            let dst_dir = self.stack.open_dir(upper, &dir)?;
            let parent_st = sys::stat_fd(dst_dir.as_fd())?;
            if has_origin {
                set_impure(dst_dir.as_fd());
            }
            sys::rename_at(work, &tmp, dst_dir.as_fd(), &name, RenameFlags::NOREPLACE)?;
            // A copy-up does not change the parent: keep its times (as the kernel does).
            sys::utimens_fd(dst_dir.as_fd(), atime(&parent_st), mtime(&parent_st))?;
            Ok(sys::stat_at(dst_dir.as_fd(), &name)?)
        });
        let new_st = match placed {
            Ok(st) => st,
            Err(e) => {
                self.discard(work, &tmp);
                return Err(e);
            }
        };
        let mut inodes = self.inodes.lock();
        if let Some(node) = inodes.get_mut(id) {
            node.layer = upper;
            match &mut node.kind {
                NodeKind::Dir { layers } => {
                    if layers.first().map(|d| d.layer) != Some(upper) {
                        layers.insert(0, DirLayer::upper(upper));
                    }
                }
                NodeKind::NotDir { data, .. } if meta_only => {
                    let here = DataLayer {
                        layer,
                        path: Arc::from(src.as_path()),
                    };
                    data.get_or_insert(here);
                }
                NodeKind::NotDir { data, .. } => *data = None,
            }
        }
        if let Some(ident) = self.stack.ino_of(upper, new_st.st_ino) {
            inodes.add_alias(ident, id);
        }
        drop(inodes);
        // A directory now merged reports one link; a copy may differ in other ways.
        self.attrs_changed(id);
        if let Err(e) = self.repoint_handles(id) {
            log::warn!("open handles of node {id} still read the lower file: {e}");
        }
        Ok(())
    }

    /// Copies the data of node `id` ahead of its copy-up, when it is a large regular file
    /// with one name in a lower layer: the copy is the slow part of a copy-up, and made
    /// here it holds no lock, so lookups, listings and other calls go on meanwhile. The
    /// copy is an unnamed file in the work directory that the copy-up then links into
    /// place (see [`Union::take_staged`]); returns its key, for the caller to drop it if
    /// the copy-up did not use it.
    pub(super) fn stage_copy_up(&self, id: u64) -> Option<(u64, u64)> {
        const WORTH_IT: i64 = 1 << 20;
        let work = self.stack.work().ok()?;
        let src = {
            let _ns = self.ns.read();
            let (layer, path, kind) = self.data_info(id).ok()?;
            if self.stack.is_upper(layer) || kind.dir_len() > 0 || kind.index().is_some() {
                return None;
            }
            self.stack.open(layer, &path, OFlags::RDONLY).ok()?
        };
        let st = sys::stat_fd(src.as_fd()).ok()?;
        let plain = st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1;
        if !plain || st.st_size < WORTH_IT {
            return None;
        }
        let copy = rustix::fs::openat(
            work,
            c".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .ok()?;
        let len = u64::try_from(st.st_size).unwrap_or(0);
        let copied =
            sys::copy_data(src.as_fd(), copy.as_fd(), len).and_then(|()| match self.opts.fsync {
                true => rustix::fs::fsync(copy.as_fd()),
                false => Ok(()),
            });
        if let Err(e) = copied {
            log::debug!("no early copy of node {id}'s data: {e}");
            return None;
        }
        let key = (st.st_dev, st.st_ino);
        self.staged.lock().insert(key, copy);
        Some(key)
    }

    /// The early copy of the data of `data` (see [`Union::stage_copy_up`]), linked into
    /// the work directory as `tmp` and opened, if there is one.
    fn take_staged(
        &self,
        data: BorrowedFd<'_>,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
    ) -> Option<OwnedFd> {
        let st = sys::stat_fd(data).ok()?;
        let copy = self.staged.lock().remove(&(st.st_dev, st.st_ino))?;
        let linked = rustix::fs::linkat(
            rustix::fs::CWD,
            sys::fd_path(copy.as_fd()).as_c_str(),
            work,
            tmp,
            AtFlags::SYMLINK_FOLLOW,
        );
        match linked {
            Ok(()) => Some(copy),
            Err(e) => {
                log::debug!("the early copy could not be linked ({e}): copying again");
                None
            }
        }
    }

    /// Copies up node `id`, a lower hard link (`source`: the entry `name` of `dir` in
    /// layer `layer`, and its stat), the kernel's way with `index=on`: its one copy is the
    /// index entry `key`, shared by all its names; `via`, the name the call came through,
    /// is linked to it. The nlink xattr keeps the count of names through the mount.
    fn copy_up_indexed(
        &self,
        id: u64,
        key: &OsStr,
        source: (BorrowedFd<'_>, &OsStr, &sys::Stat),
        data_below: Option<DataLayer>,
        via: (u64, OsString),
    ) -> Result<()> {
        let (dir, name, st) = source;
        let layer = self.inodes.lock().get(id).ok_or(Errno::ENOENT)?.layer;
        let index = self.stack.index_dir(true)?.ok_or(Errno::EROFS)?;
        if let Err(rustix::io::Errno::NOENT) = sys::stat_at(index, key) {
            // The data, unless the copy is metadata only (then it stays in `data_below`).
            let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
            let data = match regular && data_below.is_none() {
                true => Some(sys::open_beneath(
                    dir,
                    Path::new(name),
                    OFlags::RDONLY | OFlags::NOFOLLOW,
                    0,
                )?),
                false => None,
            };
            let source = Source {
                layer,
                dir,
                name,
                st,
                data: data.as_ref().map(|d| d.as_fd()),
            };
            let work = self.stack.work()?;
            let tmp = self.stack.tmp_name();
            let placed = self.copy_entry(&source, work, &tmp).and_then(|_| {
                // Every lower name counts; none is linked yet.
                let value = layer::nlink_value(st.st_nlink, 1);
                let fd = sys::open_beneath(work, Path::new(&tmp), OFlags::PATH, 0)?;
                sys::xattr_set(fd.as_fd(), OsStr::new(layer::NLINK_XATTR), &value, 0)?;
                Ok(sys::rename_at(
                    work,
                    &tmp,
                    index,
                    key,
                    RenameFlags::NOREPLACE,
                )?)
            });
            if let Err(e) = placed {
                self.discard(work, &tmp);
                return Err(e);
            }
        }
        if let Some(node) = self.inodes.lock().get_mut(id) {
            node.layer = self.stack.index_layer();
            if let NodeKind::NotDir { index, data, .. } = &mut node.kind {
                *index = Some(Arc::from(key));
                *data = data_below;
            }
        }
        self.attrs_changed(id);
        if let Err(e) = self.repoint_handles(id) {
            log::warn!("open handles of node {id} still read the lower file: {e}");
        }
        self.link_to_index(key, &via, None)
    }

    /// Links `name` in `parent` (a name of the hard link copied into the index as `key`)
    /// to the copy, unless it is linked already; the count of names through the mount
    /// stays (`nlink` sets it instead).
    fn link_to_index(&self, key: &OsStr, via: &(u64, OsString), nlink: Option<u64>) -> Result<()> {
        let (parent, name) = via;
        let upper = self.stack.upper()?;
        let index = self.stack.index_dir(true)?.ok_or(Errno::EROFS)?;
        let entry = sys::open_beneath(index, Path::new(key), OFlags::PATH, 0)?;
        let before = sys::stat_fd(entry.as_fd())?;
        let nlink_attr = OsStr::new(layer::NLINK_XATTR);
        let nlink = match nlink {
            Some(n) => n,
            None => sys::xattr_get(entry.as_fd(), nlink_attr)?
                .and_then(|v| layer::overlay_nlink(&v, before.st_nlink, None))
                .unwrap_or(before.st_nlink),
        };
        self.copy_up(*parent)?;
        let dir = self.stack.open_dir(upper, &self.upper_path(*parent)?)?;
        match sys::stat_at(dir.as_fd(), name) {
            Ok(st) if st.st_ino == before.st_ino => return Ok(()),
            Ok(_) => return Err(Errno::EEXIST),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let parent_st = sys::stat_fd(dir.as_fd())?;
        rustix::fs::linkat(index, key, dir.as_fd(), name, rustix::fs::AtFlags::empty())?;
        set_impure(dir.as_fd());
        sys::utimens_fd(dir.as_fd(), atime(&parent_st), mtime(&parent_st))?;
        let value = layer::nlink_value(nlink, before.st_nlink + 1);
        sys::xattr_set(entry.as_fd(), nlink_attr, &value, 0)?;
        Ok(())
    }

    /// Copies the data of metadata-only copy `id` from `data` into its upper file, then
    /// drops the metacopy mark. Readers go on reading the lower data until the copy is
    /// complete. Copying the data is a write: the file's modification time becomes now,
    /// as with the kernel (which a mount of the upper by the kernel then agrees with).
    fn copy_up_data(&self, id: u64, data: &DataLayer) -> Result<()> {
        // The node's own copy: its upper file, or its index entry.
        let (layer, path, _) = self.node_info(id)?;
        let dst = self.stack.open(layer, &path, OFlags::WRONLY)?;
        let src = self.stack.open(data.layer, &data.path, OFlags::RDONLY)?;
        let len = u64::try_from(sys::stat_fd(src.as_fd())?.st_size).unwrap_or(0);
        sys::copy_data(src.as_fd(), dst.as_fd(), len)?;
        if self.opts.fsync {
            rustix::fs::fsync(dst.as_fd())?;
        }
        match sys::xattr_remove(dst.as_fd(), OsStr::new(layer::METACOPY_XATTR)) {
            Ok(()) | Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(node) = self.inodes.lock().get_mut(id) {
            if let NodeKind::NotDir { data, .. } = &mut node.kind {
                *data = None;
            }
        }
        self.attrs_changed(id);
        if let Err(e) = self.repoint_handles(id) {
            log::warn!("open handles of node {id} still read the lower file: {e}");
        }
        Ok(())
    }

    /// Removes a staging leftover from the work directory, logging what cannot be removed.
    pub(super) fn discard(&self, work: BorrowedFd<'_>, tmp: &OsStr) {
        match sys::remove_tree_at(work, tmp) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => log::warn!("cannot remove {tmp:?} from the work directory: {e}"),
        }
    }

    /// Copies the entry `source` to `tmp` in `work`; returns whether the copy records its
    /// origin. A regular file without `source.data` becomes a metadata-only copy.
    fn copy_entry(&self, source: &Source<'_>, work: BorrowedFd<'_>, tmp: &OsStr) -> Result<bool> {
        let st = source.st;
        let fmt = st.st_mode & libc::S_IFMT;
        let src_path = Path::new(source.name);
        let src = sys::open_beneath(source.dir, src_path, OFlags::PATH | OFlags::NOFOLLOW, 0)?;
        let staged = match (fmt, source.data) {
            (libc::S_IFREG, Some(data)) => self.take_staged(data, work, tmp),
            _ => None,
        };
        let dst: OwnedFd = match fmt {
            libc::S_IFREG if staged.is_some() => staged.ok_or(Errno::EIO)?,
            libc::S_IFREG => {
                let dst = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                let len = u64::try_from(st.st_size).unwrap_or(0);
                match source.data {
                    Some(data) => {
                        sys::copy_data(data, dst.as_fd(), len)?;
                        if self.opts.fsync {
                            rustix::fs::fsync(dst.as_fd())?;
                        }
                    }
                    None => {
                        // Metadata only: the right size, no data, and the kernel's mark.
                        rustix::fs::ftruncate(dst.as_fd(), len)?;
                        let mark = OsStr::new(layer::METACOPY_XATTR);
                        sys::xattr_set(dst.as_fd(), mark, b"", 0)?;
                    }
                }
                dst
            }
            libc::S_IFDIR => {
                rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?;
                rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?
            }
            libc::S_IFLNK => {
                let target = rustix::fs::readlinkat(src.as_fd(), c"", Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), work, tmp)?;
                rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?
            }
            _ => {
                sys::mknod_at(work, tmp, st.st_mode, st.st_rdev)?;
                rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?
            }
        };
        self.copy_meta(src.as_fd(), dst.as_fd(), st)?;
        let layer = source.layer;
        // The copy remembers what it came from, so its inode number survives a remount.
        // Not for a lower hard link: its other names keep the lower inode (the kernel's
        // rule without an index).
        if fmt != libc::S_IFDIR && st.st_nlink > 1 && !self.indexing() {
            return Ok(false);
        }
        let Some(origin) = self.stack.origin_of(layer, src.as_fd()) else {
            return Ok(false);
        };
        match sys::xattr_set(dst.as_fd(), OsStr::new(layer::ORIGIN_XATTR), &origin, 0) {
            Ok(()) => Ok(true),
            Err(e) => {
                log::debug!("no origin recorded for a copy-up: {e}");
                Ok(false)
            }
        }
    }

    /// Owner, mode, xattrs (overlay-private ones excepted) and times of `st`/`src` onto `dst`.
    pub(super) fn copy_meta(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        st: &sys::Stat,
    ) -> Result<()> {
        let fmt = st.st_mode & libc::S_IFMT;
        if self.root {
            sys::chown_fd(dst, Some(st.st_uid), Some(st.st_gid))?;
        }
        if fmt != libc::S_IFLNK {
            sys::chmod_fd(dst, st.st_mode & 0o7777)?;
        }
        match sys::xattr_list(src) {
            Ok(names) => {
                for n in names.iter().filter(|n| !layer::is_private_xattr(n)) {
                    if let Some(v) = sys::xattr_get(src, n)? {
                        sys::xattr_set(dst, n, &v, 0)?;
                    }
                }
            }
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
        sys::utimens_fd(dst, atime(st), mtime(st))?;
        Ok(())
    }
}
