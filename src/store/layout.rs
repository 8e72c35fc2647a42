//! The store's directory: where things live, the lock every mutation holds, and atomic
//! writes. Nothing here knows images or tags; it only keeps bytes safe.
//!
//! ```text
//! ROOT/strata-store          marker and format version: a directory without it is not a store
//! ROOT/lock                  flock(2)ed exclusively by every mutation of the store
//! ROOT/blobs/sha256/<hex>    content-addressed blobs (layer tars, configs, manifests)
//! ROOT/tmp/                  staging for atomic writes (same filesystem as everything)
//! ```
//!
//! Every write is a temporary file in `tmp/`, `fsync`ed, renamed into place, and the
//! directory `fsync`ed: a crash leaves the old file or the new one, never half of one; what
//! `tmp/` holds after a crash is garbage.

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::reference::Digest;

/// The marker file and the one format this code reads and writes.
const MARKER: &str = "strata-store";
const FORMAT: &str = "strata-store 1\n";

/// What can go wrong with the store's files; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a strata store (it is not empty and has no {MARKER} file)")]
    NotAStore(PathBuf),
    #[error("{path} is a strata store of another format ({found:?})")]
    Format { path: PathBuf, found: String },
    #[error("blob {digest} is corrupted (its content hashes to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The default root: `/var/lib/strata` for root, `$XDG_DATA_HOME/strata` (or
/// `~/.local/share/strata`) otherwise.
pub fn default_root() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/strata");
    }
    match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("strata"),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(home).join(".local/share/strata")
        }
    }
}

/// An open store directory.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    tmp_counter: AtomicU64,
}

/// The store lock, held until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
}

impl Layout {
    /// Opens the store at `root`, making it when `root` is missing or an empty directory.
    ///
    /// # Errors
    /// A non-empty directory without the marker ([`StoreError::NotAStore`]), a marker of
    /// another format, or an I/O error naming the path.
    pub fn open(root: &Path) -> Result<Layout, StoreError> {
        let marker = root.join(MARKER);
        match fs::read_to_string(&marker) {
            Ok(found) if found == FORMAT => {}
            Ok(found) => {
                return Err(StoreError::Format {
                    path: root.to_path_buf(),
                    found,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let empty = match fs::read_dir(root) {
                    Ok(mut d) => d.next().is_none(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                    Err(e) => return Err(io(root)(e)),
                };
                if !empty {
                    return Err(StoreError::NotAStore(root.to_path_buf()));
                }
                fs::create_dir_all(root).map_err(io(root))?;
            }
            Err(e) => return Err(io(&marker)(e)),
        }
        let layout = Layout {
            root: root.to_path_buf(),
            tmp_counter: AtomicU64::new(0),
        };
        for d in ["blobs/sha256", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        if !marker.exists() {
            // Written last: a store exists once its directories do.
            layout.write_atomic(root, MARKER, FORMAT.as_bytes())?;
        }
        Ok(layout)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store lock (waiting for another process that holds it).
    ///
    /// # Errors
    /// The lock file cannot be opened or locked.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(&path)(e.into()))?;
        Ok(StoreLock { _file: file })
    }

    /// The staging directory, on the store's filesystem.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new name in the staging directory for `what`: `what.PID.N`, so that what a dead
    /// process left there is known by the pid (see `gc`).
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir()
            .join(format!("{what}.{}.{n}", std::process::id()))
    }

    /// Writes `data` as `name` in `dir` atomically (a temporary file in `tmp/`, fsync,
    /// rename, fsync of `dir`).
    ///
    /// # Errors
    /// An I/O error naming the file.
    pub fn write_atomic(&self, dir: &Path, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = self.tmp_path(name);
        let dst = dir.join(name);
        let written = (|| -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            crash_point();
            f.sync_all()?;
            crash_point();
            fs::rename(&tmp, &dst)?;
            crash_point();
            fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            if let Err(e2) = fs::remove_file(&tmp) {
                if e2.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("cannot remove {}: {e2}", tmp.display());
                }
            }
            return Err(io(&dst)(e));
        }
        Ok(())
    }

    /// The path of blob `d`.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Stores `data` under its digest (a no-op when it is there already); returns it.
    ///
    /// # Errors
    /// An I/O error naming the blob.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, StoreError> {
        let digest = sha256(data);
        if !self.blob_path(&digest).exists() {
            let dir = self.root.join("blobs/sha256");
            self.write_atomic(&dir, digest.hex(), data)?;
        }
        Ok(digest)
    }

    /// The bytes of blob `d`, checked against their digest.
    ///
    /// # Errors
    /// A missing blob, a corrupted one (naming both digests), or an I/O error.
    pub fn get_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(d);
        let data = match fs::read(&path) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(d.clone()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let actual = sha256(&data);
        if actual != *d {
            return Err(StoreError::Corrupt {
                digest: d.clone(),
                actual,
            });
        }
        Ok(data)
    }
}

/// A point where a crash must leave the store consistent. With `STRATA_CRASH_AT=N` in
/// the environment, the process kills itself (SIGKILL) at the N-th such point it reaches:
/// the crash tests walk N over every point of a command.
pub fn crash_point() {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static REACHED: AtomicU64 = AtomicU64::new(0);
    let Some(at) = *AT.get_or_init(|| std::env::var("STRATA_CRASH_AT").ok()?.parse().ok()) else {
        return;
    };
    if REACHED.fetch_add(1, Ordering::SeqCst) + 1 == at {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// A writer that hashes (sha256) and counts what goes through it.
pub(crate) struct Hashing<W: Write> {
    pub inner: W,
    pub hash: Sha256,
    pub len: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and length of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (
            Digest::from_sha256(&self.hash.finalize().into()),
            self.len,
            self.inner,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The sha256 digest of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(data).into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_made_in_an_empty_or_missing_directory_and_reopened() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("store");
        let l = Layout::open(&root).unwrap();
        assert_eq!(fs::read_to_string(root.join(MARKER)).unwrap(), FORMAT);
        drop(l);
        Layout::open(&root).unwrap();
        Layout::open(t.path().join("empty").as_path()).unwrap();
    }

    #[test]
    fn a_directory_that_is_not_a_store_is_refused_and_left_alone() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("precious"), "data").unwrap();
        let e = Layout::open(t.path()).unwrap_err();
        assert!(matches!(e, StoreError::NotAStore(_)), "{e}");
        assert!(e.to_string().contains("is not a strata store"));
        let names: Vec<_> = fs::read_dir(t.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "nothing written into it");
        fs::write(t.path().join(MARKER), "strata-store 99\n").unwrap();
        let e = Layout::open(t.path()).unwrap_err();
        assert!(matches!(e, StoreError::Format { .. }), "{e}");
    }

    #[test]
    fn blobs_are_content_addressed_and_checked_on_read() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open(t.path()).unwrap();
        let d = l.put_blob(b"hello").unwrap();
        assert_eq!(
            d.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(l.put_blob(b"hello").unwrap(), d);
        assert_eq!(l.get_blob(&d).unwrap(), b"hello");
        fs::write(l.blob_path(&d), "tampered").unwrap();
        let e = l.get_blob(&d).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(&d.to_string()));
        let missing = sha256(b"absent");
        assert!(matches!(
            l.get_blob(&missing).unwrap_err(),
            StoreError::MissingBlob(_)
        ));
        // Nothing is left in the staging directory.
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn the_lock_excludes_a_second_holder() {
        let t = tempfile::tempdir().unwrap();
        let l = Layout::open(t.path()).unwrap();
        let held = l.lock().unwrap();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(t.path().join("lock"))
            .unwrap();
        let busy = rustix::fs::flock(
            f.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        );
        assert_eq!(busy, Err(rustix::io::Errno::WOULDBLOCK));
        drop(held);
        rustix::fs::flock(
            f.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .unwrap();
    }
}
