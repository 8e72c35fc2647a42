//! New layers and images: `import`, `commit`, `tag`.
//!
//! A layer is made in a staging directory of `tmp/` (its tar, hashed as it is written,
//! then unpacked next to it), synced, and published under the store lock by renaming the
//! tar into `blobs/` and the unpacked tree into `layers/`, then naming both, with the new
//! image and its tag, in one atomic write of the index.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diff::{self, Source};
use super::index::{ImageRecord, LayerRecord};
use super::layout::{crash_point, Hashing};
use super::oci::{History, ImageConfig, RootFs, RunConfig};
use super::progress::{Counting, Progress};
use super::reference::{Digest, ImageRef};
use super::time::Timestamp;
use super::unpack::{self, Limits};
use super::{io_err, ImageError, Store};

/// A staging directory in `tmp/`, removed when dropped (a crash leaves it to `check
/// --repair` and `image prune`, which know its owner is gone by the pid in its name).
pub(crate) struct Stage {
    pub dir: PathBuf,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// A layer made in a stage, not yet published.
pub(crate) struct StagedLayer {
    stage: Stage,
    pub diff_id: Digest,
    pub record: LayerRecord,
}

/// Writes everything to both writers.
struct Tee<A: Write, B: Write>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Whether `e` comes from writing into a pipe whose reader has stopped.
fn is_broken_pipe(e: &ImageError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

impl StagedLayer {
    fn tar(&self) -> PathBuf {
        self.stage.dir.join("layer.tar")
    }

    pub(super) fn root(&self) -> PathBuf {
        self.stage.dir.join("root")
    }
}

/// One `--change` of `commit`, in Dockerfile syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Env(String, String),
    Label(String, String),
    Workdir(String),
    User(String),
    Expose(String),
}

impl Change {
    /// Parses `CMD ["a","b"]`, `CMD a b`, `ENV K=V`, `ENV K V`, `LABEL K=V`, `WORKDIR /x`,
    /// `USER u`, `ENTRYPOINT …`, `EXPOSE 80[/tcp]`.
    ///
    /// # Errors
    /// An instruction this does not know, or a malformed argument, named.
    pub fn parse(s: &str) -> Result<Change, ImageError> {
        let bad = |why: &str| ImageError::Invalid(format!("change {s:?}: {why}"));
        let s = s.trim();
        let (op, rest) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
        let rest = rest.trim();
        let words = || -> Result<Vec<String>, ImageError> {
            if rest.starts_with('[') {
                serde_json::from_str::<Vec<String>>(rest)
                    .map_err(|_| bad("not a JSON array of strings"))
            } else if rest.is_empty() {
                Err(bad("nothing after the instruction"))
            } else {
                Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
            }
        };
        let pair = || -> Result<(String, String), ImageError> {
            let (k, v) = match rest.split_once('=') {
                Some((k, v)) if !k.contains(char::is_whitespace) => (k, v),
                _ => rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| bad("expected KEY=VALUE"))?,
            };
            if k.is_empty() {
                return Err(bad("an empty key"));
            }
            Ok((k.to_string(), v.trim().trim_matches('"').to_string()))
        };
        let one = || -> Result<String, ImageError> {
            match rest.is_empty() {
                true => Err(bad("nothing after the instruction")),
                false => Ok(rest.to_string()),
            }
        };
        Ok(match op.to_ascii_uppercase().as_str() {
            "CMD" => Change::Cmd(words()?),
            "ENTRYPOINT" => Change::Entrypoint(words()?),
            "ENV" => {
                let (k, v) = pair()?;
                Change::Env(k, v)
            }
            "LABEL" => {
                let (k, v) = pair()?;
                Change::Label(k, v)
            }
            "WORKDIR" => Change::Workdir(one()?),
            "USER" => Change::User(one()?),
            "EXPOSE" => {
                let p = one()?;
                let port = if p.contains('/') {
                    p
                } else {
                    format!("{p}/tcp")
                };
                let (num, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
                if num.parse::<u16>().is_err() || !matches!(proto, "tcp" | "udp" | "sctp") {
                    return Err(bad("expected PORT[/tcp|udp|sctp]"));
                }
                Change::Expose(port)
            }
            _ => {
                return Err(bad(
                    "expected CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER or WORKDIR",
                ))
            }
        })
    }

    fn apply(&self, c: &mut RunConfig) {
        match self {
            Change::Cmd(v) => c.cmd = Some(v.clone()),
            Change::Entrypoint(v) => c.entrypoint = Some(v.clone()),
            Change::Env(k, v) => {
                let env = c.env.get_or_insert_with(Vec::new);
                let prefix = format!("{k}=");
                env.retain(|e| !e.starts_with(&prefix));
                env.push(format!("{k}={v}"));
            }
            Change::Label(k, v) => {
                c.labels
                    .get_or_insert_with(Default::default)
                    .insert(k.clone(), v.clone());
            }
            Change::Workdir(w) => c.working_dir = Some(w.clone()),
            Change::User(u) => c.user = Some(u.clone()),
            Change::Expose(p) => {
                c.exposed_ports
                    .get_or_insert_with(Default::default)
                    .insert(p.clone(), serde_json::json!({}));
            }
        }
    }
}

/// What `commit` records besides the layer.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    pub message: Option<String>,
    pub author: Option<String>,
    pub changes: Vec<Change>,
}

/// The architecture name OCI uses for this machine.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl Store {
    pub(crate) fn stage(&self) -> Result<Stage, ImageError> {
        let dir = self.layout.tmp_path("stage");
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        Ok(Stage { dir })
    }

    /// Makes a layer in a new stage from the tar `produce` writes (uncompressed): the tar
    /// is hashed and kept as the blob, and unpacked as it is written, by a second thread
    /// reading it from a pipe (making the layer's inodes is most of a commit's time; this way
    /// it overlaps with reading the tree).
    pub(super) fn stage_layer(
        &self,
        what: &str,
        produce: impl FnOnce(&mut dyn Write) -> Result<(), ImageError>,
    ) -> Result<StagedLayer, ImageError> {
        let stage = self.stage()?;
        let tar = stage.dir.join("layer.tar");
        let root = stage.dir.join("root");
        fs::create_dir(&root).map_err(io_err(&root))?;
        let (reader, writer) = std::io::pipe().map_err(io_err(&stage.dir))?;
        // A larger pipe means fewer switches between the threads; the default works too.
        let _ = rustix::pipe::fcntl_setpipe_size(&writer, 1 << 20);
        let unpacker = std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 20, reader);
            let stats = unpack::unpack(&mut r, &root, &Limits::default());
            // Whatever follows the end of the archive is part of the tar (and its hash);
            // a reader that stops here leaves the writer a closed pipe, which it reports.
            if let Err(e) = std::io::copy(&mut r, &mut std::io::sink()) {
                log::warn!("reading past the end of the tar: {e}");
            }
            stats
        });
        let file = File::create(&tar).map_err(io_err(&tar))?;
        let progress = Progress::start(format!("layer of {what}"));
        let mut w = Hashing::new(Counting {
            inner: Tee(
                BufWriter::with_capacity(1 << 20, file),
                BufWriter::with_capacity(1 << 20, writer),
            ),
            count: Arc::clone(&progress.count),
        });
        let produced = produce(&mut w).and_then(|()| w.flush().map_err(io_err(&tar)));
        let (diff_id, tar_size, tee) = w.finish();
        drop(tee);
        drop(progress);
        let unpacked = unpacker
            .join()
            .map_err(|_| ImageError::Invalid(format!("{what}: the unpacking thread failed")))?;
        let stats = match (produced, unpacked) {
            (Ok(()), Ok(stats)) => stats,
            // A tar the reader refused stops it, and the writer then meets a closed pipe:
            // the reader's error names the entry. A writer that failed cut the tar short:
            // its own error says why.
            (Err(e), Err(source)) if is_broken_pipe(&e) => {
                log::debug!("{what}: writing stopped too: {e}");
                return Err(ImageError::Unpack {
                    what: what.to_string(),
                    source,
                });
            }
            (Err(e), _) => return Err(e),
            (Ok(()), Err(source)) => {
                return Err(ImageError::Unpack {
                    what: what.to_string(),
                    source,
                })
            }
        };
        crash_point();
        Ok(StagedLayer {
            stage,
            diff_id,
            record: LayerRecord {
                size: stats.bytes,
                tar_size,
                entries: stats.entries,
            },
        })
    }

    /// Publishes a staged layer and a new image on it (and the tag), atomically.
    fn publish(
        &self,
        layer: &StagedLayer,
        config: &ImageConfig,
        parent: Option<String>,
        tag: Option<&ImageRef>,
    ) -> Result<String, ImageError> {
        let config_bytes = config.to_bytes().map_err(|source| ImageError::Config {
            id: "(new)".into(),
            source,
        })?;
        let layers = config.rootfs.diff_ids.clone();
        let created = config
            .created
            .clone()
            .unwrap_or_else(|| Timestamp::now().rfc3339());
        let _lock = self.layout.lock()?;
        let mut idx = self.index()?;
        let key = layer.diff_id.to_string();
        if let std::collections::btree_map::Entry::Vacant(slot) = idx.layers.entry(key.clone()) {
            let blob = self.layout.blob_path(&layer.diff_id);
            fs::rename(layer.tar(), &blob).map_err(io_err(&blob))?;
            crash_point();
            let dir = self.layer_dir(&key);
            if dir.exists() {
                // Left by an interrupted command before it was named: garbage.
                fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
            }
            fs::rename(layer.root(), &dir).map_err(io_err(&dir))?;
            crash_point();
            slot.insert(layer.record);
        }
        let id = self.layout.put_blob(&config_bytes)?.to_string();
        let now = Timestamp::now().rfc3339();
        idx.images.insert(
            id.clone(),
            ImageRecord {
                created,
                layers,
                parent,
                last_tag_time: tag.map(|_| now),
            },
        );
        if let Some(t) = tag {
            idx.tags.insert(t.to_string(), id.clone());
        }
        self.sync()?;
        crash_point();
        idx.save(&self.layout)?;
        crash_point();
        Ok(id)
    }

    /// Flushes everything written to the store's filesystem (data before the records that
    /// name it).
    pub(crate) fn sync(&self) -> Result<(), ImageError> {
        let root = self.root();
        let f = File::open(root).map_err(io_err(root))?;
        rustix::fs::syncfs(f.as_fd()).map_err(|e| io_err(root)(e.into()))
    }

    /// `strata import`: a new single-layer image from a directory or a layer tar (plain
    /// or gzip), tagged `tag` when given. Returns the image id.
    ///
    /// # Errors
    /// A source that cannot be read or is not a valid layer, named.
    pub fn import(
        &self,
        src: &Path,
        tag: Option<&ImageRef>,
        message: Option<String>,
    ) -> Result<String, ImageError> {
        let meta = fs::metadata(src).map_err(io_err(src))?;
        let what = src.display().to_string();
        let spool = self.layout.tmp_dir();
        let layer = if meta.is_dir() {
            self.stage_layer(&what, |w| {
                diff::write_layer(&Source::Base(src.to_path_buf()), &spool, w)?;
                Ok(())
            })?
        } else {
            self.stage_layer(&what, |w| {
                let f = File::open(src).map_err(io_err(src))?;
                let mut r = BufReader::with_capacity(1 << 20, f);
                let gzip = {
                    use std::io::BufRead;
                    let head = r.fill_buf().map_err(io_err(src))?;
                    head.starts_with(&[0x1f, 0x8b])
                };
                let mut r: Box<dyn Read> = match gzip {
                    true => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
                    false => Box::new(r),
                };
                std::io::copy(&mut r, w).map_err(|e| ImageError::Io {
                    path: src.to_path_buf(),
                    source: std::io::Error::new(e.kind(), format!("reading the layer: {e}")),
                })?;
                Ok(())
            })?
        };
        let now = Timestamp::now().rfc3339();
        let config = ImageConfig {
            created: Some(now.clone()),
            architecture: host_arch().into(),
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![layer.diff_id.to_string()],
            },
            history: vec![History {
                created: Some(now),
                created_by: Some(format!("strata import {}", src.display())),
                comment: Some(
                    message.unwrap_or_else(|| format!("Imported from {}", src.display())),
                ),
                ..History::default()
            }],
            ..ImageConfig::default()
        };
        self.publish(&layer, &config, None, tag)
    }

    /// `strata commit`: the upper of mount `mount` becomes a new layer on the mounted
    /// image, and a new image (tagged `tag` when given). Returns the image id.
    ///
    /// # Errors
    /// No such mount, a changed file that would not hold still, or an I/O error, named.
    pub fn commit(
        &self,
        mount: &str,
        tag: Option<&ImageRef>,
        opts: CommitOptions,
    ) -> Result<String, ImageError> {
        let idx = self.index()?;
        let mid = self.find_mount(&idx, mount)?;
        let parent = idx.mounts[&mid].image.clone();
        let (_, parent_config) = self.config(&parent)?;
        let lowers: Vec<PathBuf> = parent_config
            .rootfs
            .diff_ids
            .iter()
            .rev()
            .map(|d| self.layer_dir(d))
            .collect();
        let upper = self.mount_dir(&mid).join("upper");
        let spool = self.layout.tmp_dir();
        let layer = self.stage_layer(
            &format!("the upper of mount {}", super::short_id(&mid)),
            |w| {
                diff::write_layer(&Source::Diff { upper, lowers }, &spool, w)?;
                Ok(())
            },
        )?;
        let now = Timestamp::now().rfc3339();
        let mut config = parent_config;
        config.created = Some(now.clone());
        if opts.author.is_some() {
            config.author.clone_from(&opts.author);
        }
        if !opts.changes.is_empty() {
            let run = config.config.get_or_insert_with(RunConfig::default);
            for c in &opts.changes {
                c.apply(run);
            }
        }
        config.rootfs.diff_ids.push(layer.diff_id.to_string());
        config.history.push(History {
            created: Some(now),
            created_by: Some("strata commit".into()),
            author: opts.author,
            comment: opts.message,
            empty_layer: false,
        });
        self.publish(&layer, &config, Some(parent), tag)
    }

    /// `strata tag SRC DST`.
    ///
    /// # Errors
    /// A malformed reference or no such image.
    pub fn tag(&self, src: &str, dst: &str) -> Result<(), ImageError> {
        let dst = ImageRef::parse(dst)?;
        if dst.digest.is_some() {
            return Err(ImageError::Invalid(format!(
                "{dst}: a tag cannot name a digest"
            )));
        }
        let _lock = self.layout.lock()?;
        let mut idx = self.index()?;
        let id = self.resolve(&idx, src)?;
        idx.tags.insert(dst.to_string(), id.clone());
        if let Some(r) = idx.images.get_mut(&id) {
            r.last_tag_time = Some(Timestamp::now().rfc3339());
        }
        idx.save(&self.layout)?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_as_dockerfile_instructions() {
        assert_eq!(
            Change::parse(r#"CMD ["a", "b"]"#).unwrap(),
            Change::Cmd(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            Change::parse("cmd echo hi").unwrap(),
            Change::Cmd(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(
            Change::parse("ENV A=b c").unwrap(),
            Change::Env("A".into(), "b c".into())
        );
        assert_eq!(
            Change::parse("ENV A b").unwrap(),
            Change::Env("A".into(), "b".into())
        );
        assert_eq!(
            Change::parse("EXPOSE 80").unwrap(),
            Change::Expose("80/tcp".into())
        );
        for bad in ["", "FROM x", "EXPOSE http", "CMD", "CMD [1]", "ENV =x"] {
            assert!(Change::parse(bad).is_err(), "{bad}");
        }
    }
}
