//! The image store: content-addressed layers and OCI image configs under a root
//! directory, tags and mounts, without a daemon.
//!
//! ```text
//! ROOT/strata-store            marker and format version
//! ROOT/lock                    the store lock (flock), held by every mutation
//! ROOT/index.json              the records: images, layers, tags, mounts (see `index`)
//! ROOT/blobs/sha256/<hex>      image configs, and layer tars named by their diff id
//! ROOT/layers/<hex>/           each layer unpacked in the overlay format (a lower dir)
//! ROOT/mounts/<id>/{upper,work}  the writable layer of each mount
//! ROOT/tmp/                    staging; what a dead process left here is garbage
//! ```
//!
//! Publishing is ordered so that a crash at any point leaves either garbage (staging
//! files, a layer dir or blob no record names) or a complete image: the data is written and
//! synced first, and the index, rewritten atomically under the lock, names it last.
//! Deleting runs the other way: the records go first, the data after.

pub mod diff;
mod export;
mod gc;
pub mod index;
mod ingest;
pub mod layout;
pub mod mounts;
pub mod oci;
mod progress;
pub mod reference;
mod snapshot;
pub mod tarpath;
mod tarread;
#[cfg(test)]
mod tartest;
mod tarwrite;
pub mod time;
pub mod unpack;

use std::path::{Path, PathBuf};

pub use gc::{CheckReport, Removal};
use index::Index;
pub use ingest::{Change, CommitOptions};
use layout::{Layout, StoreError};
use oci::{ConfigError, ImageConfig};
use reference::{Digest, ImageRef, RefError};

/// What a store command can fail with; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("{input:?} matches more than one image ({})", .ids.join(", "))]
    Ambiguous { input: String, ids: Vec<String> },
    #[error("{0} is not a mount of this store (see `strata ps`)")]
    NoSuchMount(String),
    #[error("image {image} is in use by mount {mount} (mounted at {mountpoint}){hint}")]
    InUse {
        image: String,
        mount: String,
        mountpoint: String,
        hint: &'static str,
    },
    #[error("conflict: unable to delete {0} (must be forced) - image is referenced in multiple repositories")]
    MultipleTags(String),
    #[error(
        "conflict: unable to delete {0} (cannot be forced) - image has dependent child images"
    )]
    HasChildren(String),
    #[error("image {id}: {source}")]
    Config {
        id: String,
        #[source]
        source: ConfigError,
    },
    #[error("{what}: {source}")]
    Unpack {
        what: String,
        #[source]
        source: unpack::UnpackError,
    },
    #[error(transparent)]
    Diff(#[from] diff::DiffError),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An open store.
pub struct Store {
    layout: Layout,
}

impl Store {
    /// Opens (or makes) the store at `root`.
    ///
    /// # Errors
    /// `root` is not a store, or cannot be read.
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        let layout = Layout::open(root)?;
        for d in ["layers", "mounts"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(Store { layout })
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    /// The records as they are now.
    ///
    /// # Errors
    /// An unreadable index.
    pub fn index(&self) -> Result<Index, ImageError> {
        Ok(Index::load(&self.layout)?)
    }

    /// The unpacked directory of layer `diff_id`.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root().join("layers").join(index::hex_of(diff_id))
    }

    /// The config of image `id`, read from its blob and checked against the id.
    ///
    /// # Errors
    /// A missing or corrupt blob, or a config that cannot be read.
    pub fn config(&self, id: &str) -> Result<(Vec<u8>, ImageConfig), ImageError> {
        let d = Digest::parse(id)?;
        let bytes = self.layout.get_blob(&d)?;
        let config = ImageConfig::parse(&bytes).map_err(|source| ImageError::Config {
            id: id.to_string(),
            source,
        })?;
        Ok((bytes, config))
    }

    /// The image `input` names: a reference (`demo`, `demo:v2`, `localhost/a/b:1`), a full
    /// id (`sha256:…`) or a unique prefix of one.
    ///
    /// # Errors
    /// A malformed reference, no such image, or a prefix matching several.
    pub fn resolve(&self, idx: &Index, input: &str) -> Result<String, ImageError> {
        if let Some(hex) = input.strip_prefix("sha256:") {
            return by_prefix(idx, input, hex);
        }
        let parsed = ImageRef::parse(input);
        if let Ok(r) = &parsed {
            if let Some(id) = idx.tags.get(&r.to_string()) {
                return Ok(id.clone());
            }
        }
        if !input.is_empty() && input.len() <= 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(id) = by_prefix(idx, input, input) {
                return Ok(id);
            }
        }
        parsed?;
        Err(ImageError::NoSuchImage(input.to_string()))
    }
}

fn by_prefix(idx: &Index, input: &str, hex: &str) -> Result<String, ImageError> {
    let hex = hex.to_ascii_lowercase();
    let ids: Vec<String> = idx
        .images
        .keys()
        .filter(|k| index::hex_of(k).starts_with(&hex))
        .cloned()
        .collect();
    match ids.as_slice() {
        [] => Err(ImageError::NoSuchImage(input.to_string())),
        [one] => Ok(one.clone()),
        _ => Err(ImageError::Ambiguous {
            input: input.to_string(),
            ids: ids.iter().map(|i| short_id(i).to_string()).collect(),
        }),
    }
}

/// docker's short id: the first 12 hex digits.
pub fn short_id(id: &str) -> &str {
    let hex = index::hex_of(id);
    &hex[..hex.len().min(12)]
}

/// How docker shows a full reference key of the index (`demo:latest`).
pub fn familiar(key: &str) -> String {
    ImageRef::parse(key).map_or_else(|_| key.to_string(), |r| r.familiar())
}
