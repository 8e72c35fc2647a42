//! The data path: which files the kernel reads and writes directly (FUSE passthrough),
//! which go through the page cache, what a reader holding a file open sees when another
//! process copies it up, and that the daemon lets go of descriptors when files close.
//!
//! Which requests reach the daemon is read from its debug log (`-d`): a passed-through
//! file's reads and writes never show there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// The inode number the daemon's log uses for `p` (the node id is the inode number).
fn node(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("ino {:#018x} ", fs::metadata(p).unwrap().ino())
}

/// The requests of kind `op` (`READ`, `WRITE`) the daemon got for the file `ino`.
fn requests(log: &str, ino: &str, op: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(ino) && l.contains(&format!(" {op} ")))
        .count()
}

fn layers() -> Scratch {
    let s = Scratch::new();
    put(&s.lower(0).join("lower"), "lower data");
    s
}

/// Writes `data` to a new file and reads it back through fresh descriptors.
fn write_and_read(p: &Path, data: &str) {
    fs::write(p, data).unwrap();
    assert_eq!(fs::read_to_string(p).unwrap(), data);
}

#[test]
fn upper_files_are_passed_through_and_lower_files_of_a_writable_mount_are_not() {
    let s = layers();
    let m = LoggedMount::new(&s, "");
    let upper = s.mnt().join("new");
    write_and_read(&upper, "upper data");
    assert_eq!(
        fs::read_to_string(s.mnt().join("lower")).unwrap(),
        "lower data"
    );
    let (u, l) = (node(&upper), node(&s.mnt().join("lower")));
    let log = m.finish();
    assert!(
        log.contains("FUSE_PASSTHROUGH enabled"),
        "no passthrough in:\n{log}"
    );
    assert_eq!(requests(&log, &u, "READ") + requests(&log, &u, "WRITE"), 0);
    assert!(
        requests(&log, &l, "READ") > 0,
        "the lower file was passed through"
    );
}

#[test]
fn passthrough_all_passes_lower_files_through_and_refuses_writers_while_they_are_read() {
    let s = layers();
    let m = LoggedMount::new(&s, "passthrough=all");
    let p = s.mnt().join("lower");
    let reader = fs::File::open(&p).unwrap();
    let mut buf = [0u8; 10];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"lower data");
    let l = node(&p);
    // The reader's descriptor is bound to the lower file: the kernel lets no open of the
    // same inode use another file while it lives (it answers EIO).
    let e = fs::OpenOptions::new().append(true).open(&p).unwrap_err();
    assert_eq!(errno(&e), libc::EIO, "{e}");
    drop(reader);
    let opened = wait_for(20, || fs::OpenOptions::new().append(true).open(&p).is_ok());
    assert!(opened, "no write open once the reader closed");
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"+more")
        .unwrap();
    assert_eq!(fs::read_to_string(&p).unwrap(), "lower data+more");
    let log = m.finish();
    assert_eq!(
        requests(&log, &l, "READ"),
        0,
        "lower file read by the daemon"
    );
    assert_eq!(
        fs::read_to_string(s.lower(0).join("lower")).unwrap(),
        "lower data"
    );
}

#[test]
fn passthrough_off_serves_every_file_through_the_page_cache() {
    let s = layers();
    let m = LoggedMount::new(&s, "passthrough=off");
    let upper = s.mnt().join("new");
    write_and_read(&upper, "upper data");
    // Dropped pages must come back from the daemon.
    fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    assert_eq!(fs::read_to_string(&upper).unwrap(), "upper data");
    let u = node(&upper);
    let log = m.finish();
    assert!(!log.contains("FUSE_PASSTHROUGH enabled"));
    assert!(requests(&log, &u, "WRITE") > 0 && requests(&log, &u, "READ") > 0);
}

/// A reader holding a lower file open, another process rewriting it (which copies it up),
/// the reader reading again, then both closing and the file written and read anew. Returns
/// what the reader saw after the rewrite, and the final contents.
fn reader_across_a_copy_up(mnt: &Path) -> (String, String) {
    let p = mnt.join("lower");
    let reader = fs::File::open(&p).unwrap();
    let mut buf = vec![0u8; 64];
    let n = reader.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..n], b"lower data");
    let mut writer = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    writer.write_all(b"rewritten by another process").unwrap();
    let n = reader.read_at(&mut buf, 0).unwrap();
    let seen = String::from_utf8_lossy(&buf[..n]).into_owned();
    drop((reader, writer));
    // Later opens must not see pages cached before the copy-up.
    fs::write(&p, "third").unwrap();
    (seen, fs::read_to_string(&p).unwrap())
}

#[test]
fn a_reader_of_a_lower_file_sees_a_copy_up_by_another_process() {
    let s = layers();
    let k = s.kernel_mount_opts(1, &s.dir("kupper"));
    let want = reader_across_a_copy_up(&k.mnt);
    drop(k);
    assert_eq!(want.0, "rewritten by another process");
    for extra in ["", "passthrough=off"] {
        let s = layers();
        let m = LoggedMount::new(&s, extra);
        let got = reader_across_a_copy_up(&s.mnt());
        m.finish();
        assert_eq!(got, want, "with options {extra:?}");
    }
}

#[test]
fn two_processes_share_a_passed_through_file() {
    let s = layers();
    let m = s.mount(1);
    let p = m.path("shared");
    fs::write(&p, "one").unwrap();
    let reader = fs::File::open(&p).unwrap();
    let writer = fs::OpenOptions::new().write(true).open(&p).unwrap();
    writer.write_all_at(b"two", 0).unwrap();
    let mut buf = [0u8; 3];
    reader.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"two");
    // Append through a third descriptor: the size the others see follows.
    fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"+three")
        .unwrap();
    assert_eq!(reader.metadata().unwrap().len(), 9);
    assert_eq!(fs::read_to_string(&p).unwrap(), "two+three");
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn the_daemon_closes_descriptors_when_files_close() {
    let s = Scratch::new();
    for i in 0..300 {
        put(&s.lower(0).join(format!("l{i}")), "x");
    }
    let m = s.mount(1);
    let pid = daemon_pid(&s.mnt());
    // The daemon keeps a bounded cache of lower directory descriptors: fill it first.
    fs::read_to_string(m.path("l0")).unwrap();
    let baseline = open_fds(pid);
    let mut files = Vec::new();
    for i in 0..300 {
        files.push(fs::File::open(m.path(&format!("l{i}"))).unwrap());
        files.push(fs::File::create(m.path(&format!("u{i}"))).unwrap());
    }
    // (The release of the first read may still be on its way: allow for it.)
    let peak = open_fds(pid);
    assert!(peak + 1 >= baseline + 600, "{peak} fds with 600 files open");
    drop(files);
    // Releases reach the daemon after close(2) returns.
    let settled = wait_for(20, || open_fds(pid) <= baseline);
    assert!(
        settled,
        "{} fds after closing, {baseline} before opening",
        open_fds(pid)
    );
}

/// Whether the daemon holds an unnamed file of its work directory open (the early copy of
/// a copy-up's data).
fn copying(pid: u32) -> bool {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                fs::read_link(e.path())
                    .map(|t| t.to_string_lossy().contains("/work/#"))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

#[test]
fn lookups_and_listings_go_on_while_a_large_file_is_copied_up() {
    let s = Scratch::new();
    // Real data (holes would be skipped): 256 MiB of a repeated pseudo-random MiB.
    let mut chunk = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut big = fs::File::create(s.lower(0).join("big")).unwrap();
    for _ in 0..256 {
        big.write_all(&chunk).unwrap();
    }
    drop(big);
    put(&s.lower(0).join("small"), "small");
    let m = s.mount(1);
    let pid = daemon_pid(&s.mnt());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (p, done) = (m.path("big"), std::sync::Arc::clone(&done));
        std::thread::spawn(move || {
            let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            f.write_all(b"!").unwrap();
        })
    };
    let seen = wait_for(60, || {
        copying(pid) || done.load(std::sync::atomic::Ordering::SeqCst)
    });
    assert!(
        seen && copying(pid),
        "never saw the copy-up's data being copied"
    );
    // While the data is being copied: a lookup, a stat and a listing.
    assert_eq!(fs::read_to_string(m.path("small")).unwrap(), "small");
    assert_eq!(fs::read_dir(&m.mnt).unwrap().count(), 2);
    let finished_first = done.load(std::sync::atomic::Ordering::SeqCst);
    appender.join().unwrap();
    assert!(!finished_first, "the calls waited for the copy-up");
    assert_eq!(fs::metadata(m.path("big")).unwrap().len(), (256 << 20) + 1);
}

#[test]
fn more_files_than_the_usual_soft_descriptor_limit_stay_open() {
    let s = Scratch::new();
    for i in 0..1500 {
        put(&s.lower(0).join(format!("f{i}")), "x");
    }
    // The daemon starts with a soft limit of 1024 and raises it to the hard one.
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(1 << 20);
    assert!(
        hard >= 4096,
        "the hard limit ({hard}) is too low for this test"
    );
    let out = Command::new("prlimit")
        .arg(format!("--nofile=1024:{hard}"))
        .arg(strata_bin())
        .args(["-o", &s.opts(1)])
        .arg(s.mnt())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = StrataMount::adopt(&s.mnt());
    // Each open file holds a descriptor of the daemon: all 1500 are open at once.
    let _files: Vec<fs::File> = (0..1500)
        .map(|i| fs::File::open(m.path(&format!("f{i}"))).unwrap())
        .collect();
}
