//! The store's records: one JSON file, `ROOT/index.json`, naming every published image,
//! layer, tag and mount. It is read whole and written whole (atomically, under the store
//! lock), so a reader always sees one consistent state, and what references what (a tag →
//! an image, an image → its parent and layers, a mount → its image) is read from it, never
//! counted.
//!
//! The config bytes of an image live in `blobs/sha256/`; the record keeps only what
//! listings need without opening every config (created, the layers, the parent).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::layout::{Layout, StoreError};

pub const INDEX: &str = "index.json";

/// Every record of the store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Index {
    #[serde(default)]
    pub images: BTreeMap<String, ImageRecord>,
    #[serde(default)]
    pub layers: BTreeMap<String, LayerRecord>,
    /// Full reference (`docker.io/library/demo:latest`) → image id.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub mounts: BTreeMap<String, MountRecord>,
}

/// An image: its config is the blob named by its id.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config's `created` (or when the image was stored, when the config has none).
    pub created: String,
    /// Diff ids, bottom first (a copy of the config's `rootfs.diff_ids`).
    pub layers: Vec<String>,
    /// The local image this one was committed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// When a tag last pointed here (docker's `Metadata.LastTagTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_tag_time: Option<String>,
}

/// An unpacked layer (`layers/<hex>/`) and its tar (the blob named by its diff id).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The sum of its regular files' sizes (docker's layer size).
    pub size: u64,
    /// The size of its tar.
    pub tar_size: u64,
    pub entries: u64,
}

/// A mount of an image: its upper and work dirs are `mounts/<id>/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRecord {
    pub image: String,
    pub mountpoint: PathBuf,
    pub created: String,
}

impl Index {
    /// Reads the index (an empty one for a new store).
    ///
    /// # Errors
    /// An unreadable or malformed index file, named.
    pub fn load(layout: &Layout) -> Result<Index, StoreError> {
        let path = layout.root().join(INDEX);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Writes the index atomically. The caller holds the store lock.
    ///
    /// # Errors
    /// An I/O error naming the file.
    pub fn save(&self, layout: &Layout) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StoreError::Io {
            path: layout.root().join(INDEX),
            source: std::io::Error::other(e),
        })?;
        layout.write_atomic(layout.root(), INDEX, &bytes)
    }

    /// The tags of image `id`, full references, sorted.
    pub fn tags_of(&self, id: &str) -> Vec<&str> {
        self.tags
            .iter()
            .filter(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The images whose parent is `id`.
    pub fn children_of(&self, id: &str) -> Vec<&str> {
        self.images
            .iter()
            .filter(|(_, r)| r.parent.as_deref() == Some(id))
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The mounts of image `id`.
    pub fn mounts_of(&self, id: &str) -> Vec<(&str, &MountRecord)> {
        self.mounts
            .iter()
            .filter(|(_, m)| m.image == id)
            .map(|(k, m)| (k.as_str(), m))
            .collect()
    }

    /// The size of image `id`: the sum of its layers' sizes.
    pub fn image_size(&self, id: &str) -> u64 {
        self.images.get(id).map_or(0, |r| {
            r.layers
                .iter()
                .filter_map(|l| self.layers.get(l))
                .map(|l| l.size)
                .sum()
        })
    }

    /// The layers some image needs (images used by mounts are images too).
    pub fn referenced_layers(&self) -> BTreeSet<&str> {
        self.images
            .values()
            .flat_map(|r| r.layers.iter().map(String::as_str))
            .collect()
    }

    /// The blobs the records reference: image configs and layer tars.
    pub fn referenced_blobs(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for id in self.images.keys() {
            out.insert(hex_of(id).to_string());
        }
        for d in self.layers.keys() {
            out.insert(hex_of(d).to_string());
        }
        out
    }
}

/// The hex part of `sha256:<hex>`.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}
