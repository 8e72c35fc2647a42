//! Operations that change names: create, mkdir, mknod, symlink, link, unlink, rmdir, rename.
//!
//! Every change lands in the upper layer. A new entry that takes the place of a whiteout
//! is staged in the work directory and swapped in atomically (a new directory there is
//! made opaque, so nothing of the removed one shows again). Removing an entry that also
//! exists below leaves a whiteout: a 0/0 character device, or an OCI `.wh.NAME` file where
//! device nodes may not be made. A directory with lower parts is renamed by copying it up
//! and recording where its lower parts are (`trusted.overlay.redirect`, the kernel's
//! `redirect_dir` format), so renaming never fails with `EXDEV`.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::copyup::set_impure;
use super::inode::{DirLayer, NodeKind};
use super::layer::{self, LayerIdx, Redirect, Whiteout};
use super::lookup::Resolved;
use super::{check_name, is_marker, layer_paths, Attr, Creds, Union};
use crate::error::{Errno, Result};
use crate::sys;

/// What to make in a directory.
#[derive(Clone, Copy, Debug)]
pub enum Make<'a> {
    File { mode: u32, flags: OFlags },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a OsStr },
}

impl<'a> Make<'a> {
    fn is_dir(&self) -> bool {
        matches!(self, Make::Dir { .. })
    }

    /// The same with the permission bits of `umask` cleared.
    fn masked(self, umask: u32) -> Make<'a> {
        let keep = !(umask & 0o777);
        match self {
            Make::File { mode, flags } => Make::File {
                mode: mode & keep,
                flags,
            },
            Make::Dir { mode } => Make::Dir { mode: mode & keep },
            Make::Node { mode, rdev } => Make::Node {
                mode: mode & keep,
                rdev,
            },
            m @ Make::Symlink { .. } => m,
        }
    }
}

/// The xattr of a directory's default POSIX ACL.
const DEFAULT_ACL_XATTR: &str = "system.posix_acl_default";

/// A name a caller may create: not too long, and not part of the whiteout format.
fn check_new_name(name: &OsStr) -> Result<()> {
    check_name(name)?;
    if is_marker(name) {
        // `.wh.*` names would be read back as whiteouts: refuse them outright.
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// After `name` moved into `dir`: if it is a copy with an origin, marks `dir` impure, so
/// listings of `dir` go on reporting the origin's inode number for it.
fn keep_origin_visible(dir: BorrowedFd<'_>, name: &OsStr) {
    let origin = sys::xattr_get_at(dir, name, OsStr::new(layer::ORIGIN_XATTR));
    if let Ok(Some(_)) = origin {
        set_impure(dir);
    }
}

impl Union {
    /// How `name` is whited out in the upper directory `dir`, if it is.
    fn upper_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<Whiteout> {
        match sys::stat_at(dir, name) {
            Ok(st) if layer::is_whiteout(&st) => return Ok(Whiteout::Device),
            Ok(_) => return Ok(Whiteout::None),
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(if layer::has_oci_whiteout(dir, name)? {
            Whiteout::Oci
        } else {
            Whiteout::None
        })
    }

    /// Marks the directory `name` in `dir` opaque.
    fn set_opaque(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let fd = sys::open_beneath(
            dir,
            Path::new(name),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
            0,
        )?;
        match sys::xattr_set(fd.as_fd(), OsStr::new(layer::OPAQUE_XATTR), b"y", 0) {
            Ok(()) => Ok(()),
            // Without CAP_SYS_ADMIN, use the kernel's `userxattr` form.
            Err(rustix::io::Errno::PERM) => Ok(sys::xattr_set(
                fd.as_fd(),
                OsStr::new(layer::OPAQUE_XATTR_USER),
                b"y",
                0,
            )?),
            Err(e) => Err(e.into()),
        }
    }

    /// Stages a whiteout in the work directory; `None` where device nodes may not be made.
    fn stage_whiteout(&self) -> Result<Option<OsString>> {
        let work = self.stack.work()?;
        let tmp = self.stack.tmp_name();
        match sys::mknod_whiteout(work, &tmp) {
            Ok(()) => Ok(Some(tmp)),
            Err(rustix::io::Errno::PERM | rustix::io::Errno::ACCESS) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts a whiteout for `name` in the upper directory `dir`, replacing a non-directory
    /// that may be there.
    fn write_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let work = self.stack.work()?;
        match self.stage_whiteout()? {
            Some(tmp) => {
                if let Err(e) = sys::rename_at(work, &tmp, dir, name, RenameFlags::empty()) {
                    self.discard(work, &tmp);
                    return Err(e.into());
                }
            }
            None => {
                match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                rustix::fs::openat(
                    dir,
                    layer::wh_name(name),
                    OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
            }
        }
        Ok(())
    }

    /// Makes one object named `name` in `dir`; returns an open descriptor for files.
    fn make_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        make: Make<'_>,
    ) -> Result<Option<OwnedFd>> {
        match make {
            Make::File { mode, flags } => {
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(mode & 0o7777),
                )?;
                Ok(Some(fd))
            }
            Make::Dir { mode } => {
                rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode & 0o7777))?;
                Ok(None)
            }
            Make::Node { mode, rdev } => {
                if mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0 {
                    // A 0/0 character device is a whiteout; it cannot be made through the mount.
                    return Err(Errno::EPERM);
                }
                sys::mknod_at(dir, name, mode, rdev)?;
                Ok(None)
            }
            Make::Symlink { target } => {
                rustix::fs::symlinkat(target, dir, name)?;
                Ok(None)
            }
        }
    }

    /// Creates a new entry `name` in directory `parent` owned by `creds`, in the upper
    /// layer, taking the place of a whiteout if there is one.
    fn place_new(
        &self,
        parent: u64,
        name: &OsStr,
        make: Make<'_>,
        creds: Creds,
    ) -> Result<(Resolved, Option<OwnedFd>)> {
        check_new_name(name)?;
        let upper = self.stack.upper()?;
        if self.resolve_in(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up(parent)?;
        let dir = self.upper_path(parent)?;
        let udir = self.stack.open_dir(upper, &dir)?;
        let pst = sys::stat_fd(udir.as_fd())?;
        let sgid = pst.st_mode & libc::S_ISGID != 0;
        let gid = if sgid { pst.st_gid } else { creds.gid };
        let wh = self.upper_whiteout(udir.as_fd(), name)?;
        let work = self.stack.work()?;
        let tmp = self.stack.tmp_name();
        // A default ACL of the directory decides the new entry's ACL and mode, as the
        // filesystem applies it to what is made in that directory; otherwise the umask.
        let default_acl = matches!(
            sys::xattr_get(udir.as_fd(), OsStr::new(DEFAULT_ACL_XATTR)),
            Ok(Some(_))
        );
        let make = match default_acl {
            true => make,
            false => make.masked(creds.umask),
        };
        // What takes a whiteout's place is made aside and swapped in: in the work
        // directory, or beside it when the directory's default ACL must apply to it.
        let stage = match default_acl {
            true => udir.as_fd(),
            false => work,
        };
        let (tdir, tname): (BorrowedFd<'_>, &OsStr) = if wh == Whiteout::Device {
            (stage, &tmp)
        } else {
            (udir.as_fd(), name)
        };
        let fd = self.make_at(tdir, tname, make)?;
        let finish = || -> Result<()> {
            if self.root {
                rustix::fs::chownat(
                    tdir,
                    tname,
                    Some(rustix::process::Uid::from_raw(creds.uid)),
                    Some(rustix::process::Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )?;
            }
            // Adds set-id bits to what the entry's mode now is (a default ACL may have
            // narrowed the permission bits asked for).
            let add_bits = |bits: u32| -> Result<()> {
                let now = sys::stat_at(tdir, tname)?.st_mode & 0o7777;
                let mode = Mode::from_raw_mode(now | bits);
                Ok(rustix::fs::chmodat(tdir, tname, mode, AtFlags::empty())?)
            };
            if let Make::File { mode, .. } | Make::Node { mode, .. } = make {
                let setid = mode & (libc::S_ISUID | libc::S_ISGID);
                if self.root && setid != 0 {
                    // chown cleared the set-id bits the caller asked for: put them back.
                    add_bits(setid)?;
                }
            }
            if make.is_dir() {
                if sgid && wh == Whiteout::Device {
                    // Perhaps staged outside the parent: the set-gid bit is inherited.
                    add_bits(libc::S_ISGID)?;
                }
                if wh != Whiteout::None {
                    self.set_opaque(tdir, tname)?;
                }
            }
            match wh {
                Whiteout::Device if make.is_dir() => {
                    // A directory cannot replace a device by rename: swap, then drop the whiteout.
                    sys::rename_at(stage, &tmp, udir.as_fd(), name, RenameFlags::EXCHANGE)?;
                    rustix::fs::unlinkat(stage, &tmp, AtFlags::empty())?;
                }
                Whiteout::Device => {
                    sys::rename_at(stage, &tmp, udir.as_fd(), name, RenameFlags::empty())?
                }
                Whiteout::Oci => {
                    rustix::fs::unlinkat(udir.as_fd(), layer::wh_name(name), AtFlags::empty())?
                }
                Whiteout::None => {}
            }
            Ok(())
        };
        if let Err(e) = finish() {
            if wh == Whiteout::Device {
                self.discard(stage, &tmp);
            } else if let Err(e2) = sys::remove_tree_at(udir.as_fd(), name) {
                log::warn!("cannot undo the creation of {name:?}: {e2}");
            }
            return Err(e);
        }
        let st = sys::stat_at(udir.as_fd(), name)?;
        let kind = if make.is_dir() {
            NodeKind::Dir {
                layers: vec![DirLayer::upper(upper)],
            }
        } else {
            NodeKind::plain(st.st_mode & libc::S_IFMT)
        };
        Ok((
            Resolved {
                layer: upper,
                st,
                kind,
                ident: self.stack.ino_of(upper, st.st_ino),
                shared: true,
                per_name: false,
                upper_name: true,
            },
            fd,
        ))
    }

    /// `mkdir(2)` in directory `parent`.
    ///
    /// # Errors
    /// `EEXIST`, `EROFS`, `ENAMETOOLONG`, `EINVAL` for `.wh.*` names, or a layer's errno.
    pub fn mkdir(&self, parent: u64, name: &OsStr, mode: u32, creds: Creds) -> Result<Attr> {
        let _ns = self.ns.write();
        let (r, _) = self.place_new(parent, name, Make::Dir { mode }, creds)?;
        Ok(self.remember(parent, name, r, true))
    }

    /// `mknod(2)` in directory `parent` (fifos, sockets, devices; regular files too).
    ///
    /// # Errors
    /// As [`Union::mkdir`]; `EPERM` for a 0/0 character device.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        creds: Creds,
    ) -> Result<Attr> {
        let _ns = self.ns.write();
        let make = if mode & libc::S_IFMT == libc::S_IFREG {
            Make::File {
                mode,
                flags: OFlags::WRONLY,
            }
        } else {
            Make::Node { mode, rdev }
        };
        let (r, _) = self.place_new(parent, name, make, creds)?;
        Ok(self.remember(parent, name, r, true))
    }

    /// `symlink(2)`: `name` in `parent` pointing at `target`.
    ///
    /// # Errors
    /// As [`Union::mkdir`].
    pub fn symlink(&self, parent: u64, name: &OsStr, target: &OsStr, creds: Creds) -> Result<Attr> {
        let _ns = self.ns.write();
        let (r, _) = self.place_new(parent, name, Make::Symlink { target }, creds)?;
        Ok(self.remember(parent, name, r, true))
    }

    /// Creates and opens a regular file; returns its attributes and the open handle.
    ///
    /// # Errors
    /// As [`Union::mkdir`].
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        creds: Creds,
    ) -> Result<(Attr, u64)> {
        let _ns = self.ns.write();
        let oflags = super::file::backing_flags(flags);
        let (r, fd) = self.place_new(
            parent,
            name,
            Make::File {
                mode: mode | libc::S_IFREG,
                flags: oflags,
            },
            creds,
        )?;
        let layer = r.layer;
        let attr = self.remember(parent, name, r, true);
        let fd = fd.ok_or(Errno::EIO)?;
        let fh = self.add_file(attr.ino, layer, fd, oflags);
        Ok((attr, fh))
    }

    /// `link(2)`: a new name `new_name` in `new_parent` for node `id`.
    ///
    /// # Errors
    /// `EEXIST`, `EPERM` for directories, `EROFS`, or a layer's errno.
    pub fn link(&self, id: u64, new_parent: u64, new_name: &OsStr) -> Result<Attr> {
        check_new_name(new_name)?;
        let _ns = self.ns.write();
        let upper = self.stack.upper()?;
        if self.inodes.lock().get(id).ok_or(Errno::ENOENT)?.is_dir() {
            return Err(Errno::EPERM);
        }
        if self.resolve_in(new_parent, new_name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up_by_path(id)?;
        self.copy_up(new_parent)?;
        // The file to link: its upper copy (or, for a lower hard link, the index entry).
        let (layer, path, kind) = self.node_info(id)?;
        if let Some(d) = kind.data() {
            // A metadata-only copy: every name must find its data, wherever it is.
            let dir = path.parent().unwrap_or(Path::new(""));
            let dir = self
                .stack
                .open(layer, dir, OFlags::PATH | OFlags::DIRECTORY)?;
            let name = path.file_name().ok_or(Errno::EINVAL)?;
            self.set_redirect(dir.as_fd(), name, Some(&d.path), false)?;
        }
        let src_name = path.file_name().ok_or(Errno::EINVAL)?.to_os_string();
        let sdir = self.stack.open(
            layer,
            path.parent().unwrap_or(Path::new("")),
            OFlags::PATH | OFlags::DIRECTORY,
        )?;
        let dst_dir = self.upper_path(new_parent)?;
        let ddir = self.stack.open_dir(upper, &dst_dir)?;
        match self.upper_whiteout(ddir.as_fd(), new_name)? {
            Whiteout::Device => {
                let work = self.stack.work()?;
                let tmp = self.stack.tmp_name();
                rustix::fs::linkat(sdir.as_fd(), &src_name, work, &tmp, AtFlags::empty())?;
                if let Err(e) =
                    sys::rename_at(work, &tmp, ddir.as_fd(), new_name, RenameFlags::empty())
                {
                    self.discard(work, &tmp);
                    return Err(e.into());
                }
            }
            wh => {
                rustix::fs::linkat(
                    sdir.as_fd(),
                    &src_name,
                    ddir.as_fd(),
                    new_name,
                    AtFlags::empty(),
                )?;
                if wh == Whiteout::Oci {
                    rustix::fs::unlinkat(ddir.as_fd(), layer::wh_name(new_name), AtFlags::empty())?;
                }
            }
        }
        let r = self.resolve_in(new_parent, new_name)?.ok_or(Errno::EIO)?;
        Ok(self.remember(new_parent, new_name, r, true))
    }

    /// `unlink(2)` of `name` in `parent`.
    ///
    /// # Errors
    /// `ENOENT`, `EISDIR`, `EROFS`, or a layer's errno.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        check_name(name)?;
        let _ns = self.ns.write();
        let upper = self.stack.upper()?;
        let r = self.resolve_in(parent, name)?.ok_or(Errno::ENOENT)?;
        if matches!(r.kind, NodeKind::Dir { .. }) {
            return Err(Errno::EISDIR);
        }
        let r = self.before_losing_a_link(parent, name, r)?;
        self.remove_entry(parent, name, &r, upper)
    }

    /// `rmdir(2)` of `name` in `parent`: refused while the merged directory shows anything.
    ///
    /// # Errors
    /// `ENOENT`, `ENOTDIR`, `ENOTEMPTY`, `EROFS`, or a layer's errno.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        check_name(name)?;
        let _ns = self.ns.write();
        let upper = self.stack.upper()?;
        let r = self.resolve_in(parent, name)?.ok_or(Errno::ENOENT)?;
        let NodeKind::Dir { layers } = &r.kind else {
            return Err(Errno::ENOTDIR);
        };
        let dir = self.upper_path(parent)?;
        if !self.is_empty_dir(&layer_paths(layers, &dir.join(name)))? {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove_entry(parent, name, &r, upper)
    }

    /// Before the name `r` (`name` in `parent`) of a lower hard link goes away: copies it
    /// up into the index, as the kernel does, so its other names keep counting right.
    /// Returns what the name is now.
    fn before_losing_a_link(&self, parent: u64, name: &OsStr, r: Resolved) -> Result<Resolved> {
        if !r.per_name || r.upper_name {
            return Ok(r);
        }
        self.copy_up_entry(parent, name, &r)?;
        self.resolve_in(parent, name)?.ok_or(Errno::ENOENT)
    }

    /// Removes index entry `key` once no name through the mount leads to its file.
    fn drop_index_if_unused(&self, key: Option<OsString>) {
        let Some(key) = key else {
            return;
        };
        let Ok(Some(index)) = self.stack.index_dir(false) else {
            return;
        };
        let unused = || -> Result<bool> {
            let entry = sys::open_beneath(index, Path::new(&key), OFlags::PATH, 0)?;
            let links = sys::stat_fd(entry.as_fd())?.st_nlink;
            let v = sys::xattr_get(entry.as_fd(), OsStr::new(layer::NLINK_XATTR))?;
            Ok(links == 1 && v.and_then(|v| layer::overlay_nlink(&v, links, None)) == Some(0))
        };
        if let Ok(true) = unused() {
            if let Err(e) = rustix::fs::unlinkat(index, &key, AtFlags::empty()) {
                log::warn!("cannot remove unused index entry {key:?}: {e}");
            }
        }
    }

    /// Removes the visible entry `r` (`name` in `parent`): deletes its upper copy and
    /// leaves a whiteout where a lower layer has the name too.
    fn remove_entry(&self, parent: u64, name: &OsStr, r: &Resolved, upper: LayerIdx) -> Result<()> {
        // Found in a lower layer: that layer has it (no need to look again).
        let needs_whiteout = !r.upper_name || self.lower_has(parent, name)?;
        self.copy_up(parent)?;
        let dir = self.upper_path(parent)?;
        let udir = self.stack.open_dir(upper, &dir)?;
        let is_dir = matches!(r.kind, NodeKind::Dir { .. });
        let index_key = match r.upper_name && !is_dir {
            true => layer::upper_index_key(udir.as_fd(), name)?,
            false => None,
        };
        if !r.upper_name {
            self.write_whiteout(udir.as_fd(), name)?;
        } else if is_dir {
            // Swap the upper directory (which holds only whiteouts) out in one step, then
            // clear it away in the work directory.
            let work = self.stack.work()?;
            let staged = if needs_whiteout {
                self.stage_whiteout()?
            } else {
                None
            };
            let tmp = match staged {
                Some(wh) => {
                    if let Err(e) =
                        sys::rename_at(work, &wh, udir.as_fd(), name, RenameFlags::EXCHANGE)
                    {
                        self.discard(work, &wh);
                        return Err(e.into());
                    }
                    wh
                }
                None => {
                    let tmp = self.stack.tmp_name();
                    sys::rename_at(udir.as_fd(), name, work, &tmp, RenameFlags::NOREPLACE)?;
                    if needs_whiteout {
                        self.write_whiteout(udir.as_fd(), name)?;
                    }
                    tmp
                }
            };
            self.discard(work, &tmp);
        } else if needs_whiteout {
            self.write_whiteout(udir.as_fd(), name)?;
        } else {
            rustix::fs::unlinkat(udir.as_fd(), name, AtFlags::empty())?;
        }
        self.drop_index_if_unused(index_key);
        let gone = Attr::from_stat(0, &r.st);
        self.inodes
            .lock()
            .remove_name(parent, &name.to_os_string(), Some(gone));
        Ok(())
    }

    /// Records where the lower parts of directory `r` (the upper entry `name` in `dir`,
    /// about to be renamed) are, in the kernel's format: a redirect that already says it
    /// is kept; otherwise the old name when it stays in its parent, else its path from
    /// the layer roots.
    fn set_redirect(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        lower: Option<&Path>,
        same_dir: bool,
    ) -> Result<()> {
        let child = sys::open_beneath(dir, Path::new(name), OFlags::PATH | OFlags::NOFOLLOW, 0)?;
        let redirect = match layer::redirect(child.as_fd())? {
            Some(Redirect::Path(_)) => return Ok(()),
            Some(Redirect::Name(_)) if same_dir => return Ok(()),
            _ if same_dir => Redirect::Name(name.to_os_string()),
            _ => Redirect::Path(lower.ok_or(Errno::EXDEV)?.to_path_buf()),
        };
        let value = redirect.to_value();
        sys::xattr_set(child.as_fd(), OsStr::new(layer::REDIRECT_XATTR), &value, 0)?;
        Ok(())
    }

    /// `ENOTEMPTY` unless the directory `d` (`name` in `parent`), a rename's target,
    /// shows nothing.
    fn check_empty_target(&self, parent: u64, name: &OsStr, d: &Resolved) -> Result<()> {
        let NodeKind::Dir { layers } = &d.kind else {
            return Ok(());
        };
        let pdir = self.upper_path(parent)?;
        match self.is_empty_dir(&layer_paths(layers, &pdir.join(name)))? {
            true => Ok(()),
            false => Err(Errno::ENOTEMPTY),
        }
    }

    /// A directory that lives in the upper layer only (created there, or opaque).
    fn is_pure_upper(&self, r: &Resolved) -> bool {
        match &r.kind {
            NodeKind::Dir { layers } => layers.len() == 1 && self.stack.is_upper(layers[0].layer),
            NodeKind::NotDir { .. } => true,
        }
    }

    /// Copies up the entry `r` found as `name` in `parent`, whether or not the kernel
    /// holds a node for it.
    fn copy_up_entry(&self, parent: u64, name: &OsStr, r: &Resolved) -> Result<()> {
        let known = self.inodes.lock().child(parent, &name.to_os_string());
        match known {
            Some(id) => self.copy_up_via(id, parent, name),
            None => {
                let id = self.remember(parent, name, r.clone(), false).ino;
                let res = self.copy_up_via(id, parent, name);
                self.inodes.lock().forget(id, 0);
                res
            }
        }
    }

    /// `rename(2)` / `renameat2(2)` with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    ///
    /// # Errors
    /// `ENOENT`, `EEXIST`, `ENOTDIR`, `EISDIR`, `ENOTEMPTY`, `EXDEV` for directories with
    /// lower parts, `EINVAL` for unknown flags or `.wh.*` names, `EROFS`, or a layer's errno.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        check_name(name)?;
        check_new_name(new_name)?;
        let flags = RenameFlags::from_bits(flags).ok_or(Errno::EINVAL)?;
        if flags.contains(RenameFlags::WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let _ns = self.ns.write();
        {
            let mut inodes = self.inodes.lock();
            inodes.use_lookup(parent, &name.to_os_string());
            inodes.use_lookup(new_parent, &new_name.to_os_string());
        }
        let upper = self.stack.upper()?;
        let src = self.resolve_in(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.resolve_in(new_parent, new_name)?;
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if flags.contains(RenameFlags::NOREPLACE) && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        let src_is_dir = matches!(src.kind, NodeKind::Dir { .. });
        if let Some(d) = &dst {
            let d_is_dir = matches!(d.kind, NodeKind::Dir { .. });
            if d.shared && d.ident.is_some() && d.ident == src.ident && d.layer == src.layer {
                // Two names of one file: rename(2) does nothing.
                return Ok(());
            }
            if !exchange {
                if src_is_dir && !d_is_dir {
                    return Err(Errno::ENOTDIR);
                }
                if !src_is_dir && d_is_dir {
                    return Err(Errno::EISDIR);
                }
                // As the kernel: a target with lower parts is checked first; an upper-only
                // one only when the upper directories are renamed, after the copy-ups.
                if d_is_dir && !self.is_pure_upper(d) {
                    self.check_empty_target(new_parent, new_name, d)?;
                }
            }
        }
        let dst = match dst {
            Some(d) if !exchange => Some(self.before_losing_a_link(new_parent, new_name, d)?),
            d => d,
        };
        self.copy_up(parent)?;
        self.copy_up(new_parent)?;
        self.copy_up_entry(parent, name, &src)?;
        if let Some(d) = dst.as_ref().filter(|d| !exchange && self.is_pure_upper(d)) {
            if d.kind.dir_len() > 0 {
                self.check_empty_target(new_parent, new_name, d)?;
            }
        }
        if exchange {
            if let Some(d) = &dst {
                self.copy_up_entry(new_parent, new_name, d)?;
            }
        }
        // What the copies look like now (a metadata-only copy has its data below).
        let src = self.resolve_in(parent, name)?.ok_or(Errno::ENOENT)?;
        let dst = match exchange {
            true => self.resolve_in(new_parent, new_name)?,
            false => dst,
        };
        if let Some(d) = &dst {
            if d.upper_name && src.upper_name && d.st.st_ino == src.st.st_ino {
                // Two names of one (indexed) file: rename(2) does nothing.
                return Ok(());
            }
        }
        let src_lower = self.lower_has(parent, name)?;
        let dst_lower = self.lower_has(new_parent, new_name)?;
        let sdir_path = self.upper_path(parent)?;
        let ddir_path = self.upper_path(new_parent)?;
        let sdir = self.stack.open_dir(upper, &sdir_path)?;
        let ddir = self.stack.open_dir(upper, &ddir_path)?;
        let work = self.stack.work()?;
        let (sdir, ddir) = (sdir.as_fd(), ddir.as_fd());
        let (name_os, new_name_os) = (name.to_os_string(), new_name.to_os_string());
        let same_dir = parent == new_parent;
        // What a directory moving from `dir` (upper fd `at`, entry `r`) into `to` needs to
        // keep its own contents there, as the kernel does it: one with lower parts gets a
        // redirect to them; an upper-only one moving into a merged directory is made
        // opaque, so no lower entry of its new name ever shows through it.
        // A metadata-only copy likewise gets a redirect to its data.
        let keep_contents =
            |at: BorrowedFd<'_>, old: &OsStr, r: &Resolved, to: u64, lower: bool| match &r.kind {
                // (Its names share the redirect: a hard link's is a path from the roots.)
                NodeKind::NotDir {
                    data: Some(d),
                    index,
                    ..
                } => self.set_redirect(at, old, Some(&d.path), same_dir && index.is_none()),
                NodeKind::NotDir { .. } => Ok(()),
                NodeKind::Dir { layers } if !self.is_pure_upper(r) => {
                    let lower_path = layers.iter().find_map(|d| d.path.as_deref());
                    self.set_redirect(at, old, lower_path, same_dir)
                }
                NodeKind::Dir { .. } if lower || self.dir_info(to)?.len() > 1 => {
                    self.set_opaque(at, old)
                }
                NodeKind::Dir { .. } => Ok(()),
            };

        if exchange {
            let Some(d) = &dst else {
                return Err(Errno::ENOENT);
            };
            keep_contents(sdir, name, &src, new_parent, dst_lower)?;
            keep_contents(ddir, new_name, d, parent, src_lower)?;
            sys::rename_at(sdir, name, ddir, new_name, RenameFlags::EXCHANGE)?;
            keep_origin_visible(ddir, new_name);
            keep_origin_visible(sdir, name);
            self.inodes
                .lock()
                .exchange(parent, &name_os, new_parent, &new_name_os);
            return Ok(());
        }

        keep_contents(sdir, name, &src, new_parent, dst_lower)?;
        let replaced_key = match &dst {
            Some(d) if d.upper_name && d.kind.dir_len() == 0 => {
                layer::upper_index_key(ddir, new_name)?
            }
            _ => None,
        };
        // An upper directory being replaced holds nothing but whiteouts: move it aside.
        let mut cleared = None;
        if dst
            .as_ref()
            .is_some_and(|d| matches!(d.kind, NodeKind::Dir { .. }) && d.layer == upper)
        {
            let tmp = self.stack.tmp_name();
            sys::rename_at(ddir, new_name, work, &tmp, RenameFlags::NOREPLACE)?;
            cleared = Some(tmp);
        }
        let wh = self.upper_whiteout(ddir, new_name)?;
        if src_is_dir && wh == Whiteout::Device {
            // A directory cannot replace a device by rename: swap them; the whiteout then
            // sits at the old name, where it is kept only if a lower entry needs hiding.
            sys::rename_at(sdir, name, ddir, new_name, RenameFlags::EXCHANGE)?;
            if !src_lower {
                rustix::fs::unlinkat(sdir, name, AtFlags::empty())?;
            }
        } else if src_lower {
            match sys::rename_at(sdir, name, ddir, new_name, RenameFlags::WHITEOUT) {
                Ok(()) => {}
                Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::PERM) => {
                    sys::rename_at(sdir, name, ddir, new_name, RenameFlags::empty())?;
                    self.write_whiteout(sdir, name)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            sys::rename_at(sdir, name, ddir, new_name, RenameFlags::empty())?;
        }
        if wh == Whiteout::Oci {
            rustix::fs::unlinkat(ddir, layer::wh_name(new_name), AtFlags::empty())?;
        }
        if let Some(tmp) = cleared {
            self.discard(work, &tmp);
        }
        keep_origin_visible(ddir, new_name);
        self.drop_index_if_unused(replaced_key);
        let mut inodes = self.inodes.lock();
        if let Some(d) = &dst {
            inodes.remove_name(new_parent, &new_name_os, Some(Attr::from_stat(0, &d.st)));
        }
        inodes.rename(parent, &name_os, new_parent, &new_name_os);
        Ok(())
    }
}
