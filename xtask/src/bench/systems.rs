//! The systems under test and their mounts: strata, kernel overlayfs and fuse-overlayfs,
//! each mounted over its own copy of the lowers with a fresh, empty upper and work
//! directory; and, optionally, `strata-all`: strata with `-o passthrough=all` (lower files
//! passed through too), over strata's copy of the lowers.
//!
//! A [`Mount`] unmounts itself when dropped, however the run ends (lazily as a last
//! resort), waits for a FUSE daemon to exit so one system's daemon never runs during the
//! next one's timing, and removes the upper and work directories it made.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{is_mounted, run, Result};

/// The names `--systems` accepts, in the default order.
pub const ALL: [&str; 4] = ["strata", "kernel", "fuse-overlayfs", "strata-all"];

/// Which workloads a system runs in a run that does not name the systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Every,
    /// Only the workloads that read file data: what lower-file passthrough changes.
    DataReads,
}

/// What a system runs by default: `strata-all` is there to show what passing lower files
/// through would give, which only the data-read workloads can show; running it on the
/// others would only make the run longer.
pub fn default_scope(system: &str) -> Scope {
    match system {
        "strata-all" => Scope::DataReads,
        _ => Scope::Every,
    }
}

/// The copy of the lowers a system mounts (a directory name under the data set).
/// `strata-all` shares strata's: the same daemon with one option changed, so the two read
/// the very same blocks, and the caches are dropped before every measurement, so neither
/// is ever served from the other's page cache.
pub fn lowers_copy(system: &'static str) -> &'static str {
    match system {
        "strata-all" => "strata",
        other => other,
    }
}

/// How one system is mounted.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub strata: PathBuf,
    pub fuse_overlayfs: PathBuf,
}

/// A mounted system; unmounted on drop.
pub struct Mount {
    pub system: &'static str,
    pub mnt: PathBuf,
    scratch: PathBuf,
    /// The FUSE daemon serving the mount (none for the kernel).
    pub pid: Option<i32>,
    mounted: bool,
}

/// The daemon whose command line names `mnt` and whose program is `prog`.
pub(super) fn find_daemon(prog: &str, mnt: &Path) -> Option<i32> {
    let want = mnt.display().to_string();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let argv0 = args
            .first()
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let is_prog = argv0.is_some_and(|a| Path::new(&a).file_name().is_some_and(|f| f == prog));
        if is_prog && args.contains(&want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// True while `pid` runs. A zombie has exited (its memory and descriptors are released)
/// even though `/proc/PID` stays until its parent reaps it: the daemons detach to be
/// children of init, and an init that reaps lazily (this machine's takes about 1.5 s)
/// would otherwise add that to every FUSE mount of the run.
fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE …": COMM may hold spaces and parentheses, so read after the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// Waits up to ten seconds for `pid` to exit; false when it still runs.
pub(super) fn exited(pid: i32) -> bool {
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > Duration::from_secs(10) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Unmounts `mnt` when something is mounted there (lazily as a last resort), saying what
/// failed: for guards, which cannot return an error.
pub(super) fn unmount_leftover(mnt: &Path) {
    if !is_mounted(mnt) {
        return;
    }
    if let Err(e) = run(Command::new("umount").arg(mnt)) {
        eprintln!("bench: {e}; unmounting lazily");
        if let Err(e) = run(Command::new("umount").arg("-l").arg(mnt)) {
            eprintln!("bench: {e}");
        }
    }
}

impl Mount {
    /// Mounts `system` at `scratch/mnt` over `lowers` (top first), with a fresh upper and
    /// work directory in `scratch`.
    pub fn new(
        system: &'static str,
        bins: &Binaries,
        lowers: &[PathBuf],
        scratch: &Path,
    ) -> Result<Mount> {
        let mnt = scratch.join("mnt");
        if is_mounted(&mnt) {
            return Err(format!("{} is already mounted", mnt.display()));
        }
        for d in ["upper", "work"] {
            let p = scratch.join(d);
            if p.exists() {
                fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        for d in ["upper", "work", "mnt"] {
            let p = scratch.join(d);
            fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut opts = format!(
            "lowerdir={lowerdir},upperdir={},workdir={}",
            scratch.join("upper").display(),
            scratch.join("work").display()
        );
        if system == "strata-all" {
            opts.push_str(",passthrough=all");
        }
        let mut cmd = match system {
            "strata" | "strata-all" => Command::new(&bins.strata),
            "fuse-overlayfs" => Command::new(&bins.fuse_overlayfs),
            "kernel" => {
                let mut c = Command::new("mount");
                c.args(["-t", "overlay", "overlay"]);
                c
            }
            other => return Err(format!("unknown system {other:?}")),
        };
        cmd.arg("-o").arg(&opts).arg(&mnt);
        // From here on the guard cleans up whatever the mount command left.
        let mut m = Mount {
            system,
            mnt,
            scratch: scratch.to_path_buf(),
            pid: None,
            mounted: true,
        };
        // Quietly (fuse-overlayfs warns about options it ignores on every mount), and
        // into a file rather than a pipe, which a daemon could keep open.
        let shown = format!("{cmd:?}");
        let log = scratch.join("mount.log");
        let err = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let st = cmd
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .map_err(|e| format!("{shown}: {e}"))?;
        if !st.success() {
            let said = fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("{shown} failed ({st}): {}", said.trim()));
        }
        if !is_mounted(&m.mnt) {
            return Err(format!(
                "{system}: the mount command succeeded but {} is not mounted",
                m.mnt.display()
            ));
        }
        if system != "kernel" {
            let prog = if system == "fuse-overlayfs" {
                "fuse-overlayfs"
            } else {
                "strata"
            };
            m.pid = find_daemon(prog, &m.mnt);
            if m.pid.is_none() {
                return Err(format!(
                    "{system}: cannot find the daemon serving {}",
                    m.mnt.display()
                ));
            }
        }
        Ok(m)
    }

    /// Unmounts, waits for the daemon to exit and removes the upper and work directories.
    pub fn unmount(mut self) -> Result {
        // On failure the guard's drop retries, lazily if need be.
        run(Command::new("umount").arg(&self.mnt))?;
        self.mounted = false;
        self.wait_daemon()?;
        self.clean()
    }

    /// Waits up to ten seconds for the daemon to exit, then ends it by its id.
    fn wait_daemon(&self) -> Result {
        let Some(pid) = self.pid else { return Ok(()) };
        if exited(pid) {
            return Ok(());
        }
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            if let Err(e) = rustix::process::kill_process(p, rustix::process::Signal::TERM) {
                eprintln!("bench: cannot end {} daemon {pid}: {e}", self.system);
            }
        }
        Err(format!(
            "the {} daemon {pid} did not exit after umount",
            self.system
        ))
    }

    fn clean(&self) -> Result {
        for d in ["upper", "work"] {
            let p = self.scratch.join(d);
            if p.exists() {
                fs::remove_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
        Ok(())
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The daemon's `/proc/PID/status` field `name` in KiB (e.g. `VmHWM`).
    pub fn daemon_status_kib(&self, name: &str) -> Result<Option<u64>> {
        let Some(pid) = self.pid else { return Ok(None) };
        let status = fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        Ok(v)
    }

    /// How many file descriptors the daemon holds.
    pub fn daemon_fds(&self) -> Result<Option<u64>> {
        let Some(pid) = self.pid else { return Ok(None) };
        let n = fs::read_dir(format!("/proc/{pid}/fd"))
            .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
            .count();
        Ok(Some(n as u64))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        unmount_leftover(&self.mnt);
        if let Err(e) = self.wait_daemon() {
            eprintln!("bench: {e}");
        }
        if let Err(e) = self.clean() {
            eprintln!("bench: {e}");
        }
    }
}

/// Unmounts what an interrupted run left mounted below `scratch` (a run killed by a signal
/// does not get to drop its guard), so the next run starts clean.
pub fn clear_leftovers(scratch: &Path) -> Result {
    for sys in ALL {
        let mnt = scratch.join(sys).join("mnt");
        if is_mounted(&mnt) {
            eprintln!("bench: unmounting {} left by an earlier run", mnt.display());
            if run(Command::new("umount").arg(&mnt)).is_err() {
                run(Command::new("umount").arg("-l").arg(&mnt))?;
            }
        }
    }
    Ok(())
}

/// Writes dirty data back and drops the page, dentry and inode caches: the next access
/// is cold.
pub fn drop_caches() -> Result {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}
