//! Mounts of images: docker's containers without processes. A mount's record names its
//! image and mountpoint; its upper and work dirs live in `mounts/<id>/` and outlive the
//! FUSE mount itself until `strata rm`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::index::MountRecord;
use super::time::Timestamp;
use super::{io_err, short_id, ImageError, Index, Store};
use crate::sys;

/// A new mount, recorded and ready to be served.
pub struct NewMount {
    pub id: String,
    /// The image's layer dirs, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// Whether something is mounted at `path` (a canonical path).
pub fn is_mounted(path: &Path) -> bool {
    sys::mount_table().iter().any(|m| m.mount_point == path)
}

fn random_id() -> Result<String, ImageError> {
    let mut buf = [0u8; 32];
    let path = Path::new("/dev/urandom");
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(io_err(path))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Store {
    pub(crate) fn mount_dir(&self, id: &str) -> PathBuf {
        self.root().join("mounts").join(id)
    }

    /// The mount `input` names: an id, a unique id prefix, or its mountpoint.
    ///
    /// # Errors
    /// [`ImageError::NoSuchMount`], or an ambiguous prefix.
    pub fn find_mount(&self, idx: &Index, input: &str) -> Result<String, ImageError> {
        if let Ok(canon) = fs::canonicalize(input) {
            if let Some((id, _)) = idx.mounts.iter().find(|(_, m)| m.mountpoint == canon) {
                return Ok(id.clone());
            }
        }
        let ids: Vec<&String> = match input.is_empty() {
            true => Vec::new(),
            false => idx.mounts.keys().filter(|k| k.starts_with(input)).collect(),
        };
        match ids.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(ImageError::NoSuchMount(input.to_string())),
            _ => Err(ImageError::Ambiguous {
                input: input.to_string(),
                ids: ids.iter().map(|i| short_id(i).to_string()).collect(),
            }),
        }
    }

    /// Records a new mount of `image` at `mountpoint` (canonical) with a fresh upper.
    ///
    /// # Errors
    /// No such image, or the directories cannot be made.
    pub fn create_mount(&self, image: &str, mountpoint: &Path) -> Result<NewMount, ImageError> {
        let _lock = self.layout.lock()?;
        let mut idx = self.index()?;
        let id = self.resolve(&idx, image)?;
        if let Some((other, _)) = idx.mounts.iter().find(|(_, m)| m.mountpoint == mountpoint) {
            if is_mounted(mountpoint) {
                return Err(ImageError::Invalid(format!(
                    "{} is already the mountpoint of mount {}",
                    mountpoint.display(),
                    short_id(other)
                )));
            }
        }
        let record = idx
            .images
            .get(&id)
            .ok_or_else(|| ImageError::NoSuchImage(id.clone()))?;
        let mut lowers: Vec<PathBuf> = record
            .layers
            .iter()
            .rev()
            .map(|d| self.layer_dir(d))
            .collect();
        if lowers.is_empty() {
            let empty = self.root().join("layers").join("empty");
            fs::create_dir_all(&empty).map_err(io_err(&empty))?;
            lowers.push(empty);
        }
        let mid = random_id()?;
        let dir = self.mount_dir(&mid);
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&dir, &upper, &work] {
            fs::create_dir(d).map_err(io_err(d))?;
        }
        idx.mounts.insert(
            mid.clone(),
            MountRecord {
                image: id,
                mountpoint: mountpoint.to_path_buf(),
                created: Timestamp::now().rfc3339(),
            },
        );
        idx.save(&self.layout)?;
        Ok(NewMount {
            id: mid,
            lowers,
            upper,
            work,
        })
    }

    /// Forgets mount `id` and deletes its upper. The caller has unmounted it.
    ///
    /// # Errors
    /// The index cannot be written (the upper is deleted only after).
    pub fn remove_mount(&self, id: &str) -> Result<(), ImageError> {
        {
            let _lock = self.layout.lock()?;
            let mut idx = self.index()?;
            if idx.mounts.remove(id).is_none() {
                return Err(ImageError::NoSuchMount(id.to_string()));
            }
            idx.save(&self.layout)?;
        }
        let dir = self.mount_dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }
}
