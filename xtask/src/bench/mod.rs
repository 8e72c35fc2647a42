//! `cargo xtask bench`: strata side by side with kernel overlayfs and fuse-overlayfs.
//!
//! Builds strata in release mode, makes sure the data set exists (see [`data`]), checks
//! each system's merged view against the generator's model, then runs every workload on
//! every system in turn — the order rotated each repetition (A B C, B C A, C A B) so no
//! system always runs right after another's writes — on a fresh mount each time. Unless
//! `--systems` names it, `strata-all` (strata with `passthrough=all`) runs only on the
//! workloads that read file data. Prints the medians and ratios and writes them, with
//! every raw sample, under `bench/results/`. Nothing here asserts a timing: the targets
//! are reported, not enforced.
//!
//! The image-store group (`--only store`, see [`store`]) runs after the filesystem
//! workloads, on the strata CLI alone, and has its own table. A run that selects only it
//! neither prepares the filesystem data set nor mounts the other systems.

mod data;
mod report;
mod store;
mod systems;
mod workloads;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Instant;

use crate::{can_mount, cargo, ensure_packages, root, Result};
use systems::{Binaries, Mount, Scope};
use workloads::{Ctx, Stack};

const USAGE: &str = "usage: cargo xtask bench [--quick] [--reps N] [--only W1,W2] \
                     [--systems strata,kernel,fuse-overlayfs,strata-all] \
                     (workload `store`: the image-store group)";

/// How big the data set and the workloads are.
#[derive(Clone, Debug)]
pub struct Scale {
    pub name: &'static str,
    /// Packages (top directories of the tree) per lower, bottom first.
    pub pkgs: [usize; 3],
    pub subdirs: usize,
    /// Files per package subdirectory, per lower, bottom first.
    pub files: [usize; 3],
    /// Entries of the wide directory.
    pub wide: usize,
    pub big_mib: u64,
    pub rm_files: usize,
    pub tar_files: usize,
    /// Directories of 1000 empty files in the memory-measurement layer.
    pub million_dirs: usize,
    pub stat_files: usize,
    pub create_files: usize,
    pub write_mib: u64,
    pub fio_secs: u64,
}

impl Scale {
    fn full() -> Scale {
        Scale {
            name: "full",
            pkgs: [200, 100, 50],
            subdirs: 4,
            files: [20, 12, 10],
            wide: 50_000,
            big_mib: 1024,
            rm_files: 3000,
            tar_files: 3000,
            million_dirs: 1000,
            stat_files: 20_000,
            create_files: 10_000,
            write_mib: 1024,
            fio_secs: 2,
        }
    }

    fn quick() -> Scale {
        Scale {
            name: "quick",
            pkgs: [40, 20, 10],
            subdirs: 4,
            files: [10, 8, 6],
            wide: 5000,
            big_mib: 128,
            rm_files: 500,
            tar_files: 500,
            million_dirs: 50,
            stat_files: 2000,
            create_files: 2000,
            write_mib: 128,
            fio_secs: 2,
        }
    }
}

/// The command line.
struct Opts {
    quick: bool,
    reps: usize,
    only: Option<Vec<String>>,
    /// The systems in their default order, each with the workloads it runs: named by
    /// `--systems`, every one; otherwise each system's default.
    systems: Vec<(&'static str, Scope)>,
}

impl Opts {
    fn names(&self) -> Vec<&'static str> {
        self.systems.iter().map(|(s, _)| *s).collect()
    }

    fn selects(&self, workload: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|n| n == workload))
    }

    /// The filesystem workloads selected, in run order.
    fn fs_workloads(&self) -> Vec<&'static workloads::Workload> {
        workloads::ALL
            .iter()
            .filter(|w| self.selects(w.name))
            .collect()
    }
}

/// Parses the arguments after `bench`.
fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        quick: false,
        reps: 3,
        only: None,
        systems: systems::ALL
            .iter()
            .map(|s| (*s, systems::default_scope(s)))
            .collect(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value; {USAGE}"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--reps" => {
                let v = value()?;
                o.reps = v
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or(format!("--reps {v:?} is not a positive number; {USAGE}"))?;
            }
            "--only" => {
                let names: Vec<String> = value()?.split(',').map(str::to_string).collect();
                let known: Vec<&str> = workloads::ALL
                    .iter()
                    .map(|w| w.name)
                    .chain([store::NAME])
                    .collect();
                if let Some(n) = names.iter().find(|n| !known.contains(&n.as_str())) {
                    return Err(format!("unknown workload {n:?}; known: {known:?}"));
                }
                o.only = Some(names);
            }
            "--systems" => {
                let mut chosen = Vec::new();
                for n in value()?.split(',') {
                    let s = systems::ALL
                        .iter()
                        .find(|s| **s == n)
                        .ok_or(format!("unknown system {n:?}; known: {:?}", systems::ALL))?;
                    chosen.push((*s, Scope::Every));
                }
                o.systems = chosen;
            }
            _ => return Err(format!("unknown argument {a:?}; {USAGE}")),
        }
    }
    Ok(o)
}

/// `cargo xtask bench …` (and its internal `stat-worker` child).
pub fn run(args: &[String]) -> Result {
    if let [w, mnt, list] = args {
        if w == "stat-worker" {
            return workloads::stat_worker(Path::new(mnt), Path::new(list));
        }
    }
    let opts = parse(args)?;
    can_mount("bench")?;
    let fs_chosen = opts.fs_workloads();
    let mut wanted = Vec::new();
    if !fs_chosen.is_empty() {
        wanted.push(("/usr/bin/fio", "fio"));
        if opts.names().contains(&"fuse-overlayfs") {
            wanted.push(("/usr/bin/fuse-overlayfs", "fuse-overlayfs"));
        }
    }
    if opts.selects(store::NAME) {
        wanted.push(("/usr/bin/openssl", "openssl"));
    }
    ensure_packages(&wanted)?;
    println!("bench: building strata (release)");
    crate::run(cargo().args(["build", "--quiet", "--release", "--package", "strata"]))?;
    let bins = Binaries {
        strata: root().join("target/release/strata"),
        fuse_overlayfs: PathBuf::from("/usr/bin/fuse-overlayfs"),
    };

    let started = Instant::now();
    let load_before = loadavg();
    // Read now: the tree may change while the run goes on.
    let commit = commit();
    let (scale, store_scale) = if opts.quick {
        (Scale::quick(), store::StoreScale::quick())
    } else {
        (Scale::full(), store::StoreScale::full())
    };
    let scratch = Path::new(data::CACHE_ROOT).join("run");
    fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    systems::clear_leftovers(&scratch)?;
    let (data, prepared) = match fs_chosen.is_empty() {
        true => (None, 0.0),
        false => {
            let data = data::prepare(&scale, &opts.names())?;
            (Some(data), started.elapsed().as_secs_f64())
        }
    };

    let (mut samples, mut spent) = match &data {
        Some(data) => run_filesystems(&opts, &fs_chosen, &scale, data, &bins, &scratch)?,
        None => (Vec::new(), Vec::new()),
    };
    let store_ran = opts.selects(store::NAME);
    if store_ran {
        let (s, t) = store::run_all(&bins.strata, &scratch, &store_scale, opts.reps)?;
        samples.extend(s);
        spent.extend(t);
    }
    let wall = started.elapsed();
    let times = (wall.as_secs_f64(), prepared, spent.as_slice());
    let sizes = (&scale, store_ran.then_some(&store_scale));
    let header = header(&opts, sizes, data.as_ref(), (&commit, &load_before), times);
    let body = body(&samples, &store_scale);
    println!("\n{header}\n{body}");
    let complete = opts.only.is_none() && opts.systems.len() == systems::ALL.len();
    let stamp = utc_stamp()?;
    let name = format!("{stamp}-{}", scale.name);
    let latest = format!("latest-{}", scale.name);
    let path = report::write(
        &root().join("bench/results"),
        &name,
        &header,
        &body,
        &samples,
        complete.then_some(latest.as_str()),
    )?;
    println!(
        "bench: wrote {} (wall time {:.0} s)",
        path.display(),
        wall.as_secs_f64()
    );
    Ok(())
}

/// The filesystem table and its notes when some filesystem workload ran, then the store
/// table and its notes when the store group ran.
fn body(samples: &[report::Sample], store_scale: &store::StoreScale) -> String {
    let mut b = String::new();
    if report::has_rows(samples, report::METRICS) {
        b.push_str(&format!(
            "{}\n{}",
            report::table(samples),
            report::notes(samples)
        ));
    }
    if report::has_rows(samples, report::STORE_METRICS) {
        if !b.is_empty() {
            b.push('\n');
        }
        b.push_str(&format!(
            "## Image store\n\n{}\n{}",
            report::store_table(
                samples,
                &store_scale.tree_label(),
                &store::thousands(store_scale.images)
            ),
            report::store_notes()
        ));
    }
    b
}

/// Checks each system's merged view, then runs the filesystem workloads.
fn run_filesystems(
    opts: &Opts,
    chosen: &[&workloads::Workload],
    scale: &Scale,
    data: &data::DataSet,
    bins: &Binaries,
    scratch: &Path,
) -> Result<(Vec<report::Sample>, Spent)> {
    let stat_list = scratch.join("stat-list.txt");
    let files = data.files();
    let stat_files = files.len().min(scale.stat_files);
    fs::write(&stat_list, files[..stat_files].join("\n") + "\n")
        .map_err(|e| format!("{}: {e}", stat_list.display()))?;
    let ctx = Ctx {
        data,
        scale,
        stat_list,
        stat_files,
    };
    for sys in opts.names() {
        println!("bench: checking {sys}'s merged view");
        let m = Mount::new(sys, bins, &data.lowers[sys], &scratch.join(sys))?;
        data::check_view(&m.mnt, &data.model).map_err(|e| format!("{sys}: {e}"))?;
        m.unmount()?;
    }
    run_workloads(opts, chosen, &ctx, bins, scratch)
}

/// The wall time of each workload that ran (s), in run order.
type Spent = Vec<(&'static str, f64)>;

/// Every selected workload × repetition × system that runs it, in rotated order. Returns
/// the samples and the wall time each workload took (mounts and cache drops included).
fn run_workloads(
    opts: &Opts,
    chosen: &[&workloads::Workload],
    ctx: &Ctx,
    bins: &Binaries,
    scratch: &Path,
) -> Result<(Vec<report::Sample>, Spent)> {
    let mut samples = Vec::new();
    let mut spent = Vec::new();
    for &w in chosen {
        let start = Instant::now();
        let reps = if w.once { 1 } else { opts.reps };
        let running: Vec<&'static str> = opts
            .systems
            .iter()
            .filter(|(sys, scope)| {
                !(w.daemon_only && *sys == "kernel") && (*scope == Scope::Every || w.reads_data)
            })
            .map(|(sys, _)| *sys)
            .collect();
        let n = running.len();
        for rep in 0..reps {
            for slot in 0..n {
                let sys = running[(slot + rep) % n];
                let lowers = match w.stack {
                    Stack::Main => ctx.data.lowers[sys].clone(),
                    Stack::Million => vec![ctx.data.million.clone()],
                };
                let m = Mount::new(sys, bins, &lowers, &scratch.join(sys))?;
                systems::drop_caches()?;
                let got = (w.run)(ctx, &m).map_err(|e| format!("{} on {sys}: {e}", w.name))?;
                m.unmount()?;
                let shown: Vec<String> = got.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
                println!(
                    "bench: {} rep {}/{reps} {sys}: {}",
                    w.name,
                    rep + 1,
                    shown.join(", ")
                );
                samples.extend(got.into_iter().map(|(metric, value)| report::Sample {
                    metric,
                    system: sys,
                    rep,
                    slot,
                    value,
                }));
            }
        }
        let took = start.elapsed().as_secs_f64();
        println!("bench: {} took {took:.0} s", w.name);
        spent.push((w.name, took));
    }
    Ok((samples, spent))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The first line a command prints (on stdout, else stderr), or "?".
fn first_line(cmd: &mut Command) -> String {
    line_with(cmd, "")
}

/// The first line a command prints that contains `pat`, or "?".
fn line_with(cmd: &mut Command, pat: &str) -> String {
    cmd.output()
        .ok()
        .and_then(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find(|l| l.contains(pat))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// `2026-11-27T2200` in UTC, for file names.
fn utc_stamp() -> Result<String> {
    let s = first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H%M"]));
    if s == "?" {
        return Err("cannot read the date".into());
    }
    Ok(s)
}

/// The commit the run measures, marked when the tracked files differ from it.
fn commit() -> String {
    let mut commit = first_line(git().args(["rev-parse", "--short", "HEAD"]));
    let dirty = git()
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str(" (with uncommitted changes)");
    }
    commit
}

/// The facts a reader needs to judge the figures. `sizes`: the filesystem scale and, when
/// the store group ran, its scale; `data`: the filesystem data set, when a filesystem
/// workload ran; `at_start`: the commit and the load average when the run began; `times`:
/// the run's wall time, the part of it spent making the data set, and the wall time of
/// each workload.
fn header(
    opts: &Opts,
    sizes: (&Scale, Option<&store::StoreScale>),
    data: Option<&data::DataSet>,
    at_start: (&str, &str),
    times: (f64, f64, &[(&str, f64)]),
) -> String {
    let (scale, store_scale) = sizes;
    let (commit, load_before) = at_start;
    let (wall, prepared, spent) = times;
    let spent: Vec<String> = spent.iter().map(|(w, s)| format!("{w} {s:.0}")).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut h = format!(
        "# strata benchmark ({mode})\n\n\
         - date: {date}; commit: {commit}\n\
         - machine: Linux {kernel}, {cores} cores; load average before {load_before}, after {load_after}\n",
        mode = scale.name,
        date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        kernel = first_line(Command::new("uname").arg("-r")),
        load_after = loadavg(),
    );
    if let Some(data) = data {
        let systems: Vec<String> = opts
            .systems
            .iter()
            .map(|(sys, scope)| match scope {
                Scope::Every => sys.to_string(),
                Scope::DataReads => format!("{sys} (data-read workloads only)"),
            })
            .collect();
        let files = data.files().len();
        h.push_str(&format!(
            "- fuse-overlayfs: {fo}; fio: {fio}\n\
             - systems: {systems}\n\
             - repetitions: {reps} (medians shown; order rotated each repetition), except `rss` \
               (the {million}-entry walk) and `fds`: 1 run per system\n\
             - data set: {entries} merged entries in 3 lowers ({files} files under tree/, {tree_mb:.0} MB), \
               a {wide}-entry directory, a {big} MiB file, a {tar}-file tarball, a {million}-entry layer\n",
            fo = line_with(Command::new("fuse-overlayfs").arg("--version"), "fuse-overlayfs"),
            fio = first_line(Command::new("fio").arg("--version")),
            systems = systems.join(", "),
            reps = opts.reps,
            entries = data.model.len(),
            tree_mb = data.tree_bytes() as f64 / 1e6,
            wide = data.wide_entries(),
            big = scale.big_mib,
            tar = scale.tar_files,
            million = data.million_entries,
        ));
    }
    if let Some(st) = store_scale {
        h.push_str(&format!(
            "- image store: commit of {tree} in 100 directories (the upper of an unmounted mount \
               of a one-file image), {reps}× warm and {reps}× cold, strata and the \
               baselines taking turns going first; `images` and `inspect` on a store of \
               {images} images (one layer each), {runs} runs each after a warm-up; \
               {tar}, {sha}, {openssl}; stores on {fs} ({cache})\n",
            tree = st.tree_label(),
            reps = opts.reps,
            images = store::thousands(st.images),
            runs = store::QUERY_RUNS,
            tar = first_line(Command::new("tar").arg("--version")),
            sha = first_line(Command::new("sha256sum").arg("--version")),
            openssl = first_line(Command::new("openssl").arg("version")),
            fs = first_line(Command::new("stat").args(["-f", "-c", "%T", data::CACHE_ROOT])),
            cache = data::CACHE_ROOT,
        ));
    }
    h.push_str(&format!(
        "- wall time: {wall:.0} s, of which {prepared:.0} s preparing the data set \
           (generating what was missing); per workload (s): {spent}\n",
        spent = spent.join(", "),
    ));
    h
}

/// Fails with the command, its exit status and what it said on stderr unless it
/// succeeded.
fn succeeded(shown: &str, status: ExitStatus, stderr: &[u8]) -> Result {
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "{shown} failed ({status}): {}",
        String::from_utf8_lossy(stderr).trim()
    ))
}

fn git() -> Command {
    let mut c = Command::new("git");
    c.current_dir(root());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_selects_the_store_group_or_filesystem_workloads() {
        let o = parse(&args(&["--only", "store"])).unwrap();
        assert!(o.selects(store::NAME) && o.fs_workloads().is_empty());
        let o = parse(&args(&["--only", "stat,store"])).unwrap();
        let names: Vec<&str> = o.fs_workloads().iter().map(|w| w.name).collect();
        assert_eq!(names, ["stat"]);
        assert!(o.selects(store::NAME));
        let o = parse(&args(&[])).unwrap();
        assert!(o.selects(store::NAME));
        assert_eq!(o.fs_workloads().len(), workloads::ALL.len());
        let e = parse(&args(&["--only", "stor"])).err().unwrap();
        assert!(
            e.contains("unknown workload \"stor\"") && e.contains("store"),
            "{e}"
        );
    }
}
