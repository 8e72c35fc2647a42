//! Typed errors.
//!
//! [`Errno`] is the currency of the union layer: every filesystem operation returns
//! `Result<T, Errno>` and the FUSE adapter turns it into an error reply. [`MountError`]
//! covers what can be wrong with a mount command line before anything is mounted; each
//! variant names the option or the path at fault.

use std::fmt;
use std::path::PathBuf;

/// An OS error number, as sent back to the kernel in a FUSE reply.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);

    /// The raw error number.
    pub fn code(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Self {
        Errno(e.raw_os_error())
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// The result type of union operations.
pub type Result<T, E = Errno> = std::result::Result<T, E>;

/// What can be wrong with a mount request, found before anything is mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("unknown mount option '{0}'")]
    UnknownOption(String),
    #[error("mount option '{option}': {reason}")]
    BadOption { option: String, reason: String },
    #[error("no lowerdir given: strata needs at least one lower layer (-o lowerdir=DIR[:DIR...])")]
    NoLower,
    #[error("{what} '{path}': {reason}")]
    BadPath {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("no mountpoint given")]
    NoMountpoint,
    #[error("unexpected argument '{0}'")]
    UnexpectedArgument(String),
}
