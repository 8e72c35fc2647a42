//! The on-disk format, both ways: an upper written by strata must show the same tree under
//! the kernel's overlayfs, and an upper written by the kernel (with the options of
//! [`KERNEL_OPTS`]: redirects of renamed directories) must show the same tree under strata. The lowers are in kernel
//! format only (0/0 whiteouts, `trusted.overlay.opaque`), as the kernel reads no `.wh.` files.
//!
//! The same sequence of changes also runs on a kernel mount of the same lowers with its own
//! upper, and the resulting views must be equal (a differential test of the semantics).
//! Compared: names, types, modes, owners, sizes, data, symlink targets, user xattrs, and
//! the link count of non-directories; not inode numbers, times or directory link counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use rustix::fs::{FileType, Mode, CWD};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

type Tree = BTreeMap<PathBuf, Seen>;

/// Asserts two snapshots are equal, listing every difference.
fn assert_same(got: &Tree, want: &Tree, what: &str) {
    let mut diffs = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => diffs.push(format!("missing {}: {w:?}", p.display())),
            Some(g) if g != w => diffs.push(format!(
                "differs {}:\n    got  {g:?}\n    want {w:?}",
                p.display()
            )),
            Some(_) => {}
        }
    }
    for (p, g) in got {
        if !want.contains_key(p) {
            diffs.push(format!("extra {}: {g:?}", p.display()));
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} differences:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
}

/// The link count of every non-directory below `root`.
fn links(root: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), m.nlink());
            }
        }
    }
    out
}

/// Everything a comparison looks at.
fn snapshot(root: &Path) -> (Tree, BTreeMap<PathBuf, u64>) {
    (tree(root), links(root))
}

fn assert_same_view(
    got: &(Tree, BTreeMap<PathBuf, u64>),
    want: &(Tree, BTreeMap<PathBuf, u64>),
    what: &str,
) {
    assert_same(&got.0, &want.0, what);
    assert_eq!(
        got.1, want.1,
        "{what}: link counts of non-directories differ"
    );
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(p: &Path, ft: FileType, mode: u32, dev: u64) {
    rustix::fs::mknodat(CWD, p, ft, Mode::from_raw_mode(mode), dev).unwrap();
}

/// Two lowers in kernel format: lower1 at the bottom, lower0 above it.
fn kernel_format_lowers(s: &Scratch) {
    let b = s.lower(1);
    put(&b.join("etc/config"), "config v1");
    put(&b.join("etc/passwd"), "root:x:0:0");
    put(&b.join("etc/old.d/a"), "a");
    put(&b.join("etc/old.d/sub/b"), "b");
    put(&b.join("bin/tool"), "tool v1");
    chmod(&b.join("bin/tool"), 0o755);
    symlink("tool", b.join("bin/link")).unwrap();
    put(&b.join("var/log/app.log"), "line 1\n");
    put(&b.join("home/user/.profile"), "export X=1");
    chmod(&b.join("home/user/.profile"), 0o600);
    chown(&b.join("home/user/.profile"), 1000, 1000);
    chmod(&b.join("home/user"), 0o700);
    chown(&b.join("home/user"), 1000, 1000);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    fs::create_dir_all(b.join("data")).unwrap();
    fs::write(b.join("data/big"), &big).unwrap();
    put(&b.join("data/xattr-file"), "has xattrs");
    set_xattr(&b.join("data/xattr-file"), "user.color", b"blue");
    set_xattr(&b.join("data/xattr-file"), "user.size", b"big");
    set_xattr(&b.join("data"), "user.dirattr", b"d");
    put(&b.join("data/trunc-me"), "0123456789");
    put(&b.join("opt/app/lib/libx.so"), "libx");
    put(&b.join("opt/app/README"), "old readme");
    put(&b.join("gone-in-lower0"), "hidden");
    put(&b.join("dir-gone/f"), "hidden too");
    put(&b.join("srv/keep"), "keep v1");
    fs::create_dir_all(b.join("emptydir")).unwrap();
    fs::create_dir_all(b.join("run")).unwrap();
    mknod(&b.join("run/fifo"), FileType::Fifo, 0o644, 0);
    put(&b.join("lowerdir-to-file/x"), "x");
    chown(&b.join("srv"), 5, 6);

    let t = s.lower(0);
    fs::create_dir_all(&t).unwrap();
    mknod_whiteout(&t.join("gone-in-lower0"));
    mknod_whiteout(&t.join("dir-gone"));
    put(&t.join("etc/config"), "config v2");
    put(&t.join("etc/old.d/c"), "c");
    put(&t.join("opt/app/lib/liby.so"), "liby");
    set_xattr(&t.join("opt/app"), "trusted.overlay.opaque", b"y");
    put(&t.join("bin/tool2"), "tool2");
    put(&t.join("var/log/other.log"), "other");
    chmod(&t.join("var/log"), 0o755);
    put(&t.join("srv/top"), "top");
    chown(&t.join("srv"), 5, 6);
}

/// The changes, made through whichever mount `m` is.
fn changes(m: &Path) {
    let rm_rf = |p: &str| {
        assert!(Command::new("rm")
            .arg("-rf")
            .arg(m.join(p))
            .status()
            .unwrap()
            .success())
    };
    // writes
    fs::write(m.join("etc/new.conf"), "new").unwrap();
    fs::write(m.join("etc/config"), "config v3").unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("var/log/app.log"))
        .unwrap()
        .write_all(b"line 2\n")
        .unwrap();
    // deletes, from either lower
    fs::remove_file(m.join("etc/passwd")).unwrap();
    fs::remove_file(m.join("bin/tool2")).unwrap();
    fs::remove_dir(m.join("emptydir")).unwrap();
    rm_rf("home/user");
    // rm -rf + mkdir of a merged dir
    rm_rf("etc/old.d");
    fs::create_dir(m.join("etc/old.d")).unwrap();
    fs::write(m.join("etc/old.d/fresh"), "fresh").unwrap();
    // renames of files
    fs::rename(m.join("bin/tool"), m.join("bin/tool.old")).unwrap();
    fs::write(m.join("bin/tool"), "tool v2").unwrap();
    chmod(&m.join("bin/tool"), 0o755);
    fs::write(m.join("tmpx"), "keep v2").unwrap();
    fs::rename(m.join("tmpx"), m.join("srv/keep")).unwrap();
    fs::rename(m.join("srv/top"), m.join("srv/top-renamed")).unwrap();
    // new dirs, and a rename of one
    fs::create_dir_all(m.join("new/dir/tree")).unwrap();
    fs::write(m.join("new/dir/tree/leaf"), "leaf").unwrap();
    fs::create_dir(m.join("empty-new")).unwrap();
    fs::rename(m.join("new/dir"), m.join("new/moved")).unwrap();
    // symlinks
    symlink("tool.old", m.join("bin/newlink")).unwrap();
    fs::remove_file(m.join("bin/link")).unwrap();
    symlink("/etc/passwd", m.join("abs")).unwrap();
    // hard links: of a lower file and of a new one
    fs::hard_link(m.join("data/xattr-file"), m.join("data/xattr-link")).unwrap();
    fs::hard_link(m.join("new/moved/tree/leaf"), m.join("new/leaf2")).unwrap();
    // metadata
    chmod(&m.join("bin/tool.old"), 0o700);
    chmod(&m.join("var/log"), 0o750);
    chown(&m.join("srv"), 1, 2);
    chown(&m.join("etc/new.conf"), 1001, 1002);
    // xattrs
    lsetxattr(&m.join("data/big"), "user.added", b"yes").unwrap();
    lremovexattr(&m.join("data/xattr-file"), "user.size").unwrap();
    lsetxattr(&m.join("opt/app"), "user.dir", b"app").unwrap();
    lsetxattr(&m.join("new/moved"), "user.newdir", b"n").unwrap();
    // truncate, special files
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("data/trunc-me"))
        .unwrap()
        .set_len(4)
        .unwrap();
    mknod(&m.join("run/fifo2"), FileType::Fifo, 0o600, 0);
    fs::remove_file(m.join("run/fifo")).unwrap();
    fs::create_dir(m.join("dev")).unwrap();
    mknod(
        &m.join("dev/null2"),
        FileType::CharacterDevice,
        0o666,
        rustix::fs::makedev(1, 3),
    );
    // a name replaced by another type, both ways
    fs::remove_file(m.join("opt/app/lib/liby.so")).unwrap();
    fs::create_dir(m.join("opt/app/lib/liby.so")).unwrap();
    rm_rf("lowerdir-to-file");
    fs::write(m.join("lowerdir-to-file"), "now a file").unwrap();
    // a name hidden in a lower layer made again
    fs::write(m.join("gone-in-lower0"), "back").unwrap();
    fs::create_dir(m.join("dir-gone")).unwrap();
    // directories with lower parts renamed (redirects): to another parent, in place, and
    // then the old name used again
    fs::rename(m.join("var/log"), m.join("logs")).unwrap();
    fs::write(m.join("logs/other.log"), "other v2").unwrap();
    fs::create_dir(m.join("var/log")).unwrap();
    fs::rename(m.join("bin"), m.join("bin2")).unwrap();
    fs::rename(m.join("etc/old.d"), m.join("old.d")).unwrap();
    fs::rename(m.join("old.d"), m.join("etc/old.d")).unwrap();
}

/// More changes, made on top of an upper the other side wrote.
fn more_changes(m: &Path) {
    fs::remove_file(m.join("etc/new.conf")).unwrap();
    fs::remove_file(m.join("etc/old.d/fresh")).unwrap();
    fs::remove_dir(m.join("etc/old.d")).unwrap();
    fs::write(m.join("etc/config"), "config v4").unwrap();
    fs::write(m.join("dir-gone/inside"), "in").unwrap();
    fs::rename(m.join("bin2/tool.old"), m.join("bin2/tool.older")).unwrap();
    fs::rename(m.join("logs"), m.join("var/log/logs")).unwrap();
    fs::rename(m.join("data"), m.join("var/data")).unwrap();
    fs::write(m.join("var/data/xattr-file"), "changed below a renamed dir").unwrap();
    fs::rename(m.join("var/data"), m.join("data")).unwrap();
    assert!(Command::new("rm")
        .arg("-rf")
        .arg(m.join("new"))
        .status()
        .unwrap()
        .success());
    lsetxattr(&m.join("srv/keep"), "user.again", b"1").unwrap();
    fs::remove_file(m.join("data/xattr-link")).unwrap();
    fs::write(m.join("var/log/logs/app.log"), "rotated\n").unwrap();
    assert!(Command::new("rm")
        .arg("-rf")
        .arg(m.join("bin2"))
        .status()
        .unwrap()
        .success());
    chmod(&m.join("data"), 0o711);
}

/// Checks a few points of the expected result directly, so that a change sequence that
/// silently did nothing on both sides cannot pass.
fn spot_checks(m: &Path) {
    let read = |p: &str| fs::read_to_string(m.join(p)).unwrap();
    assert_eq!(read("etc/config"), "config v3");
    assert_eq!(read("logs/app.log"), "line 1\nline 2\n");
    assert_eq!(read("logs/other.log"), "other v2");
    assert_eq!(read("bin2/tool"), "tool v2");
    assert!(names(&m.join("var/log")).is_empty());
    assert_eq!(names(&m.join("etc/old.d")), ["fresh"]);
    assert_eq!(names(&m.join("opt/app/lib")), ["liby.so"]);
    assert_eq!(read("srv/keep"), "keep v2");
    assert_eq!(read("gone-in-lower0"), "back");
    assert!(names(&m.join("dir-gone")).is_empty());
    assert!(!m.join("home/user").exists());
    assert!(!m.join("etc/passwd").exists());
    assert_eq!(fs::metadata(m.join("data/xattr-link")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.join("data/trunc-me")).unwrap().len(), 4);
    // the snapshot's xattr reader sees xattrs at all
    let x = xattrs(&m.join("data/xattr-file"));
    assert_eq!(
        x.get(std::ffi::OsStr::new("user.color")).map(Vec::as_slice),
        Some(&b"blue"[..])
    );
    assert!(!x.contains_key(std::ffi::OsStr::new("user.size")));
    assert_eq!(xattrs(&m.join("opt/app")).len(), 1);
}

#[test]
fn strata_upper_reads_the_same_under_the_kernel() {
    let s = Scratch::new();
    kernel_format_lowers(&s);
    let theirs = {
        fs::create_dir(s.kupper()).unwrap();
        let k = s.kernel_mount_opts(2, &s.kupper());
        changes(&k.mnt);
        spot_checks(&k.mnt);
        snapshot(&k.mnt)
    };
    let ours = {
        let m = s.mount(2);
        changes(&m.mnt);
        spot_checks(&m.mnt);
        snapshot(&m.mnt)
    };
    assert_same_view(
        &ours,
        &theirs,
        "strata's view after the changes vs the kernel's after the same changes",
    );
    {
        let k = s.kernel_mount_opts(2, &s.upper());
        assert_same_view(
            &snapshot(&k.mnt),
            &ours,
            "the kernel over strata's upper vs strata's view",
        );
    }
    {
        let m = s.mount(2);
        assert_same_view(
            &snapshot(&m.mnt),
            &ours,
            "strata remounted over its upper vs its view before",
        );
    }
    assert_no_oci_names(&s.upper());
}

#[test]
fn kernel_upper_reads_the_same_under_strata() {
    let s = Scratch::new();
    kernel_format_lowers(&s);
    let theirs = {
        let k = s.kernel_mount_opts(2, &s.upper());
        changes(&k.mnt);
        spot_checks(&k.mnt);
        snapshot(&k.mnt)
    };
    // a copy of the kernel's upper, for the kernel to continue on below
    s.copy_upper_to_kupper();
    {
        let m = s.mount(2);
        assert_same_view(
            &snapshot(&m.mnt),
            &theirs,
            "strata over the kernel's upper vs the kernel's view",
        );
    }
    // and on: strata changes the kernel's upper, the kernel reads strata's changes back
    let ours = {
        let m = s.mount(2);
        more_changes(&m.mnt);
        snapshot(&m.mnt)
    };
    let theirs = {
        let k = s.kernel_mount_opts(2, &s.kupper());
        more_changes(&k.mnt);
        snapshot(&k.mnt)
    };
    assert_same_view(
        &ours,
        &theirs,
        "strata's more changes vs the kernel's same more changes",
    );
    {
        let k = s.kernel_mount_opts(2, &s.upper());
        assert_same_view(
            &snapshot(&k.mnt),
            &ours,
            "the kernel over the twice-changed upper vs strata's view",
        );
    }
    assert_no_oci_names(&s.upper());
}

#[test]
fn read_only_strata_over_a_kernel_upper() {
    let s = Scratch::new();
    kernel_format_lowers(&s);
    let theirs = {
        let k = s.kernel_mount_opts(2, &s.upper());
        changes(&k.mnt);
        snapshot(&k.mnt)
    };
    // the upper as the top lower of a read-only stack, as an image layer would be
    let lowers = format!("lowerdir={}:{}", s.upper().display(), s.lowerdir(2));
    let m = StrataMount::new(&["mount", "-o", &lowers, s.mnt().to_str().unwrap()]);
    assert_same_view(
        &snapshot(&m.mnt),
        &theirs,
        "read-only strata with the kernel's upper as a lower",
    );
    drop(m);
    // (The kernel follows metadata-only copies in lower layers only when told to.)
    let k = KernelMount::new(&format!("{lowers},metacopy=on"), &s.path("kmnt"));
    assert_same_view(
        &snapshot(&k.mnt),
        &theirs,
        "read-only kernel overlay with its upper as a lower",
    );
}

/// Strata writes kernel-format whiteouts and opaque xattrs, never `.wh.` files.
fn assert_no_oci_names(upper: &Path) {
    for (p, _) in tree(upper) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".wh."),
            "strata wrote {} into the upper",
            p.display()
        );
    }
}
