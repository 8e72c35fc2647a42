//! The workloads: each runs the same commands on whichever system is mounted, checks
//! that it did what it should (entry counts, sizes), and returns its measurements.
//!
//! The orchestrator hands every workload a fresh mount (empty upper) with the caches
//! just dropped, so a first measurement is cold; a "warm" measurement is the same
//! command run again right after. Timing is wall time around the child process (or the
//! in-process loop), measured with `Instant`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::data::DataSet;
use super::systems::Mount;
use super::Scale;
use crate::Result;

/// What a workload needs from the run.
pub struct Ctx<'a> {
    pub data: &'a DataSet,
    pub scale: &'a Scale,
    /// Relative paths of the files the parallel-stat workers stat (one a line).
    pub stat_list: PathBuf,
    pub stat_files: usize,
}

/// What a workload measured: (measurement name from `report::METRICS`, value).
type Measured = Result<Vec<(&'static str, f64)>>;

/// A workload's body, given a fresh mount with cold caches.
type RunFn = fn(&Ctx, &Mount) -> Measured;

/// Which stack a workload mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stack {
    /// The three generated lowers.
    Main,
    /// The one layer of a million entries.
    Million,
}

/// One workload: a name for `--only`, how often it runs, and what it does.
pub struct Workload {
    pub name: &'static str,
    pub stack: Stack,
    /// Runs once per system instead of once per repetition (slow, and not a timing).
    pub once: bool,
    /// Has nothing to measure on kernel overlayfs (no daemon).
    pub daemon_only: bool,
    /// Reads file data (and nothing else of note): the workloads a system of
    /// [`Scope::DataReads`](super::systems::Scope::DataReads) runs.
    pub reads_data: bool,
    pub run: RunFn,
}

/// Every workload, in the order they run.
pub const ALL: &[Workload] = &[
    w("stat", Stack::Main, stat_walk),
    w("list", Stack::Main, list_wide),
    r("readall", read_all),
    r("seqread", seq_read),
    w("seqwrite", Stack::Main, seq_write),
    w("copyup", Stack::Main, copy_up),
    r("randread", rand_read),
    w("create", Stack::Main, create_files),
    w("rmrf", Stack::Main, rm_rf),
    w("untar", Stack::Main, untar),
    w("pstat", Stack::Main, parallel_stat),
    Workload {
        name: "rss",
        stack: Stack::Million,
        once: true,
        daemon_only: false,
        reads_data: false,
        run: million_walk,
    },
    Workload {
        name: "fds",
        stack: Stack::Main,
        once: true,
        daemon_only: true,
        reads_data: false,
        run: open_fds,
    },
];

const fn w(name: &'static str, stack: Stack, run: RunFn) -> Workload {
    Workload {
        name,
        stack,
        once: false,
        daemon_only: false,
        reads_data: false,
        run,
    }
}

/// A workload that reads file data of the main stack.
const fn r(name: &'static str, run: RunFn) -> Workload {
    Workload {
        reads_data: true,
        ..w(name, Stack::Main, run)
    }
}

/// What a child process wrote to stdout, counted rather than kept.
struct Output {
    took: Duration,
    bytes: u64,
    lines: u64,
    stderr: String,
}

/// Runs `cmd`, counting its stdout, and times it from spawn to exit.
fn timed(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    let (mut bytes, mut lines) = (0u64, 0u64);
    if let Some(mut out) = child.stdout.take() {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = out.read(&mut buf).map_err(|e| format!("{shown}: {e}"))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))?;
    let took = start.elapsed();
    super::succeeded(&shown, out.status, &out.stderr)?;
    Ok(Output {
        took,
        bytes,
        lines,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn expect_lines(what: &str, got: u64, want: usize) -> Result {
    if got == want as u64 {
        Ok(())
    } else {
        Err(format!("{what}: {got} lines, expected {want}"))
    }
}

/// Megabytes (10^6 bytes) per second.
fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

/// `find -printf` of every entry: one `stat` each, cold (fresh mount) then warm.
fn stat_walk(ctx: &Ctx, m: &Mount) -> Measured {
    let mut out = Vec::new();
    for metric in ["stat-cold", "stat-warm"] {
        let o = timed(
            Command::new("find")
                .arg(&m.mnt)
                .args(["-printf", "%s %m %i\n"]),
        )?;
        expect_lines("find", o.lines, ctx.data.model.len() + 1)?;
        out.push((metric, o.took.as_secs_f64()));
    }
    Ok(out)
}

/// `ls -f` of the 50k directory (no stat, no sort), cold then warm.
fn list_wide(ctx: &Ctx, m: &Mount) -> Measured {
    let mut out = Vec::new();
    for metric in ["list-cold", "list-warm"] {
        let o = timed(Command::new("ls").arg("-f").arg(m.path("wide")))?;
        expect_lines("ls -f", o.lines, ctx.data.wide_entries() + 2)?;
        out.push((metric, o.took.as_secs_f64()));
    }
    Ok(out)
}

/// `tar c` of the tree into a pipe (GNU tar skips reading files when writing to
/// /dev/null): reads every file. Throughput counts file data only.
fn read_all(ctx: &Ctx, m: &Mount) -> Measured {
    let o = timed(
        Command::new("tar")
            .args(["cf", "-", "-C"])
            .arg(&m.mnt)
            .arg("tree"),
    )?;
    let data = ctx.data.tree_bytes();
    if o.bytes < data {
        return Err(format!(
            "tar wrote {} bytes for {data} bytes of files",
            o.bytes
        ));
    }
    Ok(vec![("readall", mb_per_s(data, o.took))])
}

fn big_size(ctx: &Ctx) -> u64 {
    ctx.scale.big_mib << 20
}

/// `dd` of the big file, 1 MiB blocks, cold then warm.
fn seq_read(ctx: &Ctx, m: &Mount) -> Measured {
    let mut out = Vec::new();
    for metric in ["seqread-cold", "seqread-warm"] {
        let o = timed(
            Command::new("dd")
                .arg(format!("if={}", m.path("big.bin").display()))
                .args(["of=/dev/null", "bs=1M"]),
        )?;
        // dd's last line: "N bytes (…) copied, …".
        let read = o
            .stderr
            .lines()
            .last()
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok());
        if read != Some(big_size(ctx)) {
            return Err(format!(
                "dd did not read all of big.bin: {}",
                o.stderr.trim()
            ));
        }
        out.push((metric, mb_per_s(big_size(ctx), o.took)));
    }
    Ok(out)
}

/// `dd` of zeroes into a new file, 1 MiB blocks, with an fsync at the end.
fn seq_write(ctx: &Ctx, m: &Mount) -> Measured {
    let path = m.path("new.bin");
    let o = timed(
        Command::new("dd")
            .arg(format!("of={}", path.display()))
            .args(["if=/dev/zero", "bs=1M", "conv=fsync"])
            .arg(format!("count={}", ctx.scale.write_mib)),
    )?;
    let size = fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    let want = ctx.scale.write_mib << 20;
    if size != want {
        return Err(format!("new.bin has {size} bytes, expected {want}"));
    }
    Ok(vec![("seqwrite", mb_per_s(want, o.took))])
}

/// Appends one byte to the big lower file (as `printf x >> big.bin`): the whole file is
/// copied up before the write.
fn copy_up(ctx: &Ctx, m: &Mount) -> Measured {
    let path = m.path("big.bin");
    let start = Instant::now();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(b"x")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(f);
    let took = start.elapsed();
    let size = fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size != big_size(ctx) + 1 {
        return Err(format!("big.bin has {size} bytes after the append"));
    }
    Ok(vec![("copyup", took.as_secs_f64())])
}

/// fio: random 4 KiB reads of the big file, one job, `psync`, page cache allowed, for a
/// fixed time starting cold. Returns IOPS.
fn rand_read(ctx: &Ctx, m: &Mount) -> Measured {
    let o = Command::new("fio")
        .args([
            "--name=randread",
            "--readonly",
            "--rw=randread",
            "--bs=4k",
            "--ioengine=psync",
            "--direct=0",
            "--time_based",
            "--minimal",
        ])
        .arg(format!("--runtime={}", ctx.scale.fio_secs))
        .arg(format!("--filename={}", m.path("big.bin").display()))
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        return Err(format!(
            "fio failed ({}): {}{}",
            o.status,
            text.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    // Terse format v3: field 8 (from 1) is the read IOPS.
    let iops = text
        .lines()
        .find(|l| l.starts_with("3;"))
        .and_then(|l| l.split(';').nth(7))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or(format!(
            "cannot read IOPS from fio's output: {}",
            text.trim()
        ))?;
    Ok(vec![("randread", iops)])
}

/// Creates 100-byte files (100 a directory) in new directories, in this process, without
/// a final sync: the usual small-file creation benchmark.
fn create_files(ctx: &Ctx, m: &Mount) -> Measured {
    let top = m.path("created");
    let data = [b'c'; 100];
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let start = Instant::now();
    fs::create_dir(&top).map_err(|e| err(&top, e))?;
    for d in 0..ctx.scale.create_files.div_ceil(100) {
        let dir = top.join(format!("d{d:03}"));
        fs::create_dir(&dir).map_err(|e| err(&dir, e))?;
        for f in 0..100 {
            let p = dir.join(format!("f{f:03}"));
            fs::write(&p, data).map_err(|e| err(&p, e))?;
        }
    }
    Ok(vec![("create", start.elapsed().as_secs_f64())])
}

/// `rm -rf` of a lower tree of a few thousand files (each removal leaves a whiteout).
fn rm_rf(_ctx: &Ctx, m: &Mount) -> Measured {
    let tree = m.path("rmtree");
    let o = timed(Command::new("rm").arg("-rf").arg(&tree))?;
    if tree.exists() {
        return Err("rmtree is still there after rm -rf".into());
    }
    Ok(vec![("rmrf", o.took.as_secs_f64())])
}

/// `tar x` of the tarball (read from outside the mount) into the mount.
fn untar(ctx: &Ctx, m: &Mount) -> Measured {
    let o = timed(
        Command::new("tar")
            .arg("xf")
            .arg(&ctx.data.tarball)
            .arg("-C")
            .arg(&m.mnt),
    )?;
    let n: usize = fs::read_dir(m.path("unpacked"))
        .map_err(|e| format!("unpacked: {e}"))?
        .flatten()
        .map(|d| fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0))
        .sum();
    if n != ctx.data.tar_entries {
        return Err(format!(
            "untar made {n} files, expected {}",
            ctx.data.tar_entries
        ));
    }
    Ok(vec![("untar", o.took.as_secs_f64())])
}

/// Two processes stat the same list of files at once, cold then hot; stats per second
/// over both. The clock starts once both workers have loaded the list and said so, and
/// stops when both have exited.
fn parallel_stat(ctx: &Ctx, m: &Mount) -> Measured {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut out = Vec::new();
    for metric in ["pstat-cold", "pstat-hot"] {
        let mut workers: Vec<_> = (0..2)
            .map(|_| {
                Command::new(&exe)
                    .args(["bench", "stat-worker"])
                    .arg(&m.mnt)
                    .arg(&ctx.stat_list)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("{}: {e}", exe.display()))
            })
            .collect::<Result<_>>()?;
        let mut ready = [0u8; 1];
        for c in &mut workers {
            if let Some(o) = c.stdout.as_mut() {
                o.read_exact(&mut ready)
                    .map_err(|e| format!("stat worker not ready: {e}"))?;
            }
        }
        let start = Instant::now();
        for c in &mut workers {
            // Closing its stdin is the worker's signal to start.
            drop(c.stdin.take());
        }
        for mut c in workers {
            let st = c.wait().map_err(|e| format!("stat worker: {e}"))?;
            if !st.success() {
                return Err(format!("a stat worker failed ({st})"));
            }
        }
        let took = start.elapsed();
        out.push((metric, (2 * ctx.stat_files) as f64 / took.as_secs_f64()));
    }
    Ok(out)
}

/// The parallel-stat worker: loads the list, says it is ready (one byte on stdout), waits
/// for stdin to close, then `lstat`s every listed path below `mnt`.
pub fn stat_worker(mnt: &Path, list: &Path) -> Result {
    let text = fs::read_to_string(list).map_err(|e| format!("{}: {e}", list.display()))?;
    let paths: Vec<PathBuf> = text.lines().map(|rel| mnt.join(rel)).collect();
    let mut stdout = std::io::stdout();
    stdout
        .write_all(b"r")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    let mut rest = Vec::new();
    std::io::stdin()
        .read_to_end(&mut rest)
        .map_err(|e| format!("stdin: {e}"))?;
    for p in &paths {
        fs::symlink_metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// A cold stat walk of a million entries, then the daemon's peak resident memory.
fn million_walk(ctx: &Ctx, m: &Mount) -> Measured {
    let o = timed(
        Command::new("find")
            .arg(&m.mnt)
            .args(["-printf", "%s %m %i\n"]),
    )?;
    expect_lines("find", o.lines, ctx.data.million_entries + 1)?;
    let mut out = vec![("walk-1m", o.took.as_secs_f64())];
    if let Some(kib) = m.daemon_status_kib("VmHWM")? {
        out.push(("rss-1m", kib as f64 / 1024.0));
    }
    Ok(out)
}

/// The daemon's open descriptors: after mounting, while 1000 files are held open through
/// the mount, and a second after they were closed.
fn open_fds(ctx: &Ctx, m: &Mount) -> Measured {
    let count = || -> Result<f64> {
        m.daemon_fds()?
            .map(|n| n as f64)
            .ok_or("no daemon to count descriptors of".to_string())
    };
    let base = count()?;
    let files = ctx.data.files();
    let held: Vec<fs::File> = files
        .iter()
        .take(1000)
        .map(|rel| {
            let p = m.path(rel);
            fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect::<Result<_>>()?;
    let open = count()?;
    drop(held);
    std::thread::sleep(Duration::from_secs(1));
    let after = count()?;
    Ok(vec![
        ("fds-base", base),
        ("fds-open", open),
        ("fds-left", after - base),
    ])
}
