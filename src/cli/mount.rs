//! `strata mount` and `strata umount`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;

use crate::error::MountError;
use crate::fuse::daemon::{self, MountRequest};
use crate::fuse::options::MountOptions;
use crate::store::mounts::is_mounted;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct MountArgs {
    /// Mount options: lowerdir=TOP:…:BOTTOM,upperdir=DIR,workdir=DIR and more (see README).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground.
    #[arg(short = 'f')]
    pub foreground: bool,
    /// Debug log on stderr (implies -f).
    #[arg(short = 'd')]
    pub debug: bool,
    /// [SOURCE] MOUNTPOINT (SOURCE, as mount.fuse3 passes it, is ignored), or IMAGE
    /// MOUNTPOINT without lowerdir= (a mount of a store image).
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required = true)]
    pub positional: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Detach now and clean up once the mount is no longer busy.
    #[arg(short = 'l', long = "lazy")]
    pub lazy: bool,
    /// The mountpoint, or the id of a mount of the store.
    pub mountpoint: PathBuf,
}

/// Parses the arguments into a mount request.
///
/// # Errors
/// An unknown or malformed option, by name.
pub fn request(a: &MountArgs) -> Result<MountRequest, MountError> {
    let mut options = MountOptions::default();
    for o in &a.options {
        options.parse(o)?;
    }
    if a.debug {
        options.debug = true;
    }
    let mountpoint = match a.positional.as_slice() {
        [m] | [_, m] => PathBuf::from(m),
        _ => return Err(MountError::NoMountpoint),
    };
    let foreground = a.foreground || options.debug;
    Ok(MountRequest {
        options,
        mountpoint,
        foreground,
    })
}

/// Whether the arguments are `IMAGE MOUNTPOINT` (a mount of a store image) rather than
/// fuse-overlayfs's form, which always names its lower dirs.
fn is_image_mount(a: &MountArgs) -> bool {
    a.positional.len() == 2 && !a.options.iter().any(|o| o.contains("lowerdir="))
}

pub fn mount(a: MountArgs, root: &Path) -> anyhow::Result<()> {
    if is_image_mount(&a) {
        return mount_image(a, root);
    }
    let req = request(&a)?;
    daemon::mount(&req).with_context(|| format!("cannot mount {}", req.mountpoint.display()))
}

/// `strata mount IMAGE MOUNTPOINT [-o …]`: the image's layers under a fresh upper kept in
/// the store; prints the mount's id.
fn mount_image(a: MountArgs, root: &Path) -> anyhow::Result<()> {
    let image = a.positional[0].to_string_lossy().into_owned();
    let mnt = PathBuf::from(&a.positional[1]);
    let canon =
        std::fs::canonicalize(&mnt).with_context(|| format!("mountpoint {}", mnt.display()))?;
    if !canon.is_dir() {
        bail!("mountpoint {} is not a directory", mnt.display());
    }
    let store = Store::open(root).with_context(|| format!("store {}", root.display()))?;
    let new = store.create_mount(&image, &canon)?;
    let mut req = request(&MountArgs {
        positional: vec![canon.clone().into()],
        ..a
    })?;
    req.options.lowers = new.lowers;
    req.options.upper = Some(new.upper);
    req.options.work = Some(new.work);
    if let Err(e) = daemon::mount(&req) {
        if let Err(e2) = store.remove_mount(&new.id) {
            log::warn!("cannot forget the failed mount {}: {e2}", new.id);
        }
        return Err(anyhow::Error::new(e).context(format!("cannot mount {}", mnt.display())));
    }
    println!("{}", new.id);
    Ok(())
}

/// `strata umount MOUNTPOINT|MOUNT-ID`: a mountpoint first; else a mount of the store.
pub fn umount(a: UmountArgs, root: &Path) -> anyhow::Result<()> {
    let as_path = std::fs::canonicalize(&a.mountpoint)
        .ok()
        .filter(|p| is_mounted(p));
    if as_path.is_none() && root.join("index.json").exists() {
        let store = Store::open(root).with_context(|| format!("store {}", root.display()))?;
        let idx = store.index()?;
        if let Ok(id) = store.find_mount(&idx, &a.mountpoint.to_string_lossy()) {
            let mp = &idx.mounts[&id].mountpoint;
            if !is_mounted(mp) {
                bail!("mount {} is not mounted", crate::store::short_id(&id));
            }
            return Ok(daemon::umount(mp, a.lazy)?);
        }
    }
    Ok(daemon::umount(&a.mountpoint, a.lazy)?)
}
