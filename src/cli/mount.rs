//! `strata mount` and `strata umount`.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::error::MountError;
use crate::fuse::daemon::{self, MountRequest};
use crate::fuse::options::MountOptions;

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
    /// [SOURCE] MOUNTPOINT (SOURCE, as mount.fuse3 passes it, is ignored).
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required = true)]
    pub positional: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Detach now and clean up once the mount is no longer busy.
    #[arg(short = 'l', long = "lazy")]
    pub lazy: bool,
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

pub fn mount(a: MountArgs) -> anyhow::Result<()> {
    let req = request(&a)?;
    daemon::mount(&req).with_context(|| format!("cannot mount {}", req.mountpoint.display()))
}

pub fn umount(a: UmountArgs) -> anyhow::Result<()> {
    Ok(daemon::umount(&a.mountpoint, a.lazy)?)
}
