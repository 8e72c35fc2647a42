//! Micro-benchmarks of the union layer without FUSE: `cargo bench --bench micro`.
//!
//! Measures, in nanoseconds per operation, what the daemon does per request: a lookup of
//! a lower file (a node the table does not hold yet, and one it holds), the merged listing
//! of a directory spread over three lowers, the copy-up of a 1 MiB lower file when it is
//! opened for writing, and the inode table's insert, lookup and forget (and the memory a
//! node takes). Plain `std::time` timing, no harness crate (dev-dependencies build on
//! every test run). The layers live in a temporary directory that is removed at the end;
//! run it as root, as the daemon runs. No figure is asserted: the numbers are for
//! comparing two versions.

use std::error::Error;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::Path;
use std::time::Instant;

use strata::union::inode::{DirLayer, Identity, Inodes, NodeKind, ROOT_ID};
use strata::union::{Stack, StackPaths, Union, UnionOptions};

type Res<T = ()> = Result<T, Box<dyn Error>>;

/// Files of the lookup directory.
const LOOKUP_FILES: usize = 2000;
/// Entries of the merged directory, spread over three lowers with overlaps.
const MERGED_ENTRIES: usize = 10_000;
/// Files copied up (each copy-up consumes one lower file).
const COPYUPS: usize = 20;
/// Nodes of the inode-table benchmark.
const TABLE_NODES: u64 = 100_000;

/// Prints one result line.
fn report(what: &str, ops: usize, secs: f64) {
    let ns = secs * 1e9 / ops as f64;
    println!("{what:<44} {ns:>12.0} ns/op   ({ops} ops)");
}

/// Three lowers, an upper and a work directory under `dir`.
fn make_layers(dir: &Path) -> Res<StackPaths> {
    let lower = |n: usize| dir.join(format!("lower{n}"));
    for n in 1..=3 {
        fs::create_dir_all(lower(n).join("merged"))?;
    }
    fs::create_dir_all(lower(3).join("look"))?;
    for i in 0..LOOKUP_FILES {
        fs::write(lower(3).join(format!("look/f{i:05}")), b"x")?;
    }
    // Bottom: 0..50%, middle: 30..80%, top: 60..100%: every entry visible once.
    let ranges = [(3, 0, 50), (2, 30, 80), (1, 60, 100)];
    for (n, from, to) in ranges {
        for i in MERGED_ENTRIES * from / 100..MERGED_ENTRIES * to / 100 {
            fs::write(lower(n).join(format!("merged/e{i:05}")), b"")?;
        }
    }
    fs::create_dir_all(lower(3).join("cu"))?;
    let mib = vec![7u8; 1 << 20];
    for i in 0..COPYUPS {
        fs::write(lower(3).join(format!("cu/f{i:02}")), &mib)?;
    }
    for d in ["upper", "work"] {
        fs::create_dir_all(dir.join(d))?;
    }
    Ok(StackPaths {
        lowers: (1..=3).map(lower).collect(),
        upper: Some(dir.join("upper")),
        work: Some(dir.join("work")),
    })
}

/// Lookups of lower files: first while the table lacks their nodes, then while it holds
/// them; then forgets them all, so the next round starts cold again.
fn bench_lookup(u: &Union) -> Res {
    let dir = u.lookup(ROOT_ID, OsStr::new("look"))?.ino;
    let names: Vec<OsString> = (0..LOOKUP_FILES)
        .map(|i| OsString::from(format!("f{i:05}")))
        .collect();
    let (mut cold, mut known) = (0.0, 0.0);
    let rounds = 10;
    for _ in 0..rounds {
        let t = Instant::now();
        let ids: Vec<u64> = names
            .iter()
            .map(|n| u.lookup(dir, n).map(|a| a.ino))
            .collect::<Result<_, _>>()?;
        cold += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for n in &names {
            u.lookup(dir, n)?;
        }
        known += t.elapsed().as_secs_f64();
        for id in ids {
            u.forget(id, 2);
        }
    }
    report(
        "lookup of a lower file, new node",
        rounds * LOOKUP_FILES,
        cold,
    );
    report(
        "lookup of a lower file, known node",
        rounds * LOOKUP_FILES,
        known,
    );
    Ok(())
}

/// opendir + readdir + releasedir of a directory merged from three lowers.
fn bench_readdir(u: &Union) -> Res {
    let dir = u.lookup(ROOT_ID, OsStr::new("merged"))?.ino;
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        let fh = u.opendir(dir)?;
        let n = u.readdir(fh, 0)?.len();
        u.releasedir(fh);
        // `.` and `..` come first.
        if n != MERGED_ENTRIES + 2 {
            return Err(format!("merged listing has {n} entries").into());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    report("merged readdir, 10k entries over 3 lowers", rounds, secs);
    report("  the same, per entry", rounds * MERGED_ENTRIES, secs);
    Ok(())
}

/// Opening a 1 MiB lower file for writing: the copy-up.
fn bench_copy_up(u: &Union) -> Res {
    let dir = u.lookup(ROOT_ID, OsStr::new("cu"))?.ino;
    let mut secs = 0.0;
    for i in 0..COPYUPS {
        let id = u.lookup(dir, OsStr::new(&format!("f{i:02}")))?.ino;
        let t = Instant::now();
        let fh = u.open(id, libc::O_WRONLY)?;
        secs += t.elapsed().as_secs_f64();
        u.release(fh);
    }
    report(
        "copy-up of a 1 MiB lower file (open O_WRONLY)",
        COPYUPS,
        secs,
    );
    Ok(())
}

/// This process's resident memory in KiB (`VmRSS`), to size the inode table.
fn rss_kib() -> Res<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}

/// The inode table alone: insert, find by name, forget; and the memory a node takes
/// (the daemon holds one per inode the kernel caches).
fn bench_inode_table() -> Res {
    let mut t = Inodes::new(vec![DirLayer::upper(0)]);
    let names: Vec<OsString> = (0..TABLE_NODES)
        .map(|i| OsString::from(format!("n{i:06}")))
        .collect();
    let base = 1 << 20;
    let before = rss_kib()?;
    let start = Instant::now();
    let ids: Vec<u64> = names
        .iter()
        .zip(base..)
        .map(|(n, ino)| {
            let kind = NodeKind::plain(libc::S_IFREG);
            t.found(ROOT_ID, n, Identity::shared(ino), kind, 0, true)
        })
        .collect();
    report(
        "inode table: insert",
        ids.len(),
        start.elapsed().as_secs_f64(),
    );
    let grown = rss_kib()?.saturating_sub(before);
    println!(
        "{:<44} {:>12.0} bytes/node (resident memory growth)",
        "inode table: memory",
        grown as f64 * 1024.0 / ids.len() as f64
    );
    let start = Instant::now();
    let found = names
        .iter()
        .filter(|n| t.child(ROOT_ID, n).is_some())
        .count();
    report(
        "inode table: find by name",
        names.len(),
        start.elapsed().as_secs_f64(),
    );
    if found != names.len() {
        return Err(format!("only {found} of {} names found", names.len()).into());
    }
    let start = Instant::now();
    for id in &ids {
        t.forget(*id, 1);
    }
    report(
        "inode table: forget",
        ids.len(),
        start.elapsed().as_secs_f64(),
    );
    if t.len() != 1 {
        return Err(format!("{} nodes left after forgetting", t.len()).into());
    }
    Ok(())
}

fn main() -> Res {
    if !rustix::process::geteuid().is_root() {
        eprintln!("micro: not root: ownership is not kept on copy-up, figures may differ");
    }
    let tmp = tempfile::Builder::new().prefix("strata-micro-").tempdir()?;
    let paths = make_layers(tmp.path())?;
    let opts = UnionOptions {
        fsync: true,
        metacopy: false,
        index: false,
    };
    let u = Union::new(Stack::open_paths(&paths)?, opts);
    bench_lookup(&u)?;
    bench_readdir(&u)?;
    bench_copy_up(&u)?;
    drop(u);
    bench_inode_table()?;
    Ok(())
}
