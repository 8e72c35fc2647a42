//! What a POSIX program does on a mount: create, mkdir, mknod, symlinks, hard links, renames
//! (plain, over a file, RENAME_NOREPLACE, RENAME_EXCHANGE), writes, truncate, fallocate,
//! chmod, chown, utimens, user xattrs, fsync, statfs, large and sparse files, and what a
//! copy-up must keep (data, holes, mode, owner, times, xattrs, parent directories).
//!
//! Each check runs on a kernel overlayfs mount of the same layers first, then on strata.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use rustix::fs::{FileType, Mode, RenameFlags, CWD};
use rustix::io::Errno;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn assert_gone(p: &Path) {
    let e = fs::symlink_metadata(p).map(|_| ()).unwrap_err();
    assert_eq!(
        errno(&e),
        Errno::NOENT.raw_os_error(),
        "{}: {e}",
        p.display()
    );
}

fn rename2(from: &Path, to: &Path, flags: RenameFlags) -> std::io::Result<()> {
    Ok(rustix::fs::renameat_with(CWD, from, CWD, to, flags)?)
}

fn lower_layers() -> Scratch {
    let s = Scratch::new();
    put(&s.lower(1).join("a"), "lower a");
    put(&s.lower(1).join("b"), "lower b");
    put(&s.lower(0).join("c"), "lower c");
    put(&s.lower(1).join("d/x"), "x");
    put(&s.lower(0).join("d/y"), "y");
    s
}

#[test]
fn create_write_and_read() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        fs::write(m.join("new"), "hello").unwrap();
        assert_eq!(read(&m.join("new")), "hello");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("a"))
            .unwrap();
        f.write_all(b" appended").unwrap();
        drop(f);
        assert_eq!(read(&m.join("a")), "lower a appended");
        fs::write(m.join("c"), "replaced").unwrap();
        assert_eq!(read(&m.join("c")), "replaced");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.join("d/x"))
            .unwrap();
        f.write_at(b"X", 0).unwrap();
        drop(f);
        assert_eq!(read(&m.join("d/x")), "X");
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(m.join("d/rw"))
            .unwrap();
        f.write_all(b"0123456789").unwrap();
        f.seek(SeekFrom::Start(3)).unwrap();
        let mut buf = [0u8; 4];
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"3456");
    });
    assert_eq!(read(&s.lower(1).join("a")), "lower a");
    assert_eq!(read(&s.lower(0).join("c")), "lower c");
    assert_eq!(read(&s.upper().join("a")), "lower a appended");
}

#[test]
fn mkdir_and_readdir() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        fs::create_dir(m.join("n")).unwrap();
        fs::create_dir_all(m.join("d/n1/n2/n3")).unwrap();
        fs::set_permissions(m.join("n"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(fs::metadata(m.join("n")).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(names(&m.join("d")), ["n1", "x", "y"]);
        assert_eq!(names(m), ["a", "b", "c", "d", "n"]);
        assert!(names(&m.join("d/n1/n2/n3")).is_empty());
    });
}

#[test]
fn mknod_fifo_and_devices() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        let mk = |name: &str, ft: FileType, mode: u32, dev: u64| {
            rustix::fs::mknodat(CWD, m.join(name), ft, Mode::from_raw_mode(mode), dev).unwrap();
        };
        mk("fifo", FileType::Fifo, 0o640, 0);
        mk(
            "d/chr",
            FileType::CharacterDevice,
            0o600,
            rustix::fs::makedev(1, 3),
        );
        mk(
            "blk",
            FileType::BlockDevice,
            0o660,
            rustix::fs::makedev(7, 200),
        );
        let f = fs::symlink_metadata(m.join("fifo")).unwrap();
        assert!(f.file_type().is_fifo());
        assert_eq!(f.mode() & 0o7777, 0o640);
        let c = fs::symlink_metadata(m.join("d/chr")).unwrap();
        assert!(c.file_type().is_char_device());
        assert_eq!(c.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(c.mode() & 0o7777, 0o600);
        let b = fs::symlink_metadata(m.join("blk")).unwrap();
        assert!(b.file_type().is_block_device());
        assert_eq!(b.rdev(), rustix::fs::makedev(7, 200));
        assert_eq!(names(&m.join("d")), ["chr", "x", "y"]);
    });
    assert!(fs::symlink_metadata(s.upper().join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn symlink_and_readlink() {
    let s = lower_layers();
    symlink("a", s.lower(1).join("la")).unwrap();
    symlink("/nowhere/at/all", s.lower(0).join("dangling")).unwrap();
    on_kernel_then_strata(&s, 2, |m| {
        symlink("c", m.join("lc")).unwrap();
        symlink("../a", m.join("d/up")).unwrap();
        symlink("/absolute/target", m.join("abs")).unwrap();
        assert_eq!(fs::read_link(m.join("lc")).unwrap(), Path::new("c"));
        assert_eq!(read(&m.join("lc")), "lower c");
        assert_eq!(read(&m.join("d/up")), "lower a");
        assert_eq!(
            fs::read_link(m.join("abs")).unwrap(),
            Path::new("/absolute/target")
        );
        assert_eq!(fs::read_link(m.join("la")).unwrap(), Path::new("a"));
        assert_eq!(read(&m.join("la")), "lower a");
        assert_eq!(
            fs::read_link(m.join("dangling")).unwrap(),
            Path::new("/nowhere/at/all")
        );
        assert!(fs::symlink_metadata(m.join("abs"))
            .unwrap()
            .file_type()
            .is_symlink());
        let e = fs::read_link(m.join("a")).unwrap_err();
        assert_eq!(errno(&e), Errno::INVAL.raw_os_error());
    });
}

#[test]
fn hard_links() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        fs::write(m.join("new"), "one").unwrap();
        fs::hard_link(m.join("new"), m.join("d/new2")).unwrap();
        assert_eq!(fs::metadata(m.join("new")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(m.join("d/new2")).unwrap().nlink(), 2);
        fs::write(m.join("d/new2"), "two").unwrap();
        assert_eq!(read(&m.join("new")), "two");
        // a lower file: linking copies it up, then both names are one file
        fs::hard_link(m.join("a"), m.join("a2")).unwrap();
        assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(m.join("a2")).unwrap().nlink(), 2);
        assert_eq!(read(&m.join("a2")), "lower a");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.join("a2"))
            .unwrap();
        f.write_at(b"L", 0).unwrap();
        drop(f);
        assert_eq!(read(&m.join("a")), "Lower a");
        fs::remove_file(m.join("a")).unwrap();
        assert_eq!(fs::metadata(m.join("a2")).unwrap().nlink(), 1);
        assert_eq!(read(&m.join("a2")), "Lower a");
        assert_gone(&m.join("a"));
    });
    assert_eq!(read(&s.lower(1).join("a")), "lower a");
}

#[test]
fn unlink_and_rmdir() {
    let s = lower_layers();
    fs::create_dir_all(s.lower(1).join("empty")).unwrap();
    on_kernel_then_strata(&s, 2, |m| {
        fs::remove_file(m.join("a")).unwrap();
        fs::remove_file(m.join("c")).unwrap();
        fs::write(m.join("n"), "n").unwrap();
        fs::remove_file(m.join("n")).unwrap();
        fs::remove_dir(m.join("empty")).unwrap();
        fs::create_dir(m.join("nd")).unwrap();
        fs::remove_dir(m.join("nd")).unwrap();
        assert_eq!(names(m), ["b", "d"]);
        // a removed name can be made again, with a new type
        fs::create_dir(m.join("a")).unwrap();
        fs::write(m.join("empty"), "now a file").unwrap();
        assert!(names(&m.join("a")).is_empty());
        assert_eq!(read(&m.join("empty")), "now a file");
    });
}

#[test]
fn rename_files() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        // plain: a lower file to a new name
        fs::rename(m.join("a"), m.join("a-moved")).unwrap();
        assert_gone(&m.join("a"));
        assert_eq!(read(&m.join("a-moved")), "lower a");
        // over an existing lower file, across directories
        fs::rename(m.join("b"), m.join("d/x")).unwrap();
        assert_gone(&m.join("b"));
        assert_eq!(read(&m.join("d/x")), "lower b");
        // a new file over a lower file
        fs::write(m.join("n"), "new").unwrap();
        fs::rename(m.join("n"), m.join("c")).unwrap();
        assert_eq!(read(&m.join("c")), "new");
        // onto a name whose lower file was deleted
        fs::remove_file(m.join("d/y")).unwrap();
        fs::rename(m.join("c"), m.join("d/y")).unwrap();
        assert_eq!(read(&m.join("d/y")), "new");
        assert_eq!(names(m), ["a-moved", "d"]);
        assert_eq!(names(&m.join("d")), ["x", "y"]);
    });
    for up in [s.kupper(), s.upper()] {
        assert!(is_whiteout(&up.join("a")), "{}/a", up.display());
        assert!(is_whiteout(&up.join("b")), "{}/b", up.display());
    }
}

#[test]
fn rename_noreplace() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        let eexist = Errno::EXIST.raw_os_error();
        assert_eq!(
            err_of(rename2(&m.join("a"), &m.join("b"), RenameFlags::NOREPLACE)),
            eexist
        );
        assert_eq!(
            err_of(rename2(
                &m.join("a"),
                &m.join("d/y"),
                RenameFlags::NOREPLACE
            )),
            eexist
        );
        fs::write(m.join("n"), "n").unwrap();
        assert_eq!(
            err_of(rename2(&m.join("n"), &m.join("c"), RenameFlags::NOREPLACE)),
            eexist
        );
        assert_eq!(read(&m.join("b")), "lower b");
        assert_eq!(read(&m.join("a")), "lower a");
        rename2(&m.join("a"), &m.join("d/a"), RenameFlags::NOREPLACE).unwrap();
        assert_eq!(read(&m.join("d/a")), "lower a");
        assert_gone(&m.join("a"));
        // a name hidden by a whiteout counts as free
        fs::remove_file(m.join("b")).unwrap();
        rename2(&m.join("n"), &m.join("b"), RenameFlags::NOREPLACE).unwrap();
        assert_eq!(read(&m.join("b")), "n");
    });
}

#[test]
fn rename_exchange() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        rename2(&m.join("a"), &m.join("c"), RenameFlags::EXCHANGE).unwrap();
        assert_eq!(read(&m.join("a")), "lower c");
        assert_eq!(read(&m.join("c")), "lower a");
        fs::write(m.join("n"), "new").unwrap();
        rename2(&m.join("n"), &m.join("d/x"), RenameFlags::EXCHANGE).unwrap();
        assert_eq!(read(&m.join("n")), "x");
        assert_eq!(read(&m.join("d/x")), "new");
        fs::create_dir(m.join("nd")).unwrap();
        fs::write(m.join("nd/inside"), "i").unwrap();
        rename2(&m.join("nd"), &m.join("b"), RenameFlags::EXCHANGE).unwrap();
        assert_eq!(read(&m.join("nd")), "lower b");
        assert_eq!(read(&m.join("b/inside")), "i");
        let enoent = Errno::NOENT.raw_os_error();
        assert_eq!(
            err_of(rename2(
                &m.join("a"),
                &m.join("missing"),
                RenameFlags::EXCHANGE
            )),
            enoent
        );
        assert_eq!(names(m), ["a", "b", "c", "d", "n", "nd"]);
    });
    let m = s.mount(2);
    assert_eq!(read(&m.path("a")), "lower c");
    assert_eq!(read(&m.path("c")), "lower a");
    assert_eq!(read(&m.path("b/inside")), "i");
}

/// truncate(2) by path (no open file), as python's os.truncate does it.
fn truncate_path(p: &Path, len: u64) {
    let st = std::process::Command::new("python3")
        .args([
            "-c",
            "import os,sys\nos.truncate(sys.argv[1], int(sys.argv[2]))",
        ])
        .arg(p)
        .arg(len.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "truncate({}, {len}) failed", p.display());
}

#[test]
fn truncate() {
    let s = lower_layers();
    put(&s.lower(1).join("big"), &"z".repeat(10000));
    on_kernel_then_strata(&s, 2, |m| {
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("a"))
            .unwrap()
            .set_len(3)
            .unwrap();
        assert_eq!(read(&m.join("a")), "low");
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("b"))
            .unwrap()
            .set_len(10)
            .unwrap();
        assert_eq!(fs::read(m.join("b")).unwrap(), b"lower b\0\0\0");
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join("big"))
            .unwrap();
        assert_eq!(fs::metadata(m.join("big")).unwrap().len(), 0);
        truncate_path(&m.join("c"), 1);
        assert_eq!(read(&m.join("c")), "l");
        fs::write(m.join("n"), "123456").unwrap();
        truncate_path(&m.join("n"), 2);
        assert_eq!(read(&m.join("n")), "12");
    });
    assert_eq!(fs::metadata(s.lower(1).join("big")).unwrap().len(), 10000);
}

#[test]
fn fallocate() {
    use rustix::fs::FallocateFlags;
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        let f = fs::File::create(m.join("n")).unwrap();
        rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, 1 << 20).unwrap();
        drop(f);
        let md = fs::metadata(m.join("n")).unwrap();
        assert_eq!(md.len(), 1 << 20);
        assert!(
            md.blocks() * 512 >= 1 << 20,
            "fallocate allocated only {} blocks",
            md.blocks()
        );
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.join("a"))
            .unwrap();
        rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, 4096).unwrap();
        rustix::fs::fallocate(&f, FallocateFlags::KEEP_SIZE, 0, 65536).unwrap();
        drop(f);
        let data = fs::read(m.join("a")).unwrap();
        assert_eq!(data.len(), 4096);
        assert_eq!(&data[..7], b"lower a");
        assert!(data[7..].iter().all(|b| *b == 0));
    });
}

#[test]
fn chmod_and_chown() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        fs::set_permissions(m.join("a"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::set_permissions(m.join("d"), fs::Permissions::from_mode(0o711)).unwrap();
        std::os::unix::fs::chown(m.join("b"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::chown(m.join("d/x"), None, Some(42)).unwrap();
        symlink("a", m.join("l")).unwrap();
        std::os::unix::fs::lchown(m.join("l"), Some(7), Some(8)).unwrap();
        let a = fs::metadata(m.join("a")).unwrap();
        assert_eq!(a.mode() & 0o7777, 0o4751);
        assert_eq!(fs::metadata(m.join("d")).unwrap().mode() & 0o7777, 0o711);
        let b = fs::metadata(m.join("b")).unwrap();
        assert_eq!((b.uid(), b.gid()), (1234, 5678));
        let x = fs::metadata(m.join("d/x")).unwrap();
        assert_eq!((x.uid(), x.gid()), (0, 42));
        let l = fs::symlink_metadata(m.join("l")).unwrap();
        assert_eq!((l.uid(), l.gid()), (7, 8));
        assert_eq!(read(&m.join("a")), "lower a");
        assert_eq!(names(&m.join("d")), ["x", "y"]);
    });
    assert_eq!(
        fs::metadata(s.lower(1).join("a")).unwrap().mode() & 0o7777,
        0o644
    );
    assert_eq!(fs::metadata(s.lower(1).join("b")).unwrap().uid(), 0);
}

#[test]
fn utimens_sets_times_that_stay() {
    let s = lower_layers();
    let t1 = SystemTime::UNIX_EPOCH + Duration::new(1_000_000_000, 123_456_789);
    let t2 = SystemTime::UNIX_EPOCH + Duration::new(1_100_000_000, 987_654_321);
    let check = |m: &Path| {
        for p in ["a", "n", "d", "d/x"] {
            let md = fs::symlink_metadata(m.join(p)).unwrap();
            assert_eq!(
                (md.atime(), md.atime_nsec()),
                (1_000_000_000, 123_456_789),
                "atime of {p}"
            );
            assert_eq!(
                (md.mtime(), md.mtime_nsec()),
                (1_100_000_000, 987_654_321),
                "mtime of {p}"
            );
        }
    };
    on_kernel_then_strata(&s, 2, |m| {
        fs::write(m.join("n"), "n").unwrap();
        for p in ["a", "n", "d", "d/x"] {
            let f = fs::File::open(m.join(p)).unwrap();
            f.set_times(fs::FileTimes::new().set_accessed(t1).set_modified(t2))
                .unwrap();
        }
        check(m);
    });
    let m = s.mount(2);
    check(&m.mnt);
}

#[test]
fn user_xattrs() {
    let s = lower_layers();
    set_xattr(&s.lower(1).join("a"), "user.lower", b"from lower");
    set_xattr(&s.lower(0).join("d"), "user.dirx", b"dir value");
    let enodata = Errno::NODATA.raw_os_error();
    on_kernel_then_strata(&s, 2, |m| {
        assert_eq!(
            lgetxattr(&m.join("a"), "user.lower").unwrap(),
            b"from lower"
        );
        lsetxattr(&m.join("a"), "user.added", b"\x00binary\xff").unwrap();
        assert_eq!(
            lgetxattr(&m.join("a"), "user.added").unwrap(),
            b"\x00binary\xff"
        );
        let mut l = llistxattr(&m.join("a")).unwrap();
        l.sort();
        assert_eq!(l, ["user.added", "user.lower"]);
        lremovexattr(&m.join("a"), "user.lower").unwrap();
        assert_eq!(err_of(lgetxattr(&m.join("a"), "user.lower")), enodata);
        assert_eq!(llistxattr(&m.join("a")).unwrap(), ["user.added"]);
        assert_eq!(err_of(lremovexattr(&m.join("a"), "user.never")), enodata);
        fs::write(m.join("n"), "n").unwrap();
        lsetxattr(&m.join("n"), "user.n", b"1").unwrap();
        lsetxattr(&m.join("n"), "user.n", b"22").unwrap();
        assert_eq!(lgetxattr(&m.join("n"), "user.n").unwrap(), b"22");
        assert_eq!(lgetxattr(&m.join("d"), "user.dirx").unwrap(), b"dir value");
        lsetxattr(&m.join("d"), "user.more", b"m").unwrap();
        let mut l = llistxattr(&m.join("d")).unwrap();
        l.sort();
        assert_eq!(l, ["user.dirx", "user.more"]);
        assert_eq!(names(&m.join("d")), ["x", "y"]);
    });
    assert_eq!(
        lgetxattr(&s.lower(1).join("a"), "user.lower").unwrap(),
        b"from lower"
    );
    let m = s.mount(2);
    assert_eq!(llistxattr(&m.path("a")).unwrap(), ["user.added"]);
}

#[test]
fn fsync_files_and_dirs() {
    let s = lower_layers();
    on_kernel_then_strata(&s, 2, |m| {
        let mut f = fs::File::create(m.join("n")).unwrap();
        f.write_all(b"synced").unwrap();
        f.sync_all().unwrap();
        f.sync_data().unwrap();
        let f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("a"))
            .unwrap();
        f.sync_all().unwrap();
        fs::File::open(m.join("d")).unwrap().sync_all().unwrap();
        fs::File::open(m).unwrap().sync_all().unwrap();
        assert_eq!(read(&m.join("n")), "synced");
    });
    assert_eq!(read(&s.upper().join("n")), "synced");
}

#[test]
fn statfs_reports_the_upper_filesystem() {
    let s = lower_layers();
    let up = rustix::fs::statfs(s.upper()).unwrap();
    on_kernel_then_strata(&s, 2, |m| {
        let st = rustix::fs::statfs(m).unwrap();
        assert_eq!(st.f_blocks, up.f_blocks);
        assert_eq!(st.f_bsize, up.f_bsize);
        assert_eq!(st.f_files, up.f_files);
        assert_eq!(st.f_namelen, 255);
        assert!(st.f_bavail > 0 && st.f_bfree >= st.f_bavail);
    });
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

#[test]
fn large_files_read_back_intact() {
    let s = lower_layers();
    let data = pattern(24 << 20);
    fs::write(s.lower(1).join("large"), &data).unwrap();
    on_kernel_then_strata(&s, 2, |m| {
        assert!(
            fs::read(m.join("large")).unwrap() == data,
            "large lower file reads back different"
        );
        let f = fs::File::open(m.join("large")).unwrap();
        let mut buf = vec![0u8; 100_000];
        f.read_exact_at(&mut buf, 13 << 20).unwrap();
        assert!(buf[..] == data[13 << 20..(13 << 20) + 100_000]);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.join("large"))
            .unwrap();
        f.write_at(b"!", 5).unwrap();
        drop(f);
        let mut want = data.clone();
        want[5] = b'!';
        assert!(
            fs::read(m.join("large")).unwrap() == want,
            "large file differs after copy-up"
        );
        fs::write(m.join("copy"), &want).unwrap();
        assert!(
            fs::read(m.join("copy")).unwrap() == want,
            "large new file differs"
        );
    });
}

#[test]
fn sparse_files_keep_holes_on_copy_up() {
    let s = lower_layers();
    let len: u64 = 256 << 20;
    {
        let f = fs::File::create(s.lower(1).join("sparse")).unwrap();
        f.write_at(b"head", 0).unwrap();
        f.write_at(b"tail", len - 4).unwrap();
        f.set_len(len).unwrap();
    }
    assert!(
        fs::metadata(s.lower(1).join("sparse")).unwrap().blocks() < 1024,
        "the test file is not sparse"
    );
    on_kernel_then_strata(&s, 2, |m| {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.join("sparse"))
            .unwrap();
        f.write_at(b"H", 0).unwrap();
        drop(f);
        let f = fs::File::open(m.join("sparse")).unwrap();
        let mut buf = [1u8; 8];
        f.read_exact_at(&mut buf, len - 8).unwrap();
        assert_eq!(&buf, b"\0\0\0\0tail");
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"Head\0\0\0\0");
        f.read_exact_at(&mut buf, len / 2).unwrap();
        assert_eq!(buf, [0u8; 8]);
        assert_eq!(fs::metadata(m.join("sparse")).unwrap().len(), len);
    });
    for up in [s.kupper(), s.upper()] {
        let md = fs::metadata(up.join("sparse")).unwrap();
        assert_eq!(md.len(), len);
        assert!(
            md.blocks() * 512 < 4 << 20,
            "{}/sparse lost its holes: {} blocks",
            up.display(),
            md.blocks()
        );
    }
}

#[test]
fn copy_up_keeps_mode_owner_times_and_xattrs() {
    let s = lower_layers();
    let f = s.lower(1).join("meta");
    let g = s.lower(1).join("meta2");
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(999_999_999, 0);
    for p in [&f, &g] {
        put(p, "metadata");
        fs::set_permissions(p, fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(p, Some(1234), Some(5678)).unwrap();
        set_xattr(p, "user.k", b"v");
        set_xattr(p, "user.k2", b"v2");
        fs::File::open(p)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(mtime).set_accessed(mtime))
            .unwrap();
    }
    on_kernel_then_strata(&s, 2, |m| {
        // a metadata change copies up without touching the data or mtime
        lsetxattr(&m.join("meta"), "user.new", b"n").unwrap();
        // a data change copies up, then writes
        let h = fs::OpenOptions::new()
            .append(true)
            .open(m.join("meta2"))
            .unwrap();
        (&h).write_all(b"+").unwrap();
        drop(h);
        let md = fs::metadata(m.join("meta")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o640, 1234, 5678)
        );
        assert_eq!((md.mtime(), md.mtime_nsec()), (999_999_999, 0));
        assert_eq!(read(&m.join("meta")), "metadata");
        let md = fs::metadata(m.join("meta2")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o640, 1234, 5678)
        );
        assert_eq!(read(&m.join("meta2")), "metadata+");
        assert_eq!(lgetxattr(&m.join("meta2"), "user.k2").unwrap(), b"v2");
    });
    for up in [s.kupper(), s.upper()] {
        let md = fs::metadata(up.join("meta")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o640, 1234, 5678),
            "{}/meta",
            up.display()
        );
        assert_eq!(md.mtime(), 999_999_999, "{}/meta mtime", up.display());
        // A metadata-only copy: the size, no data, the kernel's metacopy mark.
        assert_eq!(md.len(), 8, "{}/meta", up.display());
        assert!(
            !has_data(&up.join("meta")),
            "{}/meta has data",
            up.display()
        );
        assert!(lgetxattr(&up.join("meta"), "trusted.overlay.metacopy").is_ok());
        assert_eq!(lgetxattr(&up.join("meta"), "user.k").unwrap(), b"v");
        assert_eq!(lgetxattr(&up.join("meta"), "user.k2").unwrap(), b"v2");
        assert_eq!(lgetxattr(&up.join("meta"), "user.new").unwrap(), b"n");
        let md = fs::metadata(up.join("meta2")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o640, 1234, 5678),
            "{}/meta2",
            up.display()
        );
        assert_eq!(lgetxattr(&up.join("meta2"), "user.k").unwrap(), b"v");
    }
}

#[test]
fn copy_up_of_a_deep_file_copies_its_parents() {
    let s = Scratch::new();
    let l = s.lower(1);
    put(&l.join("a/b/c/file"), "deep");
    put(&l.join("a/b/sibling"), "s");
    let dirs = [
        ("a", 0o750, 11, 12),
        ("a/b", 0o700, 13, 14),
        ("a/b/c", 0o711, 15, 16),
    ];
    let old = SystemTime::UNIX_EPOCH + Duration::new(978_307_200, 0);
    set_xattr(&l.join("a/b"), "user.dir", b"bee");
    for (d, mode, uid, gid) in dirs.iter().rev() {
        fs::set_permissions(l.join(d), fs::Permissions::from_mode(*mode)).unwrap();
        std::os::unix::fs::chown(l.join(d), Some(*uid), Some(*gid)).unwrap();
        fs::File::open(l.join(d))
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
            .unwrap();
    }
    on_kernel_then_strata(&s, 2, |m| {
        let f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("a/b/c/file"))
            .unwrap();
        (&f).write_all(b"er").unwrap();
        drop(f);
        assert_eq!(read(&m.join("a/b/c/file")), "deeper");
        assert_eq!(names(&m.join("a/b")), ["c", "sibling"]);
    });
    for up in [s.kupper(), s.upper()] {
        for (d, mode, uid, gid) in dirs {
            let md = fs::metadata(up.join(d)).unwrap();
            assert_eq!(
                (md.mode() & 0o7777, md.uid(), md.gid()),
                (mode, uid, gid),
                "{}/{d}",
                up.display()
            );
            assert_eq!(md.mtime(), 978_307_200, "mtime of {}/{d}", up.display());
        }
        assert_eq!(lgetxattr(&up.join("a/b"), "user.dir").unwrap(), b"bee");
        assert_eq!(read(&up.join("a/b/c/file")), "deeper");
        assert_gone(&up.join("a/b/sibling"));
    }
}

#[test]
fn copy_up_keeps_setuid_setgid_and_capabilities() {
    // chown after chmod, or after setting xattrs, would drop these: the order matters
    let s = Scratch::new();
    let l = s.lower(1);
    // security.capability v2: effective, CAP_NET_BIND_SERVICE permitted
    let cap: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for f in ["suid", "sgid", "cap"] {
        put(&l.join("bin").join(f), "program");
        std::os::unix::fs::chown(l.join("bin").join(f), Some(1234), Some(5678)).unwrap();
    }
    fs::set_permissions(l.join("bin/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(l.join("bin/sgid"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::set_permissions(l.join("bin/cap"), fs::Permissions::from_mode(0o755)).unwrap();
    lsetxattr(&l.join("bin/cap"), "security.capability", &cap).unwrap();
    fs::create_dir_all(l.join("shared/sub")).unwrap();
    put(&l.join("shared/sub/f"), "f");
    std::os::unix::fs::chown(l.join("shared"), Some(0), Some(5678)).unwrap();
    fs::set_permissions(l.join("shared"), fs::Permissions::from_mode(0o2775)).unwrap();
    on_kernel_then_strata(&s, 2, |m| {
        for f in ["bin/suid", "bin/sgid", "bin/cap"] {
            lsetxattr(&m.join(f), "user.touched", b"1").unwrap();
        }
        let f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("shared/sub/f"))
            .unwrap();
        (&f).write_all(b"+").unwrap();
        drop(f);
        let mode = |p: &str| fs::metadata(m.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("bin/suid"), 0o4755);
        assert_eq!(mode("bin/sgid"), 0o2755);
        assert_eq!(mode("shared"), 0o2775);
        assert_eq!(
            lgetxattr(&m.join("bin/cap"), "security.capability").ok(),
            Some(cap.to_vec()),
            "file capabilities lost on copy-up"
        );
    });
    for up in [s.kupper(), s.upper()] {
        let md = fs::metadata(up.join("bin/suid")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o4755, 1234, 5678),
            "{}/bin/suid",
            up.display()
        );
        let md = fs::metadata(up.join("shared")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o2775, "{}/shared", up.display());
        assert_eq!(
            lgetxattr(&up.join("bin/cap"), "security.capability").ok(),
            Some(cap.to_vec()),
            "{}/bin/cap",
            up.display()
        );
    }
}

#[test]
fn seek_data_and_seek_hole_find_the_real_extents() {
    use rustix::fs::{seek, SeekFrom};
    let s = Scratch::new();
    let p = s.lower(0).join("sparse");
    let f = fs::File::create(&p).unwrap();
    f.set_len(1 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"data", 1 << 20).unwrap();
    drop(f);
    on_kernel_then_strata(&s, 1, |m| {
        for write in [false, true] {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(m.join("sparse"))
                .unwrap();
            assert_eq!(
                seek(&f, SeekFrom::Data(0)).unwrap(),
                1 << 20,
                "write={write}"
            );
            assert_eq!(
                seek(&f, SeekFrom::Hole(1 << 20)).unwrap(),
                (1 << 20) + 4,
                "write={write}"
            );
        }
    });
}
