//! Error numbers: each failing operation runs on a kernel overlayfs mount of the same layers
//! and on strata, and both must fail with the expected errno (ENOENT, EEXIST, ENOTEMPTY,
//! ENOTDIR, EISDIR, EPERM, EROFS), and EACCES for another user with
//! default_permissions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use rustix::fs::{FileType, Mode, CWD};
use rustix::io::Errno;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

fn layers() -> Scratch {
    let s = Scratch::new();
    put(&s.lower(1).join("file"), "data");
    put(&s.lower(1).join("dir/inner"), "inner");
    put(&s.lower(1).join("sub/deep/x"), "x");
    fs::create_dir_all(s.lower(1).join("emptydir")).unwrap();
    put(&s.lower(1).join("gone"), "hidden below a whiteout");
    put(&s.lower(0).join("top"), "top");
    put(&s.lower(0).join("dir/other"), "other");
    mknod_whiteout(&s.lower(0).join("gone"));
    s
}

type Op = (&'static str, fn(&Path) -> io::Result<()>);

/// Each op must fail with `want` on the kernel and on strata.
fn expect(s: &Scratch, n: usize, want: Errno, ops: &[Op]) {
    let want = want.raw_os_error();
    on_kernel_then_strata(s, n, |m| {
        for (what, op) in ops {
            match op(m) {
                Ok(()) => panic!("{what} on {} succeeded, expected errno {want}", m.display()),
                Err(e) => assert_eq!(errno(&e), want, "{what} on {}: {e}", m.display()),
            }
        }
    });
}

fn mknod_fifo(p: &Path) -> io::Result<()> {
    Ok(rustix::fs::mknodat(
        CWD,
        p,
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )?)
}

fn open_write(p: &Path) -> io::Result<()> {
    fs::OpenOptions::new().write(true).open(p).map(drop)
}

#[test]
fn enoent() {
    let s = layers();
    expect(
        &s,
        2,
        Errno::NOENT,
        &[
            ("stat missing", |m| {
                fs::symlink_metadata(m.join("missing")).map(drop)
            }),
            ("open missing", |m| {
                fs::File::open(m.join("missing")).map(drop)
            }),
            ("unlink missing", |m| fs::remove_file(m.join("missing"))),
            ("rmdir missing", |m| fs::remove_dir(m.join("missing"))),
            ("rename missing", |m| {
                fs::rename(m.join("missing"), m.join("x"))
            }),
            ("readlink missing", |m| {
                fs::read_link(m.join("missing")).map(drop)
            }),
            ("create in missing dir", |m| {
                fs::write(m.join("nodir/f"), "x")
            }),
            ("mkdir in missing dir", |m| {
                fs::create_dir(m.join("nodir/d"))
            }),
            ("stat below missing", |m| {
                fs::metadata(m.join("dir/missing/x")).map(drop)
            }),
            ("stat whiteout", |m| {
                fs::symlink_metadata(m.join("gone")).map(drop)
            }),
            ("open whiteout", |m| {
                fs::File::open(m.join("gone")).map(drop)
            }),
            ("unlink whiteout", |m| fs::remove_file(m.join("gone"))),
            ("chmod whiteout", |m| {
                fs::set_permissions(m.join("gone"), fs::Permissions::from_mode(0o600))
            }),
            ("getxattr whiteout", |m| {
                lgetxattr(&m.join("gone"), "user.x").map(drop)
            }),
            ("link whiteout", |m| {
                fs::hard_link(m.join("gone"), m.join("g2"))
            }),
            ("stat deleted", |m| {
                fs::remove_file(m.join("top"))?;
                fs::symlink_metadata(m.join("top")).map(drop)
            }),
            ("open deleted dir child", |m| {
                fs::remove_file(m.join("sub/deep/x"))?;
                fs::File::open(m.join("sub/deep/x")).map(drop)
            }),
        ],
    );
}

#[test]
fn eexist() {
    let s = layers();
    expect(
        &s,
        2,
        Errno::EXIST,
        &[
            ("mkdir lower dir", |m| fs::create_dir(m.join("dir"))),
            ("mkdir lower file", |m| fs::create_dir(m.join("file"))),
            ("mkdir merged dir", |m| fs::create_dir(m.join("sub/deep"))),
            ("create_new lower file", |m| {
                fs::File::create_new(m.join("file")).map(drop)
            }),
            ("create_new top file", |m| {
                fs::File::create_new(m.join("top")).map(drop)
            }),
            ("symlink over lower file", |m| symlink("t", m.join("file"))),
            ("symlink over lower dir", |m| {
                symlink("t", m.join("emptydir"))
            }),
            ("link over lower file", |m| {
                fs::hard_link(m.join("top"), m.join("file"))
            }),
            ("mknod over lower dir", |m| mknod_fifo(&m.join("dir"))),
            ("mkdir over new file", |m| {
                fs::write(m.join("n"), "n")?;
                fs::create_dir(m.join("n"))
            }),
        ],
    );
}

#[test]
fn enotempty() {
    let s = layers();
    expect(
        &s,
        2,
        Errno::NOTEMPTY,
        &[
            ("rmdir lower dir", |m| fs::remove_dir(m.join("dir"))),
            ("rmdir lower parent", |m| fs::remove_dir(m.join("sub"))),
            ("rmdir after one unlink", |m| {
                fs::remove_file(m.join("dir/other"))?;
                fs::remove_dir(m.join("dir"))
            }),
            ("rmdir new dir", |m| {
                fs::create_dir(m.join("nd"))?;
                fs::write(m.join("nd/f"), "f")?;
                fs::remove_dir(m.join("nd"))
            }),
            ("rename new dir over non-empty lower dir", |m| {
                fs::create_dir(m.join("nd2"))?;
                fs::rename(m.join("nd2"), m.join("sub"))
            }),
            ("rmdir emptydir with new file", |m| {
                fs::write(m.join("emptydir/f"), "f")?;
                fs::remove_dir(m.join("emptydir"))
            }),
        ],
    );
}

#[test]
fn enotdir() {
    let s = layers();
    expect(
        &s,
        2,
        Errno::NOTDIR,
        &[
            ("stat below file", |m| {
                fs::metadata(m.join("file/x")).map(drop)
            }),
            ("create below file", |m| fs::write(m.join("top/x"), "x")),
            ("mkdir below file", |m| fs::create_dir(m.join("file/x"))),
            ("rmdir file", |m| fs::remove_dir(m.join("file"))),
            ("readdir file", |m| fs::read_dir(m.join("file")).map(drop)),
            ("rename new dir over file", |m| {
                fs::create_dir(m.join("nd"))?;
                fs::rename(m.join("nd"), m.join("file"))
            }),
            ("open file as dir", |m| {
                rustix::fs::open(
                    m.join("top"),
                    rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                    Mode::empty(),
                )
                .map(drop)
                .map_err(io::Error::from)
            }),
        ],
    );
}

#[test]
fn eisdir() {
    let s = layers();
    expect(
        &s,
        2,
        Errno::ISDIR,
        &[
            ("open lower dir for writing", |m| open_write(&m.join("dir"))),
            ("open merged dir read-write", |m| {
                fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(m.join("sub"))
                    .map(drop)
            }),
            ("unlink lower dir", |m| fs::remove_file(m.join("emptydir"))),
            ("unlink new dir", |m| {
                fs::create_dir(m.join("nd"))?;
                fs::remove_file(m.join("nd"))
            }),
            ("rename file over dir", |m| {
                fs::rename(m.join("file"), m.join("emptydir"))
            }),
            ("rename new file over new dir", |m| {
                fs::write(m.join("nf"), "f")?;
                fs::create_dir(m.join("nd2"))?;
                fs::rename(m.join("nf"), m.join("nd2"))
            }),
        ],
    );
}

#[test]
fn eperm() {
    let s = layers();
    expect(
        &s,
        2,
        Errno::PERM,
        &[
            ("link lower dir", |m| {
                fs::hard_link(m.join("dir"), m.join("dirlink"))
            }),
            ("link new dir", |m| {
                fs::create_dir(m.join("nd"))?;
                fs::hard_link(m.join("nd"), m.join("ndlink"))
            }),
        ],
    );
}

fn erofs_ops() -> Vec<Op> {
    vec![
        ("create", |m| fs::write(m.join("new"), "x")),
        ("open for write", |m| open_write(&m.join("file"))),
        ("truncate", |m| {
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(m.join("top"))
                .map(drop)
        }),
        ("mkdir", |m| fs::create_dir(m.join("nd"))),
        ("mknod", |m| mknod_fifo(&m.join("fifo"))),
        ("symlink", |m| symlink("t", m.join("sl"))),
        ("link", |m| fs::hard_link(m.join("file"), m.join("hl"))),
        ("unlink", |m| fs::remove_file(m.join("file"))),
        ("rmdir", |m| fs::remove_dir(m.join("emptydir"))),
        ("rename", |m| fs::rename(m.join("file"), m.join("renamed"))),
        ("chmod", |m| {
            fs::set_permissions(m.join("file"), fs::Permissions::from_mode(0o600))
        }),
        ("chown", |m| {
            std::os::unix::fs::chown(m.join("file"), Some(1), Some(1))
        }),
        ("utimens", |m| {
            rustix::fs::utimensat(
                CWD,
                m.join("file"),
                &rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                    last_modification: rustix::fs::Timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    },
                },
                rustix::fs::AtFlags::empty(),
            )
            .map_err(io::Error::from)
        }),
        ("setxattr", |m| lsetxattr(&m.join("file"), "user.x", b"x")),
        ("removexattr", |m| lremovexattr(&m.join("file"), "user.x")),
    ]
}

#[test]
fn erofs_without_an_upper() {
    let s = layers();
    let before = tree(s.dir.path());
    let want = Errno::ROFS.raw_os_error();
    let ops = erofs_ops();
    let run = |m: &Path| {
        for (what, op) in &ops {
            match op(m) {
                Ok(()) => panic!("{what} on read-only {} succeeded", m.display()),
                Err(e) => assert_eq!(errno(&e), want, "{what} on read-only {}: {e}", m.display()),
            }
        }
        assert_eq!(fs::read_to_string(m.join("file")).unwrap(), "data");
    };
    {
        let k = s.kernel_mount_lowers(2);
        eprintln!("--- checking kernel overlayfs at {}", k.mnt.display());
        run(&k.mnt);
    }
    let lower = format!("lowerdir={}", s.lowerdir(2));
    let m = StrataMount::new(&["mount", "-o", &lower, s.mnt().to_str().unwrap()]);
    eprintln!("--- checking strata at {}", m.mnt.display());
    run(&m.mnt);
    drop(m);
    let opts = format!("{},ro", s.opts(2));
    let m = StrataMount::new(&["mount", "-o", &opts, s.mnt().to_str().unwrap()]);
    eprintln!("--- checking strata -o ro at {}", m.mnt.display());
    run(&m.mnt);
    drop(m);
    let _ = fs::remove_dir_all(s.path("kwork"));
    fs::create_dir(s.path("kwork")).unwrap();
    assert_eq!(
        tree(s.dir.path()),
        before,
        "a read-only mount changed files"
    );
}

#[test]
fn eacces_for_another_user_with_default_permissions() {
    let s = layers();
    // let uid 65534 reach the mountpoints
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l = s.lower(1);
    put(&l.join("ro644"), "root's");
    put(&l.join("secret600"), "secret");
    fs::set_permissions(l.join("secret600"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(l.join("rootdir")).unwrap();
    put(&l.join("rootdir/readable"), "r");
    fs::create_dir_all(l.join("private")).unwrap();
    put(&l.join("private/inside"), "i");
    fs::set_permissions(l.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    put(&l.join("open/shared"), "s");
    fs::set_permissions(l.join("open"), fs::Permissions::from_mode(0o1777)).unwrap();
    let refused = |m: &Path, script: &str, msg: &str| {
        let out = sh_as_nobody(&script.replace("M", m.to_str().unwrap()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "as nobody, `{script}` on {} succeeded",
            m.display()
        );
        assert!(
            err.contains(msg),
            "as nobody, `{script}` on {}: expected {msg:?}, got {err}",
            m.display()
        );
    };
    let denied = |m: &Path, script: &str| refused(m, script, "Permission denied");
    on_kernel_then_strata(&s, 2, |m| {
        let ok = sh_as_nobody(&format!(
            "cat {0}/ro644 && ls {0}/rootdir && echo n > {0}/open/mine",
            m.display()
        ));
        assert!(
            ok.status.success(),
            "as nobody, reading a 0644 file failed: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "root'sreadable\n");
        denied(m, "echo x > M/ro644");
        denied(m, "cat M/secret600");
        denied(m, "echo x > M/rootdir/new");
        denied(m, "rm -f M/rootdir/readable");
        denied(m, "ls M/private");
        denied(m, "cat M/private/inside");
        denied(m, "mkdir M/newdir");
        // not the owner: EPERM, as without a union
        refused(m, "chmod 777 M/ro644", "Operation not permitted");
        refused(m, "rm -f M/open/shared", "Operation not permitted");
        assert_eq!(fs::read_to_string(m.join("ro644")).unwrap(), "root's");
        assert_eq!(fs::read_to_string(m.join("rootdir/readable")).unwrap(), "r");
        assert_eq!(fs::read_to_string(m.join("open/shared")).unwrap(), "s");
        assert_eq!(fs::read_to_string(m.join("open/mine")).unwrap(), "n\n");
    });
    let mine = fs::metadata(s.upper().join("open/mine")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&mine), 65534);
}
