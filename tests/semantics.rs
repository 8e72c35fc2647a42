//! Union semantics: which layer wins, whiteouts and opaque directories in every format strata
//! reads, that no overlay-private name or xattr is ever visible, what removing and renaming
//! leaves in the upper, name and path length limits, unlinked-but-open files, `.wh.` names,
//! and symlinks in layers that must not lead strata outside them.
//!
//! Where the kernel's overlayfs reads the same format, each check runs on a kernel mount of
//! the same layers first (plain options), so a wrong expectation fails on the kernel run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use rustix::io::Errno;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, DirEntryExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn enoent() -> i32 {
    Errno::NOENT.raw_os_error()
}

fn assert_gone(p: &Path) {
    match fs::symlink_metadata(p) {
        Err(e) => assert_eq!(errno(&e), enoent(), "stat {}: {e}", p.display()),
        Ok(m) => panic!(
            "{} should not exist, but is {:?}",
            p.display(),
            m.file_type()
        ),
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Asserts no entry below `root` is a whiteout or an OCI marker and no xattr is overlay-private.
fn assert_nothing_private(root: &Path) {
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".wh."), "{} is visible", p.display());
        assert!(!is_whiteout(&p), "whiteout {} is visible", p.display());
        for x in llistxattr(&p).unwrap_or_default() {
            assert!(
                !x.starts_with("trusted.overlay.") && !x.starts_with("user.overlay."),
                "{} lists {x}",
                p.display()
            );
        }
        if e.file_type().unwrap().is_dir() {
            assert_nothing_private(&p);
        }
    }
    for x in llistxattr(root).unwrap_or_default() {
        assert!(
            !x.starts_with("trusted.overlay.") && !x.starts_with("user.overlay."),
            "{} lists {x}",
            root.display()
        );
    }
}

#[test]
fn top_most_layer_wins() {
    let s = Scratch::new();
    put(&s.lower(2).join("f"), "2");
    put(&s.lower(1).join("f"), "1");
    put(&s.lower(0).join("f"), "0");
    put(&s.upper().join("f"), "u");
    put(&s.lower(2).join("g"), "only2");
    put(&s.lower(1).join("h"), "1");
    put(&s.lower(0).join("h"), "0");
    put(&s.lower(2).join("d/a"), "a2");
    put(&s.lower(1).join("d/b"), "b1");
    put(&s.lower(0).join("d/c"), "c0");
    put(&s.upper().join("d/u"), "uu");
    put(&s.lower(2).join("d/a2only"), "x");
    put(&s.lower(1).join("d/a"), "a1");
    // type conflicts: the top entry decides, a lower non-directory ends the merge
    put(&s.lower(1).join("x"), "file in lower1");
    put(&s.lower(0).join("x/inner"), "dir in lower0");
    put(&s.lower(1).join("y/q"), "dir in lower1");
    put(&s.lower(0).join("y"), "file in lower0");
    put(&s.lower(0).join("z/top"), "t");
    put(&s.lower(1).join("z"), "file in the middle");
    put(&s.lower(2).join("z/bottom"), "b");
    on_kernel_then_strata(&s, 3, |m| {
        assert_eq!(read(&m.join("f")), "u");
        assert_eq!(read(&m.join("g")), "only2");
        assert_eq!(read(&m.join("h")), "0");
        assert_eq!(names(&m.join("d")), ["a", "a2only", "b", "c", "u"]);
        assert_eq!(read(&m.join("d/a")), "a1");
        assert_eq!(read(&m.join("d/u")), "uu");
        assert_eq!(names(&m.join("x")), ["inner"]);
        assert_eq!(read(&m.join("y")), "file in lower0");
        assert_eq!(names(&m.join("z")), ["top"]);
        assert_gone(&m.join("z/bottom"));
        assert_eq!(names(m), ["d", "f", "g", "h", "x", "y", "z"]);
    });
}

#[test]
fn kernel_whiteouts_hide_lower_names() {
    let s = Scratch::new();
    put(&s.lower(1).join("f"), "f");
    put(&s.lower(1).join("keep"), "k");
    put(&s.lower(1).join("d/x"), "x");
    put(&s.lower(1).join("d/y"), "y");
    put(&s.lower(1).join("dd/z"), "z");
    put(&s.lower(1).join("u"), "u");
    mknod_whiteout(&s.lower(0).join("f"));
    fs::create_dir_all(s.lower(0).join("d")).unwrap();
    mknod_whiteout(&s.lower(0).join("d/x"));
    mknod_whiteout(&s.lower(0).join("dd"));
    mknod_whiteout(&s.upper().join("u"));
    on_kernel_then_strata(&s, 2, |m| {
        assert_eq!(names(m), ["d", "keep"]);
        assert_eq!(names(&m.join("d")), ["y"]);
        for gone in ["f", "d/x", "dd", "dd/z", "u"] {
            assert_gone(&m.join(gone));
            assert_eq!(err_of(fs::File::open(m.join(gone))), enoent());
        }
        assert_nothing_private(m);
    });
}

#[test]
fn oci_whiteouts_in_lowers_hide_names() {
    let s = Scratch::new();
    put(&s.lower(1).join("f"), "f");
    put(&s.lower(1).join("keep"), "k");
    put(&s.lower(1).join("d/x"), "x");
    put(&s.lower(1).join("d/y"), "y");
    put(&s.lower(1).join("dd/z"), "z");
    put(&s.lower(0).join(".wh.f"), "");
    put(&s.lower(0).join("d/.wh.x"), "");
    put(&s.lower(0).join(".wh.dd"), "");
    put(&s.lower(0).join("new"), "n");
    // A directory beside its own whiteout replaces the one below (as `docker` writes a
    // directory deleted and made again).
    put(&s.lower(1).join("re/old"), "old");
    put(&s.lower(0).join("re/fresh"), "fresh");
    put(&s.lower(0).join(".wh.re"), "");
    let m = s.mount(2);
    assert_eq!(names(&m.mnt), ["d", "keep", "new", "re"]);
    assert_eq!(names(&m.path("d")), ["y"]);
    assert_eq!(names(&m.path("re")), ["fresh"]);
    assert_gone(&m.path("re/old"));
    for gone in ["f", "d/x", "dd", "dd/z", ".wh.f", "d/.wh.x", ".wh.dd"] {
        assert_gone(&m.path(gone));
    }
    assert_nothing_private(&m.mnt);
}

#[test]
fn trusted_opaque_xattr_hides_lower_contents() {
    let s = Scratch::new();
    put(&s.lower(1).join("t/old"), "old");
    put(&s.lower(1).join("t/sub/deep"), "deep");
    put(&s.lower(0).join("t/new"), "new");
    set_xattr(&s.lower(0).join("t"), "trusted.overlay.opaque", b"y");
    put(&s.lower(1).join("ut/old"), "old");
    put(&s.upper().join("ut/mine"), "mine");
    set_xattr(&s.upper().join("ut"), "trusted.overlay.opaque", b"y");
    on_kernel_then_strata(&s, 2, |m| {
        assert_eq!(names(&m.join("t")), ["new"]);
        assert_eq!(names(&m.join("ut")), ["mine"]);
        for gone in ["t/old", "t/sub", "t/sub/deep", "ut/old"] {
            assert_gone(&m.join(gone));
        }
        assert!(
            lgetxattr(&m.join("t"), "trusted.overlay.opaque").is_err(),
            "opaque xattr readable on t"
        );
        assert!(
            lgetxattr(&m.join("ut"), "trusted.overlay.opaque").is_err(),
            "opaque xattr readable on ut"
        );
        assert_nothing_private(m);
    });
}

#[test]
fn user_opaque_xattr_and_oci_marker_hide_lower_contents() {
    let s = Scratch::new();
    put(&s.lower(1).join("u/old"), "old");
    put(&s.lower(0).join("u/new"), "new");
    set_xattr(&s.lower(0).join("u"), "user.overlay.opaque", b"y");
    put(&s.lower(1).join("o/old"), "old");
    put(&s.lower(1).join("o/sub/x"), "x");
    put(&s.lower(0).join("o/new"), "new");
    put(&s.lower(0).join("o/.wh..wh..opq"), "");
    put(&s.lower(2).join("o/older"), "older");
    let m = s.mount(3);
    assert_eq!(names(&m.path("u")), ["new"]);
    assert_eq!(names(&m.path("o")), ["new"]);
    for gone in ["u/old", "o/old", "o/sub", "o/older", "o/.wh..wh..opq"] {
        assert_gone(&m.path(gone));
    }
    assert!(
        lgetxattr(&m.path("u"), "user.overlay.opaque").is_err(),
        "user.overlay.opaque readable"
    );
    assert_nothing_private(&m.mnt);
}

#[test]
fn private_names_stay_hidden_after_changes() {
    let s = Scratch::new();
    put(&s.lower(1).join("f"), "f");
    put(&s.lower(1).join("d/a"), "a");
    put(&s.lower(1).join("e/b"), "b");
    on_kernel_then_strata(&s, 2, |m| {
        fs::remove_file(m.join("f")).unwrap();
        fs::remove_file(m.join("d/a")).unwrap();
        Command::new("rm")
            .arg("-rf")
            .arg(m.join("e"))
            .status()
            .unwrap();
        fs::create_dir(m.join("e")).unwrap();
        assert_eq!(names(m), ["d", "e"]);
        assert!(names(&m.join("d")).is_empty());
        assert!(names(&m.join("e")).is_empty());
        assert_gone(&m.join("e/.wh..wh..opq"));
        assert!(
            lgetxattr(&m.join("e"), "trusted.overlay.opaque").is_err(),
            "opaque xattr readable"
        );
        assert_nothing_private(m);
    });
    assert!(is_whiteout(&s.upper().join("f")));
    assert!(is_whiteout(&s.upper().join("d/a")));
    // listing the upper directly: the markers are there, just not through the mount
    assert_eq!(
        lgetxattr(&s.upper().join("e"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
}

#[test]
fn unlink_of_a_lower_file_leaves_a_whiteout() {
    let s = Scratch::new();
    put(&s.lower(1).join("f"), "f");
    put(&s.lower(0).join("d/g"), "g");
    on_kernel_then_strata(&s, 2, |m| {
        fs::remove_file(m.join("f")).unwrap();
        fs::remove_file(m.join("d/g")).unwrap();
        fs::write(m.join("mine"), "m").unwrap();
        fs::remove_file(m.join("mine")).unwrap();
        assert_gone(&m.join("f"));
        assert_gone(&m.join("d/g"));
        assert_gone(&m.join("mine"));
        assert_eq!(names(m), ["d"]);
    });
    for up in [s.kupper(), s.upper()] {
        assert!(
            is_whiteout(&up.join("f")),
            "{}/f is not a 0/0 whiteout",
            up.display()
        );
        assert!(
            is_whiteout(&up.join("d/g")),
            "{}/d/g is not a 0/0 whiteout",
            up.display()
        );
        assert_gone(&up.join("mine"));
    }
    let m = s.mount(2);
    assert_gone(&m.path("f"));
    assert_eq!(names(&m.mnt), ["d"]);
}

#[test]
fn rmdir_of_a_lower_dir_leaves_a_whiteout() {
    let s = Scratch::new();
    fs::create_dir_all(s.lower(1).join("e")).unwrap();
    fs::create_dir_all(s.lower(0).join("p/q")).unwrap();
    on_kernel_then_strata(&s, 2, |m| {
        fs::remove_dir(m.join("e")).unwrap();
        fs::remove_dir(m.join("p/q")).unwrap();
        assert_gone(&m.join("e"));
        assert_gone(&m.join("p/q"));
        assert_eq!(names(m), ["p"]);
    });
    for up in [s.kupper(), s.upper()] {
        assert!(
            is_whiteout(&up.join("e")),
            "{}/e is not a whiteout",
            up.display()
        );
        assert!(
            is_whiteout(&up.join("p/q")),
            "{}/p/q is not a whiteout",
            up.display()
        );
    }
}

#[test]
fn rmdir_of_a_merged_dir_needs_it_to_look_empty() {
    let s = Scratch::new();
    put(&s.lower(1).join("d/f1"), "1");
    put(&s.lower(0).join("d/f0"), "0");
    put(&s.lower(1).join("d/sub/x"), "x");
    let enotempty = Errno::NOTEMPTY.raw_os_error();
    on_kernel_then_strata(&s, 2, |m| {
        let d = m.join("d");
        fs::write(d.join("new"), "n").unwrap();
        assert_eq!(err_of(fs::remove_dir(&d)), enotempty);
        fs::remove_file(d.join("f0")).unwrap();
        assert_eq!(err_of(fs::remove_dir(&d)), enotempty);
        fs::remove_file(d.join("new")).unwrap();
        assert_eq!(err_of(fs::remove_dir(&d)), enotempty);
        fs::remove_file(d.join("f1")).unwrap();
        assert_eq!(err_of(fs::remove_dir(&d)), enotempty);
        assert_eq!(err_of(fs::remove_dir(d.join("sub"))), enotempty);
        fs::remove_file(d.join("sub/x")).unwrap();
        fs::remove_dir(d.join("sub")).unwrap();
        assert!(names(&d).is_empty());
        fs::remove_dir(&d).unwrap();
        assert_gone(&d);
        assert!(names(m).is_empty());
    });
    for up in [s.kupper(), s.upper()] {
        assert!(
            is_whiteout(&up.join("d")),
            "{}/d is not a whiteout",
            up.display()
        );
    }
    let m = s.mount(2);
    assert!(names(&m.mnt).is_empty());
}

#[test]
fn rm_rf_then_mkdir_gives_an_opaque_dir_hiding_every_old_name() {
    let s = Scratch::new();
    put(&s.lower(1).join("d/a"), "a");
    put(&s.lower(1).join("d/sub/b"), "b");
    put(&s.lower(1).join("d/sub/deeper/c"), "c");
    put(&s.lower(0).join("d/top"), "top");
    put(&s.lower(0).join("d/sub/t"), "t");
    let old = [
        "d/a",
        "d/top",
        "d/sub",
        "d/sub/b",
        "d/sub/t",
        "d/sub/deeper",
        "d/sub/deeper/c",
    ];
    on_kernel_then_strata(&s, 2, |m| {
        // look everything up first so any cache knows the old names
        assert_eq!(names(&m.join("d")), ["a", "sub", "top"]);
        assert_eq!(read(&m.join("d/sub/deeper/c")), "c");
        let st = Command::new("rm")
            .arg("-rf")
            .arg(m.join("d"))
            .status()
            .unwrap();
        assert!(st.success());
        assert_gone(&m.join("d"));
        fs::create_dir(m.join("d")).unwrap();
        for o in old {
            assert_gone(&m.join(o));
        }
        let ls = Command::new("ls")
            .arg("-laR")
            .arg(m.join("d"))
            .output()
            .unwrap();
        assert!(ls.status.success());
        assert!(
            names(&m.join("d")).is_empty(),
            "new d is not empty: {:?}",
            names(&m.join("d"))
        );
        for o in old {
            assert_gone(&m.join(o));
        }
        for o in ["d/./a", "d/../d/top", "d/sub/../a"] {
            assert_gone(&m.join(o));
        }
        // recreating an old name gives a new, empty object
        fs::create_dir(m.join("d/sub")).unwrap();
        assert!(names(&m.join("d/sub")).is_empty());
        assert_gone(&m.join("d/sub/b"));
        assert_gone(&m.join("d/sub/deeper/c"));
        fs::write(m.join("d/a"), "new a").unwrap();
        assert_eq!(read(&m.join("d/a")), "new a");
        assert_eq!(names(&m.join("d")), ["a", "sub"]);
    });
    for up in [s.kupper(), s.upper()] {
        assert_eq!(
            lgetxattr(&up.join("d"), "trusted.overlay.opaque")
                .ok()
                .as_deref(),
            Some(&b"y"[..]),
            "{}/d is not opaque",
            up.display()
        );
    }
    let m = s.mount(2);
    assert_eq!(names(&m.path("d")), ["a", "sub"]);
    assert!(names(&m.path("d/sub")).is_empty());
    for o in ["d/top", "d/sub/b", "d/sub/t", "d/sub/deeper"] {
        assert_gone(&m.path(o));
    }
}

#[test]
fn descriptors_of_a_removed_dir_reach_nothing_old() {
    use rustix::fs::{openat, statat, AtFlags, Mode, OFlags};
    let s = Scratch::new();
    put(&s.lower(1).join("d/a"), "a");
    put(&s.lower(1).join("d/sub/b"), "b");
    put(&s.lower(0).join("d/top"), "top");
    on_kernel_then_strata(&s, 2, |m| {
        let dir = |p: &Path| {
            openat(
                rustix::fs::CWD,
                p,
                OFlags::DIRECTORY | OFlags::RDONLY,
                Mode::empty(),
            )
            .unwrap()
        };
        let old_d = dir(&m.join("d"));
        let old_sub = dir(&m.join("d/sub"));
        let st = Command::new("rm")
            .arg("-rf")
            .arg(m.join("d"))
            .status()
            .unwrap();
        assert!(st.success());
        fs::create_dir(m.join("d")).unwrap();
        for (fd, name) in [(&old_d, "a"), (&old_d, "top"), (&old_sub, "b")] {
            let r = statat(fd, name, AtFlags::SYMLINK_NOFOLLOW);
            assert_eq!(
                r.map(|_| ()).map_err(|e| e.raw_os_error()),
                Err(enoent()),
                "{name} reachable from a descriptor of the removed dir"
            );
        }
        for p in ["d/./a", "d/../d/top", "d/sub", "d/sub/b"] {
            assert_gone(&m.join(p));
        }
        // the descriptors of the removed dirs list nothing
        let listing = |fd: rustix::fd::OwnedFd| {
            let mut names = Vec::new();
            let mut d = rustix::fs::Dir::new(fd).unwrap();
            while let Some(e) = d.read() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                if n != "." && n != ".." {
                    names.push(n);
                }
            }
            names
        };
        assert_eq!(
            listing(old_d),
            Vec::<String>::new(),
            "removed d lists old names"
        );
        assert_eq!(
            listing(old_sub),
            Vec::<String>::new(),
            "removed d/sub lists old names"
        );
        assert!(names(&m.join("d")).is_empty());
    });
}

#[test]
fn a_removed_dir_can_be_reopened_through_a_descriptor() {
    // As with a shell whose working directory was removed: `ls .` lists nothing.
    use rustix::fs::{openat, Mode, OFlags};
    let s = Scratch::new();
    put(&s.lower(1).join("d/a"), "a");
    fs::create_dir_all(s.upper().join("n")).unwrap();
    on_kernel_then_strata(&s, 2, |m| {
        for name in ["d", "n"] {
            let old = fs::File::open(m.join(name)).unwrap();
            let st = Command::new("rm")
                .arg("-rf")
                .arg(m.join(name))
                .status()
                .unwrap();
            assert!(st.success());
            let again = openat(&old, ".", OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty());
            let again = again.unwrap_or_else(|e| panic!("open(\".\") in removed {name}: {e}"));
            let mut d = rustix::fs::Dir::new(again).unwrap();
            while let Some(e) = d.read() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(n == "." || n == "..", "removed {name} lists {n}");
            }
        }
    });
}

#[test]
fn a_dir_made_again_while_the_old_one_is_open_is_usable() {
    let s = Scratch::new();
    // several rounds, as the new upper dir may or may not reuse the old one's inode number
    let rounds: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    for d in &rounds {
        put(&s.lower(1).join(d).join("a"), "a");
        put(&s.lower(1).join(d).join("sub/b"), "b");
        put(&s.lower(0).join(d).join("top"), "top");
    }
    on_kernel_then_strata(&s, 2, |m| {
        for d in &rounds {
            let d = m.join(d);
            // as a shell whose working directory is d would hold it
            let old_d = fs::File::open(&d).unwrap();
            let st = Command::new("rm").arg("-rf").arg(&d).status().unwrap();
            assert!(st.success());
            fs::create_dir(&d).unwrap();
            fs::create_dir(d.join("sub"))
                .unwrap_or_else(|e| panic!("mkdir {}/sub: {e}", d.display()));
            fs::write(d.join("f"), "f").unwrap();
            assert_eq!(names(&d), ["f", "sub"]);
            assert!(names(&d.join("sub")).is_empty());
            drop(old_d);
            fs::write(d.join("sub/g"), "g").unwrap();
            assert_eq!(read(&d.join("sub/g")), "g");
        }
    });
}

#[test]
fn lower_directories_rename_like_any_other() {
    let s = Scratch::new();
    put(&s.lower(1).join("d/a"), "a");
    put(&s.lower(1).join("d/sub/b"), "b");
    put(&s.lower(0).join("d/c"), "c");
    put(&s.lower(1).join("only/x"), "x");
    put(&s.lower(1).join("t/deep/y"), "y");
    on_kernel_then_strata(&s, 2, |m| {
        let ino = |p: &str| fs::symlink_metadata(m.join(p)).unwrap().ino();
        let (d, only) = (ino("d"), ino("only"));
        // A merged directory, in place; its inode number goes with it.
        fs::rename(m.join("d"), m.join("e")).unwrap();
        assert_gone(&m.join("d"));
        assert_eq!(names(&m.join("e")), ["a", "c", "sub"]);
        assert_eq!(read(&m.join("e/sub/b")), "b");
        assert_eq!(ino("e"), d);
        // A lower directory into a renamed one, and a nested one out of it.
        fs::rename(m.join("only"), m.join("e/only")).unwrap();
        assert_eq!(read(&m.join("e/only/x")), "x");
        assert_eq!(ino("e/only"), only);
        fs::rename(m.join("e/sub"), m.join("sub2")).unwrap();
        assert_eq!(read(&m.join("sub2/b")), "b");
        // A renamed directory renamed again, into a directory made on the mount.
        fs::rename(m.join("e"), m.join("f")).unwrap();
        fs::create_dir(m.join("new")).unwrap();
        fs::rename(m.join("f"), m.join("new/f")).unwrap();
        assert_eq!(names(&m.join("new/f")), ["a", "c", "only"]);
        // The old name is free, and a directory made there is empty.
        fs::create_dir(m.join("d")).unwrap();
        assert!(names(&m.join("d")).is_empty());
        fs::remove_dir(m.join("d")).unwrap();
        // Back where it was, and changed there.
        fs::rename(m.join("new/f"), m.join("d")).unwrap();
        assert_eq!(names(&m.join("d")), ["a", "c", "only"]);
        fs::write(m.join("d/a"), "a2").unwrap();
        assert_eq!(read(&m.join("d/a")), "a2");
        assert_eq!(ino("d"), d);
        // A renamed directory removed, with everything below it.
        fs::rename(m.join("t"), m.join("t2")).unwrap();
        fs::remove_dir_all(m.join("t2")).unwrap();
        assert_gone(&m.join("t"));
        assert_eq!(names(m), ["d", "new", "sub2"]);
        assert!(names(&m.join("new")).is_empty());
    });
    // Strata reads its own redirects back after a remount.
    let m = s.mount(2);
    assert_eq!(names(&m.mnt), ["d", "new", "sub2"]);
    assert_eq!(names(&m.path("d")), ["a", "c", "only"]);
    assert_eq!(read(&m.path("d/only/x")), "x");
    assert_eq!(read(&m.path("sub2/b")), "b");
}

#[test]
fn a_directory_moved_into_its_own_renamed_child_is_refused() {
    let s = Scratch::new();
    put(&s.lower(0).join("a/b/f"), "f");
    on_kernel_then_strata(&s, 1, |m| {
        fs::rename(m.join("a/b"), m.join("c")).unwrap();
        assert_eq!(
            err_of(fs::rename(m.join("a"), m.join("a/x"))),
            Errno::INVAL.raw_os_error()
        );
        fs::rename(m.join("a"), m.join("c/a")).unwrap();
        assert_eq!(names(&m.join("c")), ["a", "f"]);
        assert!(names(&m.join("c/a")).is_empty());
    });
}

#[test]
fn rename_of_a_dir_made_on_the_mount_works() {
    let s = Scratch::new();
    put(&s.lower(1).join("t/old"), "old");
    put(&s.lower(1).join("keep"), "k");
    on_kernel_then_strata(&s, 2, |m| {
        put(&m.join("n/x"), "x");
        put(&m.join("n/sub/y"), "y");
        fs::rename(m.join("n"), m.join("n2")).unwrap();
        assert_gone(&m.join("n"));
        assert_eq!(read(&m.join("n2/sub/y")), "y");
        // into another directory
        fs::rename(m.join("n2"), m.join("t/n3")).unwrap();
        assert_eq!(names(&m.join("t")), ["n3", "old"]);
        assert_eq!(read(&m.join("t/n3/x")), "x");
        // over a lower directory that only looks empty: the old contents stay hidden
        fs::remove_file(m.join("t/old")).unwrap();
        fs::rename(m.join("t/n3"), m.join("t2")).unwrap();
        fs::rename(m.join("t2"), m.join("t")).unwrap();
        assert_eq!(names(&m.join("t")), ["sub", "x"]);
        assert_gone(&m.join("t/old"));
        assert_eq!(names(m), ["keep", "t"]);
    });
    let m = s.mount(2);
    assert_eq!(names(&m.path("t")), ["sub", "x"]);
    assert_gone(&m.path("t/old"));
}

#[test]
fn names_of_255_bytes_work_and_256_are_too_long() {
    let s = Scratch::new();
    let n255 = "n".repeat(255);
    let l255 = "l".repeat(255);
    let n256 = "n".repeat(256);
    put(&s.lower(1).join(&l255), "lower");
    let toolong = Errno::NAMETOOLONG.raw_os_error();
    on_kernel_then_strata(&s, 2, |m| {
        fs::write(m.join(&n255), "x").unwrap();
        assert_eq!(read(&m.join(&n255)), "x");
        assert!(names(m).contains(&n255));
        fs::create_dir(m.join("d")).unwrap();
        fs::create_dir(m.join("d").join(&n255)).unwrap();
        fs::rename(m.join(&n255), m.join("d").join(&n255).join(&n255)).unwrap();
        assert_eq!(read(&m.join("d").join(&n255).join(&n255)), "x");
        // a lower name of 255 bytes can be removed (a .wh. file could not be named)
        assert_eq!(read(&m.join(&l255)), "lower");
        fs::remove_file(m.join(&l255)).unwrap();
        assert_gone(&m.join(&l255));
        assert_eq!(err_of(fs::write(m.join(&n256), "x")), toolong);
        assert_eq!(err_of(fs::create_dir(m.join(&n256))), toolong);
        assert_eq!(err_of(fs::symlink_metadata(m.join(&n256))), toolong);
        assert_eq!(err_of(symlink("t", m.join(&n256))), toolong);
        assert_eq!(err_of(fs::rename(m.join("d"), m.join(&n256))), toolong);
    });
    assert!(is_whiteout(&s.upper().join(&l255)));
}

#[test]
fn a_tree_deeper_than_path_max_can_be_made_and_removed() {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    let s = Scratch::new();
    put(&s.lower(1).join("top/lowerfile"), "l");
    let comp = "c".repeat(200);
    let depth = 30; // 30 * 201 bytes > PATH_MAX
    on_kernel_then_strata(&s, 2, |m| {
        let mut dir = openat(
            rustix::fs::CWD,
            m.join("top"),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        for _ in 0..depth {
            mkdirat(&dir, comp.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            dir = openat(
                &dir,
                comp.as_str(),
                OFlags::DIRECTORY | OFlags::RDONLY,
                Mode::empty(),
            )
            .unwrap();
        }
        let f = openat(
            &dir,
            "leaf",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&f, b"deep").unwrap();
        drop(f);
        let f = openat(&dir, "leaf", OFlags::RDONLY, Mode::empty()).unwrap();
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&f, &mut buf[..]).unwrap();
        assert_eq!(&buf[..n], b"deep");
        let rm = Command::new("rm")
            .arg("-rf")
            .arg(m.join("top").join(&comp))
            .output()
            .unwrap();
        assert!(
            rm.status.success(),
            "rm -rf failed: {}",
            String::from_utf8_lossy(&rm.stderr)
        );
        assert_eq!(names(&m.join("top")), ["lowerfile"]);
        let rm = Command::new("rm")
            .arg("-rf")
            .arg(m.join("top"))
            .output()
            .unwrap();
        assert!(
            rm.status.success(),
            "rm -rf failed: {}",
            String::from_utf8_lossy(&rm.stderr)
        );
        assert_gone(&m.join("top"));
    });
}

#[test]
fn an_unlinked_open_file_has_no_links() {
    let s = Scratch::new();
    put(&s.lower(1).join("low"), "lower");
    on_kernel_then_strata(&s, 2, |m| {
        let f = fs::File::create(m.join("mine")).unwrap();
        fs::remove_file(m.join("mine")).unwrap();
        assert_eq!(
            f.metadata().unwrap().nlink(),
            0,
            "fstat of an unlinked new file"
        );
        assert_gone(&m.join("mine"));
    });
}

#[test]
fn an_unlinked_open_lower_file_has_no_links() {
    // The kernel reports st_nlink 1 here (it stats the lower file); strata reports 0.
    let s = Scratch::new();
    put(&s.lower(1).join("low"), "lower");
    let m = s.mount(2);
    let f = fs::File::open(m.path("low")).unwrap();
    fs::remove_file(m.path("low")).unwrap();
    assert_eq!(
        f.metadata().unwrap().nlink(),
        0,
        "fstat of an unlinked lower file"
    );
    let mut buf = String::new();
    std::io::Read::read_to_string(&mut &f, &mut buf).unwrap();
    assert_eq!(buf, "lower", "the open lower file is still readable");
}

#[test]
fn names_starting_with_wh_are_refused() {
    let s = Scratch::new();
    put(&s.lower(1).join("low"), "lower");
    let m = s.mount(2);
    let einval = Errno::INVAL.raw_os_error();
    fs::write(m.path("ok"), "ok").unwrap();
    assert_eq!(err_of(fs::write(m.path(".wh.x"), "x")), einval);
    assert_eq!(err_of(fs::create_dir(m.path(".wh.d"))), einval);
    assert_eq!(err_of(fs::create_dir(m.path(".wh..wh..opq"))), einval);
    assert_eq!(err_of(symlink("ok", m.path(".wh.s"))), einval);
    assert_eq!(err_of(fs::hard_link(m.path("ok"), m.path(".wh.l"))), einval);
    assert_eq!(err_of(fs::rename(m.path("ok"), m.path(".wh.r"))), einval);
    assert_eq!(err_of(fs::rename(m.path("low"), m.path(".wh.low"))), einval);
    let fifo = rustix::fs::mknodat(
        rustix::fs::CWD,
        m.path(".wh.p"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    );
    assert_eq!(fifo.map_err(|e| e.raw_os_error()), Err(einval));
    assert_eq!(names(&m.mnt), ["low", "ok"]);
    drop(m);
    let mut up = names(&s.upper());
    up.retain(|n| n.starts_with(".wh."));
    assert!(up.is_empty(), "upper holds {up:?}");
}

#[test]
fn symlinks_in_lower_layers_do_not_lead_strata_outside() {
    let s = Scratch::new();
    let outside = s.dir("outside");
    put(&outside.join("secret"), "secret");
    let before = tree(&outside);
    // lower0 has real dirs p and q; below them lower1 has symlinks leading out of the layer.
    put(&s.lower(0).join("p/a"), "a");
    symlink(&outside, s.lower(1).join("p")).unwrap();
    put(&s.lower(0).join("q/b"), "b");
    symlink("../../../..", s.lower(1).join("q")).unwrap();
    // lower0 has a symlink d leading out, lower1 a real dir d.
    symlink(&outside, s.lower(0).join("d")).unwrap();
    put(&s.lower(1).join("d/f"), "f");
    on_kernel_then_strata(&s, 2, |m| {
        assert_eq!(names(&m.join("p")), ["a"]);
        assert_eq!(names(&m.join("q")), ["b"]);
        assert_gone(&m.join("p/secret"));
        assert_gone(&m.join("q/etc"));
        assert_gone(&m.join("q/tmp"));
        fs::write(m.join("p/secret"), "mine").unwrap();
        fs::write(m.join("q/new"), "new").unwrap();
        fs::create_dir(m.join("p/dir")).unwrap();
        assert_eq!(names(&m.join("p")), ["a", "dir", "secret"]);
        let rm = Command::new("rm")
            .arg("-rf")
            .arg(m.join("p"))
            .arg(m.join("q"))
            .status()
            .unwrap();
        assert!(rm.success());
        assert_gone(&m.join("p"));
        assert_gone(&m.join("q"));
        // the merged d is the symlink; removing it removes only the link
        assert_eq!(fs::read_link(m.join("d")).unwrap(), outside);
        fs::remove_file(m.join("d")).unwrap();
        assert_gone(&m.join("d"));
        fs::create_dir(m.join("d")).unwrap();
        assert!(names(&m.join("d")).is_empty());
        assert_gone(&m.join("d/f"));
        assert_gone(&m.join("d/secret"));
    });
    assert_eq!(
        tree(&outside),
        before,
        "something changed outside the layers"
    );
    assert!(
        is_whiteout(&s.upper().join("p")),
        "upper/p is not a whiteout"
    );
    assert!(fs::symlink_metadata(s.lower(1).join("p"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn large_merged_directories_list_every_name_once() {
    let s = Scratch::new();
    let mut want = Vec::new();
    fs::create_dir_all(s.lower(0).join("big")).unwrap();
    for i in 0..1500 {
        let name = format!("lower1-entry-with-a-longish-name-{i:05}");
        put(&s.lower(1).join("big").join(&name), "");
        if i % 3 == 0 {
            mknod_whiteout(&s.lower(0).join("big").join(&name));
        } else {
            want.push(name);
        }
    }
    for i in 0..1200 {
        let name = format!("lower0-{i:05}");
        put(&s.lower(0).join("big").join(&name), "");
        want.push(name);
    }
    for i in 0..500 {
        let name = format!("upper-{i:05}");
        put(&s.upper().join("big").join(&name), "");
        want.push(name);
    }
    want.sort();
    on_kernel_then_strata(&s, 2, |m| {
        let got: Vec<String> = fs::read_dir(m.join("big"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "some names are listed twice");
        assert!(
            sorted == want,
            "listing differs: {} names, want {}",
            sorted.len(),
            want.len()
        );
        // remove half while listing goes on, as rm -r does
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && ls | grep -e '-0...[02468]$' | xargs rm",
                m.join("big").display()
            ))
            .status()
            .unwrap();
        assert!(st.success());
        let left = names(&m.join("big"));
        let want_left: Vec<&String> = want
            .iter()
            .filter(|n| !n.ends_with(['0', '2', '4', '6', '8']))
            .collect();
        assert_eq!(left.iter().collect::<Vec<_>>(), want_left);
        let st = Command::new("rm")
            .arg("-rf")
            .arg(m.join("big"))
            .status()
            .unwrap();
        assert!(st.success());
        assert!(names(m).is_empty());
    });
}

#[test]
fn a_reader_of_a_lower_file_follows_its_copy_up_even_after_unlink() {
    let s = Scratch::new();
    put(&s.lower(0).join("b"), "old");
    on_kernel_then_strata(&s, 1, |m| {
        let reader = fs::File::open(m.join("b")).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("b"))
            .unwrap()
            .write_all(b"NEW")
            .unwrap();
        fs::set_permissions(m.join("b"), fs::Permissions::from_mode(0o4711)).unwrap();
        fs::remove_file(m.join("b")).unwrap();
        let md = reader.metadata().unwrap();
        assert_eq!(
            md.mode() & 0o7777,
            0o4711,
            "mode seen through the old reader"
        );
        let mut buf = [0u8; 8];
        let n = std::os::unix::fs::FileExt::read_at(&reader, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"NEW", "data seen through the old reader");
    });
}

#[test]
fn lower_hard_links_stay_one_file_through_copy_up() {
    let s = Scratch::new();
    put(&s.lower(1).join("d/a"), "old\n");
    for n in ["d/b", "c"] {
        fs::hard_link(s.lower(1).join("d/a"), s.lower(1).join(n)).unwrap();
    }
    put(&s.lower(0).join("d/top"), "top");
    let seen = std::sync::Mutex::new(None);
    on_kernel_then_strata(&s, 2, |m| {
        let stat = |p: &str| fs::symlink_metadata(m.join(p)).unwrap();
        let ino = stat("d/a").ino();
        assert_eq!((stat("d/b").ino(), stat("c").ino()), (ino, ino));
        assert_eq!(stat("c").nlink(), 3);
        // A write through one name: every name shows it.
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("d/b"))
            .unwrap()
            .write_all(b"new\n")
            .unwrap();
        for p in ["d/a", "d/b", "c"] {
            assert_eq!(read(&m.join(p)), "old\nnew\n", "{p}");
            assert_eq!((stat(p).ino(), stat(p).nlink()), (ino, 3), "{p}");
        }
        for e in fs::read_dir(m)
            .unwrap()
            .chain(fs::read_dir(m.join("d")).unwrap())
        {
            let e = e.unwrap();
            if ["a", "b", "c"].contains(&e.file_name().to_str().unwrap()) {
                assert_eq!(e.ino(), ino, "d_ino of {:?}", e.path());
            }
        }
        // Names come and go; the count follows.
        fs::remove_file(m.join("c")).unwrap();
        assert_eq!(stat("d/a").nlink(), 2);
        fs::hard_link(m.join("d/a"), m.join("e")).unwrap();
        fs::rename(m.join("d/b"), m.join("b2")).unwrap();
        for p in ["d/a", "b2", "e"] {
            assert_eq!((stat(p).ino(), stat(p).nlink()), (ino, 3), "{p}");
        }
        std::os::unix::fs::lchown(m.join("e"), Some(5), Some(6)).unwrap();
        assert_eq!(stat("d/a").uid(), 5);
        *seen.lock().unwrap() = Some(ino);
    });
    let ino = seen.lock().unwrap().take().unwrap();
    // After a remount, strata and the kernel (index=on) read strata's upper the same.
    for kernel in [false, true] {
        let (_m, _k);
        let root = if kernel {
            _k = s.kernel_mount_with_work(2, &s.upper(), &s.work());
            _k.mnt.clone()
        } else {
            _m = s.mount(2);
            _m.mnt.clone()
        };
        for p in ["d/a", "b2", "e"] {
            let md = fs::symlink_metadata(root.join(p)).unwrap();
            assert_eq!(read(&root.join(p)), "old\nnew\n", "{p}, kernel: {kernel}");
            assert_eq!(
                (md.ino(), md.nlink(), md.uid()),
                (ino, 3, 5),
                "{p}, kernel: {kernel}"
            );
        }
        assert!(!root.join("c").exists());
    }
}

#[test]
fn set_id_bits_asked_for_on_create_and_mknod_are_kept() {
    let s = Scratch::new();
    s.lower(0);
    on_kernel_then_strata(&s, 1, |m| {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o6755)
            .open(m.join("f"))
            .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.join("p"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o6755),
            0,
        )
        .unwrap();
        for n in ["f", "p"] {
            assert_eq!(
                fs::metadata(m.join(n)).unwrap().mode() & 0o7777,
                0o6755,
                "{n}"
            );
        }
    });
}

#[test]
fn metadata_changes_through_a_descriptor_of_an_unlinked_file_work() {
    let s = Scratch::new();
    s.lower(0);
    on_kernel_then_strata(&s, 1, |m| {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(m.join("n"))
            .unwrap();
        fs::remove_file(m.join("n")).unwrap();
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .unwrap();
        rustix::fs::fchown(
            &f,
            Some(rustix::fs::Uid::from_raw(7)),
            Some(rustix::fs::Gid::from_raw(8)),
        )
        .unwrap();
        f.set_len(3).unwrap();
        f.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        )
        .unwrap();
        rustix::fs::fsetxattr(&f, "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime(), md.len()),
            (0o600, 7, 8, 1_000_000, 3)
        );
        let mut v = [0u8; 4];
        assert_eq!(rustix::fs::fgetxattr(&f, "user.k", &mut v[..]).unwrap(), 1);
    });
}

#[test]
fn a_directory_descriptor_lists_what_is_there_at_its_first_read() {
    let s = Scratch::new();
    put(&s.lower(0).join("g/d"), "");
    put(&s.lower(0).join("g/e"), "");
    on_kernel_then_strata(&s, 1, |m| {
        let fd = rustix::fs::open(
            m.join("g"),
            rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        fs::remove_file(m.join("g/e")).unwrap();
        put(&m.join("g/h"), "");
        let mut names = Vec::new();
        let mut d = rustix::fs::Dir::new(fd).unwrap();
        while let Some(e) = d.read() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        names.sort();
        assert_eq!(names, ["d", "h"]);
    });
}

#[test]
fn a_directory_moved_into_a_merged_directory_is_made_opaque_as_by_the_kernel() {
    let s = Scratch::new();
    put(&s.lower(0).join("d/x"), "");
    on_kernel_then_strata(&s, 1, |m| {
        fs::create_dir(m.join("g")).unwrap();
        fs::rename(m.join("g"), m.join("d/g")).unwrap();
    });
    for up in [s.kupper(), s.upper()] {
        assert_eq!(
            lgetxattr(&up.join("d/g"), "trusted.overlay.opaque").unwrap(),
            b"y",
            "{}",
            up.display()
        );
    }
}

#[test]
fn opening_a_lower_hard_link_for_writing_keeps_its_link_count() {
    let s = Scratch::new();
    put(&s.lower(0).join("a"), "x");
    fs::hard_link(s.lower(0).join("a"), s.lower(0).join("b")).unwrap();
    on_kernel_then_strata(&s, 1, |m| {
        assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 2);
        drop(
            fs::OpenOptions::new()
                .write(true)
                .open(m.join("a"))
                .unwrap(),
        );
        assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(m.join("b")).unwrap().nlink(), 2);
    });
}

#[test]
fn trusted_xattrs_are_listed_to_root_only() {
    let s = Scratch::new();
    put(&s.lower(0).join("f"), "x");
    set_xattr(&s.lower(0).join("f"), "trusted.t", b"1");
    set_xattr(&s.lower(0).join("f"), "user.u", b"2");
    on_kernel_then_strata(&s, 1, |m| {
        let script = format!(
            "python3 -c \"import os; print(sorted(os.listxattr('{}')))\"",
            m.join("f").display()
        );
        let out = sh_as_nobody(&script);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "['user.u']",
            "{out:?}"
        );
        let mut all = llistxattr(&m.join("f")).unwrap();
        all.sort();
        assert_eq!(all, ["trusted.t", "user.u"]);
    });
}

#[test]
fn trusted_overlay_xattrs_set_by_a_user_are_escaped_as_by_the_kernel() {
    let s = Scratch::new();
    put(&s.lower(0).join("f"), "x");
    on_kernel_then_strata(&s, 1, |m| {
        lsetxattr(&m.join("f"), "trusted.overlay.mine", b"v").unwrap();
        assert_eq!(
            lgetxattr(&m.join("f"), "trusted.overlay.mine").unwrap(),
            b"v"
        );
        assert!(llistxattr(&m.join("f"))
            .unwrap()
            .contains(&"trusted.overlay.mine".to_string()));
    });
    for up in [s.kupper(), s.upper()] {
        assert_eq!(
            lgetxattr(&up.join("f"), "trusted.overlay.overlay.mine").unwrap(),
            b"v",
            "{}",
            up.display()
        );
    }
}

#[test]
fn metadata_calls_through_a_descriptor_of_a_removed_directory_work() {
    let s = Scratch::new();
    s.lower(0);
    on_kernel_then_strata(&s, 1, |m| {
        fs::create_dir(m.join("d")).unwrap();
        let d = fs::File::open(m.join("d")).unwrap();
        fs::remove_dir(m.join("d")).unwrap();
        d.set_permissions(fs::Permissions::from_mode(0o700))
            .unwrap();
        rustix::fs::fsetxattr(&d, "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
        let mut v = [0u8; 4];
        assert_eq!(rustix::fs::fgetxattr(&d, "user.k", &mut v[..]).unwrap(), 1);
        let md = d.metadata().unwrap();
        assert_eq!((md.mode() & 0o7777, md.nlink(), md.len()), (0o700, 0, 0));
    });
}

#[test]
fn a_directory_descriptor_follows_the_copy_up_of_its_directory() {
    let s = Scratch::new();
    fs::create_dir_all(s.lower(0).join("d")).unwrap();
    set_xattr(&s.lower(0).join("d"), "user.k", b"lower");
    on_kernel_then_strata(&s, 1, |m| {
        let d = fs::File::open(m.join("d")).unwrap();
        fs::set_permissions(m.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
        rustix::fs::fsetxattr(&d, "user.k", b"upper", rustix::fs::XattrFlags::empty()).unwrap();
        assert_eq!(lgetxattr(&m.join("d"), "user.k").unwrap(), b"upper");
        assert_eq!(d.metadata().unwrap().mode() & 0o7777, 0o700);
    });
}

/// The inode number of every entry below `m`, by stat and by readdir's `d_ino`, which
/// must agree; and no two entries may share a number unless they are hard links.
fn inode_numbers(m: &Path) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![m.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            let rel = e.path().strip_prefix(m).unwrap().display().to_string();
            assert_eq!(e.ino(), meta.ino(), "d_ino and st_ino of {rel}");
            if meta.is_dir() {
                stack.push(e.path());
            }
            out.insert(rel, meta.ino());
        }
    }
    let mut seen = std::collections::HashMap::new();
    for (p, ino) in &out {
        if let Some(other) = seen.insert(*ino, p) {
            panic!("{p} and {other} share inode number {ino}");
        }
    }
    out
}

#[test]
fn inode_numbers_stay_through_copy_up_and_remount() {
    let s = Scratch::new();
    put(&s.lower(1).join("f"), "f");
    put(&s.lower(1).join("d/g"), "g");
    put(&s.lower(0).join("d/h"), "h");
    put(&s.lower(0).join("x"), "x");
    symlink("x", s.lower(0).join("s")).unwrap();
    put(&s.lower(1).join("deep/er/file"), "file");
    let before = std::sync::Mutex::new(None);
    on_kernel_then_strata(&s, 2, |m| {
        let first = inode_numbers(m);
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("f"))
            .unwrap()
            .write_all(b"more")
            .unwrap();
        fs::write(m.join("d/g"), "g2").unwrap();
        std::os::unix::fs::lchown(m.join("s"), Some(7), None).unwrap();
        fs::write(m.join("deep/er/file"), "file2").unwrap();
        fs::rename(m.join("x"), m.join("d/x")).unwrap();
        let mut after = inode_numbers(m);
        after.insert("x".into(), after["d/x"]);
        after.remove("d/x");
        assert_eq!(after, first, "inode numbers after copy-up");
        *before.lock().unwrap() = Some(after);
    });
    let m = s.mount(2);
    let mut again = inode_numbers(&m.mnt);
    again.insert("x".into(), again["d/x"]);
    again.remove("d/x");
    assert_eq!(
        Some(again),
        before.lock().unwrap().take(),
        "after a remount"
    );
}

#[test]
fn metadata_changes_copy_up_no_data() {
    let s = Scratch::new();
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::create_dir_all(s.lower(1).join("tree/sub")).unwrap();
    fs::write(s.lower(1).join("big"), &big).unwrap();
    for i in 0..20 {
        put(
            &s.lower(1).join(format!("tree/sub/f{i}")),
            &format!("file {i}"),
        );
    }
    put(&s.lower(0).join("small"), "small");
    put(&s.lower(0).join("moved"), "moved data");
    put(&s.lower(0).join("cut"), "0123456789");
    on_kernel_then_strata(&s, 2, |m| {
        fs::set_permissions(m.join("big"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::lchown(m.join("small"), Some(12), Some(34)).unwrap();
        lsetxattr(&m.join("moved"), "user.tag", b"t").unwrap();
        let out = Command::new("chown")
            .args(["-R", "7:8"])
            .arg(m.join("tree"))
            .status()
            .unwrap();
        assert!(out.success());
        // Everything reads as before.
        assert_eq!(fs::read(m.join("big")).unwrap(), big);
        assert_eq!(read(&m.join("tree/sub/f3")), "file 3");
        assert_eq!(fs::metadata(m.join("tree/sub/f3")).unwrap().uid(), 7);
        // A renamed metadata-only copy still finds its data, in place or elsewhere.
        fs::rename(m.join("moved"), m.join("moved2")).unwrap();
        fs::rename(m.join("moved2"), m.join("tree/moved3")).unwrap();
        assert_eq!(read(&m.join("tree/moved3")), "moved data");
        // The first data change copies the data: a write, a truncate.
        fs::OpenOptions::new()
            .append(true)
            .open(m.join("small"))
            .unwrap()
            .write_all(b"+")
            .unwrap();
        assert_eq!(read(&m.join("small")), "small+");
        fs::set_permissions(m.join("cut"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("cut"))
            .unwrap()
            .set_len(4)
            .unwrap();
        assert_eq!(read(&m.join("cut")), "0123");
        let md = fs::metadata(m.join("big")).unwrap();
        assert_eq!((md.len(), md.mode() & 0o777), (4 << 20, 0o600));
    });
    for up in [s.kupper(), s.upper()] {
        // chown -R and chmod wrote no data; the writes did.
        for p in ["big", "tree/sub/f3", "tree/moved3"] {
            assert!(!has_data(&up.join(p)), "{}/{p} has data", up.display());
        }
        assert_eq!(read(&up.join("small")), "small+");
        assert!(lgetxattr(&up.join("big"), "trusted.overlay.metacopy").is_ok());
        assert!(lgetxattr(&up.join("small"), "trusted.overlay.metacopy").is_err());
    }
    // Strata reads its metadata-only copies back, and so does the kernel.
    let want = {
        let m = s.mount(2);
        assert_eq!(fs::read(m.path("big")).unwrap(), big);
        assert_eq!(read(&m.path("tree/moved3")), "moved data");
        tree(&m.mnt)
    };
    let k = s.kernel_mount_opts(2, &s.upper());
    assert_eq!(tree(&k.mnt), want, "the kernel over strata's upper");
}

#[test]
fn metacopy_off_copies_the_data_on_a_metadata_change() {
    let s = Scratch::new();
    put(&s.lower(0).join("f"), "data");
    let opts = format!("{},metacopy=off", s.opts(1));
    let m = StrataMount::new(&["mount", "-o", &opts, s.mnt().to_str().unwrap()]);
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read(&m.path("f")), "data");
    drop(m);
    assert_eq!(read(&s.upper().join("f")), "data");
    assert!(lgetxattr(&s.upper().join("f"), "trusted.overlay.metacopy").is_err());
}
