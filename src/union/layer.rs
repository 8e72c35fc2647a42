//! The layer stack: one upper (optional) over read-only lowers, and the work directory.
//!
//! Layers are held as `O_PATH` descriptors of their roots; every path inside a layer is a
//! relative path resolved with [`sys::open_beneath`], never joined onto a string. This file
//! also owns the on-disk whiteout and opaque formats (kernel overlayfs, plus the OCI
//! `.wh.` names read in lower layers) and the mapping of (layer, inode) to the inode
//! numbers the mount reports.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rustix::fs::OFlags;

use crate::error::{Errno, Result};
use crate::sys;

/// Index of a layer in the stack; the upper, when there is one, is index 0.
pub type LayerIdx = usize;

/// The OCI whiteout prefix (`.wh.NAME` hides NAME in the layers below).
pub const WH_PREFIX: &[u8] = b".wh.";
/// The OCI opaque marker: a directory holding this entry hides everything below it.
pub const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// The kernel's opaque-directory xattr (value `y`).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The same, as the kernel writes it with `userxattr`.
pub const OPAQUE_XATTR_USER: &str = "user.overlay.opaque";

/// The kernel's xattr on a renamed directory: where its lower parts are. A single name
/// (renamed within its parent) replaces the name looked up in the layers below; a path
/// starting with `/` is looked up from the roots of the layers below.
pub const REDIRECT_XATTR: &str = "trusted.overlay.redirect";
const REDIRECT_XATTR_USER: &str = "user.overlay.redirect";

const TRUSTED_OVERLAY: &[u8] = b"trusted.overlay.";
const USER_OVERLAY: &[u8] = b"user.overlay.";
/// Where the kernel keeps `trusted.overlay.X` set by a user: `trusted.overlay.overlay.X`.
const ESCAPED: &[u8] = b"trusted.overlay.overlay.";

/// True for xattr names private to the overlay format: never shown through the mount.
/// Escaped user xattrs (`trusted.overlay.overlay.*`) are user data, not private.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    (b.starts_with(TRUSTED_OVERLAY) && !b.starts_with(ESCAPED)) || b.starts_with(USER_OVERLAY)
}

/// True for every xattr name in the overlay namespaces, escaped user ones included: what
/// a layer tar never carries (a tar has no way to say which are format and which data).
pub fn in_overlay_namespace(name: &[u8]) -> bool {
    name.starts_with(TRUSTED_OVERLAY) || name.starts_with(USER_OVERLAY)
}

/// The name stored in a layer for an xattr named `name` through the mount, escaped as the
/// kernel does (`trusted.overlay.X` → `trusted.overlay.overlay.X`); `None` for the
/// `user.overlay.` namespace, which strata reads as overlay metadata and never stores.
pub fn escape_xattr(name: &OsStr) -> Option<OsString> {
    let b = name.as_bytes();
    if let Some(rest) = b.strip_prefix(TRUSTED_OVERLAY) {
        return Some(OsString::from_vec([ESCAPED, rest].concat()));
    }
    (!b.starts_with(USER_OVERLAY)).then(|| name.to_os_string())
}

/// The name shown through the mount for an xattr stored as `name`; `None` if private.
pub fn unescape_xattr(name: &OsStr) -> Option<OsString> {
    let b = name.as_bytes();
    if let Some(rest) = b.strip_prefix(ESCAPED) {
        return Some(OsString::from_vec([TRUSTED_OVERLAY, rest].concat()));
    }
    (!is_private_xattr(name)).then(|| name.to_os_string())
}

/// True when `st` is a kernel-format whiteout: a character device 0/0.
pub fn is_whiteout(st: &sys::Stat) -> bool {
    (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_rdev == 0
}

/// `.wh.NAME` for NAME.
pub fn wh_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// One directory of the stack.
#[derive(Debug)]
pub struct Layer {
    pub root: OwnedFd,
    /// Index of this layer's filesystem among the distinct filesystems of the stack.
    fs_index: u64,
    /// The device of that filesystem.
    dev: u64,
    /// Its UUID (zeroes where it has none), as origin file handles carry it.
    uuid: [u8; 16],
    /// An open directory on that filesystem to decode file handles with (kept by the
    /// first layer of each filesystem only).
    handles: Option<OwnedFd>,
}

/// The stack of layers a mount serves.
#[derive(Debug)]
pub struct Stack {
    layers: Vec<Layer>,
    has_upper: bool,
    work: Option<OwnedFd>,
    /// More than one filesystem under the stack: inode numbers carry the filesystem index.
    xino: bool,
    tmp_counter: AtomicU64,
    /// The hard-link index (`WORK/index`), once it exists.
    index: OnceLock<OwnedFd>,
    /// Descriptors of lower directories by path: lower layers never change, so a path
    /// names the same directory for the life of the mount.
    lower_dirs: DirCache,
}

/// A descriptor of a directory: opened for the caller, or shared from the cache.
#[derive(Debug)]
pub enum DirFd {
    Owned(OwnedFd),
    Shared(Arc<OwnedFd>),
}

impl AsFd for DirFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Owned(fd) => fd.as_fd(),
            DirFd::Shared(fd) => fd.as_fd(),
        }
    }
}

impl DirFd {
    /// A descriptor of the caller's own (a duplicate of a shared one).
    pub fn into_owned(self) -> Result<OwnedFd> {
        match self {
            DirFd::Owned(fd) => Ok(fd),
            DirFd::Shared(fd) => Ok(fd.try_clone()?),
        }
    }
}

/// A bounded cache of lower directory descriptors, in two generations: a hit in the old
/// one moves to the new one; when the new one fills, or time passes (see
/// [`Stack::age_dir_cache`]), the old one is dropped. So at most `2 * DIR_CACHE`
/// descriptors stay open, the directories in use stay cached, and an idle mount keeps none.
#[derive(Debug, Default)]
struct DirCache {
    gens: parking_lot::Mutex<[DirMap; 2]>,
}

type DirMap = HashMap<(LayerIdx, PathBuf), Arc<OwnedFd>>;

const DIR_CACHE: usize = 64;

impl DirCache {
    fn get(&self, l: LayerIdx, rel: &Path) -> Option<Arc<OwnedFd>> {
        let mut g = self.gens.lock();
        let key = (l, rel.to_path_buf());
        if let Some(fd) = g[0].get(&key) {
            return Some(Arc::clone(fd));
        }
        let fd = g[1].remove(&key)?;
        Self::put_in(&mut g, key, Arc::clone(&fd));
        Some(fd)
    }

    /// Ages the cache by one generation: what was not used since the last call is closed.
    fn age(&self) {
        let mut g = self.gens.lock();
        g[1] = std::mem::take(&mut g[0]);
    }

    fn put(&self, l: LayerIdx, rel: &Path, fd: Arc<OwnedFd>) {
        Self::put_in(&mut self.gens.lock(), (l, rel.to_path_buf()), fd);
    }

    fn put_in(g: &mut [DirMap; 2], key: (LayerIdx, PathBuf), fd: Arc<OwnedFd>) {
        if g[0].len() >= DIR_CACHE {
            g[1] = std::mem::take(&mut g[0]);
        }
        g[0].insert(key, fd);
    }
}

/// Paths for a new stack; lowers top first.
#[derive(Clone, Debug)]
pub struct StackPaths {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
}

fn open_root(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

impl Stack {
    /// Opens every layer. Paths are expected to be validated already (see `fuse::options`).
    ///
    /// # Errors
    /// The I/O error of the first layer that cannot be opened, with its path.
    pub fn open_paths(paths: &StackPaths) -> std::io::Result<Stack> {
        let mut dirs: Vec<&Path> = Vec::new();
        if let Some(u) = &paths.upper {
            dirs.push(u);
        }
        dirs.extend(paths.lowers.iter().map(PathBuf::as_path));
        let mut devs: Vec<u64> = Vec::new();
        let mut layers = Vec::with_capacity(dirs.len());
        for p in dirs {
            let root = open_root(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            let st = sys::stat_fd(root.as_fd())?;
            let known = devs.iter().position(|d| *d == st.st_dev);
            let fs_index = known.unwrap_or(devs.len()) as u64;
            let dir = rustix::fs::open(
                p,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            let uuid = sys::fs_uuid(dir.as_fd())
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?
                .unwrap_or_default();
            if known.is_none() {
                devs.push(st.st_dev);
            }
            layers.push(Layer {
                root,
                fs_index,
                dev: st.st_dev,
                uuid,
                handles: known.is_none().then_some(dir),
            });
        }
        let work = match &paths.work {
            Some(w) => Some(open_root(w)?),
            None => None,
        };
        Ok(Stack {
            layers,
            has_upper: paths.upper.is_some(),
            work,
            xino: devs.len() > 1,
            tmp_counter: AtomicU64::new(0),
            index: OnceLock::new(),
            lower_dirs: DirCache::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn layer(&self, l: LayerIdx) -> &Layer {
        &self.layers[l]
    }

    /// The upper layer's index, or `EROFS` for a read-only stack.
    pub fn upper(&self) -> Result<LayerIdx> {
        if self.has_upper {
            Ok(0)
        } else {
            Err(Errno::EROFS)
        }
    }

    pub fn has_upper(&self) -> bool {
        self.has_upper
    }

    /// Whether layer `l` is writable: the upper layer, or the index below the work
    /// directory (on the upper layer's filesystem).
    pub fn is_upper(&self, l: LayerIdx) -> bool {
        self.has_upper && (l == 0 || l == self.index_layer())
    }

    /// The work directory (present whenever there is an upper).
    pub fn work(&self) -> Result<BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd()).ok_or(Errno::EROFS)
    }

    /// A fresh name for staging something in the work directory.
    pub fn tmp_name(&self) -> OsString {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#strata.{}.{n}", std::process::id()))
    }

    /// Opens `rel` in layer `l` with `flags` (always `O_NOFOLLOW` and confined).
    pub fn open(&self, l: LayerIdx, rel: &Path, flags: OFlags) -> Result<OwnedFd> {
        let root = match l == self.index_layer() {
            true => self.index.get().ok_or(Errno::ENOENT)?.as_fd(),
            false => self.layers[l].root.as_fd(),
        };
        Ok(sys::open_beneath(root, rel, flags | OFlags::NOFOLLOW, 0)?)
    }

    /// The pseudo-layer of the hard-link index: a copied-up lower hard link lives there
    /// (under its index name), written like the upper layer, whatever names it has.
    pub fn index_layer(&self) -> LayerIdx {
        self.layers.len()
    }

    /// Closes the cached lower directory descriptors not used since the last call (the
    /// daemon calls it every few hundred milliseconds, so an idle mount holds none).
    pub fn age_dir_cache(&self) {
        self.lower_dirs.age();
    }

    /// An `O_PATH` descriptor of the directory `rel` in layer `l` (from the cache for a
    /// lower layer).
    pub fn open_dir(&self, l: LayerIdx, rel: &Path) -> Result<DirFd> {
        if self.is_upper(l) {
            return Ok(DirFd::Owned(self.open(
                l,
                rel,
                OFlags::PATH | OFlags::DIRECTORY,
            )?));
        }
        if let Some(fd) = self.lower_dirs.get(l, rel) {
            return Ok(DirFd::Shared(fd));
        }
        let fd = Arc::new(self.open(l, rel, OFlags::PATH | OFlags::DIRECTORY)?);
        self.lower_dirs.put(l, rel, Arc::clone(&fd));
        Ok(DirFd::Shared(fd))
    }

    /// The inode number the mount reports for inode `ino` of layer `l`, or `None` when it
    /// does not fit the scheme (the caller then allocates a synthetic number).
    pub fn ino_of(&self, l: LayerIdx, ino: u64) -> Option<u64> {
        if !self.xino {
            return (ino > 1).then_some(ino);
        }
        let fs = self
            .layers
            .get(l)
            .map_or(self.layers[0].fs_index, |l| l.fs_index)
            + 1;
        (ino < (1 << XINO_SHIFT)).then_some((fs << XINO_SHIFT) | ino)
    }
}

impl Stack {
    /// The hard-link index directory (`WORK/index`, the kernel's place for it), made when
    /// `create` is set; `None` while it does not exist or without a work directory.
    pub fn index_dir(&self, create: bool) -> Result<Option<BorrowedFd<'_>>> {
        if let Some(fd) = self.index.get() {
            return Ok(Some(fd.as_fd()));
        }
        let Some(work) = &self.work else {
            return Ok(None);
        };
        let open = || {
            sys::open_beneath(
                work.as_fd(),
                Path::new(INDEX_DIR),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW,
                0,
            )
        };
        let fd = match open() {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(
                    work.as_fd(),
                    INDEX_DIR,
                    rustix::fs::Mode::from_raw_mode(0o700),
                ) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open()?
            }
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(self.index.get_or_init(|| fd).as_fd()))
    }

    /// The name of the index entry of `fd`, a file of lower layer `l`: its origin file
    /// handle in hex, as the kernel names it.
    pub fn index_name(&self, l: LayerIdx, fd: BorrowedFd<'_>) -> Option<OsString> {
        Some(index_key(&self.origin_of(l, fd)?))
    }

    /// The value of `trusted.overlay.origin` for a copy of `fd`, a file of lower layer
    /// `l`: its file handle in the kernel's format. `None` where the filesystem has no
    /// file handles (the copy then simply has no origin).
    pub fn origin_of(&self, l: LayerIdx, fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
        let handle = sys::name_to_handle(fd).ok()?;
        encode_fh(&self.layers[l].uuid, &handle, false)
    }

    /// The inode number the mount reports for the lower file an origin xattr names, if
    /// it can be found in a lower layer's filesystem (decoding needs root).
    pub fn ino_of_origin(&self, value: &[u8]) -> Option<u64> {
        let (uuid, handle) = decode_fh(value)?;
        let first_lower = usize::from(self.has_upper);
        for layer in self.layers.iter().filter(|l| l.uuid == uuid) {
            let Some(mount) = &layer.handles else {
                continue;
            };
            let Ok(fd) = sys::open_by_handle(mount.as_fd(), &handle, OFlags::PATH) else {
                continue;
            };
            let st = sys::stat_fd(fd.as_fd()).ok()?;
            // Only a filesystem holding a lower layer; any layer on it maps the number
            // the same way.
            let l = (first_lower..self.layers.len()).find(|&l| self.layers[l].dev == st.st_dev)?;
            return self.ino_of(l, st.st_ino);
        }
        None
    }
}

/// The kernel's mark of a metadata-only copy: the data is in the lower file found by the
/// same lookup (or by the file's redirect). An empty value is the plain format.
pub const METACOPY_XATTR: &str = "trusted.overlay.metacopy";

/// The hard-link index below the work directory: one entry per copied-up lower hard link,
/// named by its origin's file handle, linked to every upper name of it.
const INDEX_DIR: &str = "index";

/// The name of the index entry of the lower file an origin xattr value names: the value
/// in hex.
pub fn index_key(origin: &[u8]) -> OsString {
    OsString::from(
        origin
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

/// The kernel's count of names of an indexed file through the mount, relative to its upper
/// inode's link count (`U+N`, `U-N`) or the lower's (`L+N`).
pub const NLINK_XATTR: &str = "trusted.overlay.nlink";

/// The link count through the mount given an nlink xattr value and the upper and lower
/// link counts; `None` for a malformed value.
pub fn overlay_nlink(value: &[u8], upper: u64, lower: Option<u64>) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?;
    let (base, rest) = match s.as_bytes().first()? {
        b'U' => (upper, &s[1..]),
        b'L' => (lower?, &s[1..]),
        _ => return None,
    };
    let diff: i64 = rest.strip_prefix('+').unwrap_or(rest).parse().ok()?;
    u64::try_from(i64::try_from(base).ok()?.checked_add(diff)?).ok()
}

/// The nlink xattr value that makes the count through the mount `nlink` for an upper
/// inode with `upper` links.
pub fn nlink_value(nlink: u64, upper: u64) -> Vec<u8> {
    let diff = i128::from(nlink) - i128::from(upper);
    format!("U{diff:+}").into_bytes()
}

/// The kernel's origin xattr: the file handle of the lower inode a file was copied from.
pub const ORIGIN_XATTR: &str = "trusted.overlay.origin";
/// Set on an upper directory holding entries whose inode numbers come from elsewhere
/// (copied up with an origin, or redirected): the kernel then fixes up their `d_ino`.
pub const IMPURE_XATTR: &str = "trusted.overlay.impure";

/// `struct ovl_fb`: version 0, magic 0xfb, total length, flags, handle type, then the
/// filesystem UUID and the handle bytes.
const FH_MAGIC: u8 = 0xfb;
const FH_HEADER: usize = 5 + 16;
/// The handle is of an upper inode.
const FH_FLAG_PATH_UPPER: u8 = 1 << 2;
/// Flags in a native little-endian handle (big-endian hosts set bit 0).
#[cfg(target_endian = "little")]
const FH_FLAG_CPU_ENDIAN: u8 = 0;
#[cfg(target_endian = "big")]
const FH_FLAG_CPU_ENDIAN: u8 = 1;

/// Encodes a file handle as the kernel stores it in overlay xattrs.
pub fn encode_fh(uuid: &[u8; 16], h: &sys::FileHandle, upper: bool) -> Option<Vec<u8>> {
    let len = u8::try_from(FH_HEADER + h.bytes.len()).ok()?;
    let kind = u8::try_from(h.kind).ok()?;
    let flags = FH_FLAG_CPU_ENDIAN | if upper { FH_FLAG_PATH_UPPER } else { 0 };
    let mut v = vec![0, FH_MAGIC, len, flags, kind];
    v.extend_from_slice(uuid);
    v.extend_from_slice(&h.bytes);
    Some(v)
}

/// Decodes what [`encode_fh`] writes (and the kernel): the UUID and the handle.
pub fn decode_fh(v: &[u8]) -> Option<([u8; 16], sys::FileHandle)> {
    let (&[version, magic, len, flags, kind], rest) = v.split_first_chunk::<5>()?;
    let ok = version == 0
        && magic == FH_MAGIC
        && usize::from(len) == v.len()
        && v.len() > FH_HEADER
        && flags & 1 == FH_FLAG_CPU_ENDIAN;
    if !ok {
        return None;
    }
    let (uuid, bytes) = rest.split_first_chunk::<16>()?;
    Some((
        *uuid,
        sys::FileHandle {
            kind: i32::from(kind),
            bytes: bytes.to_vec(),
        },
    ))
}

/// Inode numbers of layers on different filesystems carry the filesystem index above
/// this bit (as kernel overlayfs does with `xino`).
const XINO_SHIFT: u32 = 48;

/// Inode numbers at or above this are synthetic (allocated, not derived from a layer).
pub const SYNTHETIC_BASE: u64 = 1 << 62;

/// How a name is hidden in one layer's directory, if it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteout {
    /// No whiteout for the name.
    None,
    /// A character device 0/0 with the name itself.
    Device,
    /// An OCI `.wh.NAME` file beside it.
    Oci,
}

/// Whether the directory `fd` (an `O_PATH` descriptor) is opaque: the overlay xattr is
/// `y`, or it holds the OCI `.wh..wh..opq` marker.
pub fn is_opaque(fd: BorrowedFd<'_>) -> Result<bool> {
    opaque_by(
        |attr| overlay_xattr(sys::xattr_get(fd, OsStr::new(attr))),
        fd,
    )
}

/// Whether a directory is opaque, its overlay xattrs read by `get`, `fd` being the
/// directory itself (for the OCI marker).
fn opaque_by(get: impl Fn(&str) -> Result<Option<Vec<u8>>>, fd: BorrowedFd<'_>) -> Result<bool> {
    for attr in [OPAQUE_XATTR, OPAQUE_XATTR_USER] {
        if get(attr)?.is_some_and(|v| v == b"y") {
            return Ok(true);
        }
    }
    Ok(sys::exists_at(fd, OsStr::from_bytes(WH_OPAQUE))?)
}

/// The names of the xattrs of the entry `name` in `dir`, listed once so that only the
/// overlay xattrs it has are read (most entries have none). Empty where the filesystem
/// has no xattrs.
pub struct XattrNames(Vec<u8>);

impl XattrNames {
    pub fn of(dir: BorrowedFd<'_>, name: &OsStr) -> Result<XattrNames> {
        match sys::xattr_names_at(dir, name) {
            Ok(v) => Ok(XattrNames(v)),
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(XattrNames(Vec::new())),
            Err(e) => Err(e.into()),
        }
    }

    pub fn has(&self, attr: &str) -> bool {
        self.0.split(|b| *b == 0).any(|n| n == attr.as_bytes())
    }

    /// The value of `attr` of the entry (listed by `names`), read only if it is listed.
    pub fn get(&self, dir: BorrowedFd<'_>, name: &OsStr, attr: &str) -> Result<Option<Vec<u8>>> {
        match self.has(attr) {
            true => overlay_xattr_at(dir, name, attr),
            false => Ok(None),
        }
    }
}

/// [`is_opaque`] for the directory `name` in `dir` (`child` is that directory, `names`
/// its xattrs): xattrs read through the parent, which spares a path walk through `/proc`.
pub fn is_opaque_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    names: &XattrNames,
    child: BorrowedFd<'_>,
) -> Result<bool> {
    opaque_by(|attr| names.get(dir, name, attr), child)
}

/// The result of reading an overlay xattr: its value, or `None` where it is absent or
/// cannot be there (a filesystem without xattrs, or `trusted.*` refused to a daemon that
/// is not root).
fn overlay_xattr(
    r: std::result::Result<Option<Vec<u8>>, rustix::io::Errno>,
) -> Result<Option<Vec<u8>>> {
    match r {
        Ok(v) => Ok(v),
        Err(rustix::io::Errno::OPNOTSUPP)
        | Err(rustix::io::Errno::PERM)
        | Err(rustix::io::Errno::ACCESS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Overlay xattr `attr` of the entry `name` in `dir` (a symlink itself, not followed).
pub fn overlay_xattr_at(dir: BorrowedFd<'_>, name: &OsStr, attr: &str) -> Result<Option<Vec<u8>>> {
    overlay_xattr(sys::xattr_get_at(dir, name, OsStr::new(attr)))
}

/// The index entry of the upper file `name` in `dir`, if it is a name of an indexed hard
/// link (it has a count of names and an origin, which names the entry).
pub fn upper_index_key(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<OsString>> {
    if overlay_xattr_at(dir, name, NLINK_XATTR)?.is_none() {
        return Ok(None);
    }
    Ok(overlay_xattr_at(dir, name, ORIGIN_XATTR)?.map(|o| index_key(&o)))
}

/// Where the layers below look for a renamed directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// Another name in the same parent directory.
    Name(OsString),
    /// A path from the layer roots (stored with a leading `/`).
    Path(PathBuf),
}

impl Redirect {
    /// Parses an xattr value; `None` unless it is a single name or a clean absolute path
    /// (no `.`, `..` or empty components), so a redirect can never point out of a layer.
    pub fn parse(value: &[u8]) -> Option<Redirect> {
        let valid = |c: &[u8]| !c.is_empty() && c != b"." && c != b".." && c.len() <= 255;
        match value.strip_prefix(b"/") {
            Some(rest) => rest
                .split(|b| *b == b'/')
                .all(valid)
                .then(|| Redirect::Path(PathBuf::from(OsStr::from_bytes(rest)))),
            None => (valid(value) && !value.contains(&b'/'))
                .then(|| Redirect::Name(OsStr::from_bytes(value).to_os_string())),
        }
    }

    /// The xattr value.
    pub fn to_value(&self) -> Vec<u8> {
        match self {
            Redirect::Name(n) => n.as_bytes().to_vec(),
            Redirect::Path(p) => [b"/", p.as_os_str().as_bytes()].concat(),
        }
    }
}

/// The redirect of the directory `fd` (an `O_PATH` descriptor), if it has a valid one.
pub fn redirect(fd: BorrowedFd<'_>) -> Result<Option<Redirect>> {
    parse_redirect(|attr| overlay_xattr(sys::xattr_get(fd, OsStr::new(attr))))
}

/// [`redirect`] of the directory `name` in `dir` (`names`: its xattrs).
pub fn redirect_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    names: &XattrNames,
) -> Result<Option<Redirect>> {
    parse_redirect(|attr| names.get(dir, name, attr))
}

fn parse_redirect(get: impl Fn(&str) -> Result<Option<Vec<u8>>>) -> Result<Option<Redirect>> {
    for name in [REDIRECT_XATTR, REDIRECT_XATTR_USER] {
        if let Some(v) = get(name)? {
            match Redirect::parse(&v) {
                Some(r) => return Ok(Some(r)),
                None => log::warn!("ignoring an invalid {name}: {:?}", OsStr::from_bytes(&v)),
            }
        }
    }
    Ok(None)
}

/// Whether `.wh.NAME` exists in the directory `dir`.
pub fn has_oci_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<bool> {
    if name.len() + WH_PREFIX.len() > 255 {
        return Ok(false);
    }
    Ok(sys::exists_at(dir, &wh_name(name))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattr_names_escape_as_in_the_kernel() {
        let esc = |n: &str| escape_xattr(OsStr::new(n)).map(|s| s.into_string().unwrap());
        let unesc = |n: &str| unescape_xattr(OsStr::new(n)).map(|s| s.into_string().unwrap());
        assert_eq!(esc("user.k").as_deref(), Some("user.k"));
        assert_eq!(
            esc("trusted.overlay.x").as_deref(),
            Some("trusted.overlay.overlay.x")
        );
        assert_eq!(esc("user.overlay.opaque"), None);
        assert_eq!(
            unesc("trusted.overlay.overlay.x").as_deref(),
            Some("trusted.overlay.x")
        );
        assert_eq!(unesc("trusted.overlay.opaque"), None);
        assert_eq!(unesc("user.overlay.opaque"), None);
        assert_eq!(
            unesc("security.capability").as_deref(),
            Some("security.capability")
        );
        for n in ["user.k", "trusted.overlay.x", "trusted.overlay.overlay.y"] {
            assert_eq!(unesc(&esc(n).unwrap()).as_deref(), Some(n));
        }
    }

    #[test]
    fn file_handles_encode_as_the_kernel_writes_them() {
        // Written by kernel 6.18 as the origin of a copied-up file on ext4.
        let kernel = [
            0x00, 0xfb, 0x1d, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x31,
            0x84, 0x99, 0x00, 0x79, 0xb8, 0xc1, 0x29,
        ];
        let (uuid, h) = decode_fh(&kernel).unwrap();
        assert_eq!(uuid, [0; 16]);
        assert_eq!(h.kind, 1);
        assert_eq!(h.bytes, [0x31, 0x84, 0x99, 0x00, 0x79, 0xb8, 0xc1, 0x29]);
        assert_eq!(encode_fh(&uuid, &h, false).unwrap(), kernel);
        let upper = encode_fh(&uuid, &h, true).unwrap();
        assert_eq!(upper[3], FH_FLAG_PATH_UPPER);
        assert_eq!(decode_fh(&upper).map(|(_, h)| h.bytes.len()), Some(8));
        assert_eq!(decode_fh(&kernel[..20]), None);
        assert_eq!(decode_fh(&[1, 0xfb, 5, 0, 1]), None);
    }

    #[test]
    fn nlink_values_are_the_kernels() {
        assert_eq!(overlay_nlink(b"U+0", 2, None), Some(2));
        assert_eq!(overlay_nlink(b"U-1", 3, None), Some(2));
        assert_eq!(overlay_nlink(b"L+1", 3, Some(2)), Some(3));
        assert_eq!(overlay_nlink(b"L+1", 3, None), None);
        assert_eq!(overlay_nlink(b"X+1", 3, None), None);
        assert_eq!(overlay_nlink(b"U-5", 3, None), None);
        assert_eq!(nlink_value(2, 2), b"U+0");
        assert_eq!(nlink_value(3, 2), b"U+1");
        assert_eq!(nlink_value(1, 3), b"U-2");
    }

    #[test]
    fn redirects_parse_only_clean_names_and_paths() {
        let name = |s: &str| Some(Redirect::Name(s.into()));
        let path = |s: &str| Some(Redirect::Path(s.into()));
        assert_eq!(Redirect::parse(b"a"), name("a"));
        assert_eq!(Redirect::parse(b"/a/b"), path("a/b"));
        for bad in [
            &b""[..],
            b"/",
            b"a/b",
            b"..",
            b"/a/../b",
            b"/a//b",
            b"/a/",
            b".",
        ] {
            assert_eq!(Redirect::parse(bad), None, "{:?}", OsStr::from_bytes(bad));
        }
        for r in [name("x"), path("x/y")] {
            let r = r.unwrap();
            assert_eq!(Redirect::parse(&r.to_value()), Some(r));
        }
    }
}
