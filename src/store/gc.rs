//! Removing images (`rmi`, `image prune`), collecting what nothing references, and
//! `check`. Which layers and blobs are in use is read from the records every time; records
//! go first and data after, so a crash leaves garbage, never a record naming nothing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::index::{hex_of, Index};
use super::layout::{crash_point, Hashing};
use super::reference::{Digest, ImageRef};
use super::{familiar, io_err, short_id, ImageError, Store};

/// One line of what `rmi`/`image prune` did, as docker prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// A tag removed (its familiar form).
    Untagged(String),
    /// An image deleted (its full id).
    Deleted(String),
}

/// What `check` found and what `--repair` fixed.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub images: usize,
    pub layers: usize,
    pub tags: usize,
    pub mounts: usize,
    /// Problems still there, one line each.
    pub problems: Vec<String>,
    /// Problems fixed by `--repair`.
    pub repaired: Vec<String>,
}

/// The bytes a file or tree takes (the sum of its regular files' sizes and nothing for
/// the rest: what deleting it gives back, near enough).
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    fs::read_dir(path).map_or(0, |rd| rd.flatten().map(|e| tree_size(&e.path())).sum())
}

fn remove_path(path: &Path) -> std::io::Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Removes `paths` (files or trees), a crash point after each; returns the bytes given back.
fn remove_all(paths: &[PathBuf]) -> Result<u64, ImageError> {
    let mut freed = 0;
    for p in paths {
        freed += tree_size(p);
        remove_path(p).map_err(io_err(p))?;
        crash_point();
    }
    Ok(freed)
}

/// Whether the process that made the `tmp/` entry `name` (`<what>.<pid>.<n>`) is gone.
fn owner_is_gone(name: &str) -> bool {
    let mut parts = name.rsplitn(3, '.');
    let (_, pid) = (parts.next(), parts.next());
    let Some(pid) = pid
        .and_then(|p| p.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return true;
    };
    matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

fn hash_file(path: &Path) -> std::io::Result<Digest> {
    let mut h = Hashing::new(std::io::sink());
    std::io::copy(&mut fs::File::open(path)?, &mut h)?;
    Ok(h.finish().0)
}

impl Store {
    /// `strata rmi`: untags and deletes images. Each input is done or refused on its own;
    /// what was done is returned with the errors of the refused ones.
    ///
    /// # Errors
    /// The store cannot be locked or read (nothing was done then).
    pub fn rmi(
        &self,
        inputs: &[String],
        force: bool,
        no_prune: bool,
    ) -> Result<(Vec<Removal>, Vec<ImageError>), ImageError> {
        let _lock = self.layout.lock()?;
        let mut idx = self.index()?;
        let before = idx.clone();
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for input in inputs {
            if let Err(e) = rmi_one(self, &mut idx, input, force, no_prune, &mut out) {
                errors.push(e);
            }
        }
        if !out.is_empty() {
            self.commit_removals(&before, &mut idx)?;
        }
        Ok((out, errors))
    }

    /// `strata image prune`: deletes dangling images (untagged, no child, no mount), or
    /// with `all` every image no mount uses, then every layer and blob nothing references
    /// and what interrupted commands left behind. Returns what was removed and the bytes
    /// given back.
    ///
    /// # Errors
    /// The store cannot be locked, read or written.
    pub fn prune(&self, all: bool) -> Result<(Vec<Removal>, u64), ImageError> {
        let _lock = self.layout.lock()?;
        let mut idx = self.index()?;
        let before = idx.clone();
        let mut out = Vec::new();
        loop {
            let victims: Vec<String> = idx
                .images
                .keys()
                .filter(|id| {
                    idx.children_of(id).is_empty()
                        && idx.mounts_of(id).is_empty()
                        && (all || idx.tags_of(id).is_empty())
                })
                .cloned()
                .collect();
            if victims.is_empty() {
                break;
            }
            for id in victims {
                untag_all(&mut idx, &id, &mut out);
                idx.images.remove(&id);
                out.push(Removal::Deleted(id));
            }
        }
        let freed = self.commit_removals(&before, &mut idx)?;
        let garbage = self.garbage(&idx)?;
        Ok((out, freed + remove_all(&garbage)?))
    }

    /// Drops the layers no image needs any more from `idx`, writes it, then deletes the
    /// data of what `before` had and `idx` has not. Returns the bytes given back.
    fn commit_removals(&self, before: &Index, idx: &mut Index) -> Result<u64, ImageError> {
        let used: BTreeSet<String> = idx
            .referenced_layers()
            .into_iter()
            .map(String::from)
            .collect();
        idx.layers.retain(|k, _| used.contains(k));
        idx.save(&self.layout)?;
        crash_point();
        let gone = before
            .images
            .keys()
            .filter(|k| !idx.images.contains_key(*k))
            .chain(
                before
                    .layers
                    .keys()
                    .filter(|k| !idx.layers.contains_key(*k)),
            );
        let mut paths = Vec::new();
        for key in gone {
            let Ok(d) = Digest::parse(key) else { continue };
            paths.push(self.layout.blob_path(&d));
            if before.layers.contains_key(key) {
                paths.push(self.layer_dir(key));
            }
        }
        remove_all(&paths)
    }

    /// What nothing references: staging left by dead processes, layer dirs and blobs no
    /// record names, mount dirs of no mount.
    fn garbage(&self, idx: &Index) -> Result<Vec<PathBuf>, ImageError> {
        let mut garbage: Vec<PathBuf> = Vec::new();
        let list = |dir: &Path| -> Result<Vec<(String, PathBuf)>, ImageError> {
            match fs::read_dir(dir) {
                Ok(rd) => Ok(rd
                    .flatten()
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(io_err(dir)(e)),
            }
        };
        for (name, path) in list(&self.layout.tmp_dir())? {
            if owner_is_gone(&name) {
                garbage.push(path);
            }
        }
        let layers: BTreeSet<&str> = idx.layers.keys().map(|k| hex_of(k)).collect();
        for (name, path) in list(&self.root().join("layers"))? {
            if name != "empty" && !layers.contains(name.as_str()) {
                garbage.push(path);
            }
        }
        let blobs = idx.referenced_blobs();
        for (name, path) in list(&self.root().join("blobs/sha256"))? {
            if !blobs.contains(&name) {
                garbage.push(path);
            }
        }
        for (name, path) in list(&self.root().join("mounts"))? {
            if !idx.mounts.contains_key(&name) {
                garbage.push(path);
            }
        }
        Ok(garbage)
    }

    /// `strata check [--repair]`: verifies every record against the data (digests of
    /// every blob, every layer dir, tags, parents, mounts) and reports each problem; with
    /// `repair`, removes garbage, unpacks a missing layer dir again from its tar and drops
    /// tags of missing images.
    ///
    /// # Errors
    /// The store cannot be locked or its index read.
    pub fn check(&self, repair: bool) -> Result<CheckReport, ImageError> {
        let _lock = self.layout.lock()?;
        let mut idx = self.index()?;
        let mut r = CheckReport {
            images: idx.images.len(),
            layers: idx.layers.len(),
            tags: idx.tags.len(),
            mounts: idx.mounts.len(),
            ..CheckReport::default()
        };
        let mut dirty = false;
        for (id, rec) in &idx.images {
            let short = short_id(id);
            match self.config(id) {
                Ok((_, config)) => {
                    if config.rootfs.diff_ids != rec.layers {
                        r.problems.push(format!(
                            "image {short}: its record's layers differ from its config's diff ids"
                        ));
                    }
                }
                Err(e) => r.problems.push(format!("image {short}: {e}")),
            }
            for l in &rec.layers {
                if !idx.layers.contains_key(l) {
                    r.problems.push(format!(
                        "image {short} needs layer {l}, which the store does not have"
                    ));
                }
            }
            if let Some(p) = &rec.parent {
                if !idx.images.contains_key(p) {
                    r.problems
                        .push(format!("image {short}: its parent {p} is not in the store"));
                }
            }
        }
        for key in idx.layers.keys() {
            let Ok(d) = Digest::parse(key) else {
                r.problems
                    .push(format!("layer record {key:?} is not a digest"));
                continue;
            };
            let blob = self.layout.blob_path(&d);
            let blob_ok = match hash_file(&blob) {
                Ok(actual) if actual == d => true,
                Ok(actual) => {
                    r.problems.push(format!(
                        "layer {key}: its tar is corrupted (it hashes to {actual})"
                    ));
                    false
                }
                Err(e) => {
                    r.problems
                        .push(format!("layer {key}: its tar {}: {e}", blob.display()));
                    false
                }
            };
            let dir = self.layer_dir(key);
            if !dir.is_dir() {
                if repair && blob_ok {
                    self.unpack_again(&d, &blob)?;
                    r.repaired
                        .push(format!("layer {key}: unpacked again from its tar"));
                } else {
                    r.problems.push(format!(
                        "layer {key}: its directory {} is missing",
                        dir.display()
                    ));
                }
            }
        }
        let dangling: Vec<String> = idx
            .tags
            .iter()
            .filter(|(_, id)| !idx.images.contains_key(*id))
            .map(|(t, _)| t.clone())
            .collect();
        for t in dangling {
            if repair {
                idx.tags.remove(&t);
                dirty = true;
                r.repaired.push(format!(
                    "tag {} named a missing image: removed",
                    familiar(&t)
                ));
            } else {
                r.problems.push(format!(
                    "tag {} names an image the store does not have",
                    familiar(&t)
                ));
            }
        }
        for t in idx.tags.keys() {
            if ImageRef::parse(t).is_err() {
                r.problems
                    .push(format!("tag {t:?} is not a valid reference"));
            }
        }
        for (id, m) in &idx.mounts {
            if !idx.images.contains_key(&m.image) {
                r.problems.push(format!(
                    "mount {}: its image {} is not in the store",
                    short_id(id),
                    m.image
                ));
            }
            let upper = self.mount_dir(id).join("upper");
            if !upper.is_dir() {
                r.problems.push(format!(
                    "mount {}: its upper {} is missing",
                    short_id(id),
                    upper.display()
                ));
            }
        }
        if dirty {
            idx.save(&self.layout)?;
        }
        let garbage = self.garbage(&idx)?;
        let left =
            |p: &PathBuf| format!("{} is left over from an interrupted command", p.display());
        if repair {
            remove_all(&garbage)?;
            r.repaired
                .extend(garbage.iter().map(|p| format!("{}: removed", left(p))));
        } else {
            r.problems.extend(
                garbage
                    .iter()
                    .map(|p| format!("{} (--repair removes it)", left(p))),
            );
        }
        Ok(r)
    }

    /// Unpacks layer `d` again from its (verified) tar into its directory.
    fn unpack_again(&self, d: &Digest, blob: &Path) -> Result<(), ImageError> {
        let layer = self.stage_layer(&format!("layer {d}"), |w| {
            let mut f = fs::File::open(blob).map_err(io_err(blob))?;
            std::io::copy(&mut f, w).map_err(io_err(blob))?;
            Ok(())
        })?;
        if layer.diff_id != *d {
            return Err(ImageError::Invalid(format!(
                "layer {d}: its tar changed while it was unpacked again"
            )));
        }
        let dir = self.layer_dir(&d.to_string());
        fs::rename(layer.root(), &dir).map_err(io_err(&dir))?;
        self.sync()
    }
}

fn untag_all(idx: &mut Index, id: &str, out: &mut Vec<Removal>) {
    let tags: Vec<String> = idx.tags_of(id).into_iter().map(String::from).collect();
    for t in tags {
        idx.tags.remove(&t);
        out.push(Removal::Untagged(familiar(&t)));
    }
}

fn rmi_one(
    store: &Store,
    idx: &mut Index,
    input: &str,
    force: bool,
    no_prune: bool,
    out: &mut Vec<Removal>,
) -> Result<(), ImageError> {
    let id = store.resolve(idx, input)?;
    let by_tag = ImageRef::parse(input)
        .ok()
        .map(|r| r.to_string())
        .filter(|k| idx.tags.get(k) == Some(&id));
    let in_use = |idx: &Index| -> Result<(), ImageError> {
        match idx.mounts_of(&id).first() {
            Some((mid, m)) if !force => Err(ImageError::InUse {
                image: input.to_string(),
                mount: short_id(mid).to_string(),
                mountpoint: m.mountpoint.display().to_string(),
                hint: " (strata rm the mount first, or -f to untag it anyway)",
            }),
            _ => Ok(()),
        }
    };
    match by_tag {
        Some(key) => {
            // One tag of several only goes; the last one is what a mount still needs.
            let last = idx.tags_of(&id).len() == 1;
            if last {
                in_use(idx)?;
            }
            idx.tags.remove(&key);
            out.push(Removal::Untagged(familiar(&key)));
            if !last {
                return Ok(());
            }
        }
        None => {
            in_use(idx)?;
            if !idx.children_of(&id).is_empty() {
                return Err(ImageError::HasChildren(short_id(&id).to_string()));
            }
            if idx.tags_of(&id).len() > 1 && !force {
                return Err(ImageError::MultipleTags(short_id(&id).to_string()));
            }
            untag_all(idx, &id, out);
        }
    }
    let mut next = Some(id);
    while let Some(id) = next.take() {
        let removable = idx.tags_of(&id).is_empty()
            && idx.children_of(&id).is_empty()
            && idx.mounts_of(&id).is_empty();
        if !removable {
            break;
        }
        let rec = idx.images.remove(&id);
        out.push(Removal::Deleted(id));
        if !no_prune {
            // Untagged parents nothing else needs go with it, as in docker.
            next = rec.and_then(|r| r.parent);
        }
    }
    Ok(())
}
