//! What the two mounts must agree on, and the differences between strata and the kernel
//! that are accepted (each named, with its reason).
//!
//! After each step the results must be equal. At the end the visible trees must be equal:
//! names, types, modes, owners, sizes (not of directories: the size of a directory depends
//! on the history of its backing directory), content digests, symlink targets, link counts,
//! xattrs other than the overlay's own, times the test set (see `exec::OLD_LIMIT`), and the
//! partition of the paths by inode number: two paths show the same `st_ino` on strata
//! exactly when they do on the kernel. Not compared: `st_blocks` (whether a copy keeps its
//! holes): ext4's delayed allocation makes it depend on writeback timing, on both sides.
//!
//! Accepted differences (the comparator forgives exactly these):
//! - `unlinked-lower-nlink`: `fstat` of a descriptor of a lower file whose name was removed
//!   shows `st_nlink` 0 on strata; the kernel stats the lower file, which still has its link.
//!   Accepted when the descriptor's name is gone on the kernel side.
//! - `sgid-kept-without-group-exec`: a write or truncate by a user outside a file's group
//!   clears its set-gid bit on strata only when the file is group-executable (the FUSE
//!   rule, documented in the README); kernel overlayfs on ext4 clears it always. Accepted
//!   for a regular file that is not group-executable and differs in that bit only. By the
//!   same rule `chown(f, -1, -1)` by such a user succeeds on strata where the kernel
//!   refuses it (`EPERM`: clearing the bit would be a mode change only the owner may make).
//!
//! - `removed-lower-fd-change`: changing metadata (`fchmod`, `fchown`, `futimens`,
//!   `fsetxattr`) through a descriptor of a lower file or directory whose name is gone fails
//!   on both: a lower layer is never written. The kernel tries a copy-up and fails with
//!   `EEXIST` (the whiteout is in the way), `EIO`, `ENOTDIR` or `ENOTEMPTY` (a new directory
//!   with entries took the name); strata answers `ENOENT`.
//!
//! - `kernel-copy-up-over-a-new-name` (a kernel bug, strata is right): changing metadata
//!   through a descriptor of a lower special file (a fifo) whose name was removed, or now
//!   holds another file, succeeds on the kernel, which copies the old file up *over* what
//!   is there now (the new file, or its own whiteout: the removed fifo comes back); strata
//!   answers `ENOENT`. The kernel's state is wrong from there on, so the sequence ends.
//!
//! - `kernel-failed-rename-mtime` (a kernel quirk, strata is right): a rename of a lower
//!   directory that fails (`ENOTEMPTY` from the upper filesystem) after the kernel copied
//!   it up still sets the modification time of its parent on the kernel; strata leaves it.
//!   Accepted for a directory that was the source or target parent of a failed rename.
//!
//! - `hard-link-call-name` (a FUSE limit, documented in the README): FUSE does not say which
//!   name of a file a call came through, so for a lower hard link strata may link another
//!   name than the kernel into the upper, copying up another parent directory; that
//!   directory then reports one link (merged) on one side and its lower count on the
//!   other. Accepted for a directory's link count alone, when the directory holds a name
//!   of a lower hard link of the starting layers.
//!
//! Known strata bugs (found here, not fixed yet) are forgiven by the random and fixed-seed
//! runs so that they keep finding new divergences, but never by the `regress_*` tests that
//! replay them, nor with `STRATA_DIFFTEST_STRICT=1`; see [`KNOWN_BUGS`].
//!
//! Avoided rather than forgiven (the generator never does these): names starting with
//! `.wh.` (strata refuses them with `EINVAL`, they would read back as whiteouts), xattrs
//! named `user.overlay.*` (strata refuses them with `EPERM`: it reads them as overlay
//! metadata) and `trusted.overlay.*`, a whiteout in the starting upper below an upper-only
//! directory (the kernel then refuses `rmdir` of the directory, see `layers::generate`).
//! Kernel listings leave out names that cannot be looked up (see `exec`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use super::exec::{self, Res, StatV, Val};
use super::ops::{Op, Step};
use super::rng;

/// Strata bugs the random runs forgive until they are fixed: (name, the ignored
/// regression test that replays it). Remove an entry when its bug is fixed.
pub const KNOWN_BUGS: &[(&str, &str)] = &[];

/// Whether the random runs steer clear of known bug `name` (they do unless strict).
pub fn avoid(name: &str, lenient: bool) -> bool {
    lenient && KNOWN_BUGS.iter().any(|(n, _)| *n == name)
}

/// How often each accepted difference and known bug was forgiven.
pub static TALLY: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

fn tally(name: &'static str) {
    *TALLY.lock().unwrap().entry(name).or_default() += 1;
}

/// Whether `name` is in [`KNOWN_BUGS`] (so a typo cannot forgive anything).
fn known(name: &'static str) -> Option<&'static str> {
    KNOWN_BUGS.iter().any(|(n, _)| *n == name).then_some(name)
}

/// The accepted difference, if any, that explains `s` (strata) differing from `k`.
fn accepted_stat(s: &StatV, k: &StatV) -> Option<&'static str> {
    let file = k.mode & libc::S_IFMT == libc::S_IFREG;
    let sgid = libc::S_ISGID;
    if file && k.mode & 0o010 == 0 && s.mode == k.mode | sgid && k.mode & sgid == 0 {
        let same = StatV {
            mode: k.mode,
            ..s.clone()
        };
        if same == *k {
            return Some("sgid-kept-without-group-exec");
        }
    }
    None
}

/// Whether strata's upper has a directory at `rel` (then strata serves it merged or upper).
fn upper_dir(s_upper: Option<&Path>, rel: &str) -> bool {
    s_upper.is_some_and(|u| {
        rustix::fs::statat(CWD, u.join(rel), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    })
}

/// The known bug, if any, that explains `s` (strata) differing from `k` (the kernel) for
/// the path `rel` (`None`: no path, as for a descriptor).
fn known_stat(
    s: &StatV,
    k: &StatV,
    rel: Option<&str>,
    s_upper: Option<&Path>,
) -> Option<&'static str> {
    let dir = k.mode & libc::S_IFMT == libc::S_IFDIR;
    // Only where strata's upper has the directory: it is merged, and strata would say 1
    // but for the cached value. (Not copying a directory up at all is another matter.)
    let merged = rel.is_some_and(|r| upper_dir(s_upper, r));
    if dir
        && merged
        && k.nlink == 1
        && s.nlink != 1
        && (StatV {
            nlink: 1,
            ..s.clone()
        }) == *k
    {
        return known("stale-dir-nlink-after-copy-up");
    }
    None
}

/// One path of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub st: StatV,
    pub digest: Option<(usize, u64)>,
    pub target: Option<String>,
    pub xattrs: BTreeMap<String, String>,
    pub ino: u64,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = &self.st;
        write!(
            f,
            "mode={:o} uid={} gid={} size={:?} nlink={} mtime={:?}",
            s.mode, s.uid, s.gid, s.size, s.nlink, s.mtime
        )?;
        if let Some((len, d)) = self.digest {
            write!(f, " data={len}#{d:016x}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " ->{t}")?;
        }
        if !self.xattrs.is_empty() {
            write!(f, " xattrs={:?}", self.xattrs)?;
        }
        Ok(())
    }
}

/// A visible tree: relative path -> what it shows, or the errno of its `lstat`.
pub type Snap = BTreeMap<String, Result<Node, i32>>;

/// Takes a snapshot of everything below `root` (the kernel side leaves out names it lists
/// but cannot look up, see `exec`).
pub fn snapshot(root: &Path, kernel: bool) -> Snap {
    let mut out = Snap::new();
    walk(root, "", kernel, &mut out);
    out
}

fn rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn walk(root: &Path, dir: &str, kernel: bool, out: &mut Snap) {
    let mut side = exec::Side::new(root, kernel);
    let names = match side.run(&Step {
        user: None,
        op: Op::Ls {
            p: if dir.is_empty() {
                ".".into()
            } else {
                dir.into()
            },
        },
    }) {
        Ok(Val::Names(n)) => n,
        Ok(_) => unreachable!(),
        Err(e) => {
            out.insert(rel(dir, "<listing>"), Err(e));
            return;
        }
    };
    for n in names {
        let r = rel(dir, &n);
        let node = node(&root.join(&r));
        let is_dir = matches!(&node, Ok(nd) if nd.st.mode & libc::S_IFMT == libc::S_IFDIR);
        out.insert(r.clone(), node);
        if is_dir {
            walk(root, &r, kernel, out);
        }
    }
}

fn node(p: &Path) -> Result<Node, i32> {
    let e = |e: rustix::io::Errno| e.raw_os_error();
    let st = rustix::fs::statat(CWD, p, AtFlags::SYMLINK_NOFOLLOW).map_err(e)?;
    let fmt = st.st_mode & libc::S_IFMT;
    let mut n = Node {
        st: StatV::of(&st),
        digest: None,
        target: None,
        xattrs: BTreeMap::new(),
        ino: st.st_ino,
    };
    if fmt == libc::S_IFREG {
        let fd = rustix::fs::openat(CWD, p, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())
            .map_err(e)?;
        let mut data = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let k = rustix::io::pread(fd.as_fd(), &mut buf[..], data.len() as u64).map_err(e)?;
            if k == 0 {
                break;
            }
            data.extend_from_slice(&buf[..k]);
        }
        n.digest = Some((data.len(), rng::digest(&data)));
    }
    if fmt == libc::S_IFLNK {
        let t = rustix::fs::readlinkat(CWD, p, Vec::new()).map_err(e)?;
        n.target = Some(t.to_string_lossy().into_owned());
    }
    let mut buf = vec![0u8; 65536];
    let len = rustix::fs::llistxattr(p, &mut buf[..]).map_err(e)?;
    for x in exec::xattr_names(&buf[..len]) {
        if x.starts_with("trusted.overlay.") || x.starts_with("user.overlay.") {
            continue;
        }
        let mut v = vec![0u8; 65536];
        let v = match rustix::fs::lgetxattr(p, x.as_str(), &mut v[..]) {
            Ok(k) => rng::hex(&v[..k]),
            Err(err) => format!("<{}>", exec::errno_name(err.raw_os_error())),
        };
        n.xattrs.insert(x, v);
    }
    Ok(n)
}

/// How a step's two results compare.
pub enum Verdict {
    Same,
    /// Different, but a documented accepted difference (its name).
    Accepted(&'static str),
    /// An accepted difference after which the kernel's state is known to be wrong, so
    /// the sequence ends here (its name).
    AcceptedStop(&'static str),
    /// Different because of a known strata bug (its name in [`KNOWN_BUGS`]).
    Known(&'static str),
    Differ,
}

/// What a step's comparison needs besides the two results.
pub struct StepCtx<'a> {
    /// Forgive known strata bugs.
    pub lenient: bool,
    pub s_upper: &'a Path,
    /// For a step on a descriptor: the path it was opened by, and whether that name no
    /// longer leads to its file on the kernel side.
    pub slot: Option<(String, bool)>,
}

/// Compares the results of `step` on strata (`s`) and the kernel (`k`).
pub fn step(step: &Step, s: &Res, k: &Res, cx: &StepCtx) -> Verdict {
    if s == k {
        return Verdict::Same;
    }
    let gone = cx.slot.as_ref().is_some_and(|(_, g)| *g);
    let fd_change = matches!(
        step.op,
        Op::FChmod { .. } | Op::FChown { .. } | Op::FUtimens { .. } | Op::FSetXattr { .. }
    );
    if let (true, true, Err(libc::ENOENT)) = (fd_change, gone, s) {
        match k {
            Err(libc::EEXIST | libc::EIO | libc::ENOTDIR | libc::ENOTEMPTY) => {
                return Verdict::Accepted("removed-lower-fd-change")
            }
            Ok(_) => return Verdict::AcceptedStop("kernel-copy-up-over-a-new-name"),
            _ => {}
        }
    }
    // chown(-1, -1) by a user who is not root: the kernel's VFS asks to clear the set-gid
    // bit of a file that is not group-executable when the user is outside its group, and
    // only the owner may change the mode (EPERM); FUSE drops that request (the FUSE rule
    // of `sgid-kept-without-group-exec`), so strata is never asked.
    let chown_nothing = matches!(
        step.op,
        Op::Chown {
            uid: None,
            gid: None,
            ..
        } | Op::FChown {
            uid: None,
            gid: None,
            ..
        }
    );
    let non_root = step.user.is_some_and(|(uid, _)| uid != 0);
    if let (true, true, Ok(_), Err(libc::EPERM)) = (chown_nothing, non_root, s, k) {
        return Verdict::Accepted("sgid-kept-without-group-exec");
    }
    if let (Ok(Val::Stat(ss)), Ok(Val::Stat(ks))) = (s, k) {
        let fstat = matches!(step.op, Op::FStat { .. });
        if fstat
            && gone
            && ss.nlink == 0
            && ks.nlink > 0
            && (StatV {
                nlink: 0,
                ..ks.clone()
            }) == *ss
        {
            return Verdict::Accepted("unlinked-lower-nlink");
        }
        if let Some(why) = accepted_stat(ss, ks) {
            return Verdict::Accepted(why);
        }
        let rel = match &step.op {
            Op::Stat { p, .. } => Some(p.as_str()),
            _ => cx.slot.as_ref().map(|(p, _)| p.as_str()),
        };
        if rel.is_some_and(|r| failed_rename_mtime(ss, ks, r)) {
            return Verdict::Accepted("kernel-failed-rename-mtime");
        }
        if rel.is_some_and(|r| hard_link_call_name(ss, ks, r)) {
            return Verdict::Accepted("hard-link-call-name");
        }
        if let (true, Some(bug)) = (cx.lenient, known_stat(ss, ks, rel, Some(cx.s_upper))) {
            return Verdict::Known(bug);
        }
    }
    Verdict::Differ
}

/// A difference between two trees.
#[derive(Clone, Debug)]
pub struct TreeDiff {
    pub path: String,
    /// What differs: `missing`, `extra`, `error`, a field name, or `ino`.
    pub field: &'static str,
    pub strata: String,
    pub kernel: String,
}

impl fmt::Display for TreeDiff {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} ({}):\n      strata: {}\n      kernel: {}",
            self.path, self.field, self.strata, self.kernel
        )
    }
}

fn shown(r: Option<&Result<Node, i32>>) -> String {
    match r {
        None => "absent".into(),
        Some(Err(e)) => exec::errno_name(*e),
        Some(Ok(n)) => n.to_string(),
    }
}

thread_local! {
    /// The parent directories of renames that failed the same way on both sides in the
    /// current run (for `kernel-failed-rename-mtime`).
    static FAILED_RENAME_PARENTS: std::cell::RefCell<BTreeSet<String>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
    /// The names of the lower hard links of the current run's layers (for
    /// `hard-link-call-name`).
    static HARD_LINK_NAMES: std::cell::RefCell<BTreeSet<String>> =
        const { std::cell::RefCell::new(BTreeSet::new()) };
}

/// After a rename of `a` to `b` (or an exchange): the paths noted so far move with it.
pub fn renamed(a: &str, b: &str, exchange: bool) {
    let moved = |p: &str, from: &str, to: &str| -> Option<String> {
        let rest = p.strip_prefix(from)?;
        (rest.is_empty() || rest.starts_with('/')).then(|| format!("{to}{rest}"))
    };
    FAILED_RENAME_PARENTS.with(|f| {
        let mut f = f.borrow_mut();
        let old = std::mem::take(&mut *f);
        for p in old {
            let q = moved(&p, a, b).or_else(|| exchange.then(|| moved(&p, b, a)).flatten());
            f.insert(q.unwrap_or(p));
        }
    });
}

/// Starts a run over layers whose lower hard links have the names `hard_links`: no
/// rename has failed yet.
pub fn reset_run(hard_links: BTreeSet<String>) {
    FAILED_RENAME_PARENTS.with(|f| f.borrow_mut().clear());
    HARD_LINK_NAMES.with(|h| *h.borrow_mut() = hard_links);
}

/// Whether strata's `x` and the kernel's `y` of the directory `rel` differ only in the
/// link count, one side counting it merged (1): see `hard-link-call-name`.
fn hard_link_call_name(x: &StatV, y: &StatV, rel: &str) -> bool {
    let dir = y.mode & libc::S_IFMT == libc::S_IFDIR;
    let only_nlink = StatV {
        nlink: y.nlink,
        ..x.clone()
    } == *y;
    let prefix = format!("{rel}/");
    let holds = HARD_LINK_NAMES.with(|h| h.borrow().iter().any(|n| n.starts_with(&prefix)));
    dir && only_nlink && (x.nlink == 1) != (y.nlink == 1) && holds
}

/// Notes that a rename between the parents of `a` and `b` failed on both sides.
pub fn rename_failed(a: &str, b: &str) {
    let parent = |p: &str| Path::new(p).parent().map(|d| d.display().to_string());
    FAILED_RENAME_PARENTS.with(|f| {
        let mut f = f.borrow_mut();
        f.extend(parent(a));
        f.extend(parent(b));
    });
}

/// Whether strata's `x` and the kernel's `y` of the directory `rel` differ only by the
/// kernel's new modification time after a failed rename from or into it.
fn failed_rename_mtime(x: &StatV, y: &StatV, rel: &str) -> bool {
    let dir = y.mode & libc::S_IFMT == libc::S_IFDIR;
    let only_mtime = StatV {
        mtime: y.mtime,
        ..x.clone()
    } == *y;
    let touched = FAILED_RENAME_PARENTS.with(|f| f.borrow().contains(rel));
    dir && only_mtime && x.mtime.is_some() && y.mtime.is_none() && touched
}

/// The first field in which two nodes differ (`a` strata's, `b` the kernel's).
fn field(a: &Node, b: &Node, rel: &str, s_upper: Option<&Path>, lenient: bool) -> &'static str {
    let (x, y) = (&a.st, &b.st);
    if failed_rename_mtime(x, y, rel) {
        tally("kernel-failed-rename-mtime");
        return "same";
    }
    if hard_link_call_name(x, y, rel) {
        tally("hard-link-call-name");
        return "same";
    }
    let rest_same = a.digest == b.digest && a.target == b.target && a.xattrs == b.xattrs;
    if let (true, Some(why)) = (rest_same, accepted_stat(x, y)) {
        tally(why);
        return "same";
    }
    if let (true, true, Some(bug)) = (lenient, rest_same, known_stat(x, y, Some(rel), s_upper)) {
        tally(bug);
        return "same";
    }
    if x.mode & libc::S_IFMT != y.mode & libc::S_IFMT {
        "type"
    } else if x.mode != y.mode {
        "mode"
    } else if (x.uid, x.gid) != (y.uid, y.gid) {
        "owner"
    } else if x.size != y.size {
        "size"
    } else if a.digest != b.digest {
        "data"
    } else if a.target != b.target {
        "target"
    } else if x.nlink != y.nlink {
        "nlink"
    } else if a.xattrs != b.xattrs {
        "xattrs"
    } else if x.mtime != y.mtime {
        "mtime"
    } else {
        "same"
    }
}

/// Compares strata's tree `s` with the kernel's `k`. `s_upper` is strata's upper directory
/// for the `lower-hardlink-ino` rule; `None` compares inode classes exactly. With
/// `lenient`, known bugs are forgiven.
pub fn trees(s: &Snap, k: &Snap, s_upper: Option<&Path>, lenient: bool) -> Vec<TreeDiff> {
    let mut out = Vec::new();
    let paths: BTreeSet<&String> = s.keys().chain(k.keys()).collect();
    for p in paths {
        let (a, b) = (s.get(p), k.get(p));
        let f = match (a, b) {
            (None, _) => "missing",
            (_, None) => "extra",
            (Some(Ok(x)), Some(Ok(y))) => field(x, y, p, s_upper, lenient),
            (Some(x), Some(y)) if x == y => "same",
            _ => "error",
        };
        if f != "same" {
            out.push(TreeDiff {
                path: p.clone(),
                field: f,
                strata: shown(a),
                kernel: shown(b),
            });
        }
    }
    if out.is_empty() {
        out.extend(inode_classes(s, k));
    }
    out
}

/// Paths grouped by inode number.
fn classes(t: &Snap) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (p, n) in t {
        if let Ok(n) = n {
            by_ino.entry(n.ino).or_default().insert(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for set in by_ino.into_values() {
        for p in &set {
            out.insert(p.clone(), set.clone());
        }
    }
    out
}

fn inode_classes(s: &Snap, k: &Snap) -> Vec<TreeDiff> {
    let (cs, ck) = (classes(s), classes(k));
    let mut out = Vec::new();
    for (p, kc) in &ck {
        let Some(sc) = cs.get(p) else { continue };
        if sc == kc {
            continue;
        }
        out.push(TreeDiff {
            path: p.clone(),
            field: "ino",
            strata: format!("same inode as {sc:?}"),
            kernel: format!("same inode as {kc:?}"),
        });
        break;
    }
    out
}
