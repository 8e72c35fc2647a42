//! Unit tests of the union layer on temporary directories, without FUSE: every call goes
//! straight to [`Union`], and the results are checked on the layer directories.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::inode::ROOT_ID;
use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

const ROOT: Creds = Creds {
    uid: 0,
    gid: 0,
    umask: 0,
};

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for d in ["l0", "l1", "upper", "work"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        Fixture { dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn put(&self, rel: &str, data: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    fn whiteout(&self, rel: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    }

    fn union(&self) -> Union {
        let paths = StackPaths {
            lowers: vec![self.p("l0"), self.p("l1")],
            upper: Some(self.p("upper")),
            work: Some(self.p("work")),
        };
        Union::new(
            Stack::open_paths(&paths).unwrap(),
            UnionOptions {
                fsync: false,
                metacopy: true,
                index: true,
            },
        )
    }
}

fn names(u: &Union, dir: u64) -> Vec<String> {
    let fh = u.opendir(dir).unwrap();
    let mut v: Vec<String> = u
        .readdir(fh, 0)
        .unwrap()
        .iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    u.releasedir(fh);
    v.sort();
    v
}

fn lookup(u: &Union, path: &str) -> Result<Attr> {
    let mut cur = ROOT_ID;
    let mut attr = u.getattr(ROOT_ID)?;
    for part in Path::new(path).iter() {
        attr = u.lookup(cur, part)?;
        cur = attr.ino;
    }
    Ok(attr)
}

fn read_all(u: &Union, path: &str) -> String {
    let a = lookup(u, path).unwrap();
    let fh = u.open(a.ino, libc::O_RDONLY).unwrap();
    let mut buf = super::ReadBuf::default();
    let data = u.read(fh, 0, 1 << 20, &mut buf).unwrap();
    u.release(fh);
    String::from_utf8(data.to_vec()).unwrap()
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

#[test]
fn top_layer_wins_and_whiteouts_hide() {
    let f = Fixture::new();
    f.put("l0/a", "top");
    f.put("l1/a", "bottom");
    f.put("l1/gone", "x");
    f.whiteout("l0/gone");
    f.put("l1/oci", "x");
    f.put("l0/.wh.oci", "");
    let u = f.union();
    assert_eq!(read_all(&u, "a"), "top");
    assert_eq!(lookup(&u, "gone").unwrap_err(), Errno::ENOENT);
    assert_eq!(lookup(&u, "oci").unwrap_err(), Errno::ENOENT);
    assert_eq!(lookup(&u, ".wh.oci").unwrap_err(), Errno::ENOENT);
    assert_eq!(names(&u, ROOT_ID), vec![".", "..", "a"]);
}

#[test]
fn opaque_directories_hide_lower_contents_in_every_form() {
    let f = Fixture::new();
    for d in ["x", "u", "m"] {
        f.put(&format!("l1/{d}/old"), "old");
        f.put(&format!("l0/{d}/new"), "new");
    }
    rustix::fs::setxattr(
        f.p("l0/x"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(
        f.p("l0/u"),
        "user.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    f.put("l0/m/.wh..wh..opq", "");
    let u = f.union();
    for d in ["x", "u", "m"] {
        let a = lookup(&u, d).unwrap();
        assert_eq!(names(&u, a.ino), vec![".", "..", "new"], "{d}");
        assert_eq!(
            lookup(&u, &format!("{d}/old")).unwrap_err(),
            Errno::ENOENT,
            "{d}"
        );
        assert!(
            u.listxattr(a.ino, ROOT).unwrap().is_empty(),
            "{d}: overlay xattrs must stay hidden"
        );
    }
}

#[test]
fn merged_directory_lists_every_layer_once() {
    let f = Fixture::new();
    f.put("l0/d/a", "0");
    f.put("l1/d/a", "1");
    f.put("l1/d/b", "1");
    let u = f.union();
    let d = lookup(&u, "d").unwrap();
    assert_eq!(
        d.nlink, 1,
        "merged directories report one link, as kernel overlayfs"
    );
    assert_eq!(names(&u, d.ino), vec![".", "..", "a", "b"]);
}

#[test]
fn copy_up_keeps_metadata_and_holes() {
    let f = Fixture::new();
    let p = f.p("l1/dir/sparse");
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let file = fs::File::create(&p).unwrap();
    file.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_at(b"tail", (64 << 20) - 4).unwrap();
    drop(file);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(f.p("l1/dir"), fs::Permissions::from_mode(0o750)).unwrap();
    rustix::fs::chown(
        &p,
        Some(rustix::fs::Uid::from_raw(123)),
        Some(rustix::fs::Gid::from_raw(456)),
    )
    .unwrap();
    rustix::fs::setxattr(&p, "user.k", b"v", rustix::fs::XattrFlags::empty()).unwrap();
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 2000,
            tv_nsec: 5,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::empty()).unwrap();
    let u = f.union();
    let a = lookup(&u, "dir/sparse").unwrap();
    let fh = u.open(a.ino, libc::O_RDWR).unwrap();
    u.release(fh);
    let up = fs::metadata(f.p("upper/dir/sparse")).unwrap();
    assert_eq!((up.mode() & 0o7777, up.uid(), up.gid()), (0o640, 123, 456));
    assert_eq!((up.mtime(), up.mtime_nsec()), (2000, 5));
    assert_eq!(up.len(), 64 << 20);
    assert!(
        up.blocks() < 1024,
        "holes must stay holes: {} blocks",
        up.blocks()
    );
    assert_eq!(
        fs::metadata(f.p("upper/dir")).unwrap().mode() & 0o7777,
        0o750
    );
    let mut v = [0u8; 16];
    let n = rustix::fs::getxattr(f.p("upper/dir/sparse"), "user.k", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"v");
    assert_eq!(
        fs::read_dir(f.p("work")).unwrap().count(),
        0,
        "nothing is left in the work directory"
    );
    assert_eq!(
        a.ino,
        u.getattr(a.ino).unwrap().ino,
        "the inode number survives copy-up"
    );
}

#[test]
fn unlink_and_rmdir_of_lower_entries_leave_whiteouts() {
    let f = Fixture::new();
    f.put("l1/d/file", "x");
    f.put("l1/e/inner", "x");
    let u = f.union();
    let d = lookup(&u, "d").unwrap();
    u.unlink(d.ino, OsStr::new("file")).unwrap();
    assert!(is_whiteout(&f.p("upper/d/file")));
    assert_eq!(u.rmdir(ROOT_ID, OsStr::new("e")), Err(Errno::ENOTEMPTY));
    let e = lookup(&u, "e").unwrap();
    u.unlink(e.ino, OsStr::new("inner")).unwrap();
    u.rmdir(ROOT_ID, OsStr::new("e")).unwrap();
    assert!(is_whiteout(&f.p("upper/e")));
    assert_eq!(lookup(&u, "e").unwrap_err(), Errno::ENOENT);
    assert_eq!(fs::read_dir(f.p("work")).unwrap().count(), 0);
}

#[test]
fn recreated_directory_is_opaque_and_agrees_with_readdir() {
    let f = Fixture::new();
    f.put("l1/d/old", "x");
    let u = f.union();
    let d = lookup(&u, "d").unwrap();
    u.unlink(d.ino, OsStr::new("old")).unwrap();
    u.rmdir(ROOT_ID, OsStr::new("d")).unwrap();
    let d2 = u.mkdir(ROOT_ID, OsStr::new("d"), 0o755, ROOT).unwrap();
    assert_eq!(names(&u, d2.ino), vec![".", ".."]);
    assert_eq!(
        u.lookup(d2.ino, OsStr::new("old")).unwrap_err(),
        Errno::ENOENT
    );
    let mut v = [0u8; 4];
    let n = rustix::fs::getxattr(f.p("upper/d"), "trusted.overlay.opaque", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"y");
}

#[test]
fn renames() {
    let f = Fixture::new();
    f.put("l1/lowerdir/x", "x");
    f.put("l1/file", "data");
    let u = f.union();
    // A directory with lower parts: copied up, moved, redirected to its old name.
    let dir = lookup(&u, "lowerdir").unwrap();
    u.rename(
        ROOT_ID,
        OsStr::new("lowerdir"),
        ROOT_ID,
        OsStr::new("moved"),
        0,
    )
    .unwrap();
    assert!(is_whiteout(&f.p("upper/lowerdir")));
    let mut v = [0u8; 16];
    let n = rustix::fs::getxattr(f.p("upper/moved"), "trusted.overlay.redirect", &mut v[..]);
    assert_eq!(&v[..n.unwrap()], b"lowerdir");
    assert_eq!(lookup(&u, "moved").unwrap().ino, dir.ino);
    assert_eq!(names(&u, dir.ino), vec![".", "..", "x"]);
    // A lower file: copied up, moved, and a whiteout left behind.
    lookup(&u, "file").unwrap();
    u.rename(ROOT_ID, OsStr::new("file"), ROOT_ID, OsStr::new("file2"), 0)
        .unwrap();
    assert!(is_whiteout(&f.p("upper/file")));
    assert_eq!(read_all(&u, "file2"), "data");
    // NOREPLACE and EXCHANGE.
    let n = u.mkdir(ROOT_ID, OsStr::new("n"), 0o755, ROOT).unwrap();
    let (_, fh) = u
        .create(n.ino, OsStr::new("a"), 0o644, libc::O_WRONLY, ROOT)
        .unwrap();
    u.write(fh, 0, b"A").unwrap();
    u.release(fh);
    assert_eq!(
        u.rename(
            ROOT_ID,
            OsStr::new("file2"),
            n.ino,
            OsStr::new("a"),
            libc::RENAME_NOREPLACE
        ),
        Err(Errno::EEXIST)
    );
    u.rename(
        ROOT_ID,
        OsStr::new("file2"),
        n.ino,
        OsStr::new("a"),
        libc::RENAME_EXCHANGE,
    )
    .unwrap();
    assert_eq!(read_all(&u, "n/a"), "data");
    assert_eq!(read_all(&u, "file2"), "A");
    // A directory made on the mount moves freely.
    u.rename(ROOT_ID, OsStr::new("n"), ROOT_ID, OsStr::new("n2"), 0)
        .unwrap();
    assert_eq!(read_all(&u, "n2/a"), "data");
}

#[test]
fn names_longer_than_255_bytes_are_refused() {
    let f = Fixture::new();
    let u = f.union();
    let ok = "a".repeat(255);
    let long = "a".repeat(256);
    u.mkdir(ROOT_ID, OsStr::new(&ok), 0o755, ROOT).unwrap();
    assert_eq!(
        u.mkdir(ROOT_ID, OsStr::new(&long), 0o755, ROOT),
        Err(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        u.lookup(ROOT_ID, OsStr::new(&long)),
        Err(Errno::ENAMETOOLONG)
    );
    assert_eq!(
        u.mkdir(ROOT_ID, OsStr::new(".wh.x"), 0o755, ROOT),
        Err(Errno::EINVAL)
    );
}

#[test]
fn read_only_stack_refuses_writes() {
    let f = Fixture::new();
    f.put("l0/a", "x");
    let paths = StackPaths {
        lowers: vec![f.p("l0")],
        upper: None,
        work: None,
    };
    let u = Union::new(
        Stack::open_paths(&paths).unwrap(),
        UnionOptions {
            fsync: true,
            metacopy: true,
            index: true,
        },
    );
    let a = lookup(&u, "a").unwrap();
    assert_eq!(u.open(a.ino, libc::O_WRONLY), Err(Errno::EROFS));
    assert_eq!(u.unlink(ROOT_ID, OsStr::new("a")), Err(Errno::EROFS));
    assert_eq!(
        u.mkdir(ROOT_ID, OsStr::new("b"), 0o755, ROOT).unwrap_err(),
        Errno::EROFS
    );
}

#[test]
fn forget_bounds_the_inode_table() {
    let f = Fixture::new();
    for i in 0..100 {
        f.put(&format!("l1/f{i}"), "x");
    }
    let u = f.union();
    let ids: Vec<u64> = (0..100)
        .map(|i| lookup(&u, &format!("f{i}")).unwrap().ino)
        .collect();
    assert_eq!(u.inode_count(), 101);
    for id in ids {
        u.forget(id, 1);
    }
    assert_eq!(u.inode_count(), 1);
}
