//! Layer stacks of the differential test: one entry per line of text, generated from a
//! seed and made real twice (once for each mount) so both sides start from identical
//! layers: modes, owners, times, xattrs, hard links, holes, whiteouts and opaque dirs.
//!
//! A line is `LAYER KIND PATH [ATTR...]`, `LAYER` being `L0` (top lower), `L1`, ... or `U`
//! (the starting upper). Kinds: `file`, `dir`, `sym`, `link`, `fifo`, `wh` (a 0/0
//! character device whiteout). Attributes: `m=MODE` (octal), `o=UID:GID`, `t=SECS`
//! (atime and mtime), `x=NAME=HEX` (an xattr), `d=LEN:SEED` (contents), `at=OFF` (the
//! contents start after a hole), `opq` (a `trusted.overlay.opaque=y` dir), `->TARGET` (a
//! symlink's target), `=PATH` (a hard link to PATH in the same layer). Missing parents are
//! made as plain directories; an entry that cannot be made (its parent is not a directory,
//! its name is taken, its link target is missing) is skipped, so any subset of a stack's
//! lines is a stack too, which the shrinker relies on.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

use super::rng::{self, Rng};

/// Which layer an entry is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    Lower(usize),
    Upper,
}

/// Contents made from a seed: `len` bytes, see [`rng::bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Data {
    pub len: usize,
    pub seed: u64,
}

impl Data {
    pub fn bytes(&self) -> Vec<u8> {
        rng::bytes(self.len, self.seed)
    }

    pub fn parse(s: &str) -> Result<Data, String> {
        let (l, sd) = s
            .split_once(':')
            .ok_or(format!("data {s:?}: want LEN:SEED"))?;
        Ok(Data {
            len: l.parse().map_err(|e| format!("data {s:?}: {e}"))?,
            seed: sd.parse().map_err(|e| format!("data {s:?}: {e}"))?,
        })
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.len, self.seed)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File { at: u64, data: Data },
    Dir { opaque: bool },
    Symlink(String),
    Link(String),
    Fifo,
    Whiteout,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub layer: Layer,
    pub path: String,
    pub kind: Kind,
    pub mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
    pub time: Option<i64>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.layer {
            Layer::Lower(n) => write!(f, "L{n}")?,
            Layer::Upper => write!(f, "U")?,
        }
        let kind = match &self.kind {
            Kind::File { .. } => "file",
            Kind::Dir { .. } => "dir",
            Kind::Symlink(_) => "sym",
            Kind::Link(_) => "link",
            Kind::Fifo => "fifo",
            Kind::Whiteout => "wh",
        };
        write!(f, " {kind} {}", self.path)?;
        match &self.kind {
            Kind::File { at, data } => {
                if *at > 0 {
                    write!(f, " at={at}")?;
                }
                write!(f, " d={data}")?;
            }
            Kind::Dir { opaque: true } => write!(f, " opq")?,
            Kind::Symlink(t) => write!(f, " ->{t}")?,
            Kind::Link(t) => write!(f, " ={t}")?,
            _ => {}
        }
        if let Some(m) = self.mode {
            write!(f, " m={m:o}")?;
        }
        if let Some((u, g)) = self.owner {
            write!(f, " o={u}:{g}")?;
        }
        for (n, v) in &self.xattrs {
            write!(f, " x={n}={}", rng::hex(v))?;
        }
        if let Some(t) = self.time {
            write!(f, " t={t}")?;
        }
        Ok(())
    }
}

impl Entry {
    pub fn parse(line: &str) -> Result<Entry, String> {
        let bad = |why: &str| format!("layer line {line:?}: {why}");
        let mut w = line.split_whitespace();
        let layer = match w.next() {
            Some("U") => Layer::Upper,
            Some(l) if l.starts_with('L') => {
                Layer::Lower(l[1..].parse().map_err(|_| bad("bad layer"))?)
            }
            _ => return Err(bad("want L<n> or U first")),
        };
        let kind = w.next().ok_or_else(|| bad("no kind"))?;
        let path = w.next().ok_or_else(|| bad("no path"))?.to_string();
        let mut e = Entry {
            layer,
            path,
            kind: Kind::Whiteout,
            mode: None,
            owner: None,
            time: None,
            xattrs: Vec::new(),
        };
        let mut at = 0;
        let mut data = Data { len: 0, seed: 0 };
        let mut opaque = false;
        let mut target = None;
        for a in w {
            if a == "opq" {
                opaque = true;
            } else if let Some(t) = a.strip_prefix("->") {
                target = Some(t.to_string());
            } else if let Some(v) = a.strip_prefix("m=") {
                e.mode = Some(u32::from_str_radix(v, 8).map_err(|_| bad("mode"))?);
            } else if let Some(v) = a.strip_prefix("o=") {
                let (u, g) = v.split_once(':').ok_or_else(|| bad("owner"))?;
                e.owner = Some((
                    u.parse().map_err(|_| bad("uid"))?,
                    g.parse().map_err(|_| bad("gid"))?,
                ));
            } else if let Some(v) = a.strip_prefix("t=") {
                e.time = Some(v.parse().map_err(|_| bad("time"))?);
            } else if let Some(v) = a.strip_prefix("x=") {
                let (n, h) = v.split_once('=').ok_or_else(|| bad("xattr"))?;
                e.xattrs.push((n.to_string(), rng::unhex(h)?));
            } else if let Some(v) = a.strip_prefix("d=") {
                data = Data::parse(v)?;
            } else if let Some(v) = a.strip_prefix("at=") {
                at = v.parse().map_err(|_| bad("at"))?;
            } else if let Some(t) = a.strip_prefix('=') {
                target = Some(t.to_string());
            } else {
                return Err(bad(&format!("unknown attribute {a:?}")));
            }
        }
        e.kind = match kind {
            "file" => Kind::File { at, data },
            "dir" => Kind::Dir { opaque },
            "sym" => Kind::Symlink(target.ok_or_else(|| bad("no ->TARGET"))?),
            "link" => Kind::Link(target.ok_or_else(|| bad("no =PATH"))?),
            "fifo" => Kind::Fifo,
            "wh" => Kind::Whiteout,
            _ => return Err(bad("unknown kind")),
        };
        Ok(e)
    }
}

/// Parses a whole stack.
pub fn parse(lines: &[&str]) -> Vec<Entry> {
    lines
        .iter()
        .map(|l| Entry::parse(l).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// The directories of one side: lowers top first, the upper.
#[derive(Clone, Debug)]
pub struct Layout {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
}

impl Layout {
    pub fn lowerdir(&self) -> String {
        self.lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// How many lower layers `entries` has (at least one).
pub fn lower_count(entries: &[Entry]) -> usize {
    entries
        .iter()
        .filter_map(|e| match e.layer {
            Layer::Lower(n) => Some(n + 1),
            Layer::Upper => None,
        })
        .max()
        .unwrap_or(1)
}

/// Time of the directories an entry's path needs (2001-09-09): old, like every time in a
/// layer, so a copy-up that forgets to keep times shows.
const PARENT_TIME: i64 = 1_000_000_000;

/// Makes `entries` real below `root` (`root/l0`, ..., `root/u`).
pub fn materialize(entries: &[Entry], root: &Path) -> Layout {
    let n = lower_count(entries);
    let lay = Layout {
        lowers: (0..n).map(|i| root.join(format!("l{i}"))).collect(),
        upper: root.join("u"),
    };
    for d in lay.lowers.iter().chain([&lay.upper]) {
        fs::create_dir_all(d).unwrap();
    }
    let base = |l: Layer| match l {
        Layer::Lower(i) => lay.lowers[i].clone(),
        Layer::Upper => lay.upper.clone(),
    };
    // Every path made, with the time it gets at the end.
    let mut times: BTreeMap<PathBuf, i64> = BTreeMap::new();
    let mut made = Vec::new();
    for e in entries {
        let b = base(e.layer);
        let p = b.join(&e.path);
        if !make_parents(&b, &e.path, &mut times) || fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        let ok = match &e.kind {
            Kind::File { at, data } => {
                let f = fs::File::create(&p).unwrap();
                if data.len > 0 {
                    f.write_all_at(&data.bytes(), *at).unwrap();
                } else if *at > 0 {
                    f.set_len(*at).unwrap();
                }
                true
            }
            Kind::Dir { .. } => {
                fs::create_dir(&p).unwrap();
                true
            }
            Kind::Symlink(t) => {
                std::os::unix::fs::symlink(t, &p).unwrap();
                true
            }
            Kind::Link(t) => {
                let src = b.join(t);
                let usable = fs::symlink_metadata(&src).is_ok_and(|m| !m.is_dir());
                usable && fs::hard_link(&src, &p).is_ok()
            }
            Kind::Fifo => {
                rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o644), 0)
                    .unwrap();
                true
            }
            Kind::Whiteout => {
                rustix::fs::mknodat(CWD, &p, FileType::CharacterDevice, Mode::empty(), 0).unwrap();
                true
            }
        };
        if ok {
            made.push((e, p));
        }
    }
    for (e, p) in &made {
        if matches!(e.kind, Kind::Link(_) | Kind::Whiteout) {
            continue;
        }
        if let Some((u, g)) = e.owner {
            std::os::unix::fs::lchown(p, Some(u), Some(g)).unwrap();
        }
        if let (Some(m), false) = (e.mode, matches!(e.kind, Kind::Symlink(_))) {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
        }
        for (n, v) in &e.xattrs {
            rustix::fs::lsetxattr(p, n.as_str(), v, rustix::fs::XattrFlags::empty())
                .unwrap_or_else(|err| panic!("setxattr {n} on {}: {err}", p.display()));
        }
        if let Kind::Dir { opaque: true } = e.kind {
            rustix::fs::lsetxattr(
                p,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .unwrap();
        }
        if let Some(t) = e.time {
            times.insert(p.clone(), t);
        }
    }
    // Deepest first, so setting a child's time never changes its parent's afterwards.
    let mut all: Vec<(PathBuf, i64)> = times.into_iter().collect();
    all.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, t) in all {
        let ts = Timespec {
            tv_sec: t,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        rustix::fs::utimensat(CWD, &p, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }
    lay
}

/// Makes the missing parents of `rel` below `base`; false when one is not a directory.
fn make_parents(base: &Path, rel: &str, times: &mut BTreeMap<PathBuf, i64>) -> bool {
    let mut p = base.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return false,
            Err(_) => {
                fs::create_dir(&p).unwrap();
                times.insert(p.clone(), PARENT_TIME);
            }
        }
    }
    true
}

/// Names used in layers and by the generated operations.
pub const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f"];
pub const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o444, 0o000, 0o640, 0o4755, 0o2755, 0o6755, 0o2745,
];
pub const DIR_MODES: &[u32] = &[0o755, 0o700, 0o555, 0o1777, 0o2775, 0o711];
pub const IDS: &[u32] = &[0, 0, 1000, 1001, 65534];
pub const SYMLINK_TARGETS: &[&str] = &["a", "b", "../a", "c/d", "nonexist", ".", "..", "e/../a"];
pub const XATTR_NAMES: &[&str] = &["user.x", "user.y", "user.zz", "trusted.t"];
/// 2001..2010: every time in a layer or set by an operation is older than any "now".
pub fn old_time(r: &mut Rng) -> i64 {
    978_307_200 + r.below(283_996_800) as i64
}

/// A random file's contents size.
pub fn data_len(r: &mut Rng) -> usize {
    r.pick(&[0, 1, 7, 100, 4096, 5000, 9000, 70000])
}

/// A random layer stack: 2 to 4 lowers, sometimes a starting upper.
pub fn generate(r: &mut Rng) -> Vec<Entry> {
    let nl = r.range(2, 4);
    let mut out = Vec::new();
    let mut layers: Vec<Layer> = (0..nl).rev().map(Layer::Lower).collect();
    if r.chance(30) {
        layers.push(Layer::Upper);
    }
    for layer in layers {
        let bottom = layer == Layer::Lower(nl - 1);
        // what this layer holds so far: path -> is a directory
        let mut have: BTreeMap<String, bool> = BTreeMap::new();
        let mut files: Vec<String> = Vec::new();
        let count = if layer == Layer::Upper {
            r.range(1, 5)
        } else {
            r.range(3, 16)
        };
        for _ in 0..count {
            let depth = r.pick(&[1, 1, 2, 2, 3]);
            let comps: Vec<&str> = (0..depth).map(|_| r.pick(NAMES)).collect();
            let path = comps.join("/");
            let parents_ok = (1..depth).all(|k| *have.get(&comps[..k].join("/")).unwrap_or(&true));
            if !parents_ok || have.contains_key(&path) {
                continue;
            }
            let mut kinds = vec![
                ("file", 35),
                ("dir", 18),
                ("sym", 9),
                ("link", 8),
                ("fifo", 4),
            ];
            if !bottom {
                kinds.extend([("wh", 12), ("opq", 8)]);
            }
            let mut kind = r.weighted(&kinds);
            if kind == "link" && files.is_empty() {
                kind = "file";
            }
            // A whiteout in the starting upper only where it hides something: below a
            // directory that is upper only, the kernel counts it as an entry (`rmdir` is
            // `ENOTEMPTY`), a state that only offline changes make.
            let hides = depth == 1
                && out.iter().any(|e: &Entry| {
                    e.layer != Layer::Upper && e.path.split('/').next() == Some(comps[0])
                });
            if kind == "wh" && layer == Layer::Upper && !hides {
                kind = "file";
            }
            for k in 1..depth {
                have.insert(comps[..k].join("/"), true);
            }
            let mut e = Entry {
                layer,
                path: path.clone(),
                kind: Kind::Whiteout,
                mode: None,
                owner: None,
                time: None,
                xattrs: Vec::new(),
            };
            e.kind = match kind {
                "file" => {
                    files.push(path.clone());
                    let at = if r.chance(20) {
                        r.pick(&[4096, 100_000])
                    } else {
                        0
                    };
                    Kind::File {
                        at,
                        data: Data {
                            len: data_len(r),
                            seed: r.next_u64() % 1_000_000,
                        },
                    }
                }
                "dir" => Kind::Dir { opaque: false },
                "opq" => Kind::Dir { opaque: true },
                "sym" => Kind::Symlink(r.pick(SYMLINK_TARGETS).to_string()),
                "link" => Kind::Link(files[r.below(files.len())].clone()),
                "fifo" => Kind::Fifo,
                _ => Kind::Whiteout,
            };
            have.insert(path.clone(), matches!(e.kind, Kind::Dir { .. }));
            // attributes (a hard link shares its target's, a whiteout has none)
            if !matches!(e.kind, Kind::Link(_) | Kind::Whiteout) {
                if r.chance(40) {
                    e.owner = Some((r.pick(IDS), r.pick(IDS)));
                }
                match e.kind {
                    Kind::File { .. } => e.mode = Some(r.pick(FILE_MODES)),
                    Kind::Dir { .. } if r.chance(30) => e.mode = Some(r.pick(DIR_MODES)),
                    _ => {}
                }
                if matches!(e.kind, Kind::File { .. } | Kind::Dir { .. }) && r.chance(30) {
                    for _ in 0..r.range(1, 2) {
                        let n = r.pick(XATTR_NAMES).to_string();
                        if !e.xattrs.iter().any(|(x, _)| *x == n) {
                            let len = r.below(20);
                            e.xattrs.push((n, rng::bytes(len, r.next_u64())));
                        }
                    }
                }
                e.time = Some(old_time(r));
            }
            out.push(e);
            // an opaque dir often has something of its own
            if kind == "opq" && depth < 3 && r.chance(50) {
                let child = format!("{path}/{}", r.pick(NAMES));
                have.insert(child.clone(), false);
                out.push(Entry {
                    layer,
                    path: child,
                    kind: Kind::File {
                        at: 0,
                        data: Data {
                            len: data_len(r),
                            seed: r.next_u64() % 1_000_000,
                        },
                    },
                    mode: Some(0o644),
                    owner: None,
                    time: Some(old_time(r)),
                    xattrs: Vec::new(),
                });
            }
        }
    }
    out
}
