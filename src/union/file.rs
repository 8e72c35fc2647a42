//! Open files and directories, data I/O, attributes and xattrs.
//!
//! Opening a file for writing (or truncating it) copies it up first, so a write handle
//! always points into the upper layer. Every copy-up re-points the handles already open on
//! its file or directory, so a reader of the lower file never serves stale data. Directory
//! handles list a snapshot of the merged directory taken at the first read (and at each
//! rewind).

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustix::fs::OFlags;

use super::layer::{self, LayerIdx};
use super::lookup::DirEntry;
use super::{Attr, Creds, Union};
use crate::error::{Errno, Result};
use crate::sys;

/// The flags a backing file is opened with, from the flags of an `open(2)` on the mount.
/// Creation and truncation are done by strata itself; `O_APPEND` is left out because the
/// kernel sends every write with its offset; write-only becomes read-write so the kernel
/// may read pages of a file it writes.
pub(super) fn backing_flags(flags: i32) -> OFlags {
    let keep = libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME | libc::O_DIRECT;
    let acc = match flags & libc::O_ACCMODE {
        libc::O_RDONLY => OFlags::RDONLY,
        _ => OFlags::RDWR,
    };
    acc | OFlags::from_bits_retain((flags & keep) as _)
}

/// What a call is about to change through [`Union::node_target`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    None,
    /// Attributes (mode, owner, times, size).
    Attr,
    /// Extended attributes.
    Xattr,
}

/// The alignment of buffers for `O_DIRECT` I/O (enough for any logical block size).
const DIRECT_ALIGN: usize = 4096;

/// An I/O buffer whose slices start at an `O_DIRECT`-aligned address. Kept from one read
/// to the next (one per serving thread), a large read neither allocates nor zeroes memory.
#[derive(Default)]
pub struct ReadBuf {
    raw: Vec<u8>,
}

impl ReadBuf {
    /// `len` bytes starting at an `O_DIRECT`-aligned address.
    fn slice(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < len + DIRECT_ALIGN {
            self.raw = vec![0u8; len + DIRECT_ALIGN];
        }
        let start = self
            .raw
            .as_ptr()
            .align_offset(DIRECT_ALIGN)
            .min(DIRECT_ALIGN);
        &mut self.raw[start..start + len]
    }
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
    /// Whether the file was opened with `O_DIRECT`.
    fn is_direct(&self) -> bool {
        self.flags.contains(OFlags::DIRECT)
    }
}

/// An open directory: a snapshot of its merged listing.
#[derive(Debug)]
pub struct DirHandle {
    pub node: u64,
    /// The directory's top-most copy when it was opened (an `O_PATH` descriptor), so that
    /// metadata calls through the handle still work once the directory is removed.
    dir: Mutex<Option<(LayerIdx, OwnedFd)>>,
    /// Taken at the first read (and again at each read from position 0).
    entries: Mutex<Option<Arc<Vec<DirEntry>>>>,
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

    /// Opens node `id` with the flags of `open(2)` (copying it up first to write it);
    /// returns the handle.
    ///
    /// # Errors
    /// `EROFS` for a write open of a read-only mount, or the errno of the copy-up or open.
    pub fn open(&self, id: u64, flags: i32) -> Result<u64> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        self.inodes.lock().opening(id);
        if write {
            self.stack.upper()?;
            let staged = self.stage_copy_up(id);
            let _ns = self.ns.write();
            let r = self.copy_up(id);
            if let Some(key) = staged {
                // Unused when the file was copied up meanwhile: it vanishes (O_TMPFILE).
                self.staged.lock().remove(&key);
            }
            r?;
        }
        // A copy-up re-points the open handles of its file; holding the namespace lock
        // keeps one from slipping in between finding the file and registering the handle.
        let _ns = self.ns.read();
        let (layer, path, kind) = self.data_info(id)?;
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

    /// The open file handles of node `id`.
    pub(super) fn files_of(&self, id: u64) -> Vec<Arc<OpenFile>> {
        self.files
            .lock()
            .values()
            .filter(|f| f.node == id)
            .cloned()
            .collect()
    }

    /// The open directory handles of node `id`.
    fn dirs_of(&self, id: u64) -> Vec<Arc<DirHandle>> {
        self.dirs
            .lock()
            .values()
            .filter(|d| d.node == id)
            .cloned()
            .collect()
    }

    /// Points every open handle of node `id`, file or directory, at its current copy
    /// (right after a copy-up, while the node still has a name), so holders of the lower
    /// one see the data, metadata and fate of the copy from now on.
    pub(super) fn repoint_handles(&self, id: u64) -> Result<()> {
        let (files, dirs) = (self.files_of(id), self.dirs_of(id));
        if files.is_empty() && dirs.is_empty() {
            return Ok(());
        }
        let (layer, path, _) = self.data_info(id)?;
        for f in files {
            if f.backing.read().0 != layer {
                let fd = self.open_backing(layer, &path, f.flags)?;
                *f.backing.write() = (layer, fd);
            }
        }
        for d in dirs {
            *d.dir.lock() = Some((layer, self.stack.open_dir(layer, &path)?.into_owned()?));
        }
        Ok(())
    }
    /// Reads up to `size` bytes at `offset` into `buf`; returns the bytes read.
    ///
    /// # Errors
    /// `EBADF` for an unknown handle, or the errno of `pread`.
    pub fn read<'b>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &'b mut ReadBuf,
    ) -> Result<&'b [u8]> {
        let f = self.file(fh)?;
        let b = f.backing.read();
        let buf = buf.slice(size as usize);
        let mut done = 0;
        while done < buf.len() {
            match rustix::io::pread(b.1.as_fd(), &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => continue,
                // A short read, then (O_DIRECT at the end of the file) an unaligned rest.
                Err(_) if done > 0 => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(&buf[..done])
    }

    /// Writes `data` at `offset`; returns the count written.
    ///
    /// # Errors
    /// `EBADF`, or the errno of `pwrite`.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let f = self.file(fh)?;
        let b = f.backing.read();
        // O_DIRECT needs an aligned buffer; the request's bytes sit wherever fuser read them.
        let mut aligned = ReadBuf::default();
        let data = match f.is_direct() {
            true => {
                let copy = aligned.slice(data.len());
                copy.copy_from_slice(data);
                &*copy
            }
            false => data,
        };
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

    /// Calls `f` with the backing descriptor of handle `fh` when its data can be handed to
    /// the kernel for good (FUSE passthrough binds an open file to one backing file): data
    /// in the upper layer, or in a read-only mount, never moves again. A lower file of a
    /// writable mount can be copied up while the handle is open, so it qualifies only with
    /// `lower` (the caller accepting that such a reader keeps the lower data).
    pub fn with_settled_fd<R>(
        &self,
        fh: u64,
        lower: bool,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> R,
    ) -> Option<R> {
        let file = self.file(fh).ok()?;
        let b = file.backing.read();
        let settled = !self.stack.has_upper() || !self.is_lower(b.0) || lower;
        settled.then(|| f(b.1.as_fd()))
    }

    /// The layer of the file behind handle `fh`.
    pub fn data_layer(&self, fh: u64) -> Option<LayerIdx> {
        self.file(fh).ok().map(|f| f.backing.read().0)
    }

    /// Whether layer `l` is a lower one (whose files never change).
    pub fn is_lower(&self, l: LayerIdx) -> bool {
        !self.stack.is_upper(l)
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

    /// `copy_file_range(2)` between two open files, done by the backing filesystem (a
    /// reflink or an in-kernel copy where it can); returns the count copied.
    ///
    /// # Errors
    /// `EBADF` for an unknown handle or an output file not in the upper layer, or the
    /// errno of `copy_file_range` (`EXDEV` makes the kernel fall back to reads and writes).
    pub fn copy_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<usize> {
        let (src, dst) = (self.file(fh_in)?, self.file(fh_out)?);
        let (s, d) = (src.backing.read(), dst.backing.read());
        if !self.stack.is_upper(d.0) {
            return Err(Errno::EBADF);
        }
        let (mut off_in, mut off_out) = (off_in, off_out);
        // The count goes back in a 32-bit field.
        let len = usize::try_from(len.min(u64::from(u32::MAX))).unwrap_or(0);
        Ok(rustix::fs::copy_file_range(
            s.1.as_fd(),
            Some(&mut off_in),
            d.1.as_fd(),
            Some(&mut off_out),
            len,
        )?)
    }

    /// Changes attributes of node `id`, copying it up.
    ///
    /// # Errors
    /// `EROFS`, `ENOENT`, or the errno of the change.
    pub fn setattr(&self, id: u64, set: SetAttr) -> Result<Attr> {
        // Even a change to nothing (`chown(f, -1, -1)`) copies up, as with the kernel.
        if set.is_empty() && !self.stack.has_upper() {
            return self.getattr(id);
        }
        self.stack.upper()?;
        {
            let _ns = self.ns.write();
            if set.size.is_some() && self.node_info(id).is_ok() {
                // A size change is a data change: copy the data up too.
                self.copy_up(id)?;
            }
            let fd = self.node_target(id, Change::Attr)?;
            if let Some(size) = set.size {
                // Truncation needs a descriptor open for writing, not an `O_PATH` one.
                let path = sys::fd_path(fd.as_fd());
                let w = rustix::fs::open(
                    path.as_c_str(),
                    OFlags::WRONLY | OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?;
                rustix::fs::ftruncate(w.as_fd(), size)?;
            }
            if set.uid.is_some() || set.gid.is_some() {
                sys::chown_fd(fd.as_fd(), set.uid, set.gid)?;
            }
            if let Some(mode) = set.mode {
                sys::chmod_fd(fd.as_fd(), mode & 0o7777)?;
            }
            if set.atime.is_some() || set.mtime.is_some() {
                let omit = sys::SetTime::Omit;
                sys::utimens_fd(
                    fd.as_fd(),
                    set.atime.unwrap_or(omit),
                    set.mtime.unwrap_or(omit),
                )?;
            }
        }
        self.getattr(id)
    }

    /// A descriptor of node `id` to read or (with `change`) to change its metadata: its
    /// visible copy, copied up first when changing; or, for a node with no name left, the
    /// file of a handle still open on it (only an upper one when changing: a lower layer
    /// is never written).
    fn node_target(&self, id: u64, change: Change) -> Result<OwnedFd> {
        match self.node_info(id) {
            Ok(_) => {
                match change {
                    Change::None => {}
                    Change::Attr => self.copy_up_meta(id)?,
                    Change::Xattr => self.copy_up_for_xattr(id)?,
                }
                let (layer, path, _) = self.node_info(id)?;
                self.stack.open(layer, &path, OFlags::PATH)
            }
            Err(e) if e == Errno::ENOENT => self
                .open_copy_of_removed(id, change != Change::None)
                .map(|(_, fd)| fd)
                .ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// For node `id` that has no name left: a descriptor (with its layer) of its file as a
    /// handle still open on it holds it, file or directory; only an upper one with
    /// `change`, since a lower layer is never written.
    pub(super) fn open_copy_of_removed(
        &self,
        id: u64,
        change: bool,
    ) -> Option<(LayerIdx, OwnedFd)> {
        let usable = |layer: LayerIdx| !change || self.stack.is_upper(layer);
        let open = self.files_of(id);
        for f in open {
            let b = f.backing.read();
            if usable(b.0) {
                return rustix::io::dup(b.1.as_fd()).ok().map(|fd| (b.0, fd));
            }
        }
        let dirs = self.dirs_of(id);
        dirs.iter().find_map(|d| {
            let dir = d.dir.lock();
            let (layer, fd) = dir.as_ref().filter(|(l, _)| usable(*l))?;
            rustix::io::dup(fd.as_fd()).ok().map(|fd| (*layer, fd))
        })
    }

    /// An `O_PATH` descriptor (or an open one) of node `id` for reading its metadata.
    fn node_fd(&self, id: u64) -> Result<OwnedFd> {
        self.node_target(id, Change::None)
    }

    /// The value of xattr `name` of node `id`.
    ///
    /// # Errors
    /// `ENODATA` when absent (always for overlay-private names).
    pub fn getxattr(&self, id: u64, name: &OsStr) -> Result<Vec<u8>> {
        let stored = layer::escape_xattr(name).ok_or(Errno::ENODATA)?;
        let fd = self.node_fd(id)?;
        sys::xattr_get(fd.as_fd(), &stored)?.ok_or(Errno::ENODATA)
    }

    /// The xattr names of node `id` as `creds` may see them, NUL-terminated: overlay
    /// metadata left out, escaped names shown as set, `trusted.*` only to root (the
    /// daemon reads them all, so it filters as a filesystem must).
    ///
    /// # Errors
    /// The errno of `listxattr`.
    pub fn listxattr(&self, id: u64, creds: Creds) -> Result<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let fd = self.node_fd(id)?;
        let mut out = Vec::new();
        for n in sys::xattr_list(fd.as_fd())?
            .iter()
            .filter_map(|n| layer::unescape_xattr(n))
        {
            if creds.uid != 0 && n.as_bytes().starts_with(b"trusted.") {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// Sets xattr `name` of node `id`, copying it up.
    ///
    /// # Errors
    /// `EPERM` for overlay-private names, `EROFS`, or the errno of `setxattr`.
    pub fn setxattr(&self, id: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let name = &layer::escape_xattr(name).ok_or(Errno::EPERM)?;
        self.stack.upper()?;
        let _ns = self.ns.write();
        let fd = self.node_target(id, Change::Xattr)?;
        Ok(sys::xattr_set(fd.as_fd(), name, value, flags)?)
    }

    /// Removes xattr `name` of node `id`, copying it up.
    ///
    /// # Errors
    /// `ENODATA` when absent, `EROFS`, or the errno of `removexattr`.
    pub fn removexattr(&self, id: u64, name: &OsStr) -> Result<()> {
        let stored = layer::escape_xattr(name).ok_or(Errno::ENODATA)?;
        self.stack.upper()?;
        let _ns = self.ns.write();
        // Removing what is not there must not copy anything up.
        self.getxattr(id, name)?;
        let fd = self.node_target(id, Change::Xattr)?;
        Ok(sys::xattr_remove(fd.as_fd(), &stored)?)
    }

    /// Opens directory `id`. The listing is read at the first `readdir`, as on any
    /// filesystem: changes made between `opendir` and the first read are seen.
    ///
    /// # Errors
    /// `ENOTDIR`, `ENOENT`.
    pub fn opendir(&self, id: u64) -> Result<u64> {
        let dir = match self.node_info(id) {
            Ok((_, _, kind)) if kind.dir_len() == 0 => return Err(Errno::ENOTDIR),
            Ok((layer, path, _)) => Some((layer, self.stack.open_dir(layer, &path)?.into_owned()?)),
            // A removed directory (a process's working directory, say) opens as empty.
            Err(e) if e == Errno::ENOENT && self.is_removed(id) => {
                self.open_copy_of_removed(id, false)
            }
            Err(e) => return Err(e),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = DirHandle {
            node: id,
            dir: Mutex::new(dir),
            entries: Mutex::new(None),
        };
        self.dirs.lock().insert(fh, Arc::new(h));
        Ok(fh)
    }

    /// The entries of open directory `fh` from position `offset` on (entry `i` is at
    /// position `i`; the next position after it is `i + 1`). A read from position 0
    /// takes a fresh snapshot, as `rewinddir(3)` expects.
    ///
    /// # Errors
    /// `EBADF`, or a layer's errno.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Arc<Vec<DirEntry>>> {
        let h = self.dirs.lock().get(&fh).cloned().ok_or(Errno::EBADF)?;
        let mut e = h.entries.lock();
        match &*e {
            Some(entries) if offset != 0 => Ok(Arc::clone(entries)),
            _ => {
                let fresh = Arc::new(self.list(h.node)?);
                *e = Some(Arc::clone(&fresh));
                Ok(fresh)
            }
        }
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
