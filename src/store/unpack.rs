//! A layer tar becomes a directory in the kernel overlay format, ready to be a lower dir.
//!
//! CONTRACT (filled in by the unpack helper; the store calls only [`unpack`]):
//! - `src` is an *uncompressed* tar stream (the caller decompresses and hashes).
//!   `unpack` reads entries until the end-of-archive marker; the caller drains the rest.
//! - `dest` is an existing, empty directory the caller made in the store's `tmp/`; on an
//!   error the caller removes it, so `unpack` never has to clean up.
//! - Every name goes through `tarpath::entry_path`; symlink targets through
//!   `tarpath::symlink_stays_inside`; hard link targets must name an earlier non-directory
//!   entry of the same tar. `.wh.NAME` becomes a 0/0 char device NAME; `.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on its directory. Regular files, dirs, symlinks, hard links,
//!   fifos, char/block devices; owner, mode (incl. set-id bits), mtime, PAX
//!   `SCHILY.xattr.*` (overlay xattrs refused or dropped, never applied).
//! - Nothing is ever written outside `dest`: every open is `sys::open_beneath` (no symlink
//!   followed), parents are created as directories (0755) when the tar omits them.
//! - Refused with an [`UnpackError`] naming the entry: bad names, links leaving the layer,
//!   duplicate entries (a directory entry for a directory made implicitly is not a
//!   duplicate), oversized entries (see [`Limits`]), a truncated or corrupt stream.

use std::io::Read;
use std::path::Path;

/// Bounds on what one tar may contain.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest PAX extended header, in bytes.
    pub max_pax: u64,
    /// The largest xattr value.
    pub max_xattr: usize,
    /// The longest entry path, in bytes.
    pub max_path: usize,
    /// The most entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_pax: 1 << 20,
            max_xattr: 64 << 10,
            max_path: 4096,
            max_entries: 10_000_000,
        }
    }
}

/// What an unpacked layer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// The sum of the sizes of the regular files (docker's layer size).
    pub bytes: u64,
}

/// Why a tar was refused; names the entry (or the stream position) that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Name(#[from] super::tarpath::TarPathError),
    #[error("tar entry {name:?}: {why}")]
    Entry { name: String, why: String },
    #[error("the tar is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Unpacks the tar `src` into the empty directory `dest`.
///
/// # Errors
/// See [`UnpackError`].
pub fn unpack(
    src: &mut dyn Read,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let _ = (src, dest, limits);
    Err(UnpackError::Corrupt("not written yet".into()))
}
