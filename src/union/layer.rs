//! The layer stack: one upper (optional) over read-only lowers, and the work directory.
//!
//! Layers are held as `O_PATH` descriptors of their roots; every path inside a layer is a
//! relative path resolved with [`sys::open_beneath`], never joined onto a string. This file
//! also owns the on-disk whiteout and opaque formats (kernel overlayfs, plus the OCI
//! `.wh.` names read in lower layers) and the mapping of (layer, inode) to the inode
//! numbers the mount reports.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
            let fs_index = match devs.iter().position(|d| *d == st.st_dev) {
                Some(i) => i,
                None => {
                    devs.push(st.st_dev);
                    devs.len() - 1
                }
            } as u64;
            layers.push(Layer { root, fs_index });
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

    pub fn is_upper(&self, l: LayerIdx) -> bool {
        self.has_upper && l == 0
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
        Ok(sys::open_beneath(
            self.layers[l].root.as_fd(),
            rel,
            flags | OFlags::NOFOLLOW,
            0,
        )?)
    }

    /// An `O_PATH` descriptor of the directory `rel` in layer `l`.
    pub fn open_dir(&self, l: LayerIdx, rel: &Path) -> Result<OwnedFd> {
        self.open(l, rel, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// The inode number the mount reports for inode `ino` of layer `l`, or `None` when it
    /// does not fit the scheme (the caller then allocates a synthetic number).
    pub fn ino_of(&self, l: LayerIdx, ino: u64) -> Option<u64> {
        if !self.xino {
            return (ino > 1).then_some(ino);
        }
        let fs = self.layers[l].fs_index + 1;
        (ino < (1 << XINO_SHIFT)).then_some((fs << XINO_SHIFT) | ino)
    }
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
    for name in [OPAQUE_XATTR, OPAQUE_XATTR_USER] {
        match sys::xattr_get(fd, OsStr::new(name)) {
            Ok(Some(v)) if v == b"y" => return Ok(true),
            Ok(_) => {}
            // Filesystems without xattrs, or trusted.* refused to a non-root daemon.
            Err(rustix::io::Errno::OPNOTSUPP)
            | Err(rustix::io::Errno::PERM)
            | Err(rustix::io::Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sys::exists_at(fd, OsStr::from_bytes(WH_OPAQUE))?)
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
    for name in [REDIRECT_XATTR, REDIRECT_XATTR_USER] {
        match sys::xattr_get(fd, OsStr::new(name)) {
            Ok(Some(v)) => match Redirect::parse(&v) {
                Some(r) => return Ok(Some(r)),
                None => log::warn!("ignoring an invalid {name}: {:?}", OsStr::from_bytes(&v)),
            },
            Ok(None) => {}
            Err(rustix::io::Errno::OPNOTSUPP)
            | Err(rustix::io::Errno::PERM)
            | Err(rustix::io::Errno::ACCESS) => {}
            Err(e) => return Err(e.into()),
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
