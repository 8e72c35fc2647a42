//! The results: which measurements exist, their units and targets, the per-system
//! medians and ratios, and the files written under `bench/results/`.
//!
//! A ratio is always strata ÷ the other system in the measurement's own unit. For a
//! time (or memory) lower is better, so a target reads "≤ X"; for a rate (MB/s, IOPS,
//! stats/s) higher is better, so it reads "≥ X". Targets are judged on default strata
//! only; `strata-all` (lower files passed through), when it ran, gets its own column and
//! its own ratio to the kernel, outside the verdicts.
//!
//! The image-store measurements ([`STORE_METRICS`]) have a table of their own: strata
//! against a baseline command (not against the other filesystems), or against an
//! absolute bound where there is no baseline. Each table only ever reads its own rows'
//! samples, so adding one group never changes how the other is shown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::Result;

/// The unit of a measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Secs,
    MBps,
    Iops,
    StatsPerSec,
    MiB,
    Fds,
    Ms,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::Secs => "s",
            Unit::MBps => "MB/s",
            Unit::Iops => "IOPS",
            Unit::StatsPerSec => "stats/s",
            Unit::MiB => "MiB",
            Unit::Fds => "fds",
            Unit::Ms => "ms",
        }
    }

    fn higher_is_better(self) -> bool {
        matches!(self, Unit::MBps | Unit::Iops | Unit::StatsPerSec)
    }

    fn show(self, v: f64) -> String {
        match self {
            Unit::Secs => format!("{v:.3}"),
            Unit::MiB | Unit::Ms => format!("{v:.1}"),
            _ => format!("{v:.0}"),
        }
    }
}

/// What strata must reach for a measurement.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// strata ÷ kernel, in the measurement's unit: at most (times) or at least (rates).
    VsKernel(f64),
    /// strata's own value at most this (memory, descriptors left open).
    AtMost(f64),
    /// strata ÷ the store table's baseline command, at most this (a time).
    VsBaseline(f64),
    /// strata's own value strictly below this (a response time).
    Below(f64),
    None,
}

/// One measurement a workload reports.
pub struct Metric {
    pub name: &'static str,
    pub what: &'static str,
    pub unit: Unit,
    pub target: Target,
}

const fn m(name: &'static str, what: &'static str, unit: Unit, target: Target) -> Metric {
    Metric {
        name,
        what,
        unit,
        target,
    }
}

/// Every measurement, in table order.
pub const METRICS: &[Metric] = &[
    m(
        "stat-cold",
        "stat every entry, cold",
        Unit::Secs,
        Target::VsKernel(1.5),
    ),
    m(
        "stat-warm",
        "stat every entry, warm",
        Unit::Secs,
        Target::VsKernel(1.1),
    ),
    m(
        "list-cold",
        "list the 50k directory, cold",
        Unit::Secs,
        Target::VsKernel(2.0),
    ),
    m(
        "list-warm",
        "list the 50k directory, warm",
        Unit::Secs,
        Target::VsKernel(2.0),
    ),
    m(
        "readall",
        "read every file (tar c)",
        Unit::MBps,
        Target::VsKernel(0.95),
    ),
    m(
        "seqread-cold",
        "sequential read 1 file, cold",
        Unit::MBps,
        Target::VsKernel(0.95),
    ),
    m(
        "seqread-warm",
        "sequential read 1 file, warm",
        Unit::MBps,
        Target::VsKernel(0.95),
    ),
    m(
        "seqwrite",
        "sequential write + fsync",
        Unit::MBps,
        Target::VsKernel(0.95),
    ),
    m(
        "copyup",
        "copy-up of the big file (append 1 byte)",
        Unit::Secs,
        Target::VsKernel(1.1),
    ),
    m(
        "randread",
        "random 4k reads (fio)",
        Unit::Iops,
        Target::VsKernel(0.95),
    ),
    m(
        "create",
        "create small files",
        Unit::Secs,
        Target::VsKernel(2.0),
    ),
    m(
        "rmrf",
        "rm -rf of a lower tree",
        Unit::Secs,
        Target::VsKernel(3.0),
    ),
    m(
        "untar",
        "untar small files",
        Unit::Secs,
        Target::VsKernel(2.0),
    ),
    m(
        "pstat-cold",
        "parallel stats, 2 processes, cold",
        Unit::StatsPerSec,
        Target::VsKernel(0.6),
    ),
    m(
        "pstat-hot",
        "parallel stats, 2 processes, hot",
        Unit::StatsPerSec,
        Target::VsKernel(0.6),
    ),
    m(
        "walk-1m",
        "stat walk of the 1M-entry layer (quick: 50k), cold",
        Unit::Secs,
        Target::None,
    ),
    m(
        "rss-1m",
        "daemon peak RSS after that walk (target: 1M)",
        Unit::MiB,
        Target::AtMost(150.0),
    ),
    m(
        "fds-base",
        "daemon open fds after mounting",
        Unit::Fds,
        Target::None,
    ),
    m(
        "fds-open",
        "daemon open fds, 1000 files held open",
        Unit::Fds,
        Target::None,
    ),
    m(
        "fds-left",
        "daemon fds above baseline after closing",
        Unit::Fds,
        Target::AtMost(4.0),
    ),
];

/// The image-store measurements, in table order. `{tree}` and `{images}` in the
/// descriptions stand for the run's sizes (see [`store_table`]).
pub const STORE_METRICS: &[Metric] = &[
    m(
        "commit-warm",
        "commit of {tree} (strata commit), warm",
        Unit::Secs,
        Target::VsBaseline(1.5),
    ),
    m(
        "commit-cold",
        "commit of {tree} (strata commit), cold",
        Unit::Secs,
        Target::VsBaseline(1.5),
    ),
    m(
        "images",
        "strata images, {images} images",
        Unit::Ms,
        Target::Below(50.0),
    ),
    m(
        "inspect",
        "strata inspect TAG, {images} images",
        Unit::Ms,
        Target::Below(50.0),
    ),
];

/// The system name of the store table's baseline samples (`tar c | sha256sum`).
pub const BASELINE: &str = "baseline";

/// The system name of the store table's informational second baseline (`tar c | openssl
/// dgst -sha256`): the same work with a hasher that uses the CPU's SHA instructions.
pub const OPENSSL: &str = "baseline-openssl";

/// One raw measurement.
#[derive(Clone, Debug)]
pub struct Sample {
    pub metric: &'static str,
    pub system: &'static str,
    pub rep: usize,
    /// Position of the system in this repetition's order (0 = first).
    pub slot: usize,
    pub value: f64,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    })
}

/// The samples per (metric, system), of the metrics in `metrics` only.
fn grouped(
    samples: &[Sample],
    metrics: &[Metric],
) -> BTreeMap<(&'static str, &'static str), Vec<f64>> {
    let mut all: BTreeMap<(&'static str, &'static str), Vec<f64>> = BTreeMap::new();
    for s in samples {
        if metrics.iter().any(|m| m.name == s.metric) {
            all.entry((s.metric, s.system)).or_default().push(s.value);
        }
    }
    all
}

/// The median of every (metric, system) group.
fn medians(
    all: &BTreeMap<(&'static str, &'static str), Vec<f64>>,
) -> BTreeMap<(&'static str, &'static str), f64> {
    all.iter()
        .filter_map(|(k, v)| median(v.clone()).map(|m| (*k, m)))
        .collect()
}

/// True when some sample is of one of `metrics` (the table of those has rows).
pub fn has_rows(samples: &[Sample], metrics: &[Metric]) -> bool {
    samples
        .iter()
        .any(|s| metrics.iter().any(|m| m.name == s.metric))
}

/// The system whose extra column the table shows where it ran.
const ALL_PASSTHROUGH: &str = "strata-all";

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**missed**"
    }
}

/// `a ÷ b` when both ran and `b` is positive.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A ratio as a table shows it (`–` when there is none).
fn show_ratio(r: Option<f64>) -> String {
    r.map_or("–".to_string(), |r| format!("{r:.2}"))
}

/// How many runs the most measured system of `metric` had.
fn runs(all: &BTreeMap<(&'static str, &'static str), Vec<f64>>, metric: &str) -> usize {
    all.iter()
        .filter(|((m, _), _)| *m == metric)
        .map(|(_, v)| v.len())
        .max()
        .unwrap_or(0)
}

impl Metric {
    /// A median as a table shows it (`–` when the system did not run).
    fn cell(&self, v: Option<f64>) -> String {
        v.map_or("–".to_string(), |v| self.unit.show(v))
    }

    /// The target as the table states it and strata's verdict on it. `strata`: strata's
    /// median; `ratio`: strata ÷ the table's reference (the kernel, or the store table's
    /// baseline), for the targets that are ratios.
    fn judge(&self, strata: Option<f64>, ratio: Option<f64>) -> (String, &'static str) {
        let hib = self.unit.higher_is_better();
        let label = self.unit.label();
        match self.target {
            Target::VsKernel(x) => {
                let sign = if hib { "≥" } else { "≤" };
                let v = ratio.map_or("–", |r| met(if hib { r >= x } else { r <= x }));
                (format!("{sign} {x}×"), v)
            }
            Target::VsBaseline(x) => (format!("≤ {x}×"), ratio.map_or("–", |r| met(r <= x))),
            Target::AtMost(x) => (
                format!("≤ {} {label}", self.unit.show(x)),
                strata.map_or("–", |v| met(v <= x)),
            ),
            Target::Below(x) => (format!("< {x} {label}"), strata.map_or("–", |v| met(v < x))),
            Target::None => (String::new(), ""),
        }
    }
}

/// The Markdown table of medians, ratios and targets (for strata), with a `strata-all`
/// column and its ratio to the kernel at the end when that system ran. A row measured
/// fewer times than the run's repetitions says how many times.
pub fn table(samples: &[Sample]) -> String {
    let all = grouped(samples, METRICS);
    let med = medians(&all);
    let get = |metric: &str, sys: &str| med.get(&(metric, sys)).copied();
    let reps = all.values().map(Vec::len).max().unwrap_or(0);
    let with_all = samples.iter().any(|s| s.system == ALL_PASSTHROUGH);
    let mut t = String::from(
        "| workload | unit | strata | kernel | fuse-overlayfs | strata÷kernel | target (strata) | vs kernel | strata÷f-o | faster than f-o |",
    );
    let mut rule = String::from("|---|---|---:|---:|---:|---:|---|---|---:|---|");
    if with_all {
        t.push_str(" strata-all | strata-all÷kernel |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(t, "\n{rule}");
    for mt in METRICS {
        let (s, k, f, a) = (
            get(mt.name, "strata"),
            get(mt.name, "kernel"),
            get(mt.name, "fuse-overlayfs"),
            get(mt.name, ALL_PASSTHROUGH),
        );
        if s.is_none() && k.is_none() && f.is_none() && a.is_none() {
            continue;
        }
        let what = match runs(&all, mt.name) {
            n if n >= reps => mt.what.to_string(),
            1 => format!("{}, 1 run", mt.what),
            n => format!("{}, {n} runs", mt.what),
        };
        let rk = ratio(s, k);
        let (target, verdict) = mt.judge(s, rk);
        let hib = mt.unit.higher_is_better();
        let beats = match (mt.unit, s, f) {
            (Unit::Fds, ..) => "",
            (_, Some(s), Some(f)) => match if hib { s > f } else { s < f } {
                true => "yes",
                false => "**no**",
            },
            _ => "–",
        };
        let _ = write!(
            t,
            "| {what} | {} | {} | {} | {} | {} | {target} | {verdict} | {} | {beats} |",
            mt.unit.label(),
            mt.cell(s),
            mt.cell(k),
            mt.cell(f),
            show_ratio(rk),
            show_ratio(ratio(s, f)),
        );
        if with_all {
            let _ = write!(t, " {} | {} |", mt.cell(a), show_ratio(ratio(a, k)));
        }
        t.push('\n');
    }
    t
}

/// What the reader must know to read the table: whom the targets judge and, when
/// `strata-all` ran, what it is and what it costs.
pub fn notes(samples: &[Sample]) -> String {
    let mut n = String::from(
        "Targets and verdicts judge default `strata` (`passthrough=on`); ratios are strata ÷ \
         the other system in the row's unit.\n",
    );
    if samples.iter().any(|s| s.system == ALL_PASSTHROUGH) {
        n.push_str(
            "`strata-all` is strata mounted with `passthrough=all` (`–` where it did not run; \
             by default it runs only the data-read rows): it shows what passing lower files \
             through would give, at the documented cost that a descriptor opened on a lower \
             file before another process copies it up keeps reading the lower data, and that \
             opening a lower file for writing while it is open for reading fails with EIO.\n",
        );
    }
    n
}

/// The image-store table: per row strata's median, the baseline's (`–` for the rows
/// judged against an absolute bound), their ratio, the target and the verdict. `tree`
/// and `images` describe the run's sizes ("1.00 GiB in 10,000 files", "1,000").
pub fn store_table(samples: &[Sample], tree: &str, images: &str) -> String {
    let all = grouped(samples, STORE_METRICS);
    let med = medians(&all);
    let get = |metric: &str, sys: &str| med.get(&(metric, sys)).copied();
    let mut t = String::from(
        "| workload | unit | strata | baseline | strata÷baseline | target | met | \
         openssl baseline (info) | strata÷openssl |\n\
         |---|---|---:|---:|---:|---|---|---:|---:|\n",
    );
    for mt in STORE_METRICS {
        let (s, b, o) = (
            get(mt.name, "strata"),
            get(mt.name, BASELINE),
            get(mt.name, OPENSSL),
        );
        if s.is_none() && b.is_none() && o.is_none() {
            continue;
        }
        let what = mt.what.replace("{tree}", tree).replace("{images}", images);
        let rb = ratio(s, b);
        let (target, verdict) = mt.judge(s, rb);
        let _ = writeln!(
            t,
            "| {what}, median of {} | {} | {} | {} | {} | {target} | {verdict} | {} | {} |",
            runs(&all, mt.name),
            mt.unit.label(),
            mt.cell(s),
            mt.cell(b),
            show_ratio(rb),
            mt.cell(o),
            show_ratio(ratio(s, o)),
        );
    }
    t
}

/// What the reader must know to read the store table.
pub fn store_notes() -> String {
    "Baseline: `tar c -C UPPER . | sha256sum` (bash, `pipefail`) on the very directory the \
     commit reads (the mount's upper), in the same cache state: warm is the tree read just \
     before, cold is after `sync; echo 3 > /proc/sys/vm/drop_caches`; the three commands \
     take turns going first. Times are the wall time of the process (`strata commit`, or \
     bash running the pipeline). The openssl baseline is the same pipeline hashing with \
     `openssl dgst -sha256`, which uses the CPU's SHA instructions where coreutils' \
     `sha256sum` may not: information, not judged. The `images` and `inspect` rows are \
     judged against an absolute bound, not a baseline (`–`).\n"
        .to_string()
}

/// The raw samples as CSV.
pub fn csv(samples: &[Sample]) -> String {
    let mut out = String::from("metric,unit,system,rep,slot,value\n");
    for s in samples {
        let unit = METRICS
            .iter()
            .chain(STORE_METRICS)
            .find(|m| m.name == s.metric)
            .map_or("", |m| m.unit.label());
        let _ = writeln!(
            out,
            "{},{unit},{},{},{},{}",
            s.metric, s.system, s.rep, s.slot, s.value
        );
    }
    out
}

/// Writes `NAME.md` (header, then `body`: the tables and their notes) and `NAME.csv`
/// (raw samples) into `dir`, and both again as `latest` when given; returns the Markdown
/// path.
pub fn write(
    dir: &Path,
    name: &str,
    header: &str,
    body: &str,
    samples: &[Sample],
    latest: Option<&str>,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let md = format!(
        "{header}\n{body}\nRaw samples: `{name}.csv` (one line per run; `slot` is the system's \
         position in that repetition's order).\n"
    );
    let md_path = dir.join(format!("{name}.md"));
    let csv_path = dir.join(format!("{name}.csv"));
    let raw = csv(samples);
    fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    fs::write(&csv_path, &raw).map_err(|e| format!("{}: {e}", csv_path.display()))?;
    if let Some(l) = latest {
        // The Markdown names its CSV: the latest copy names the latest CSV.
        let md = md.replace(&format!("`{name}.csv`"), &format!("`{l}.csv`"));
        for (ext, body) in [("md", &md), ("csv", &raw)] {
            let p = dir.join(format!("{l}.{ext}"));
            fs::write(&p, body).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    Ok(md_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(metric: &'static str, system: &'static str, value: f64) -> Sample {
        Sample {
            metric,
            system,
            rep: 0,
            slot: 0,
            value,
        }
    }

    /// One sample per value, the n-th of repetition n.
    fn reps(metric: &'static str, system: &'static str, values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(rep, v)| Sample {
                rep,
                ..s(metric, system, *v)
            })
            .collect()
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn ratios_read_in_the_unit_direction() {
        let t = table(&[
            s("stat-cold", "strata", 3.0),
            s("stat-cold", "kernel", 1.0),
            s("stat-cold", "fuse-overlayfs", 4.0),
            s("seqread-cold", "strata", 900.0),
            s("seqread-cold", "kernel", 1000.0),
            s("seqread-cold", "fuse-overlayfs", 500.0),
        ]);
        let stat = t
            .lines()
            .find(|l| l.contains("stat every entry, cold"))
            .unwrap();
        assert!(
            stat.contains("| 3.00 | ≤ 1.5× | **missed** | 0.75 | yes |"),
            "{stat}"
        );
        let read = t
            .lines()
            .find(|l| l.contains("sequential read 1 file, cold"))
            .unwrap();
        assert!(
            read.contains("| 0.90 | ≥ 0.95× | **missed** | 1.80 | yes |"),
            "{read}"
        );
        assert!(!t.contains("warm"), "rows without samples are left out");
        assert!(
            !t.contains("strata-all"),
            "no column for a system that did not run"
        );
    }

    #[test]
    fn strata_all_has_a_column_where_it_ran() {
        let samples = [
            reps("seqread-cold", "strata", &[800.0; 3]),
            reps("seqread-cold", "kernel", &[1000.0; 3]),
            reps("seqread-cold", "strata-all", &[990.0; 3]),
            reps("stat-cold", "strata", &[2.0; 3]),
        ]
        .concat();
        let t = table(&samples);
        assert!(t
            .lines()
            .next()
            .unwrap()
            .ends_with("| strata-all | strata-all÷kernel |"));
        let read = t.lines().find(|l| l.contains("sequential read")).unwrap();
        assert!(
            read.ends_with("| 0.80 | ≥ 0.95× | **missed** | – | – | 990 | 0.99 |"),
            "{read}"
        );
        let stat = t.lines().find(|l| l.contains("stat every entry")).unwrap();
        assert!(stat.ends_with("| – | – |"), "{stat}");
        assert!(notes(&samples).contains("passthrough=all"));
    }

    #[test]
    fn the_store_table_judges_against_the_baseline_and_the_bound() {
        let samples = [
            reps("commit-warm", "strata", &[9.0, 12.0, 10.0]),
            reps("commit-warm", BASELINE, &[6.0, 7.0, 6.5]),
            reps("commit-warm", OPENSSL, &[1.0, 2.0, 1.5]),
            reps("commit-cold", "strata", &[8.0]),
            reps("commit-cold", BASELINE, &[5.0]),
            reps("images", "strata", &[40.0, 60.0, 45.0]),
            reps("inspect", "strata", &[50.0]),
            // Filesystem samples run alongside: they stay out of the store table.
            reps("stat-cold", "strata", &[2.0]),
        ]
        .concat();
        let t = store_table(&samples, "1.00 GiB in 10,000 files", "1,000");
        let row = |what: &str| t.lines().find(|l| l.contains(what)).unwrap().to_string();
        assert_eq!(
            row("warm"),
            "| commit of 1.00 GiB in 10,000 files (strata commit), warm, median of 3 | s \
             | 10.000 | 6.500 | 1.54 | ≤ 1.5× | **missed** | 1.500 | 6.67 |"
        );
        assert!(row("cold").ends_with("| 1.60 | ≤ 1.5× | **missed** | – | – |"));
        assert_eq!(
            row("strata images"),
            "| strata images, 1,000 images, median of 3 | ms | 45.0 | – | – | < 50 ms | met | – | – |"
        );
        assert!(
            row("inspect").contains("| 50.0 | – | – | < 50 ms | **missed** |"),
            "the bound is strict"
        );
        assert!(!t.contains("stat"));
    }

    #[test]
    fn store_samples_stay_out_of_the_filesystem_table() {
        let samples = [
            vec![s("stat-cold", "strata", 2.0), s("stat-cold", "kernel", 1.0)],
            reps("images", "strata", &[10.0; 20]),
        ]
        .concat();
        let t = table(&samples);
        assert!(t.contains("| stat every entry, cold |"), "{t}");
        assert!(!t.contains("images"));
        assert!(has_rows(&samples, STORE_METRICS) && has_rows(&samples, METRICS));
        assert!(!has_rows(&samples[..2], STORE_METRICS));
        assert!(csv(&samples).contains("images,ms,strata,19,0,10"));
    }

    #[test]
    fn rows_measured_once_say_so() {
        let samples = [
            vec![s("walk-1m", "strata", 40.0), s("walk-1m", "kernel", 20.0)],
            reps("stat-cold", "strata", &[2.0; 3]),
        ]
        .concat();
        let t = table(&samples);
        assert!(t.contains("| stat walk of the 1M-entry layer (quick: 50k), cold, 1 run |"));
        assert!(t.contains("| stat every entry, cold |"));
    }
}
