//! The kernel-differential test: random operation sequences over random layer stacks, run
//! on a strata mount and on a kernel overlayfs mount of identical copies of the layers,
//! compared after every step (result or errno) and at the end (the visible trees, then
//! the trees the kernel shows of each side's upper). A divergence is shrunk to a short
//! reproducer printed as a ready-to-paste regression test.
//!
//! - `rng`: the seeded generator; `layers`: layer stacks as text, generated and made real;
//!   `ops`: operations as text; `exec`: running them on one mount; `gen`: the random
//!   operation generator; `compare`: what must be equal and the accepted differences;
//!   `shrink`: delta debugging of a diverging case.
//! - The kernel options are [`kernel_opts`]: [`KERNEL_OPTS`] (what strata claims to match
//!   today) unless `STRATA_DIFFTEST_KERNEL_OPTS` says otherwise.
//! - Everything is made below `/tmp/strata-test-difftest-*` and every mount is undone by a
//!   guard, also when a step panics.

pub mod compare;
pub mod exec;
pub mod gen;
pub mod layers;
pub mod ops;
pub mod rng;
pub mod shrink;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, CWD};

use crate::common::{
    require_root_and_fuse, strata, with_test_opts, KernelMount, StrataMount, KERNEL_OPTS,
};
use compare::Verdict;
use exec::Side;
use layers::{Entry, Layout};
use ops::Step;
use ops::{Op, RenameFlag};
use rng::Rng;

/// The kernel overlayfs options the kernel side mounts with: `STRATA_DIFFTEST_KERNEL_OPTS`,
/// else [`KERNEL_OPTS`] (no redirects, index, metacopy or xino: the features strata
/// implements today). Change this as strata gains `redirect_dir`, `index`, `metacopy`.
pub fn kernel_opts() -> String {
    std::env::var("STRATA_DIFFTEST_KERNEL_OPTS").unwrap_or_else(|_| KERNEL_OPTS.to_string())
}

/// Mount flags for the kernel side: strata's defaults (`nodev,suid,exec`), so that opening
/// a device node made by a step is refused on both sides.
pub const KERNEL_MOUNT_FLAGS: &str = "nodev";

/// A layer stack and the steps run on it.
#[derive(Clone, Debug)]
pub struct Case {
    pub layers: Vec<Entry>,
    pub steps: Vec<Step>,
}

/// Where and how strata and the kernel first disagreed.
#[derive(Clone, Debug)]
pub struct Divergence {
    /// Which kind of divergence, kept while shrinking: `step:OP:STRATA/KERNEL`,
    /// `initial:FIELD`, `final:FIELD`, `remount:FIELD`, `mount`.
    pub sig: String,
    /// The index of the step, for a step's divergence.
    pub step: Option<usize>,
    pub detail: String,
}

// ---------------------------------------------------------------------------------------
// Totals, printed and appended to target/difftest-stats.txt
// ---------------------------------------------------------------------------------------

static SEQUENCES: AtomicU64 = AtomicU64::new(0);
static STEPS: AtomicU64 = AtomicU64::new(0);

/// Prints the totals of this test binary so far and appends them to the stats file.
pub fn report(test: &str, started: Instant, ok: bool) {
    let acc = compare::TALLY.lock().unwrap().clone();
    let line = format!(
        "{} {test}: {} sequences, {} operations, {:.1} s, kernel options {}, forgiven {acc:?}, {}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        SEQUENCES.load(Ordering::Relaxed),
        STEPS.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        kernel_opts(),
        if ok { "clean" } else { "DIVERGED" }
    );
    eprintln!("difftest: {line}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target.join("difftest-stats.txt"));
    match file {
        Ok(mut f) => {
            if let Err(e) = writeln!(f, "{line}") {
                eprintln!("difftest: writing the stats: {e}");
            }
        }
        Err(e) => eprintln!("difftest: opening the stats file: {e}"),
    }
}

// ---------------------------------------------------------------------------------------
// One run: both sides mounted, steps, the final comparison
// ---------------------------------------------------------------------------------------

/// Both sides of one run. Field order is drop order: descriptors, then mounts, then files.
pub struct Run {
    /// Forgive known strata bugs (see `compare::KNOWN_BUGS`).
    lenient: bool,
    /// An accepted difference left the kernel in a known-wrong state: no more steps, no
    /// final comparison.
    pub stopped: bool,
    s: Side,
    k: Side,
    strata: Option<StrataMount>,
    kernel: Option<KernelMount>,
    s_lay: Layout,
    k_lay: Layout,
    dir: tempfile::TempDir,
}

/// Mounts the kernel's overlay over `lay` with work directory `work`, made empty first
/// unless `keep` (a remount keeps the hard-link index in it).
fn mount_kernel(lay: &Layout, work: &Path, mnt: &Path, keep: bool) -> Result<KernelMount, String> {
    if !keep {
        let _ = fs::remove_dir_all(work);
    }
    fs::create_dir_all(work).unwrap();
    let opts = format!(
        "{KERNEL_MOUNT_FLAGS},lowerdir={},upperdir={},workdir={},{}",
        lay.lowerdir(),
        lay.upper.display(),
        work.display(),
        kernel_opts()
    );
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(mnt)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(KernelMount {
            mnt: mnt.to_path_buf(),
        })
    } else {
        Err(format!(
            "kernel overlay mount -o {opts} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn divergence(sig: String, step: Option<usize>, detail: String) -> Divergence {
    Divergence { sig, step, detail }
}

fn tree_divergence(when: &str, diffs: &[compare::TreeDiff]) -> Option<Divergence> {
    let first = diffs.first()?;
    let shown: Vec<String> = diffs.iter().take(8).map(|d| format!("    {d}")).collect();
    Some(divergence(
        format!("{when}:{}", first.field),
        None,
        format!(
            "{when} trees differ in {} paths:\n{}",
            diffs.len(),
            shown.join("\n")
        ),
    ))
}

impl Run {
    /// Makes the layers twice, mounts strata on one copy and the kernel on the other and
    /// compares the starting trees.
    pub fn start(layers: &[Entry], lenient: bool) -> Result<Run, Divergence> {
        require_root_and_fuse();
        // The names of lower hard links: each `link` entry and its target.
        let hard_links = layers
            .iter()
            .filter(|e| matches!(e.layer, layers::Layer::Lower(_)))
            .filter_map(|e| match &e.kind {
                layers::Kind::Link(target) => Some([e.path.clone(), target.clone()]),
                _ => None,
            })
            .flatten()
            .collect();
        compare::reset_run(hard_links);
        let dir = tempfile::Builder::new()
            .prefix("strata-test-difftest-")
            .tempdir_in("/tmp")
            .unwrap();
        let s_lay = layers::materialize(layers, &dir.path().join("s"));
        let k_lay = layers::materialize(layers, &dir.path().join("k"));
        for side in ["s", "k"] {
            // The mountpoint is one level down, so a symlink `..` at the top of the mount
            // leads to a directory of the test's own.
            fs::create_dir_all(dir.path().join(side).join("box/mnt")).unwrap();
            fs::create_dir_all(dir.path().join(side).join("w")).unwrap();
        }
        let smnt = dir.path().join("s/box/mnt");
        let kmnt = dir.path().join("k/box/mnt");
        let opts = with_test_opts(format!(
            "lowerdir={},upperdir={},workdir={}",
            s_lay.lowerdir(),
            s_lay.upper.display(),
            dir.path().join("s/w").display()
        ));
        let out = strata(&["mount", "-o", &opts, smnt.to_str().unwrap()]);
        if !out.status.success() {
            return Err(divergence(
                "mount".into(),
                None,
                format!(
                    "strata mount -o {opts} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
        let strata = StrataMount::adopt(&smnt);
        let kernel = mount_kernel(&k_lay, &dir.path().join("k/w"), &kmnt, false)
            .unwrap_or_else(|e| panic!("{e}"));
        let run = Run {
            lenient,
            stopped: false,
            s: Side::new(&smnt, false),
            k: Side::new(&kmnt, true),
            strata: Some(strata),
            kernel: Some(kernel),
            s_lay,
            k_lay,
            dir,
        };
        let diffs = compare::trees(
            &compare::snapshot(&smnt, false),
            &compare::snapshot(&kmnt, true),
            Some(&run.s_lay.upper),
            lenient,
        );
        match tree_divergence("initial", &diffs) {
            Some(d) => Err(d),
            None => Ok(run),
        }
    }

    /// What the kernel's mount shows now, for the generator.
    pub fn view(&self) -> gen::View {
        let mut out = Vec::new();
        view_walk(&self.k.root, "", &mut out);
        out
    }

    pub fn slot_kinds(&self) -> Vec<Option<bool>> {
        self.k.slot_kinds()
    }

    /// Runs step `i` on both sides and compares the results.
    pub fn step(&mut self, i: usize, st: &Step) -> Option<Divergence> {
        STEPS.fetch_add(1, Ordering::Relaxed);
        let rs = self.s.run(st);
        let rk = self.k.run(st);
        if let Op::Rename { a, b, flag } = &st.op {
            match (&rs, &rk) {
                (Err(x), Err(y)) if x == y => compare::rename_failed(a, b),
                (Ok(_), Ok(_)) => compare::renamed(a, b, matches!(flag, RenameFlag::Exchange)),
                _ => {}
            }
        }
        let cx = compare::StepCtx {
            lenient: self.lenient,
            s_upper: &self.s_lay.upper,
            // The descriptor's name is gone if it is gone on either side: the kernel can
            // bring an unlinked file back by copying it up over its whiteout.
            slot: st.op.slot().and_then(|i| {
                let s_gone = self.s.slot_name(i).is_some_and(|(_, g)| g);
                self.k.slot_name(i).map(|(p, g)| (p, g || s_gone))
            }),
        };
        match compare::step(st, &rs, &rk, &cx) {
            Verdict::Same => None,
            Verdict::Accepted(why) | Verdict::Known(why) => {
                *compare::TALLY.lock().unwrap().entry(why).or_default() += 1;
                None
            }
            Verdict::AcceptedStop(why) => {
                *compare::TALLY.lock().unwrap().entry(why).or_default() += 1;
                self.stopped = true;
                None
            }
            Verdict::Differ => {
                let class = |r: &exec::Res| match r {
                    Ok(_) => "ok".to_string(),
                    Err(e) => exec::errno_name(*e),
                };
                Some(divergence(
                    format!("step:{}:{}/{}", st.op.name(), class(&rs), class(&rk)),
                    Some(i),
                    format!(
                        "step {i} `{st}`:\n    strata: {}\n    kernel: {}",
                        exec::show(&rs),
                        exec::show(&rk)
                    ),
                ))
            }
        }
    }

    /// Compares the final trees, unmounts, mounts each side's upper with the kernel and
    /// compares those trees.
    pub fn finish(mut self) -> Option<Divergence> {
        if self.stopped {
            return None;
        }
        let s_tree = compare::snapshot(&self.s.root, false);
        let k_tree = compare::snapshot(&self.k.root, true);
        let diffs = compare::trees(&s_tree, &k_tree, Some(&self.s_lay.upper), self.lenient);
        if let Some(d) = tree_divergence("final", &diffs) {
            return Some(d);
        }
        self.s.close_all();
        self.k.close_all();
        drop(self.strata.take());
        drop(self.kernel.take());
        let again = |lay: &Layout, side: &str| -> Result<compare::Snap, String> {
            let mnt = self.dir.path().join(side).join("box/mnt");
            // The same work directory: it holds the hard-link index.
            let _m = mount_kernel(lay, &self.dir.path().join(side).join("w"), &mnt, true)?;
            Ok(compare::snapshot(&mnt, true))
        };
        let s_again = match again(&self.s_lay, "s") {
            Ok(t) => t,
            Err(e) => return Some(divergence("remount:mount".into(), None, e)),
        };
        let k_again = again(&self.k_lay, "k").unwrap_or_else(|e| panic!("{e}"));
        if std::env::var_os("STRATA_DIFFTEST_KEEP").is_some() {
            eprintln!("difftest: keeping {}", self.dir.path().display());
            self.dir.disable_cleanup(true);
        }
        let diffs = compare::trees(&s_again, &k_again, None, false);
        tree_divergence("remount", &diffs).map(|mut d| {
            d.detail = format!(
                "the kernel shows strata's upper (\"strata\") and its own (\"kernel\") differently: {}",
                d.detail
            );
            d
        })
    }
}

fn view_walk(root: &Path, dir: &str, out: &mut gen::View) {
    let Ok(rd) = fs::read_dir(root.join(if dir.is_empty() { "." } else { dir })) else {
        return;
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let rel = if dir.is_empty() {
            n
        } else {
            format!("{dir}/{n}")
        };
        let Ok(st) = rustix::fs::statat(CWD, root.join(&rel), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        let t = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => 'f',
            libc::S_IFDIR => 'd',
            libc::S_IFLNK => 'l',
            _ => 'o',
        };
        out.push((rel.clone(), t));
        if t == 'd' {
            view_walk(root, &rel, out);
        }
    }
}

/// Whether the random runs forgive known strata bugs: yes unless `STRATA_DIFFTEST_STRICT=1`.
pub fn lenient() -> bool {
    std::env::var("STRATA_DIFFTEST_STRICT").map_or(true, |v| v != "1")
}

/// Runs `case`; returns how many steps ran and the first divergence. With `lenient`, known
/// strata bugs are forgiven.
pub fn run_case(case: &Case, lenient: bool) -> (usize, Option<Divergence>) {
    SEQUENCES.fetch_add(1, Ordering::Relaxed);
    let mut run = match Run::start(&case.layers, lenient) {
        Ok(r) => r,
        Err(d) => return (0, Some(d)),
    };
    for (i, st) in case.steps.iter().enumerate() {
        if let Some(d) = run.step(i, st) {
            return (i + 1, Some(d));
        }
        if run.stopped {
            return (i + 1, None);
        }
    }
    (case.steps.len(), run.finish())
}

/// Generates and runs the sequence of `seed`: its layer stack, then 30 to 80 steps, each
/// picked from what the kernel's mount shows at that point.
pub fn random_case(seed: u64) -> (Case, Option<Divergence>) {
    SEQUENCES.fetch_add(1, Ordering::Relaxed);
    let mut r = Rng::new(seed);
    let layers = layers::generate(&mut r);
    let n = r.range(30, 80);
    let mut case = Case {
        layers,
        steps: Vec::new(),
    };
    let mut run = match Run::start(&case.layers, lenient()) {
        Ok(run) => run,
        Err(d) => return (case, Some(d)),
    };
    for i in 0..n {
        let st = gen::step(&mut r, &run.view(), &run.slot_kinds(), lenient());
        case.steps.push(st.clone());
        if let Some(d) = run.step(i, &st) {
            return (case, Some(d));
        }
        if run.stopped {
            break;
        }
    }
    let d = run.finish();
    (case, d)
}

/// How long a shrink may take: `STRATA_DIFFTEST_SHRINK_SECONDS`, default 120.
fn shrink_budget() -> Duration {
    Duration::from_secs(
        std::env::var("STRATA_DIFFTEST_SHRINK_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(120),
    )
}

/// Runs the sequence of `seed`; on a divergence shrinks it and returns a report with the
/// seed, the divergence and a ready-to-paste regression test.
pub fn check_seed(seed: u64) -> Result<(), String> {
    let (case, div) = random_case(seed);
    let Some(div) = div else { return Ok(()) };
    eprintln!(
        "difftest: seed {seed} diverged after {} steps: {}\ndifftest: shrinking (at most {} s)...",
        case.steps.len(),
        div.detail,
        shrink_budget().as_secs()
    );
    let small = shrink::shrink(&case, &div, Instant::now() + shrink_budget());
    let (_, sdiv) = run_case(&small, lenient());
    let sdiv = sdiv.unwrap_or(div.clone());
    Err(format!(
        "seed {seed} diverged ({}): {}\n\nshrunk to {} layer lines and {} steps:\n{}\n\n{}",
        div.sig,
        div.detail,
        small.layers.len(),
        small.steps.len(),
        sdiv.detail,
        shrink::reproducer(&small, &sdiv, Some(seed))
    ))
}

/// Replays a regression case that must diverge exactly as `sig` says (a documented kernel
/// quirk that the generator avoids); panics if it does not.
pub fn replay_diverging(layers: &[&str], steps: &[&str], sig: &str) {
    let case = Case {
        layers: layers::parse(layers),
        steps: ops::parse(steps),
    };
    let (_, div) = run_case(&case, false);
    match div {
        Some(d) if d.sig == sig => {}
        Some(d) => panic!("expected the divergence {sig}, got {}: {}", d.sig, d.detail),
        None => panic!("expected the divergence {sig}, but strata and the kernel agree"),
    }
}

/// Replays a regression case (layer lines and step lines); panics on a divergence.
pub fn replay(layers: &[&str], steps: &[&str]) {
    let case = Case {
        layers: layers::parse(layers),
        steps: ops::parse(steps),
    };
    let (_, div) = run_case(&case, false);
    if let Some(d) = div {
        panic!("strata and the kernel diverge ({}): {}", d.sig, d.detail);
    }
}
