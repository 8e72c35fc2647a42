//! The image-store workloads (`--only store`): the two store targets, measured
//! on the strata CLI as a user runs it, one process per command.
//!
//! - **commit**: a mount of a tiny imported base image whose upper holds a generated tree
//!   (full: 10,000 files of about 107 KiB in 100 directories, 1 GiB) is committed with
//!   `strata commit`, and the same directory is read by `tar c -C UPPER . | sha256sum`,
//!   the baseline: the least a commit must do is read every file, write it as a tar
//!   stream and hash that stream. For information, the same pipeline also runs with
//!   `openssl dgst -sha256` as the hasher (it uses the CPU's SHA instructions; Debian's
//!   coreutils `sha256sum` does not, and hashes several times slower). All run in the same cache state, warm (the tree read
//!   just before) and cold (caches dropped just before), their order rotated every
//!   repetition. The committed image is removed and the store pruned after each commit
//!   (untimed), so each commit makes its layer anew.
//! - **images**: a store of 1,000 images (each imported from its own one-file directory)
//!   answers `strata images` and `strata inspect TAG`; the median of 20 runs of each is
//!   judged against an absolute 50 ms.
//!
//! The tree is generated once by deterministic code and cached under the bench cache
//! next to the filesystem data set; it is copied (not linked) into the mount's upper on
//! every run. The commit's store is scratch, made and removed by every run; the store of
//! 1,000 images is cached, keyed by the store format (the queries only read it). The
//! commit store's mount is unmounted right after it is made (commit reads the upper
//! directory of an unmounted mount); a guard unmounts it however the run ends.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::data::{self, Rng};
use super::report::{self, BASELINE, OPENSSL};
use super::systems;
use crate::{is_mounted, run, Result};

/// The name `--only` selects the group by.
pub const NAME: &str = "store";

/// Bump when the tree generator changes what it writes: the cached tree is then
/// regenerated.
const TREE_VERSION: u32 = 1;

/// Directories the commit tree spreads its files over.
const TREE_DIRS: usize = 100;

/// Runs of each query command (after one untimed warm-up run).
pub const QUERY_RUNS: usize = 20;

/// How big the store workloads are. Kept apart from [`super::Scale`], whose debug form
/// stamps the filesystem data set: changing this must not regenerate that.
#[derive(Clone, Debug)]
pub struct StoreScale {
    /// Files of the commit tree, spread over [`TREE_DIRS`] directories.
    pub files: usize,
    /// Total size the files add up to, about (their sizes vary by ±8 KiB around the mean).
    pub mib: u64,
    /// Images in the store the queries run against.
    pub images: usize,
}

impl StoreScale {
    pub fn full() -> StoreScale {
        StoreScale {
            files: 10_000,
            mib: 1024,
            images: 1000,
        }
    }

    pub fn quick() -> StoreScale {
        StoreScale {
            files: 1000,
            mib: 100,
            images: 200,
        }
    }

    /// The sizes of the tree's files, in file order: deterministic, from their own
    /// generator, so the expected total is known without reading the cache.
    fn sizes(&self) -> Vec<u64> {
        let mean = (self.mib << 20) / self.files.max(1) as u64;
        let spread = 8 * 1024u64.min(mean);
        let mut rng = Rng::new(4100);
        (0..self.files)
            .map(|_| mean - spread + rng.below(2 * spread + 1))
            .collect()
    }

    /// "1.00 GiB in 10,000 files", for the table and the header.
    pub fn tree_label(&self) -> String {
        let bytes: u64 = self.sizes().iter().sum();
        format!(
            "{:.2} GiB in {} files",
            bytes as f64 / f64::from(1u32 << 30),
            thousands(self.files)
        )
    }
}

/// `10000` as `10,000`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The relative path of file `i` of the tree.
fn tree_path(i: usize) -> String {
    format!("d{:03}/f{:05}.bin", i % TREE_DIRS, i)
}

/// Writes the tree into `dir`.
fn make_tree(dir: &Path, scale: &StoreScale) -> Result {
    let mut rng = Rng::new(4200);
    let sizes = scale.sizes();
    let mut buf = vec![0u8; sizes.iter().copied().max().unwrap_or(0) as usize];
    for d in 0..TREE_DIRS.min(scale.files) {
        let p = dir.join(format!("d{d:03}"));
        fs::create_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    for (i, size) in sizes.iter().enumerate() {
        let data = &mut buf[..*size as usize];
        rng.fill(data);
        let p = dir.join(tree_path(i));
        fs::write(&p, &*data).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

/// The cached tree for `scale`, generated when missing or stale.
fn prepare_tree(scale: &StoreScale) -> Result<PathBuf> {
    let dir = Path::new(data::CACHE_ROOT).join(format!(
        "v{TREE_VERSION}-commit-{}-{}",
        scale.files, scale.mib
    ));
    let stamp = format!("v{TREE_VERSION} {scale:?}");
    if !data::is_current(&dir, &stamp) {
        println!(
            "bench: generating the commit tree ({}) in {} (once)",
            scale.tree_label(),
            dir.display()
        );
        data::regenerate(&dir, &stamp, |d| {
            let tree = d.join("tree");
            fs::create_dir(&tree).map_err(|e| format!("{}: {e}", tree.display()))?;
            make_tree(&tree, scale)
        })?;
    }
    Ok(dir.join("tree"))
}

/// Checks that `dir` holds exactly the tree's files with their sizes (and nothing else).
fn check_tree(dir: &Path, scale: &StoreScale) -> Result {
    let sizes = scale.sizes();
    let mut seen = 0usize;
    for d in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let d = d.map_err(|e| format!("{}: {e}", dir.display()))?;
        for f in fs::read_dir(d.path()).map_err(|e| format!("{}: {e}", d.path().display()))? {
            let f = f.map_err(|e| format!("{}: {e}", d.path().display()))?;
            seen += 1;
            let rel = format!(
                "{}/{}",
                d.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            let want = rel
                .strip_suffix(".bin")
                .and_then(|r| r.rsplit_once("/f"))
                .and_then(|(_, n)| n.parse::<usize>().ok())
                .filter(|i| tree_path(*i) == rel)
                .and_then(|i| sizes.get(i));
            let got = f
                .metadata()
                .map_err(|e| format!("{}: {e}", f.path().display()))?
                .len();
            if want != Some(&got) {
                return Err(format!(
                    "{}: {rel} ({got} bytes) is not a file of the commit tree",
                    dir.display()
                ));
            }
        }
    }
    if seen != scale.files {
        return Err(format!(
            "{}: {seen} files, expected {}",
            dir.display(),
            scale.files
        ));
    }
    Ok(())
}

/// Reads every file below `dir` (the "warm" state: the whole tree in the page cache).
fn read_all(dir: &Path, buf: &mut [u8]) -> Result {
    for e in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = e.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        let m = fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.is_dir() {
            read_all(&p, buf)?;
        } else if m.is_file() {
            let mut f = fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            while f.read(buf).map_err(|e| format!("{}: {e}", p.display()))? > 0 {}
        }
    }
    Ok(())
}

/// The strata CLI on one store.
struct Store<'a> {
    strata: &'a Path,
    root: PathBuf,
}

impl Store<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new(self.strata);
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs `strata --root R ARGS…` and returns its stdout, failing with its stderr.
    fn out(&self, args: &[&str]) -> Result<String> {
        let (_, out) = timed(self.cmd().args(args))?;
        Ok(out)
    }
}

/// Runs `cmd` with stdout captured (unless the caller redirected it), and returns its
/// wall time from spawn to exit and its stdout.
fn timed(cmd: &mut Command) -> Result<(Duration, String)> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let o = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{shown}: {e}"))?;
    let took = start.elapsed();
    super::succeeded(&shown, o.status, &o.stderr)?;
    Ok((took, String::from_utf8_lossy(&o.stdout).into_owned()))
}

/// A store mount; unmounted (not removed) when dropped while still mounted.
struct StoreMount<'a> {
    store: &'a Store<'a>,
    mnt: PathBuf,
    id: String,
}

impl<'a> StoreMount<'a> {
    /// Mounts `image` of `store` at `mnt`, then unmounts it, waiting for its daemon to
    /// exit: what is left is the mount's record and its empty upper.
    fn made(store: &'a Store<'a>, image: &str, mnt: &Path) -> Result<StoreMount<'a>> {
        fs::create_dir_all(mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
        let out = store.out(&["mount", image, &mnt.display().to_string()])?;
        let m = StoreMount {
            store,
            mnt: mnt.to_path_buf(),
            id: out.trim().to_string(),
        };
        if m.id.len() != 64 || !m.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("strata mount printed {out:?}, not a mount id"));
        }
        let daemon = systems::find_daemon("strata", mnt);
        store.out(&["umount", &m.id])?;
        if is_mounted(mnt) {
            return Err(format!("{} is still mounted after umount", mnt.display()));
        }
        if let Some(pid) = daemon {
            if !systems::exited(pid) {
                return Err(format!("the strata daemon {pid} did not exit after umount"));
            }
        }
        Ok(m)
    }

    fn upper(&self) -> PathBuf {
        self.store.root.join("mounts").join(&self.id).join("upper")
    }
}

impl Drop for StoreMount<'_> {
    fn drop(&mut self) {
        systems::unmount_leftover(&self.mnt);
    }
}

/// Removes a scratch directory of a store (after unmounting whatever it left mounted).
fn remove_store(dir: &Path, mnt: &Path) -> Result {
    systems::unmount_leftover(mnt);
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Who runs in the commit measurement: strata, the baseline (`tar c | sha256sum`) and,
/// for information, the same pipeline hashing with `openssl dgst -sha256`.
const CONTENDERS: [&str; 3] = ["strata", BASELINE, OPENSSL];

/// One measurement.
fn sample(
    metric: &'static str,
    system: &'static str,
    rep: usize,
    slot: usize,
    value: f64,
) -> report::Sample {
    report::Sample {
        metric,
        system,
        rep,
        slot,
        value,
    }
}

/// What the store workloads measured, and the wall time each group took (s).
pub type Measured = (Vec<report::Sample>, Vec<(&'static str, f64)>);

/// Runs both store workloads with `reps` repetitions of the commit.
pub fn run_all(strata: &Path, scratch: &Path, scale: &StoreScale, reps: usize) -> Result<Measured> {
    let mut samples = Vec::new();
    let mut spent = Vec::new();
    let start = Instant::now();
    samples.extend(commit(strata, scratch, scale, reps)?);
    spent.push(("store commit", start.elapsed().as_secs_f64()));
    let start = Instant::now();
    samples.extend(queries(strata, scratch, scale)?);
    spent.push(("store images", start.elapsed().as_secs_f64()));
    Ok((samples, spent))
}

/// The commit against its baseline, warm and cold, `reps` times.
fn commit(
    strata: &Path,
    scratch: &Path,
    scale: &StoreScale,
    reps: usize,
) -> Result<Vec<report::Sample>> {
    let tree = prepare_tree(scale)?;
    let dir = scratch.join("store-commit");
    let mnt = dir.join("mnt");
    remove_store(&dir, &mnt)?;
    let r = commit_in(strata, &dir, &tree, scale, reps);
    let cleaned = remove_store(&dir, &mnt);
    let samples = r?;
    cleaned?;
    Ok(samples)
}

fn commit_in(
    strata: &Path,
    dir: &Path,
    tree: &Path,
    scale: &StoreScale,
    reps: usize,
) -> Result<Vec<report::Sample>> {
    let store = Store {
        strata,
        root: dir.join("root"),
    };
    let base = dir.join("base");
    fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    fs::write(base.join("hello"), "base layer\n")
        .map_err(|e| format!("{}: {e}", base.display()))?;
    store.out(&["import", &base.display().to_string(), "bench:base"])?;
    let m = StoreMount::made(&store, "bench:base", &dir.join("mnt"))?;
    let upper = m.upper();
    let empty = fs::read_dir(&upper)
        .map_err(|e| format!("{}: {e}", upper.display()))?
        .next()
        .is_none();
    if !empty {
        return Err(format!("{} is not empty after mounting", upper.display()));
    }
    println!(
        "bench: store commit: copying {} into {}",
        scale.tree_label(),
        upper.display()
    );
    let mut src = tree.as_os_str().to_owned();
    src.push("/.");
    run(Command::new("cp").arg("-a").arg(&src).arg(&upper))?;
    check_tree(&upper, scale)?;
    let bytes: u64 = scale.sizes().iter().sum();
    let upper_arg = upper.display().to_string();
    let mut buf = vec![0u8; 1 << 20];
    let mut samples = Vec::new();
    for rep in 0..reps {
        for (metric, cold) in [("commit-warm", false), ("commit-cold", true)] {
            let mut shown = Vec::new();
            // Rotated every repetition, as the filesystem systems are.
            for slot in 0..CONTENDERS.len() {
                let who = CONTENDERS[(slot + rep) % CONTENDERS.len()];
                rustix::fs::sync();
                if cold {
                    systems::drop_caches()?;
                } else {
                    read_all(&upper, &mut buf)?;
                }
                let took = if who == "strata" {
                    let (took, out) = timed(store.cmd().args(["commit", &m.id, "bench:commit"]))?;
                    check_commit(&store, out.trim(), bytes)?;
                    // Untimed: the next commit must make its layer anew.
                    store.out(&["rmi", "bench:commit"])?;
                    store.out(&["image", "prune", "-f"])?;
                    took
                } else {
                    let hasher = match who {
                        BASELINE => "sha256sum",
                        _ => "openssl dgst -sha256",
                    };
                    let script = format!("set -o pipefail; tar c -C \"$1\" . | {hasher}");
                    let (took, out) = timed(
                        Command::new("bash")
                            .args(["-c", &script, "-"])
                            .arg(&upper_arg),
                    )?;
                    // sha256sum: "HEX  -"; openssl: "SHA2-256(stdin)= HEX".
                    let hex = out
                        .split_whitespace()
                        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()));
                    if hex.is_none() {
                        return Err(format!("tar c | {hasher} printed {out:?}"));
                    }
                    took
                };
                shown.push(format!("{who} {:.3}", took.as_secs_f64()));
                samples.push(sample(metric, who, rep, slot, took.as_secs_f64()));
            }
            println!(
                "bench: store {metric} rep {}/{reps}: {}",
                rep + 1,
                shown.join(", ")
            );
        }
    }
    rustix::fs::sync();
    drop(m);
    Ok(samples)
}

/// Checks what a commit printed and made: an image id whose image holds the tree's bytes.
fn check_commit(store: &Store, id: &str, bytes: u64) -> Result {
    if !id.starts_with("sha256:") || id.len() != 71 {
        return Err(format!("strata commit printed {id:?}, not an image id"));
    }
    let inspect = store.out(&["inspect", "bench:commit"])?;
    let size = inspect
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"Size\":"))
        .and_then(|v| v.trim().trim_end_matches(',').parse::<u64>().ok());
    match size {
        Some(s) if s >= bytes && inspect.contains(id) => Ok(()),
        _ => Err(format!(
            "the committed image {id} does not hold the tree's {bytes} bytes (Size {size:?})"
        )),
    }
}

/// `images` and `inspect` on a store of `scale.images` images (cached, see
/// [`images_store`]).
fn queries(strata: &Path, scratch: &Path, scale: &StoreScale) -> Result<Vec<report::Sample>> {
    let store = images_store(strata, scratch, scale)?;
    let tag = image_tag(scale.images / 2);
    let mut samples = Vec::new();
    for (metric, args) in [
        ("images", vec!["images"]),
        ("inspect", vec!["inspect", tag.as_str()]),
    ] {
        // Untimed: a warm-up, so every timed run finds the store in the page cache.
        store.out(&args)?;
        let mut times = Vec::new();
        for rep in 0..QUERY_RUNS {
            let (took, _) = timed(store.cmd().args(&args).stdout(Stdio::null()))?;
            let ms = took.as_secs_f64() * 1e3;
            times.push(format!("{ms:.1}"));
            samples.push(sample(metric, "strata", rep, 0, ms));
        }
        println!("bench: store {metric} (ms): {}", times.join(" "));
    }
    Ok(samples)
}

/// Bump when the images store is filled differently: the cached one is then rebuilt.
const IMAGES_VERSION: u32 = 1;

fn image_tag(i: usize) -> String {
    format!("bench/img{i:04}:v1")
}

/// The store of `scale.images` images, cached under the bench cache (filling it takes a
/// minute: one process and one sync per import). The cache is keyed by the store format
/// the strata binary writes, and is used only when this binary's `check` passes on it and
/// it lists every image; otherwise it is rebuilt. The queries only read it.
fn images_store<'a>(strata: &'a Path, scratch: &Path, scale: &StoreScale) -> Result<Store<'a>> {
    let dir =
        Path::new(data::CACHE_ROOT).join(format!("v{IMAGES_VERSION}-images-{}", scale.images));
    let store = Store {
        strata,
        root: dir.join("root"),
    };
    let stamp = format!(
        "v{IMAGES_VERSION} {} images, {}",
        scale.images,
        store_format(strata, scratch)?
    );
    if data::is_current(&dir, &stamp) {
        match check_images(&store, scale) {
            Ok(()) => return Ok(store),
            Err(e) => println!("bench: the cached images store is unusable ({e}): rebuilding it"),
        }
    }
    println!(
        "bench: store images: importing {} images into {} (once)",
        scale.images,
        dir.display()
    );
    let start = Instant::now();
    data::regenerate(&dir, &stamp, |d| {
        let src = d.join("src");
        fs::create_dir(&src).map_err(|e| format!("{}: {e}", src.display()))?;
        let src_arg = src.display().to_string();
        for i in 0..scale.images {
            // Each image its own layer: a store of 1,000 distinct images, not 1,000 tags.
            fs::write(src.join("n"), format!("image {i}\n"))
                .map_err(|e| format!("{}: {e}", src.display()))?;
            store.out(&["import", &src_arg, &image_tag(i)])?;
        }
        fs::remove_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))
    })?;
    println!(
        "bench: store images: imported {} images in {:.1} s",
        scale.images,
        start.elapsed().as_secs_f64()
    );
    check_images(&store, scale)?;
    Ok(store)
}

/// The format marker of a store the strata binary makes from nothing (in `scratch`).
fn store_format(strata: &Path, scratch: &Path) -> Result<String> {
    let root = scratch.join("store-format");
    remove_store(&root, &root.join("mnt"))?;
    let probe = Store {
        strata,
        root: root.clone(),
    };
    let r = probe.out(&["images"]).and_then(|_| {
        let marker = root.join("strata-store");
        fs::read_to_string(&marker).map_err(|e| format!("{}: {e}", marker.display()))
    });
    remove_store(&root, &root.join("mnt"))?;
    Ok(r?.trim().to_string())
}

/// The store passes `strata check`, lists every image and finds the tag the queries use.
fn check_images(store: &Store, scale: &StoreScale) -> Result {
    store.out(&["check"])?;
    let listed = store.out(&["images"])?.lines().count();
    if listed != scale.images + 1 {
        return Err(format!(
            "strata images listed {} lines, expected {} images and the header",
            listed, scale.images
        ));
    }
    let tag = image_tag(scale.images / 2);
    let inspect = store.out(&["inspect", &tag])?;
    if !inspect.contains(&tag) {
        return Err(format!("strata inspect {tag} does not name it: {inspect}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_adds_up_to_its_size() {
        for s in [StoreScale::full(), StoreScale::quick()] {
            let sizes = s.sizes();
            assert_eq!(sizes.len(), s.files);
            let total: u64 = sizes.iter().sum();
            let want = s.mib << 20;
            assert!(total.abs_diff(want) < want / 100, "{total} vs {want}");
            assert!(sizes
                .iter()
                .all(|n| n.abs_diff(total / s.files as u64) <= 9 * 1024));
        }
        assert_eq!(StoreScale::full().tree_label(), "1.00 GiB in 10,000 files");
    }

    #[test]
    fn tree_paths_spread_over_the_directories() {
        assert_eq!(tree_path(0), "d000/f00000.bin");
        assert_eq!(tree_path(9999), "d099/f09999.bin");
        assert_eq!(tree_path(101), "d001/f00101.bin");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
