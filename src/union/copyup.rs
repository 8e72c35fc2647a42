//! Copy-up: bringing a lower entry into the upper layer before it changes.
//!
//! The copy is built under a temporary name in the work directory (data by `FICLONE`, else
//! `copy_file_range` over data extents so holes stay holes; then owner, mode, xattrs and
//! times, in that order because `chown` clears set-id bits and file capabilities) and
//! renamed into place with `RENAME_NOREPLACE`, so no reader ever sees a partial file.
//! Parents are copied up first. Callers hold the namespace lock for writing.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, RenameFlags};

use super::inode::{DirLayer, NodeKind, ROOT_ID};
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

impl Union {
    /// Makes sure node `id` has its own copy in the upper layer.
    pub(super) fn copy_up(&self, id: u64) -> Result<()> {
        let upper = self.stack.upper()?;
        let layer = self.inodes.lock().get(id).ok_or(Errno::ENOENT)?.layer;
        if layer == upper || id == ROOT_ID {
            return Ok(());
        }
        let (parent, name) = self.first_name(id)?;
        self.copy_up(parent)?;
        let dir = self.upper_path(parent)?;
        // Where the copy comes from: below a renamed directory, not the merged path.
        let src = self.path_in(&self.inodes.lock(), id, layer)?;
        let src_name = src.file_name().ok_or(Errno::EINVAL)?;
        let src_dir = self
            .stack
            .open_dir(layer, src.parent().unwrap_or(Path::new("")))?;
        let st = sys::stat_at(src_dir.as_fd(), src_name)?;
        let work = self.stack.work()?;
        let tmp = self.stack.tmp_name();
        let placed = self
            .copy_entry(layer, src_dir.as_fd(), src_name, &st, work, &tmp)
            .and_then(|has_origin| {
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
            if let NodeKind::Dir { layers } = &mut node.kind {
                if layers.first().map(|d| d.layer) != Some(upper) {
                    layers.insert(0, DirLayer::upper(upper));
                }
            }
        }
        if let Some(ident) = self.stack.ino_of(upper, new_st.st_ino) {
            inodes.add_alias(ident, id);
        }
        drop(inodes);
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

    /// Copies the entry `name` of `src_dir` in layer `layer` (stat `st`) to `tmp` in
    /// `work`; returns whether the copy records its origin.
    fn copy_entry(
        &self,
        layer: LayerIdx,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        st: &sys::Stat,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
    ) -> Result<bool> {
        let fmt = st.st_mode & libc::S_IFMT;
        let src_path = Path::new(name);
        let src = sys::open_beneath(src_dir, src_path, OFlags::PATH | OFlags::NOFOLLOW, 0)?;
        let dst: OwnedFd = match fmt {
            libc::S_IFREG => {
                let data =
                    sys::open_beneath(src_dir, src_path, OFlags::RDONLY | OFlags::NOFOLLOW, 0)?;
                let dst = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                sys::copy_data(
                    data.as_fd(),
                    dst.as_fd(),
                    u64::try_from(st.st_size).unwrap_or(0),
                )?;
                if self.opts.fsync {
                    rustix::fs::fsync(dst.as_fd())?;
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
        // The copy remembers what it came from, so its inode number survives a remount.
        // Not for a lower hard link: its other names keep the lower inode (the kernel's
        // rule without an index).
        if fmt != libc::S_IFDIR && st.st_nlink > 1 {
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
