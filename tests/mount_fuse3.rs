//! mount(8) → mount.fuse3 → strata: the `SOURCE MOUNTPOINT -o OPTIONS` call form.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::fs;
use std::process::Command;

/// mount(8) resets PATH, so the program is named by path: `-t fuse PROGRAM#SOURCE`.
fn mount_fuse(s: &Scratch, opts: &str) -> std::process::Output {
    assert!(
        std::path::Path::new("/sbin/mount.fuse3").exists(),
        "mount.fuse3 is missing: `cargo xtask test` installs fuse3"
    );
    Command::new("mount")
        .args([
            "-t",
            "fuse",
            &format!("{}#anything", strata_bin()),
            s.mnt().to_str().unwrap(),
            "-o",
            opts,
        ])
        .output()
        .unwrap()
}

#[test]
fn mount_fuse3_form_mounts_and_unmounts() {
    let s = Scratch::new();
    put(&s.lower(0).join("hello"), "hi");
    let out = mount_fuse(&s, &s.opts(1));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = StrataMountGuard::adopt(s.mnt());
    assert_eq!(fs::read_to_string(m.path("hello")).unwrap(), "hi");
    fs::write(m.path("new"), "x").unwrap();
    assert_eq!(fs::read_to_string(s.upper().join("new")).unwrap(), "x");
}

#[test]
fn mount_fuse3_form_refuses_unknown_options() {
    let s = Scratch::new();
    let out = mount_fuse(&s, &format!("{},frobnicate", s.opts(1)));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option 'frobnicate'"));
    assert!(!fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .contains(s.mnt().to_str().unwrap()));
}
