//! Open files and directories, data I/O, attributes and xattrs.
//!
//! Opening a file for writing (or truncating it) copies it up first, so a write handle
//! always points into the upper layer. A read handle opened on a lower file follows the
//! file when another handle copies it up, so it never serves stale data. Directory handles
//! hold a snapshot of the merged listing taken at `opendir` (and at each rewind).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustix::fs::OFlags;

use super::layer::{self, LayerIdx};
use super::lookup::DirEntry;
use super::{Attr, Union};
use crate::error::{Errno, Result};
use crate::sys;

/// The flags a backing file is opened with, from the flags of an `open(2)` on the mount.
/// Creation and truncation are done by strata itself; `O_APPEND` is left out because the
/// kernel sends every write with its offset; write-only becomes read-write so the kernel
/// may read pages of a file it writes.
pub(super) fn backing_flags(flags: i32) -> OFlags {
    let keep = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME;
    let acc = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => OFlags::RDONLY,
        _ => OFlags::RDWR,
    };
    acc | OFlags::from_bits_retain((flags & keep) as _)
}

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    pub node: u64,
    flags: OFlags,
    /// The layer the descriptor points into, and the descriptor.
    backing: RwLock<(LayerIdx, OwnedFd)>,
}

impl OpenFile {
    /// `fstat` of the backing file, with its layer.
    pub(super) fn fstat(&self) -> Result<(LayerIdx, sys::Stat)> {
        let b = self.backing.read();
        Ok((b.0, sys::stat_fd(b.1.as_fd())?))
    }
}

/// An open directory: a snapshot of its merged listing.
#[derive(Debug)]
pub struct DirHandle {
    pub node: u64,
    entries: Mutex<(bool, Arc<Vec<DirEntry>>)>,
}

/// Changes asked for by `setattr`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<sys::SetTime>,
    pub mtime: Option<sys::SetTime>,
}

impl SetAttr {
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

impl Union {
    pub(super) fn add_file(&self, node: u64, layer: LayerIdx, fd: OwnedFd, flags: OFlags) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let file = OpenFile {
            node,
            flags,
            backing: RwLock::new((layer, fd)),
        };
        self.files.lock().insert(fh, Arc::new(file));
        fh
    }

    fn file(&self, fh: u64) -> Result<Arc<OpenFile>> {
        self.files.lock().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// Opens node `id` with the flags of `open(2)`; returns the handle.
    ///
    /// # Errors
    /// `EROFS` for a write open of a read-only mount, or the errno of the copy-up or open.
    pub fn open(&self, id: u64, flags: i32) -> Result<u64> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if write {
            self.stack.upper()?;
            let _ns = self.ns.write();
            self.copy_up(id)?;
        }
        let (layer, path, kind) = self.node_info(id)?;
        if kind.dir_len() > 0 {
            return Err(Errno::EISDIR);
        }
        let oflags = backing_flags(flags);
        let fd = self.open_backing(layer, &path, oflags)?;
        if flags & libc::O_TRUNC != 0 {
            rustix::fs::ftruncate(fd.as_fd(), 0)?;
        }
        Ok(self.add_file(id, layer, fd, oflags))
    }

    /// Opens the backing file of a handle. Lower files are opened with `O_NOATIME` where
    /// allowed: reading through the mount must not change a read-only layer.
    fn open_backing(
        &self,
        layer: LayerIdx,
        path: &std::path::Path,
        flags: OFlags,
    ) -> Result<OwnedFd> {
        if self.stack.is_upper(layer) {
            return self.stack.open(layer, path, flags);
        }
        match self.stack.open(layer, path, flags | OFlags::NOATIME) {
            Err(e) if e == Errno::EPERM => self.stack.open(layer, path, flags),
            r => r,
        }
    }

    /// Points a read handle at the upper copy when its file was copied up since it opened.
    fn follow_copy_up(&self, f: &OpenFile) -> Result<()> {
        let current = self.inodes.lock().get(f.node).map(|n| n.layer);
        let Some(current) = current else {
            return Ok(());
        };
        if f.backing.read().0 == current {
            return Ok(());
        }
        let (layer, path, _) = match self.node_info(f.node) {
            Ok(i) => i,
            Err(_) => return Ok(()), // no name left: keep what we have
        };
        let fd = self.open_backing(layer, &path, f.flags)?;
        *f.backing.write() = (layer, fd);
        Ok(())
    }

    /// Points every open handle of node `id` at its copy in `layer` (right after a
    /// copy-up, while the node still has a name), so readers that opened the lower file
    /// see the data, mode and fate of the copy from now on.
    pub(super) fn repoint_handles(&self, id: u64) -> Result<()> {
        let open: Vec<Arc<OpenFile>> = self
            .files
            .lock()
            .values()
            .filter(|f| f.node == id)
            .cloned()
            .collect();
        for f in open {
            self.follow_copy_up(&f)?;
        }
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`.
    ///
    /// # Errors
    /// `EBADF` for an unknown handle, or the errno of `pread`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let f = self.file(fh)?;
        self.follow_copy_up(&f)?;
        let b = f.backing.read();
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(b.1.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Writes `data` at `offset`; returns the count written.
    ///
    /// # Errors
    /// `EBADF`, or the errno of `pwrite`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let f = self.file(fh)?;
        let b = f.backing.read();
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(b.1.as_fd(), &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) if done == 0 => return Err(e.into()),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// `lseek(2)` with `SEEK_DATA` or `SEEK_HOLE` (the kernel handles the other modes):
    /// answered by the backing file, so holes are reported where they really are.
    ///
    /// # Errors
    /// `EBADF`, `EINVAL` for other modes, `ENXIO` past the end, or the errno of `lseek`.
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let f = self.file(fh)?;
        self.follow_copy_up(&f)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let pos = match whence {
            libc::SEEK_DATA => rustix::fs::SeekFrom::Data(offset),
            libc::SEEK_HOLE => rustix::fs::SeekFrom::Hole(offset),
            _ => return Err(Errno::EINVAL),
        };
        let b = f.backing.read();
        let at = rustix::fs::seek(b.1.as_fd(), pos)?;
        i64::try_from(at).map_err(|_| Errno::EINVAL)
    }

    /// Closes handle `fh`.
    pub fn release(&self, fh: u64) {
        self.files.lock().remove(&fh);
    }

    /// `fsync(2)` / `fdatasync(2)` of an open file (a no-op with `fsync=0`).
    ///
    /// # Errors
    /// `EBADF`, or the errno of the sync.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let f = self.file(fh)?;
        if !self.opts.fsync {
            return Ok(());
        }
        let b = f.backing.read();
        if datasync {
            rustix::fs::fdatasync(b.1.as_fd())?;
        } else {
            rustix::fs::fsync(b.1.as_fd())?;
        }
        Ok(())
    }

    /// `fallocate(2)` on an open file.
    ///
    /// # Errors
    /// `EBADF`, or the errno of `fallocate`.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let f = self.file(fh)?;
        let b = f.backing.read();
        if !self.stack.is_upper(b.0) {
            return Err(Errno::EBADF);
        }
        let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as _);
        Ok(rustix::fs::fallocate(b.1.as_fd(), flags, offset, len)?)
    }

    /// Changes attributes of node `id` (through handle `fh` when given), copying it up.
    ///
    /// # Errors
    /// `EROFS`, `ENOENT`, or the errno of the change.
    pub fn setattr(&self, id: u64, fh: Option<u64>, set: SetAttr) -> Result<Attr> {
        if set.is_empty() {
            return self.getattr(id);
        }
        let upper = self.stack.upper()?;
        let handle = match fh {
            Some(fh) => self.file(fh).ok(),
            None => None,
        };
        {
            let _ns = self.ns.write();
            // A handle whose file has no name left: work on the open descriptor itself.
            let target: OwnedFd;
            let by_handle;
            let fd: BorrowedFd<'_> = match self.node_info(id) {
                Ok(_) => {
                    self.copy_up(id)?;
                    let (_, path, _) = self.node_info(id)?;
                    let flags = if set.size.is_some() {
                        OFlags::WRONLY
                    } else {
                        OFlags::PATH
                    };
                    target = self.stack.open(upper, &path, flags)?;
                    target.as_fd()
                }
                Err(e) => {
                    let h = handle.as_ref().ok_or(e)?;
                    by_handle = h.backing.read();
                    by_handle.1.as_fd()
                }
            };
            if let Some(size) = set.size {
                rustix::fs::ftruncate(fd, size)?;
            }
            if set.uid.is_some() || set.gid.is_some() {
                sys::chown_fd(fd, set.uid, set.gid)?;
            }
            if let Some(mode) = set.mode {
                sys::chmod_fd(fd, mode & 0o7777)?;
            }
            if set.atime.is_some() || set.mtime.is_some() {
                sys::utimens_fd(
                    fd,
                    set.atime.unwrap_or(sys::SetTime::Omit),
                    set.mtime.unwrap_or(sys::SetTime::Omit),
                )?;
            }
        }
        self.getattr(id)
    }

    /// An `O_PATH` descriptor of node `id`'s visible copy.
    fn node_fd(&self, id: u64) -> Result<OwnedFd> {
        let (layer, path, _) = self.node_info(id)?;
        self.stack.open(layer, &path, OFlags::PATH)
    }

    /// The value of xattr `name` of node `id`.
    ///
    /// # Errors
    /// `ENODATA` when absent (always for overlay-private names).
    pub fn getxattr(&self, id: u64, name: &OsStr) -> Result<Vec<u8>> {
        if layer::is_private_xattr(name) {
            return Err(Errno::ENODATA);
        }
        let fd = self.node_fd(id)?;
        sys::xattr_get(fd.as_fd(), name)?.ok_or(Errno::ENODATA)
    }

    /// The xattr names of node `id`, NUL-terminated, overlay-private ones left out.
    ///
    /// # Errors
    /// The errno of `listxattr`.
    pub fn listxattr(&self, id: u64) -> Result<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let fd = self.node_fd(id)?;
        let mut out = Vec::new();
        for n in sys::xattr_list(fd.as_fd())? {
            if !layer::is_private_xattr(&n) {
                out.extend_from_slice(n.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    /// Sets xattr `name` of node `id`, copying it up.
    ///
    /// # Errors
    /// `EPERM` for overlay-private names, `EROFS`, or the errno of `setxattr`.
    pub fn setxattr(&self, id: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if layer::is_private_xattr(name) {
            return Err(Errno::EPERM);
        }
        self.stack.upper()?;
        let _ns = self.ns.write();
        self.copy_up(id)?;
        let fd = self.node_fd(id)?;
        Ok(sys::xattr_set(fd.as_fd(), name, value, flags)?)
    }

    /// Removes xattr `name` of node `id`, copying it up.
    ///
    /// # Errors
    /// `ENODATA` when absent, `EROFS`, or the errno of `removexattr`.
    pub fn removexattr(&self, id: u64, name: &OsStr) -> Result<()> {
        if layer::is_private_xattr(name) {
            return Err(Errno::ENODATA);
        }
        self.stack.upper()?;
        let _ns = self.ns.write();
        // Removing what is not there must not copy anything up.
        self.getxattr(id, name)?;
        self.copy_up(id)?;
        let fd = self.node_fd(id)?;
        Ok(sys::xattr_remove(fd.as_fd(), name)?)
    }

    /// Opens directory `id`: snapshots its merged listing.
    ///
    /// # Errors
    /// `ENOTDIR`, or a layer's errno.
    pub fn opendir(&self, id: u64) -> Result<u64> {
        let entries = self.list(id)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = DirHandle {
            node: id,
            entries: Mutex::new((false, Arc::new(entries))),
        };
        self.dirs.lock().insert(fh, Arc::new(h));
        Ok(fh)
    }

    /// The entries of open directory `fh` from position `offset` on (entry `i` is at
    /// position `i`; the next position after it is `i + 1`). A read from position 0 after
    /// the first one takes a fresh snapshot, as `rewinddir(3)` expects.
    ///
    /// # Errors
    /// `EBADF`, or a layer's errno.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>> {
        let h = self.dirs.lock().get(&fh).cloned().ok_or(Errno::EBADF)?;
        let mut e = h.entries.lock();
        if offset == 0 && e.0 {
            e.1 = Arc::new(self.list(h.node)?);
        }
        e.0 = true;
        Ok(Arc::clone(&e.1))
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// `fsync(2)` of directory `id` (its upper copy, if it has one).
    ///
    /// # Errors
    /// The errno of the sync.
    pub fn fsyncdir(&self, id: u64) -> Result<()> {
        if !self.opts.fsync || !self.stack.has_upper() {
            return Ok(());
        }
        let (layer, path, _) = self.node_info(id)?;
        if self.stack.is_upper(layer) {
            let fd = self
                .stack
                .open(layer, &path, OFlags::RDONLY | OFlags::DIRECTORY)?;
            rustix::fs::fsync(fd.as_fd())?;
        }
        Ok(())
    }
}
