//! The command line: clap definitions and dispatch, one file per command family.
//!
//! `strata` is also called the way fuse-overlayfs is: with no subcommand
//! (`strata -o lowerdir=… MNT`, as containers/storage calls its `mount_program`) and as
//! `strata SOURCE MNT -o …` (as `mount.fuse3` calls a `fuse.strata` type). [`normalize`]
//! turns those forms into `strata mount …` before clap parses anything.

pub mod image;
pub mod mount;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// strata: a userspace union filesystem and daemonless image store.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, long_about = None)]
pub struct Cli {
    /// The image store (default /var/lib/strata for root, $XDG_DATA_HOME/strata otherwise).
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a layer stack (fuse-overlayfs options) or an image of the store (IMAGE MOUNTPOINT).
    Mount(mount::MountArgs),
    /// Unmount a strata mount (by mountpoint, or a store mount by id).
    #[command(alias = "unmount")]
    Umount(mount::UmountArgs),
    /// Make a single-layer image from a directory or a layer tar.
    Import(image::ImportArgs),
    /// List images.
    Images(image::ImagesArgs),
    /// Show images as JSON.
    Inspect(image::InspectArgs),
    /// Show an image's history.
    History(image::HistoryArgs),
    /// Give an image another name.
    Tag(image::TagArgs),
    /// Remove images.
    Rmi(image::RmiArgs),
    /// Make a new image from a mount's changes.
    Commit(image::CommitArgs),
    /// List the mounts of images.
    Ps(image::PsArgs),
    /// Remove mounts of images (and their changes).
    Rm(image::RmArgs),
    /// Verify the store; --repair fixes what can be fixed.
    Check(image::CheckArgs),
    /// Write an image as an OCI image layout directory.
    #[command(name = "export-oci")]
    ExportOci(image::ExportArgs),
    /// Manage images (docker's aliases: ls, rm, prune, inspect, history, tag, import).
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
}

const SUBCOMMANDS: &[&str] = &[
    "mount",
    "umount",
    "unmount",
    "import",
    "images",
    "inspect",
    "history",
    "tag",
    "rmi",
    "commit",
    "ps",
    "rm",
    "check",
    "export-oci",
    "image",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

/// Rewrites the fuse-overlayfs call forms into `strata mount …`.
pub fn normalize(args: Vec<OsString>) -> Vec<OsString> {
    // Skip the global `--root DIR` / `--root=DIR` before the subcommand.
    let mut i = 1;
    while let Some(a) = args.get(i) {
        if a == "--root" {
            i += 2;
        } else if a.to_string_lossy().starts_with("--root=") {
            i += 1;
        } else {
            break;
        }
    }
    match args.get(i) {
        Some(first) if SUBCOMMANDS.iter().any(|s| first == s) => args,
        Some(_) => {
            let mut out = args;
            out.insert(i, "mount".into());
            out
        }
        None => args,
    }
}

/// Runs the parsed command.
///
/// # Errors
/// Whatever the command reports; `main` prints it and exits non-zero.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let root = cli.root.unwrap_or_else(crate::store::layout::default_root);
    let root = root.as_path();
    match cli.command {
        Command::Mount(a) => mount::mount(a, root),
        Command::Umount(a) => mount::umount(a, root),
        Command::Import(a) => image::import(root, a),
        Command::Images(a) => image::images(root, a),
        Command::Inspect(a) => image::inspect(root, a),
        Command::History(a) => image::history(root, a),
        Command::Tag(a) => image::tag(root, a),
        Command::Rmi(a) => image::rmi(root, a),
        Command::Commit(a) => image::commit(root, a),
        Command::Ps(a) => image::ps(root, a),
        Command::Rm(a) => image::rm(root, a),
        Command::Check(a) => image::check(root, a),
        Command::ExportOci(a) => image::export(root, a),
        Command::Image { command } => match command {
            image::ImageCommand::Ls(a) => image::images(root, a),
            image::ImageCommand::Rm(a) => image::rmi(root, a),
            image::ImageCommand::Prune(a) => image::prune(root, a),
            image::ImageCommand::Inspect(a) => image::inspect(root, a),
            image::ImageCommand::History(a) => image::history(root, a),
            image::ImageCommand::Tag(a) => image::tag(root, a),
            image::ImageCommand::Import(a) => image::import(root, a),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn bare_forms_become_mount() {
        assert_eq!(
            normalize(v(&["strata", "-o", "lowerdir=/a", "/m"])),
            v(&["strata", "mount", "-o", "lowerdir=/a", "/m"])
        );
        assert_eq!(
            normalize(v(&["strata", "src", "/m", "-o", "x"])),
            v(&["strata", "mount", "src", "/m", "-o", "x"])
        );
        assert_eq!(
            normalize(v(&["strata", "umount", "/m"])),
            v(&["strata", "umount", "/m"])
        );
        assert_eq!(
            normalize(v(&["strata", "--help"])),
            v(&["strata", "--help"])
        );
        assert_eq!(
            normalize(v(&["strata", "--root", "/r", "images"])),
            v(&["strata", "--root", "/r", "images"])
        );
        assert_eq!(
            normalize(v(&["strata", "--root=/r", "-o", "x", "/m"])),
            v(&["strata", "--root=/r", "mount", "-o", "x", "/m"])
        );
    }

    #[test]
    fn mount_accepts_options_before_and_after_the_mountpoint() {
        let cli = Cli::try_parse_from(normalize(v(&[
            "strata",
            "src",
            "/m",
            "-o",
            "lowerdir=/a",
            "-f",
        ])))
        .unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not a mount")
        };
        assert_eq!(m.positional, v(&["src", "/m"]));
        assert_eq!(m.options, vec!["lowerdir=/a".to_string()]);
        assert!(m.foreground);
    }
}
