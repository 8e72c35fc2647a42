//! A minimal OCI image layout export (`oci-layout`, `index.json`, `blobs/sha256/`): the
//! image's config as stored, its layers gzipped (fixed header, so the same layer always
//! gives the same blob), and a manifest. Enough for umoci and skopeo to read; the full
//! `save`/`load` comes later.

use std::fs::{self, File};
use std::path::Path;

use flate2::{Compression, GzBuilder};
use serde_json::json;

use super::layout::{sha256, Hashing};
use super::reference::Digest;
use super::{io_err, ImageError, Store};

fn write_blob(dir: &Path, data: &[u8]) -> Result<(Digest, u64), ImageError> {
    let d = sha256(data);
    let p = dir.join(d.hex());
    fs::write(&p, data).map_err(io_err(&p))?;
    Ok((d, data.len() as u64))
}

impl Store {
    /// Writes image `id` as an OCI image layout in `dir`, tagged `name` there. Returns the
    /// manifest digest.
    ///
    /// # Errors
    /// A missing or corrupt blob, or an I/O error naming the file.
    pub fn export_oci(&self, id: &str, dir: &Path, name: &str) -> Result<Digest, ImageError> {
        let (config_bytes, config) = self.config(id)?;
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
        let mut layers = Vec::new();
        for diff in config.diff_ids().map_err(|source| ImageError::Config {
            id: id.to_string(),
            source,
        })? {
            let src = self.layout.blob_path(&diff);
            let tmp = blobs.join(format!(".{}.gz.tmp", diff.hex()));
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let out = Hashing::new(file);
            let gz = GzBuilder::new().mtime(0).write(out, Compression::default());
            // The tar is hashed on its way into the gzip stream: a corrupted one is refused.
            let mut tar = Hashing::new(gz);
            let mut r = File::open(&src).map_err(io_err(&src))?;
            std::io::copy(&mut r, &mut tar).map_err(io_err(&tmp))?;
            let (check, _, gz) = tar.finish();
            if check != diff {
                let _ = fs::remove_file(&tmp);
                return Err(ImageError::Invalid(format!(
                    "layer {diff}: its tar in the store is corrupted (strata check)"
                )));
            }
            let (digest, size, _) = gz.finish().map_err(io_err(&tmp))?.finish();
            let dst = blobs.join(digest.hex());
            fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
            layers.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest.to_string(),
                "size": size,
            }));
        }
        let (cd, cs) = write_blob(&blobs, &config_bytes)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": cd.to_string(),
                "size": cs,
            },
            "layers": layers,
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| ImageError::Invalid(e.to_string()))?;
        let (md, ms) = write_blob(&blobs, &manifest_bytes)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md.to_string(),
                "size": ms,
                "annotations": {"org.opencontainers.image.ref.name": name},
            }],
        });
        let p = dir.join("oci-layout");
        fs::write(&p, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(&p))?;
        let p = dir.join("index.json");
        let bytes = serde_json::to_vec(&index).map_err(|e| ImageError::Invalid(e.to_string()))?;
        fs::write(&p, bytes).map_err(io_err(&p))?;
        Ok(md)
    }
}
