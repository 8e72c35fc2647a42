//! Overlay semantics without FUSE.
//!
//! [`Union`] serves a layer stack through plain calls that take node ids, names and
//! credentials and return `Result<T, Errno>`; the FUSE adapter in `crate::fuse` only
//! translates. The rules are kernel overlayfs's: the top-most layer holding a name wins, a
//! whiteout hides the name below it, an opaque directory hides everything below it, and
//! the first change to a lower entry copies it up into the upper layer (staged in the work
//! directory and renamed into place). Lookup and readdir share one resolution rule, so
//! they can never disagree about what a directory holds. The on-disk format is the
//! kernel's with `redirect_dir=on,index=on,metacopy=on`: renamed directories carry
//! redirects, copies record their origin (so inode numbers survive remounts), a metadata
//! change copies metadata only, and lower hard links share one copy in the index.
//!
//! Locking: `ns` is taken for writing by every operation that changes the namespace or
//! copies up, and for reading by lookups and directory listings; the inode table and the
//! handle tables sit behind short-lived mutexes and are never held across I/O.

mod copyup;
mod file;
pub mod inode;
pub mod layer;
mod lookup;
mod namespace;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::error::{Errno, Result};
use crate::sys;
pub use file::{DirHandle, OpenFile, ReadBuf, SetAttr};
use inode::{DirLayer, Inodes, Node, NodeKind, ROOT_ID};
pub use layer::{LayerIdx, Stack, StackPaths};
pub use lookup::DirEntry;

/// The longest name a directory entry may have.
pub const NAME_MAX: usize = 255;

/// Attributes of a node as the mount reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    /// The full `st_mode` (type and permission bits).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub blksize: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Attr {
    fn from_stat(ino: u64, st: &sys::Stat) -> Attr {
        let t = |s: i64, ns: u64| (s, u32::try_from(ns).unwrap_or(0));
        Attr {
            ino,
            mode: st.st_mode,
            nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: u64::try_from(st.st_size).unwrap_or(0),
            blocks: u64::try_from(st.st_blocks).unwrap_or(0),
            blksize: u32::try_from(st.st_blksize).unwrap_or(4096),
            atime: t(st.st_atime, st.st_atime_nsec),
            mtime: t(st.st_mtime, st.st_mtime_nsec),
            ctime: t(st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// The attributes of node `id`, whose visible copy has `st`.
    fn of_node(id: u64, st: &sys::Stat, kind: &NodeKind) -> Attr {
        let mut attr = Attr::from_stat(id, st);
        if kind.dir_len() > 1 {
            // As kernel overlayfs: counting subdirectories of every layer is not worth it.
            attr.nlink = 1;
        }
        attr
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Who is asking: the credentials of the calling process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask, for the modes of what it creates: applied unless the new
    /// entry's directory has a default ACL (which then decides, as on any filesystem).
    pub umask: u32,
}

/// Behaviour switches of a mount.
#[derive(Clone, Copy, Debug)]
pub struct UnionOptions {
    /// Honour fsync (false with `volatile` or `fsync=0`).
    pub fsync: bool,
    /// Copy up only the metadata of a lower file whose metadata changes (`metacopy=on`).
    pub metacopy: bool,
    /// Keep the names of a lower hard link together through copy-up, with the kernel's
    /// index (`index=on`; needs root).
    pub index: bool,
}

/// Filesystem statistics, from the upper layer (or the top lower of a read-only mount).
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A merged directory, served over a layer stack.
pub struct Union {
    stack: Stack,
    inodes: Mutex<Inodes>,
    ns: RwLock<()>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    /// Nodes whose attributes changed as a side effect (a directory that became merged
    /// when something below it was copied up, a file copied up by a failing call): the
    /// kernel's cached attributes of them are stale.
    changed: Mutex<Vec<u64>>,
    opts: UnionOptions,
    /// The daemon runs as root: it can set owners on what it creates.
    root: bool,
    /// Data of lower files copied ahead of their copy-up, outside the namespace lock
    /// (see [`Union::stage_copy_up`]), by the (device, inode) of the lower file.
    staged: Mutex<HashMap<(u64, u64), OwnedFd>>,
}

/// The layers of a directory with its path in each, its upper path being `merged`.
fn layer_paths(layers: &[DirLayer], merged: &Path) -> Vec<(LayerIdx, PathBuf)> {
    layers
        .iter()
        .map(|d| {
            let path = d.path.as_deref().unwrap_or(merged);
            (d.layer, path.to_path_buf())
        })
        .collect()
}

/// Refuses names the kernel's FUSE module lets through but no filesystem accepts.
fn check_name(name: &OsStr) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

/// True for names that are part of the whiteout format and never visible.
fn is_marker(name: &OsStr) -> bool {
    name.as_bytes().starts_with(layer::WH_PREFIX)
}

impl Union {
    /// Serves `stack`.
    pub fn new(stack: Stack, opts: UnionOptions) -> Union {
        // The root merges every layer (as in kernel overlayfs, a layer root is never opaque).
        let root_path: Arc<Path> = Arc::from(Path::new(""));
        let root_layers = (0..stack.len())
            .map(|l| DirLayer {
                layer: l,
                path: (!stack.is_upper(l)).then(|| Arc::clone(&root_path)),
            })
            .collect();
        Union {
            inodes: Mutex::new(Inodes::new(root_layers)),
            stack,
            ns: RwLock::new(()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            changed: Mutex::new(Vec::new()),
            opts,
            root: sys::euid() == 0,
            staged: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the nodes whose attributes changed behind the kernel's back since the last
    /// call (see [`Union`]'s `changed`); the caller tells the kernel to drop its copies.
    pub fn take_changed(&self) -> Vec<u64> {
        std::mem::take(&mut *self.changed.lock())
    }

    /// Records that node `id`'s attributes changed as a side effect.
    fn attrs_changed(&self, id: u64) {
        let mut changed = self.changed.lock();
        if !changed.contains(&id) {
            changed.push(id);
        }
    }

    /// How many inodes the kernel currently holds.
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().len()
    }

    /// The merged path of node `id`, which is also its path in the upper layer; `ENOENT`
    /// once it was removed.
    fn path_of(inodes: &Inodes, id: u64) -> Result<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = id;
        let mut guard = 0usize;
        while cur != ROOT_ID {
            let node = inodes.get(cur).ok_or(Errno::ENOENT)?;
            let (parent, name) = Self::reachable_name(inodes, node)?;
            parts.push(name);
            cur = *parent;
            guard += 1;
            if guard > 1 << 20 {
                return Err(Errno::ELOOP);
            }
        }
        Ok(parts.iter().rev().collect())
    }

    /// The path of node `id` in layer `l`: the merged path in the upper layer; in a lower
    /// layer, where the lookup found it (below a renamed directory, the redirect's path).
    fn path_in(&self, inodes: &Inodes, id: u64, l: LayerIdx) -> Result<PathBuf> {
        if l == self.stack.index_layer() {
            let node = inodes.get(id).ok_or(Errno::ENOENT)?;
            // Only while a name leads to it (its entry goes with its last name).
            Self::reachable_name(inodes, node)?;
            return Ok(PathBuf::from(node.kind.index().ok_or(Errno::ENOENT)?));
        }
        if self.stack.is_upper(l) {
            return Self::path_of(inodes, id);
        }
        let mut tail: Vec<&OsStr> = Vec::new();
        let mut cur = id;
        loop {
            let node = inodes.get(cur).ok_or(Errno::ENOENT)?;
            if let NodeKind::Dir { layers } = &node.kind {
                if let Some(p) = layers
                    .iter()
                    .find(|d| d.layer == l)
                    .and_then(|d| d.path.as_ref())
                {
                    let mut path = p.to_path_buf();
                    path.extend(tail.iter().rev());
                    return Ok(path);
                }
            }
            if cur == ROOT_ID || tail.len() > 1 << 20 {
                return Err(Errno::ENOENT);
            }
            let (parent, name) = Self::reachable_name(inodes, node)?;
            tail.push(name);
            cur = *parent;
        }
    }

    /// The layers of directory node `id` (top first), each with the directory's path in it.
    fn dir_info(&self, id: u64) -> Result<Vec<(LayerIdx, PathBuf)>> {
        let inodes = self.inodes.lock();
        let node = inodes.get(id).ok_or(Errno::ENOENT)?;
        let NodeKind::Dir { layers } = &node.kind else {
            return Err(Errno::ENOTDIR);
        };
        let merged = Self::path_of(&inodes, id)?;
        Ok(layer_paths(layers, &merged))
    }

    /// Layer, path in that layer, and kind of node `id`.
    fn node_info(&self, id: u64) -> Result<(LayerIdx, PathBuf, NodeKind)> {
        let inodes = self.inodes.lock();
        let node = inodes.get(id).ok_or(Errno::ENOENT)?;
        let path = self.path_in(&inodes, id, node.layer)?;
        Ok((node.layer, path, node.kind.clone()))
    }

    /// Where the data of node `id` is read from: its own copy, or for a metadata-only
    /// copy the lower file; with the node's kind.
    fn data_info(&self, id: u64) -> Result<(LayerIdx, PathBuf, NodeKind)> {
        let (layer, path, kind) = self.node_info(id)?;
        Ok(match kind.data() {
            Some(d) => (d.layer, d.path.to_path_buf(), kind),
            None => (layer, path, kind),
        })
    }

    /// The merged path of node `id` (its path in the upper layer).
    fn upper_path(&self, id: u64) -> Result<PathBuf> {
        Self::path_of(&self.inodes.lock(), id)
    }

    /// The (parent, name) a node is reached by: any name whose parent the table still
    /// holds will do (hard links have several); `ENOENT` once it has none.
    fn reachable_name<'a>(inodes: &Inodes, node: &'a Node) -> Result<&'a (u64, OsString)> {
        node.names
            .iter()
            .find(|(p, _)| inodes.get(*p).is_some())
            .ok_or(Errno::ENOENT)
    }

    /// The (parent, name) node `id` is reached by (the same one [`Union::path_of`] takes).
    fn first_name(&self, id: u64) -> Result<(u64, OsString)> {
        let inodes = self.inodes.lock();
        let node = inodes.get(id).ok_or(Errno::ENOENT)?;
        Self::reachable_name(&inodes, node).cloned()
    }
    /// Names of the nodes unused longest when the table holds more than `high` nodes,
    /// enough to bring it to `low`: the caller asks the kernel to forget them.
    pub fn least_used(&self, high: usize, low: usize) -> Vec<(u64, OsString)> {
        self.inodes.lock().least_used(high, low)
    }

    /// Closes cached descriptors unused since the last call (see [`Stack::age_dir_cache`]).
    pub fn age_caches(&self) {
        self.stack.age_dir_cache();
    }

    /// The kernel dropped `n` references to `id`.
    pub fn forget(&self, id: u64, n: u64) {
        self.inodes.lock().forget(id, n);
    }

    /// Statistics of the filesystem under the upper layer (or the top lower).
    ///
    /// # Errors
    /// The errno of `fstatvfs`.
    pub fn statfs(&self) -> Result<StatFs> {
        let st = rustix::fs::fstatvfs(self.stack.layer(0).root.as_fd())?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: u32::try_from(st.f_bsize).unwrap_or(4096),
            namelen: NAME_MAX as u32,
            frsize: u32::try_from(st.f_frsize).unwrap_or(4096),
        })
    }
}

#[cfg(test)]
mod tests;
