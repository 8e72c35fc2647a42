//! The rest of POSIX that programs rely on: POSIX ACLs (access, default, inheritance,
//! permission checks), flock/fcntl/OFD locks between processes, shared writable mmap,
//! `O_DIRECT`, `copy_file_range`, `SEEK_HOLE`/`SEEK_DATA`, fallocate modes, file
//! capabilities across copy-up, hundreds of lower layers, a strata mount as a lower, and
//! `.wh.` names.
//!
//! Each check runs on a kernel overlayfs mount of the same layers first (the oracle), then
//! on strata. A check strata fails is `#[ignore]`d with the exact difference in its reason.
//! Child processes (python3, sh as another user) make the calls that need another process,
//! another user or a memory mapping, so the tests stay free of `unsafe`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use rustix::fs::{FallocateFlags, Mode, OFlags, SeekFrom};
use rustix::io::Errno;
use std::cell::RefCell;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Bytes that differ from offset to offset (and from a zero page), `len` long.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
        .collect()
}

fn open(p: &Path, flags: OFlags) -> OwnedFd {
    rustix::fs::open(p, flags | OFlags::CLOEXEC, Mode::from_raw_mode(0o644))
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// Runs `sh -c SCRIPT` as uid and gid `id` (std drops root's supplementary groups).
fn sh_as(id: u32, script: &str) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .uid(id)
        .gid(id)
        .env_clear()
        .output()
        .unwrap()
}

/// Runs `python3 -c PROGRAM ARGS`; returns its stdout, failing on a non-zero exit.
fn python(program: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// POSIX ACLs, as `system.posix_acl_access`/`system.posix_acl_default` values.
// ---------------------------------------------------------------------------------------------

const ACL_ACCESS: &str = "system.posix_acl_access";
const ACL_DEFAULT: &str = "system.posix_acl_default";

/// The xattr value (version 2, little endian) of an ACL written like getfacl's short
/// form: `u::rw-,u:65534:r--,g::---,m::r--,o::---`, entries in the kernel's order.
fn acl(text: &str) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for e in text.split(',') {
        let mut parts = e.split(':');
        let (tag, qual, perms) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let id: u32 = if qual.is_empty() {
            u32::MAX
        } else {
            qual.parse().unwrap()
        };
        let tag: u16 = match (tag, qual.is_empty()) {
            ("u", true) => 0x01,
            ("u", false) => 0x02,
            ("g", true) => 0x04,
            ("g", false) => 0x08,
            ("m", _) => 0x10,
            ("o", _) => 0x20,
            _ => panic!("bad ACL entry {e}"),
        };
        let perm = perms
            .chars()
            .zip([4u16, 2, 1])
            .map(|(c, bit)| if c == '-' { 0 } else { bit })
            .sum::<u16>();
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// The short text form of an ACL xattr value (the inverse of [`acl`]).
fn acl_text(value: &[u8]) -> String {
    assert_eq!(value[..4], 2u32.to_le_bytes(), "ACL version");
    value[4..]
        .chunks(8)
        .map(|e| {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            let perm = u16::from_le_bytes([e[2], e[3]]);
            let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            let t = match tag {
                0x01 | 0x02 => "u",
                0x04 | 0x08 => "g",
                0x10 => "m",
                _ => "o",
            };
            let q = if matches!(tag, 0x02 | 0x08) {
                id.to_string()
            } else {
                String::new()
            };
            let p: String = [(4, 'r'), (2, 'w'), (1, 'x')]
                .iter()
                .map(|(bit, c)| if perm & bit != 0 { *c } else { '-' })
                .collect();
            format!("{t}:{q}:{p}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The ACL `name` of `p` in short text form, or `None` when it has none.
fn acl_of(p: &Path, name: &str) -> Option<String> {
    match lgetxattr(p, name) {
        Ok(v) => Some(acl_text(&v)),
        Err(e) if errno(&e) == Errno::NODATA.raw_os_error() => None,
        Err(e) => panic!("getxattr {name} of {}: {e}", p.display()),
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn posix_access_acls_are_read_set_and_kept_on_copy_up() {
    let s = Scratch::new();
    let l = s.lower(1);
    put(&l.join("f"), "lower f");
    put(&l.join("g"), "lower g");
    fs::create_dir_all(l.join("dir")).unwrap();
    let f_acl = "u::rw-,u:65534:r--,g::---,m::r--,o::---";
    lsetxattr(&l.join("f"), ACL_ACCESS, &acl(f_acl)).unwrap();
    let g_acl = "u::rw-,u:1234:rw-,g::r--,g:5678:r--,m::rw-,o::---";
    let dir_acl = "u::rwx,u:65534:rwx,g::r-x,m::rwx,o::---";
    on_kernel_then_strata(&s, 2, |m| {
        // a lower file's ACL reads through, and its mode shows the mask as group bits
        assert_eq!(acl_of(&m.join("f"), ACL_ACCESS).as_deref(), Some(f_acl));
        assert_eq!(mode(&m.join("f")), 0o640);
        // copy-up by a write keeps it
        let h = fs::OpenOptions::new()
            .append(true)
            .open(m.join("f"))
            .unwrap();
        (&h).write_all(b"+").unwrap();
        drop(h);
        assert_eq!(read(&m.join("f")), "lower f+");
        assert_eq!(acl_of(&m.join("f"), ACL_ACCESS).as_deref(), Some(f_acl));
        assert_eq!(mode(&m.join("f")), 0o640);
        // set through the mount on a lower file and a lower directory (copy-up, then set):
        // the mode follows the ACL at once
        lsetxattr(&m.join("g"), ACL_ACCESS, &acl(g_acl)).unwrap();
        assert_eq!(acl_of(&m.join("g"), ACL_ACCESS).as_deref(), Some(g_acl));
        assert_eq!(mode(&m.join("g")), 0o660);
        lsetxattr(&m.join("dir"), ACL_ACCESS, &acl(dir_acl)).unwrap();
        assert_eq!(acl_of(&m.join("dir"), ACL_ACCESS).as_deref(), Some(dir_acl));
        assert_eq!(mode(&m.join("dir")), 0o770);
        // on a new file
        fs::write(m.join("new"), "n").unwrap();
        fs::set_permissions(m.join("new"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(acl_of(&m.join("new"), ACL_ACCESS), None);
        lsetxattr(&m.join("new"), ACL_ACCESS, &acl(f_acl)).unwrap();
        assert_eq!(acl_of(&m.join("new"), ACL_ACCESS).as_deref(), Some(f_acl));
        assert_eq!(mode(&m.join("new")), 0o640);
        // chmod rewrites the mask entry, as on any ACL filesystem
        fs::set_permissions(m.join("new"), fs::Permissions::from_mode(0o660)).unwrap();
        assert_eq!(
            acl_of(&m.join("new"), ACL_ACCESS).as_deref(),
            Some("u::rw-,u:65534:r--,g::---,m::rw-,o::---")
        );
        // removing the ACL leaves the mode bits
        lremovexattr(&m.join("g"), ACL_ACCESS).unwrap();
        assert_eq!(acl_of(&m.join("g"), ACL_ACCESS), None);
        assert_eq!(mode(&m.join("g")), 0o660);
    });
    assert_eq!(acl_of(&l.join("g"), ACL_ACCESS), None);
    assert_eq!(mode(&l.join("g")), 0o644);
    for up in [s.kupper(), s.upper()] {
        assert_eq!(
            acl_of(&up.join("f"), ACL_ACCESS).as_deref(),
            Some(f_acl),
            "{}/f",
            up.display()
        );
        assert_eq!(
            acl_of(&up.join("dir"), ACL_ACCESS).as_deref(),
            Some(dir_acl),
            "{}/dir",
            up.display()
        );
        assert_eq!(mode(&up.join("new")), 0o660, "{}/new", up.display());
    }
}

#[test]
fn posix_default_acls_are_inherited_on_create() {
    let s = Scratch::new();
    let l = s.lower(1);
    fs::create_dir_all(l.join("inherit")).unwrap();
    let default = "u::rwx,u:65534:rwx,g::r-x,m::rwx,o::r-x";
    lsetxattr(&l.join("inherit"), ACL_DEFAULT, &acl(default)).unwrap();
    // what the kernel makes of a 0666 create and a 0777 mkdir under that default ACL:
    // the default ACL replaces the umask, the requested mode narrows it
    let file_acl = "u::rw-,u:65534:rwx,g::r-x,m::rw-,o::r--";
    on_kernel_then_strata(&s, 2, |m| {
        assert_eq!(
            acl_of(&m.join("inherit"), ACL_DEFAULT).as_deref(),
            Some(default)
        );
        fs::create_dir(m.join("newdir")).unwrap();
        lsetxattr(&m.join("newdir"), ACL_DEFAULT, &acl(default)).unwrap();
        for d in ["inherit", "newdir"] {
            let out = sh(&format!(
                "umask 022 && cd {}/{d} && : > file && mkdir sub && : > sub/deeper && mkfifo fifo",
                m.display()
            ));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let d = m.join(d);
            for f in ["file", "sub/deeper", "fifo"] {
                let p = d.join(f);
                assert_eq!(
                    (mode(&p), acl_of(&p, ACL_ACCESS).as_deref()),
                    (0o664, Some(file_acl)),
                    "mode and ACL of {}",
                    p.display()
                );
                assert_eq!(acl_of(&p, ACL_DEFAULT), None, "{}", p.display());
            }
            let sub = d.join("sub");
            assert_eq!(
                (mode(&sub), acl_of(&sub, ACL_ACCESS).as_deref()),
                (0o775, Some(default)),
                "mode and ACL of {}",
                sub.display()
            );
            assert_eq!(acl_of(&sub, ACL_DEFAULT).as_deref(), Some(default));
        }
    });
    for up in [s.kupper(), s.upper()] {
        let p = up.join("inherit/file");
        assert_eq!(
            (mode(&p), acl_of(&p, ACL_ACCESS).as_deref()),
            (0o664, Some(file_acl)),
            "{}",
            p.display()
        );
    }
}

#[test]
fn posix_acls_decide_access_for_other_users() {
    let s = Scratch::new();
    // let other users reach the mountpoints
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l = s.lower(1);
    put(&l.join("secret"), "secret");
    put(&l.join("public"), "public");
    fs::create_dir_all(l.join("drop")).unwrap();
    // 0600 plus read for 65534; 0644 minus everything for 65534; a dir 65534 may write
    let grants = "u::rw-,u:65534:r--,g::---,m::r--,o::---";
    let denies = "u::rw-,u:65534:---,g::r--,m::r--,o::r--";
    lsetxattr(&l.join("secret"), ACL_ACCESS, &acl(grants)).unwrap();
    lsetxattr(&l.join("public"), ACL_ACCESS, &acl(denies)).unwrap();
    lsetxattr(
        &l.join("drop"),
        ACL_ACCESS,
        &acl("u::rwx,u:65534:rwx,g::r-x,m::rwx,o::r-x"),
    )
    .unwrap();
    let allowed = |id: u32, script: &str| {
        let out = sh_as(id, script);
        assert!(
            out.status.success(),
            "as {id}, `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let denied = |id: u32, script: &str| {
        let out = sh_as(id, script);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "as {id}, `{script}`: expected EACCES, got {:?} {err}",
            out.status
        );
    };
    on_kernel_then_strata(&s, 2, |m| {
        let m = m.display();
        assert_eq!(allowed(65534, &format!("cat {m}/secret")), "secret");
        denied(65533, &format!("cat {m}/secret"));
        denied(65534, &format!("cat {m}/public"));
        assert_eq!(allowed(65533, &format!("cat {m}/public")), "public");
        allowed(65534, &format!("echo mine > {m}/drop/mine"));
        denied(65533, &format!("echo theirs > {m}/drop/theirs"));
        // an ACL set through the mount on a new file counts at once
        let new = format!("{m}/new");
        fs::write(&new, "new").unwrap();
        fs::set_permissions(&new, fs::Permissions::from_mode(0o600)).unwrap();
        denied(65534, &format!("cat {new}"));
        lsetxattr(Path::new(&new), ACL_ACCESS, &acl(grants)).unwrap();
        assert_eq!(allowed(65534, &format!("cat {new}")), "new");
        denied(65533, &format!("cat {new}"));
    });
    for up in [s.kupper(), s.upper()] {
        assert_eq!(fs::metadata(up.join("drop/mine")).unwrap().uid(), 65534);
    }
}

// ---------------------------------------------------------------------------------------------
// Locks between processes.
// ---------------------------------------------------------------------------------------------

/// `python3 -c LOCKER hold|try flock|posix|ofd s|x PATH`: `hold` takes the lock (waiting),
/// prints `locked` and keeps it until its stdin closes; `try` asks without waiting and
/// prints `ok` or the errno. A shared lock opens the file read-only, an exclusive one
/// read-write (which copies a lower file up).
const LOCKER: &str = r#"
import fcntl, os, struct, sys
mode, kind, excl, path = sys.argv[1], sys.argv[2], sys.argv[3] == "x", sys.argv[4]
fd = os.open(path, os.O_RDWR if excl else os.O_RDONLY)
def lock(wait):
    if kind == "flock":
        op = fcntl.LOCK_EX if excl else fcntl.LOCK_SH
        fcntl.flock(fd, op if wait else op | fcntl.LOCK_NB)
    else:
        cmds = {"posix": (fcntl.F_SETLKW, fcntl.F_SETLK),
                "ofd": (fcntl.F_OFD_SETLKW, fcntl.F_OFD_SETLK)}[kind]
        typ = fcntl.F_WRLCK if excl else fcntl.F_RDLCK
        fcntl.fcntl(fd, cmds[0] if wait else cmds[1], struct.pack("hhqqii", typ, 0, 0, 0, 0, 0))
if mode == "hold":
    lock(True)
    print("locked", flush=True)
    sys.stdin.read()
else:
    try:
        lock(False)
        print("ok")
    except OSError as e:
        print(e.errno)
"#;

/// A process holding a lock until [`Holder::release`] (or drop).
struct Holder {
    child: Option<ChildGuard>,
}

impl Holder {
    fn take(kind: &str, excl: &str, path: &Path) -> Holder {
        let mut child = Command::new("python3")
            .args(["-c", LOCKER, "hold", kind, excl])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "{kind} lock on {}", path.display());
        Holder {
            child: Some(ChildGuard(child)),
        }
    }

    /// Ends the holder (closing its stdin) and waits until it has exited.
    fn release(mut self) {
        let mut c = self.child.take().unwrap();
        drop(c.0.stdin.take());
        assert!(c.0.wait().unwrap().success());
    }
}

/// What another process gets when it asks for the lock without waiting.
fn try_lock(kind: &str, excl: &str, path: &Path) -> String {
    python(LOCKER, &["try", kind, excl, path.to_str().unwrap()])
}

fn lock_between_processes(kind: &str) {
    let s = Scratch::new();
    put(&s.lower(1).join("lower"), "lower");
    let eagain = Errno::AGAIN.raw_os_error().to_string();
    on_kernel_then_strata(&s, 2, |m| {
        // a shared lock on a lower file; the other process opens it read-write (a copy-up)
        // while the lock is held, and the lock still stands
        let lower = m.join("lower");
        let h = Holder::take(kind, "s", &lower);
        assert_eq!(try_lock(kind, "x", &lower), eagain, "{kind} over a copy-up");
        assert_eq!(try_lock(kind, "s", &lower), "ok", "{kind} shared");
        assert_eq!(read(&lower), "lower");
        h.release();
        assert_eq!(try_lock(kind, "x", &lower), "ok", "{kind} after release");
        // an exclusive lock on a new file excludes both kinds of lock
        fs::write(m.join("new"), "new").unwrap();
        let new = m.join("new");
        let h = Holder::take(kind, "x", &new);
        assert_eq!(try_lock(kind, "x", &new), eagain, "{kind} exclusive");
        assert_eq!(try_lock(kind, "s", &new), eagain, "{kind} shared");
        h.release();
        assert_eq!(try_lock(kind, "x", &new), "ok", "{kind} after release");
        assert_eq!(try_lock(kind, "s", &new), "ok", "{kind} after release");
    });
}

#[test]
fn flock_locks_exclude_another_process() {
    lock_between_processes("flock");
}

#[test]
fn fcntl_record_locks_exclude_another_process() {
    lock_between_processes("posix");
}

#[test]
fn ofd_locks_exclude_another_process() {
    lock_between_processes("ofd");
}

// ---------------------------------------------------------------------------------------------
// Shared writable mmap.
// ---------------------------------------------------------------------------------------------

/// `python3 -c MMAP_WRITE PATH OFFSET TEXT`: opens PATH read-write, maps all of it
/// `MAP_SHARED` with `PROT_READ|PROT_WRITE`, writes TEXT at OFFSET through the map, checks
/// `pread` sees it, `msync`s, unmaps, and prints what the map showed at offset 0.
const MMAP_WRITE: &str = r#"
import mmap, os, sys
path, off, data = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
first = bytes(m[0:8])
m[off:off + len(data)] = data
assert os.pread(fd, len(data), off) == data, "read(2) does not see the mapped write"
m.flush()
m.close()
os.close(fd)
print(first.decode())
"#;

#[test]
fn shared_writable_mmap_of_a_lower_file_reaches_the_upper() {
    let s = Scratch::new();
    let mut data = pattern(3 * 4096 + 100, 0);
    data[..8].copy_from_slice(b"LOWERMAP");
    fs::write(s.lower(1).join("mapped"), &data).unwrap();
    let mut want = data.clone();
    want[5000..5007].copy_from_slice(b"mmapped");
    want[3 * 4096 + 90..3 * 4096 + 97].copy_from_slice(b"lastpg!");
    on_kernel_then_strata(&s, 2, |m| {
        let p = m.join("mapped");
        let ps = p.to_str().unwrap();
        assert_eq!(python(MMAP_WRITE, &[ps, "5000", "mmapped"]), "LOWERMAP");
        assert_eq!(python(MMAP_WRITE, &[ps, "12378", "lastpg!"]), "LOWERMAP");
        assert!(
            fs::read(&p).unwrap() == want,
            "read(2) after munmap differs"
        );
        assert_eq!(fs::metadata(&p).unwrap().len(), want.len() as u64);
    });
    assert!(fs::read(s.lower(1).join("mapped")).unwrap() == data);
    for up in [s.kupper(), s.upper()] {
        assert!(
            fs::read(up.join("mapped")).unwrap() == want,
            "{}/mapped differs",
            up.display()
        );
    }
    let m = s.mount(2);
    assert!(fs::read(m.path("mapped")).unwrap() == want, "after remount");
}

// ---------------------------------------------------------------------------------------------
// O_DIRECT.
// ---------------------------------------------------------------------------------------------

/// A zeroed buffer of `len` bytes starting on a 4096-byte boundary, inside `backing`.
fn aligned(backing: &mut Vec<u8>, len: usize) -> &mut [u8] {
    *backing = vec![0u8; len + 4096];
    let start = backing.as_ptr().align_offset(4096);
    &mut backing[start..start + len]
}

#[test]
fn o_direct_aligned_reads_and_writes_work() {
    let s = Scratch::new();
    let data = pattern(16384, 3);
    fs::write(s.lower(1).join("direct"), &data).unwrap();
    let mut want = data.clone();
    want[4096..12288].fill(b'D');
    on_kernel_then_strata(&s, 2, |m| {
        let fd = open(&m.join("direct"), OFlags::RDWR | OFlags::DIRECT);
        assert!(
            rustix::fs::fcntl_getfl(&fd)
                .unwrap()
                .contains(OFlags::DIRECT),
            "F_GETFL does not show O_DIRECT"
        );
        let mut wb = Vec::new();
        let w = aligned(&mut wb, 8192);
        w.fill(b'D');
        assert_eq!(rustix::io::pwrite(&fd, w, 4096).unwrap(), 8192);
        let mut rb = Vec::new();
        let r = aligned(&mut rb, 16384);
        assert_eq!(rustix::io::pread(&fd, &mut *r, 0).unwrap(), 16384);
        assert!(*r == want[..], "O_DIRECT read back differs");
        // without fsync, the data is in the file already
        drop(fd);
        assert!(fs::read(m.join("direct")).unwrap() == want);
        let fd = open(
            &m.join("new"),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::DIRECT,
        );
        assert!(rustix::fs::fcntl_getfl(&fd)
            .unwrap()
            .contains(OFlags::DIRECT));
        assert_eq!(rustix::io::pwrite(&fd, w, 0).unwrap(), 8192);
        drop(fd);
        assert_eq!(fs::read(m.join("new")).unwrap(), vec![b'D'; 8192]);
    });
    for up in [s.kupper(), s.upper()] {
        assert!(fs::read(up.join("direct")).unwrap() == want);
    }
}

#[test]
fn o_direct_is_honoured_unaligned_io_fails_with_einval() {
    let s = Scratch::new();
    fs::write(s.lower(1).join("direct"), pattern(16384, 5)).unwrap();
    let einval = Some(Errno::INVAL);
    on_kernel_then_strata(&s, 2, |m| {
        let fd = open(&m.join("direct"), OFlags::RDWR | OFlags::DIRECT);
        let mut wb = Vec::new();
        let w = aligned(&mut wb, 4096);
        w.fill(b'u');
        assert_eq!(rustix::io::pwrite(&fd, w, 100).err(), einval, "offset 100");
        assert_eq!(
            rustix::io::pwrite(&fd, &w[..100], 0).err(),
            einval,
            "100 bytes"
        );
        let mut rb = Vec::new();
        let r = aligned(&mut rb, 4096);
        assert_eq!(
            rustix::io::pread(&fd, &mut r[..100], 3).err(),
            einval,
            "read"
        );
        // aligned I/O on the same descriptor still works
        assert_eq!(rustix::io::pwrite(&fd, w, 4096).unwrap(), 4096);
        drop(fd);
        let fd = open(
            &m.join("new"),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::DIRECT,
        );
        assert_eq!(
            rustix::io::pwrite(&fd, &w[..100], 0).err(),
            einval,
            "new file"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// copy_file_range, SEEK_HOLE/SEEK_DATA, fallocate.
// ---------------------------------------------------------------------------------------------

/// Copies all of `from` (from its offset 0) to the end of `to` by `copy_file_range`.
fn copy_range_all(from: &OwnedFd, to: &OwnedFd) -> u64 {
    let mut off_in = 0u64;
    loop {
        let n = rustix::fs::copy_file_range(from, Some(&mut off_in), to, None, 1 << 20).unwrap();
        if n == 0 {
            return off_in;
        }
    }
}

#[test]
fn copy_file_range_between_files_on_the_mount() {
    let s = Scratch::new();
    let big = pattern(300_000, 7);
    fs::write(s.lower(1).join("big"), &big).unwrap();
    put(&s.lower(1).join("target"), "0123456789");
    let mut want_target = b"0123456789".to_vec();
    want_target[2..7].copy_from_slice(&big[1000..1005]);
    want_target.extend_from_slice(&big[..20]);
    on_kernel_then_strata(&s, 2, |m| {
        // a lower file to a new file, whole
        let src = open(&m.join("big"), OFlags::RDONLY);
        let dst = open(
            &m.join("copy"),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        );
        assert_eq!(copy_range_all(&src, &dst), big.len() as u64);
        drop(dst);
        assert!(fs::read(m.join("copy")).unwrap() == big, "copy differs");
        // with offsets, into a lower file (a copy-up), past its end
        let dst = open(&m.join("target"), OFlags::WRONLY);
        let (mut i, mut o) = (1000u64, 2u64);
        let n = rustix::fs::copy_file_range(&src, Some(&mut i), &dst, Some(&mut o), 5).unwrap();
        assert_eq!((n, i, o), (5, 1005, 7));
        let (mut i, mut o) = (0u64, 10u64);
        assert_eq!(
            rustix::fs::copy_file_range(&src, Some(&mut i), &dst, Some(&mut o), 20).unwrap(),
            20
        );
        drop(dst);
        assert_eq!(fs::read(m.join("target")).unwrap(), want_target);
        // from a new file into another new file, the source's own offset untouched
        let src2 = open(&m.join("copy"), OFlags::RDONLY);
        rustix::fs::seek(&src2, SeekFrom::Start(17)).unwrap();
        let dst2 = open(
            &m.join("copy2"),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
        );
        assert_eq!(copy_range_all(&src2, &dst2), big.len() as u64);
        assert_eq!(rustix::fs::seek(&src2, SeekFrom::Current(0)).unwrap(), 17);
        drop(dst2);
        assert!(fs::read(m.join("copy2")).unwrap() == big, "copy2 differs");
        // at the end of the source: nothing to copy
        let (mut i, mut o) = (big.len() as u64, 0u64);
        let dst3 = open(&m.join("copy2"), OFlags::WRONLY);
        assert_eq!(
            rustix::fs::copy_file_range(&src, Some(&mut i), &dst3, Some(&mut o), 10).unwrap(),
            0
        );
    });
    assert_eq!(read(&s.lower(1).join("target")), "0123456789");
    for up in [s.kupper(), s.upper()] {
        assert_eq!(fs::read(up.join("target")).unwrap(), want_target);
    }
}

/// `(SEEK_DATA, SEEK_HOLE)` from `at`, `None` for ENXIO (no data after `at`).
fn data_and_hole(fd: &OwnedFd, at: u64) -> Option<(u64, u64)> {
    match rustix::fs::seek(fd, SeekFrom::Data(at)) {
        Ok(d) => Some((d, rustix::fs::seek(fd, SeekFrom::Hole(d)).unwrap())),
        Err(e) if e == Errno::NXIO => None,
        Err(e) => panic!("SEEK_DATA from {at}: {e}"),
    }
}

#[test]
fn seek_hole_and_seek_data_on_a_sparse_lower_file_and_its_copy_up() {
    const MIB: u64 = 1 << 20;
    let len = 100 * MIB;
    let s = Scratch::new();
    let p = s.lower(1).join("sparse");
    {
        let f = fs::File::create(&p).unwrap();
        f.set_len(len).unwrap();
        f.write_at(&[b'h'; 4096], 0).unwrap();
        f.write_at(&[b'm'; 4096], 50 * MIB).unwrap();
        f.write_at(&[b't'; 4096], len - 4096).unwrap();
    }
    assert!(
        fs::metadata(&p).unwrap().blocks() <= 3 * 8 + 8,
        "not sparse"
    );
    let blocks_after = RefCell::new(Vec::new());
    on_kernel_then_strata(&s, 2, |m| {
        let p = m.join("sparse");
        // read-only, on the lower file: the exact extents
        let fd = open(&p, OFlags::RDONLY);
        assert_eq!(data_and_hole(&fd, 0), Some((0, 4096)));
        assert_eq!(data_and_hole(&fd, 4096), Some((50 * MIB, 50 * MIB + 4096)));
        assert_eq!(data_and_hole(&fd, 60 * MIB), Some((len - 4096, len)));
        assert_eq!(data_and_hole(&fd, len - 1), Some((len - 1, len)));
        assert_eq!(data_and_hole(&fd, len), None);
        drop(fd);
        // copy it up; the kernel copies in 1 MiB chunks, so a hole may start later, up to
        // the end of the chunk holding data; the big holes stay
        let fd = open(&p, OFlags::RDWR);
        rustix::io::pwrite(&fd, b"H", 0).unwrap();
        let (d, h) = data_and_hole(&fd, 0).unwrap();
        assert!(d == 0 && (4096..=MIB).contains(&h), "first extent {d}..{h}");
        assert_eq!(
            rustix::fs::seek(&fd, SeekFrom::Hole(25 * MIB)).unwrap(),
            25 * MIB
        );
        let (d, h) = data_and_hole(&fd, 25 * MIB).unwrap();
        assert!(
            d == 50 * MIB && (50 * MIB + 4096..=51 * MIB).contains(&h),
            "middle extent {d}..{h}"
        );
        assert_eq!(data_and_hole(&fd, 60 * MIB), Some((len - 4096, len)));
        assert_eq!(data_and_hole(&fd, len), None);
        let mut buf = [0u8; 4];
        fd_read_at(&fd, &mut buf, 0);
        assert_eq!(&buf, b"Hhhh");
        fd_read_at(&fd, &mut buf, 30 * MIB);
        assert_eq!(buf, [0; 4]);
        fd_read_at(&fd, &mut buf, len - 4);
        assert_eq!(&buf, b"tttt");
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.len(), len);
        blocks_after.borrow_mut().push(md.blocks());
    });
    for (who, blocks) in ["kernel", "strata"].iter().zip(blocks_after.take()) {
        assert!(
            blocks * 512 < 4 * MIB,
            "{who}: {blocks} blocks after copy-up"
        );
    }
    for up in [s.kupper(), s.upper()] {
        let md = fs::metadata(up.join("sparse")).unwrap();
        assert_eq!(md.len(), len);
        assert!(
            md.blocks() * 512 < 4 * MIB,
            "{}/sparse lost its holes: {} blocks",
            up.display(),
            md.blocks()
        );
    }
}

fn fd_read_at(fd: &OwnedFd, buf: &mut [u8], at: u64) {
    assert_eq!(rustix::io::pread(fd, &mut *buf, at).unwrap(), buf.len());
}

/// Every data extent of `fd`, by SEEK_DATA/SEEK_HOLE.
fn extents(fd: &OwnedFd) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some((d, h)) = data_and_hole(fd, at) {
        out.push((d, h));
        at = h;
    }
    out
}

/// Applies fallocate `flags` at `off`/`len` to file `name` through `m` (a copy-up of a
/// lower file);
/// returns its data, size, blocks and extents afterwards.
fn fallocate_at(
    m: &Path,
    name: &str,
    flags: FallocateFlags,
    off: u64,
    len: u64,
) -> (Vec<u8>, u64, u64, Vec<(u64, u64)>) {
    let p = m.join(name);
    let fd = open(&p, OFlags::RDWR);
    rustix::fs::fallocate(&fd, flags, off, len)
        .unwrap_or_else(|e| panic!("fallocate({flags:?}, {off}, {len}) on {name}: {e}"));
    let md = fs::metadata(&p).unwrap();
    (fs::read(&p).unwrap(), md.len(), md.blocks(), extents(&fd))
}

#[test]
fn fallocate_allocate_keep_size_punch_hole_and_zero_range_on_a_copy_up() {
    let s = Scratch::new();
    let data = pattern(65536, 11);
    for n in ["alloc", "keep", "punch", "zero"] {
        fs::write(s.lower(1).join(n), &data).unwrap();
    }
    let zeroed = |from: usize, to: usize| {
        let mut d = data.clone();
        d[from..to].fill(0);
        d
    };
    let mut grown = data.clone();
    grown.resize(81920, 0);
    on_kernel_then_strata(&s, 2, |m| {
        let (d, size, blocks, ext) =
            fallocate_at(m, "alloc", FallocateFlags::empty(), 65536, 16384);
        assert!(d == grown && size == 81920, "allocate: size {size}");
        assert_eq!((blocks, ext), (160, vec![(0, 81920)]), "allocate");
        let (d, size, blocks, _) = fallocate_at(m, "keep", FallocateFlags::KEEP_SIZE, 65536, 65536);
        assert!(d == data && size == 65536, "keep size: size {size}");
        assert_eq!(blocks, 256, "keep size allocates past the end");
        let (d, size, blocks, ext) = fallocate_at(
            m,
            "punch",
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            4096,
            8192,
        );
        assert!(
            d == zeroed(4096, 12288) && size == 65536,
            "punch: size {size}"
        );
        assert_eq!(
            (blocks, ext),
            (112, vec![(0, 4096), (12288, 65536)]),
            "punch"
        );
        let (d, size, _, ext) = fallocate_at(m, "zero", FallocateFlags::ZERO_RANGE, 4096, 8192);
        assert!(
            d == zeroed(4096, 12288) && size == 65536,
            "zero range: size {size}"
        );
        assert_eq!(ext, vec![(0, 65536)], "zero range");
        // the same modes on a new file
        fs::write(m.join("new"), &data).unwrap();
        let (d, _, _, ext) = fallocate_at(
            m,
            "new",
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            4096,
            8192,
        );
        assert!(d == zeroed(4096, 12288));
        assert_eq!(ext, vec![(0, 4096), (12288, 65536)]);
    });
    for n in ["alloc", "keep", "punch", "zero"] {
        assert!(
            fs::read(s.lower(1).join(n)).unwrap() == data,
            "lower {n} changed"
        );
    }
    for up in [s.kupper(), s.upper()] {
        assert!(fs::read(up.join("punch")).unwrap() == zeroed(4096, 12288));
        assert_eq!(fs::metadata(up.join("alloc")).unwrap().len(), 81920);
    }
}

/// COLLAPSE_RANGE and INSERT_RANGE: the kernel overlay passes them to ext4; through any
/// FUSE filesystem they fail with EOPNOTSUPP, because the kernel's FUSE module forwards only
/// KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE (a documented difference, README). The file is
/// left as it was.
#[test]
fn fallocate_collapse_and_insert_range_work_on_the_kernel_and_are_refused_through_fuse() {
    let s = Scratch::new();
    let data = pattern(65536, 13);
    for n in ["collapse", "insert"] {
        fs::write(s.lower(1).join(n), &data).unwrap();
    }
    let mut collapsed = data[..4096].to_vec();
    collapsed.extend_from_slice(&data[12288..]);
    let mut inserted = data[..4096].to_vec();
    inserted.extend_from_slice(&[0; 8192]);
    inserted.extend_from_slice(&data[4096..]);
    s.copy_upper_to_kupper();
    {
        let k = s.kernel_mount_opts(2, &s.kupper());
        let m = &k.mnt;
        let (d, size, _, _) =
            fallocate_at(m, "collapse", FallocateFlags::COLLAPSE_RANGE, 4096, 8192);
        assert!(d == collapsed && size == 57344, "collapse: size {size}");
        let (d, size, _, ext) = fallocate_at(m, "insert", FallocateFlags::INSERT_RANGE, 4096, 8192);
        assert!(d == inserted && size == 73728, "insert: size {size}");
        assert_eq!(ext, vec![(0, 4096), (12288, 73728)], "insert leaves a hole");
    }
    let m = s.mount(2);
    for (n, flags) in [
        ("collapse", FallocateFlags::COLLAPSE_RANGE),
        ("insert", FallocateFlags::INSERT_RANGE),
    ] {
        let fd = open(&m.path(n), OFlags::RDWR);
        assert_eq!(
            rustix::fs::fallocate(&fd, flags, 4096, 8192),
            Err(rustix::io::Errno::OPNOTSUPP),
            "{n}"
        );
        assert!(fs::read(m.path(n)).unwrap() == data, "{n} unchanged");
    }
}

// ---------------------------------------------------------------------------------------------
// security.capability across copy-up.
// ---------------------------------------------------------------------------------------------

#[test]
fn security_capability_is_kept_on_copy_up_and_dropped_where_the_kernel_drops_it() {
    // `setcap cap_net_raw+ep`: vfs_cap_data v2, effective, CAP_NET_RAW (13) permitted
    let mut cap = Vec::new();
    cap.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&[0; 12]);
    let s = Scratch::new();
    let l = s.lower(1);
    let triggers = [
        "append",
        "chmod",
        "utimens",
        "open-write",
        "xattr",
        "chown",
        "truncate",
    ];
    for t in triggers {
        put(&l.join(t), "program");
        fs::set_permissions(l.join(t), fs::Permissions::from_mode(0o755)).unwrap();
        lsetxattr(&l.join(t), "security.capability", &cap).unwrap();
    }
    // the kernel keeps capabilities through a metadata-only change and through an open for
    // writing, and drops them on a data change (file_remove_privs) and on chown (killpriv)
    let kept = ["chmod", "utimens", "open-write", "xattr"];
    on_kernel_then_strata(&s, 2, |m| {
        for t in triggers {
            let p = m.join(t);
            assert_eq!(lgetxattr(&p, "security.capability").unwrap(), cap, "{t}");
            let wr = || fs::OpenOptions::new().write(true).open(&p).unwrap();
            match t {
                "append" => wr().write_all_at(b"+", 7).unwrap(),
                "chmod" => fs::set_permissions(&p, fs::Permissions::from_mode(0o750)).unwrap(),
                "utimens" => fs::File::open(&p)
                    .unwrap()
                    .set_modified(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap(),
                "open-write" => drop(wr()),
                "xattr" => lsetxattr(&p, "user.touched", b"1").unwrap(),
                "chown" => std::os::unix::fs::chown(&p, Some(1), Some(1)).unwrap(),
                "truncate" => wr().set_len(3).unwrap(),
                _ => unreachable!(),
            }
            let now = lgetxattr(&p, "security.capability").ok();
            if kept.contains(&t) {
                assert_eq!(now.as_ref(), Some(&cap), "capability lost by {t}");
            } else {
                assert_eq!(now, None, "capability kept by {t}");
            }
        }
        assert_eq!(mode(&m.join("chmod")), 0o750);
        assert_eq!(mode(&m.join("append")), 0o755);
        assert_eq!(read(&m.join("append")), "program+");
    });
    for up in [s.kupper(), s.upper()] {
        for t in triggers {
            let now = lgetxattr(&up.join(t), "security.capability").ok();
            assert_eq!(
                now.is_some(),
                kept.contains(&t),
                "{}/{t}: {now:?}",
                up.display()
            );
        }
    }
    for t in triggers {
        assert_eq!(lgetxattr(&l.join(t), "security.capability").unwrap(), cap);
    }
}

// ---------------------------------------------------------------------------------------------
// Many lower layers.
// ---------------------------------------------------------------------------------------------

/// Builds `n` layers `L/0` (top) .. `L/{n-1}` below the scratch dir: every layer has
/// `f{i}` and `d/f{i}`; the middle layer whites out `f{mid+10}`, `d/f{mid+20}` and
/// `hidden` (from the bottom), and the one below it holds an opaque `o` hiding the
/// bottom's `o/low`; `shadow` is in layer 7 and the bottom; the bottom has a deep file.
fn many_layers(s: &Scratch, n: usize) -> Vec<PathBuf> {
    let layers: Vec<PathBuf> = (0..n).map(|i| s.dir(&format!("L/{i}"))).collect();
    for (i, l) in layers.iter().enumerate() {
        put(&l.join(format!("f{i}")), &i.to_string());
        put(&l.join(format!("d/f{i}")), &i.to_string());
    }
    let (mid, bottom) = (n / 2, &layers[n - 1]);
    mknod_whiteout(&layers[mid].join(format!("f{}", mid + 10)));
    mknod_whiteout(&layers[mid].join(format!("d/f{}", mid + 20)));
    mknod_whiteout(&layers[mid].join("hidden"));
    put(&layers[mid + 1].join("o/mid"), "mid");
    set_xattr(&layers[mid + 1].join("o"), "trusted.overlay.opaque", b"y");
    put(&bottom.join("o/low"), "low");
    put(&bottom.join("hidden"), "hidden");
    put(&layers[7].join("shadow"), "7");
    put(&bottom.join("shadow"), "bottom");
    put(&bottom.join("bottom/deep/er/file"), "at the bottom");
    layers
}

/// Runs `check` on a kernel overlay of `layers` (upper `kupper`), then on strata (upper
/// `upper`). The kernel gets relative layer paths: `mount(2)` takes one page of options.
fn on_kernel_then_strata_layers(s: &Scratch, layers: &[PathBuf], check: impl Fn(&Path)) {
    let rel: Vec<String> = layers
        .iter()
        .map(|l| l.strip_prefix(s.dir.path()).unwrap().display().to_string())
        .collect();
    fs::create_dir_all(s.kupper()).unwrap();
    let opts = format!(
        "lowerdir={},upperdir=kupper,workdir=kwork,{KERNEL_OPTS}",
        rel.join(":")
    );
    assert!(opts.len() < 4000, "kernel options too long: {}", opts.len());
    let st = Command::new("mount")
        .current_dir(s.dir.path())
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(s.path("kmnt"))
        .status()
        .unwrap();
    assert!(st.success(), "kernel overlay of {} layers", layers.len());
    {
        let k = KernelMount {
            mnt: s.path("kmnt"),
        };
        eprintln!("--- checking kernel overlayfs at {}", k.mnt.display());
        check(&k.mnt);
    }
    let abs: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        abs.join(":"),
        s.upper().display(),
        s.work().display()
    );
    let m = StrataMount::new(&["mount", "-o", &opts, s.mnt().to_str().unwrap()]);
    eprintln!("--- checking strata at {}", m.mnt.display());
    check(&m.mnt);
}

fn many_lower_layers(n: usize) {
    let s = Scratch::new();
    let layers = many_layers(&s, n);
    let mid = n / 2;
    let mut want_root: Vec<String> = (0..n)
        .filter(|i| *i != mid + 10)
        .map(|i| format!("f{i}"))
        .chain(["bottom", "d", "o", "shadow"].map(String::from))
        .collect();
    want_root.sort();
    let mut want_d: Vec<String> = (0..n)
        .filter(|i| *i != mid + 20)
        .map(|i| format!("f{i}"))
        .collect();
    want_d.sort();
    on_kernel_then_strata_layers(&s, &layers, |m| {
        assert_eq!(names(m), want_root);
        assert_eq!(names(&m.join("d")), want_d);
        for i in (0..n).filter(|i| *i != mid + 10) {
            assert_eq!(read(&m.join(format!("f{i}"))), i.to_string());
        }
        for gone in [format!("f{}", mid + 10), format!("d/f{}", mid + 20)] {
            assert_eq!(err_of(fs::metadata(m.join(&gone))), libc::ENOENT, "{gone}");
        }
        assert_eq!(err_of(fs::metadata(m.join("hidden"))), libc::ENOENT);
        assert_eq!(names(&m.join("o")), ["mid"]);
        assert_eq!(read(&m.join("shadow")), "7");
        assert_eq!(read(&m.join("bottom/deep/er/file")), "at the bottom");
        // changes: copy-up from the bottom, a whiteout for the top, a dir in the middle
        let bottom = format!("f{}", n - 1);
        let h = fs::OpenOptions::new()
            .append(true)
            .open(m.join(&bottom))
            .unwrap();
        (&h).write_all(b"+").unwrap();
        drop(h);
        assert_eq!(read(&m.join(&bottom)), format!("{}+", n - 1));
        fs::remove_file(m.join("f0")).unwrap();
        fs::remove_file(m.join("d/f1")).unwrap();
        fs::write(m.join("bottom/deep/er/new"), "new").unwrap();
        assert_eq!(names(&m.join("bottom/deep/er")), ["file", "new"]);
        assert_eq!(names(&m.join("d")).len(), n - 2);
    });
    for up in [s.kupper(), s.upper()] {
        assert!(is_whiteout(&up.join("f0")), "{}/f0", up.display());
        assert!(is_whiteout(&up.join("d/f1")), "{}/d/f1", up.display());
        assert_eq!(read(&up.join(format!("f{}", n - 1))), format!("{}+", n - 1));
    }
}

#[test]
fn one_hundred_thirty_lower_layers_in_one_mount() {
    many_lower_layers(130);
}

/// 500 is the kernel's limit (OVL_MAX_STACK: 501 lowers fail with "too many lower
/// directories, limit is 500").
#[test]
fn five_hundred_lower_layers_in_one_mount() {
    many_lower_layers(500);
}

// ---------------------------------------------------------------------------------------------
// A strata mount as a lower layer.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_lower_layer_that_is_itself_a_strata_mount() {
    let s = Scratch::new();
    let (a1, a2) = (s.dir("a1"), s.dir("a2"));
    put(&a1.join("top"), "from a1");
    put(&a1.join("dir/y"), "y from a1");
    put(&a2.join("dir/sub/x"), "x from a2");
    put(&a2.join("low"), "low");
    put(&a2.join("gone"), "gone");
    put(&a2.join("hiddenA"), "hidden by A");
    mknod_whiteout(&a1.join("dir/wa"));
    put(&a2.join("dir/wa"), "whited out in a1");
    // strata A (a1 over a2, with its own upper) mounted on lower0, the lower of B
    let a_opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        a1.display(),
        a2.display(),
        s.dir("aupper").display(),
        s.dir("awork").display()
    );
    let a = StrataMount::new(&["mount", "-o", &a_opts, s.lower(0).to_str().unwrap()]);
    fs::write(a.path("inA"), "written through A").unwrap();
    fs::remove_file(a.path("hiddenA")).unwrap();
    on_kernel_then_strata(&s, 1, |m| {
        assert_eq!(names(m), ["dir", "gone", "inA", "low", "top"]);
        assert_eq!(names(&m.join("dir")), ["sub", "y"]);
        assert_eq!(read(&m.join("top")), "from a1");
        assert_eq!(read(&m.join("inA")), "written through A");
        assert_eq!(read(&m.join("dir/sub/x")), "x from a2");
        // copy-up from A
        let h = fs::OpenOptions::new()
            .append(true)
            .open(m.join("low"))
            .unwrap();
        (&h).write_all(b"+B").unwrap();
        drop(h);
        assert_eq!(read(&m.join("low")), "low+B");
        // whiteouts in B for A's names
        fs::remove_file(m.join("gone")).unwrap();
        fs::remove_file(m.join("dir/y")).unwrap();
        // a directory of A renamed (copied up with a redirect)
        fs::rename(m.join("dir"), m.join("moved")).unwrap();
        assert_eq!(names(&m.join("moved")), ["sub"]);
        assert_eq!(read(&m.join("moved/sub/x")), "x from a2");
        fs::write(m.join("moved/sub/new"), "new in B").unwrap();
        assert_eq!(names(m), ["inA", "low", "moved", "top"]);
    });
    for up in [s.kupper(), s.upper()] {
        assert!(is_whiteout(&up.join("gone")), "{}/gone", up.display());
        assert!(is_whiteout(&up.join("dir")), "{}/dir", up.display());
        assert_eq!(read(&up.join("low")), "low+B");
        assert_eq!(
            lgetxattr(&up.join("moved"), "trusted.overlay.redirect").unwrap(),
            b"dir"
        );
    }
    // A is untouched by B, and B's upper reads back the same after a remount
    assert_eq!(read(&a.path("low")), "low");
    assert_eq!(names(&a.path("dir")), ["sub", "y"]);
    let b = s.mount(1);
    assert_eq!(names(&b.mnt), ["inA", "low", "moved", "top"]);
    assert_eq!(names(&b.path("moved/sub")), ["new", "x"]);
    drop(b);
    drop(a);
}

// ---------------------------------------------------------------------------------------------
// `.wh.` names.
// ---------------------------------------------------------------------------------------------

/// Tries to make each `.wh.` name on `m`; returns `(what, result as errno)`.
fn make_wh_names(m: &Path) -> Vec<(&'static str, Result<(), i32>)> {
    use rustix::fs::{mknodat, FileType, CWD};
    let e = |r: std::io::Result<()>| r.map_err(|e| errno(&e));
    let re = |r: rustix::io::Result<()>| r.map_err(|e| e.raw_os_error());
    fs::write(m.join("ok"), "ok").unwrap();
    fs::create_dir_all(m.join("okdir")).unwrap();
    fs::create_dir_all(m.join("okdir2")).unwrap();
    let mode = Mode::from_raw_mode(0o644);
    vec![
        ("create", e(fs::write(m.join(".wh.file"), "x"))),
        ("mkdir", e(fs::create_dir(m.join(".wh.dir")))),
        ("mkdir opq", e(fs::create_dir(m.join("okdir/.wh..wh..opq")))),
        (
            "mknod fifo",
            re(mknodat(CWD, m.join(".wh.fifo"), FileType::Fifo, mode, 0)),
        ),
        (
            "mknod chr",
            re(mknodat(
                CWD,
                m.join(".wh.chr"),
                FileType::CharacterDevice,
                mode,
                rustix::fs::makedev(1, 3),
            )),
        ),
        (
            "symlink",
            e(std::os::unix::fs::symlink("ok", m.join(".wh.sym"))),
        ),
        ("link", e(fs::hard_link(m.join("ok"), m.join(".wh.link")))),
        ("rename new", e(fs::rename(m.join("ok"), m.join(".wh.ok")))),
        (
            "rename lower",
            e(fs::rename(m.join("low"), m.join(".wh.low"))),
        ),
        (
            "rename dir",
            e(fs::rename(m.join("okdir"), m.join("okdir2/.wh.d"))),
        ),
    ]
}

/// The kernel overlay takes `.wh.` names as plain names (it reads only 0/0 devices as
/// whiteouts), but strata reads OCI `.wh.` files in every layer, so it refuses to make one:
/// it would read back as a whiteout. The errno is EINVAL (README).
#[test]
fn names_starting_with_wh_are_refused_with_einval_where_the_kernel_takes_them() {
    let s = Scratch::new();
    put(&s.lower(1).join("low"), "lower");
    s.copy_upper_to_kupper();
    {
        let k = s.kernel_mount_opts(2, &s.kupper());
        for (what, r) in make_wh_names(&k.mnt) {
            assert_eq!(r, Ok(()), "kernel overlay: {what}");
        }
        assert!(names(&k.mnt).contains(&".wh.file".to_string()));
    }
    let m = s.mount(2);
    for (what, r) in make_wh_names(&m.mnt) {
        assert_eq!(r, Err(libc::EINVAL), "strata: {what}");
    }
    assert_eq!(names(&m.mnt), ["low", "ok", "okdir", "okdir2"]);
    assert!(names(&m.path("okdir")).is_empty());
    drop(m);
    let mut up = names(&s.upper());
    up.retain(|n| n.starts_with(".wh."));
    assert!(up.is_empty(), "upper holds {up:?}");
}
