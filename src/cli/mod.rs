//! The command line: clap definitions and dispatch, one file per command family.
//!
//! `strata` is also called the way fuse-overlayfs is: with no subcommand
//! (`strata -o lowerdir=… MNT`, as containers/storage calls its `mount_program`) and as
//! `strata SOURCE MNT -o …` (as `mount.fuse3` calls a `fuse.strata` type). [`normalize`]
//! turns those forms into `strata mount …` before clap parses anything.

pub mod mount;

use std::ffi::OsString;

use clap::{Parser, Subcommand};

/// strata: a userspace union filesystem and daemonless image store.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a layer stack (fuse-overlayfs compatible options).
    Mount(mount::MountArgs),
    /// Unmount a strata mount.
    #[command(alias = "unmount")]
    Umount(mount::UmountArgs),
}

const SUBCOMMANDS: &[&str] = &[
    "mount",
    "umount",
    "unmount",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

/// Rewrites the fuse-overlayfs call forms into `strata mount …`.
pub fn normalize(args: Vec<OsString>) -> Vec<OsString> {
    match args.get(1) {
        Some(first) if SUBCOMMANDS.iter().any(|s| first == s) => args,
        Some(_) => {
            let mut out = Vec::with_capacity(args.len() + 1);
            let mut it = args.into_iter();
            out.extend(it.next());
            out.push("mount".into());
            out.extend(it);
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
    match cli.command {
        Command::Mount(a) => mount::mount(a),
        Command::Umount(a) => mount::umount(a),
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
