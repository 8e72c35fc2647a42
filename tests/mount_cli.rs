//! The mount command line: the three call forms, read-only mounts, every way of ending a
//! daemon (strata umount, umount(8), SIGTERM, SIGINT, foreground exit status), and the
//! refusal of unknown options and bad paths before anything is mounted or changed on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use rustix::process::Signal;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn layers(s: &Scratch) {
    put(&s.lower(1).join("f"), "bottom");
    put(&s.lower(1).join("only1"), "one");
    put(&s.lower(0).join("f"), "top");
}

fn check_view(mnt: &Path) {
    assert_eq!(fs::read_to_string(mnt.join("f")).unwrap(), "top");
    assert_eq!(fs::read_to_string(mnt.join("only1")).unwrap(), "one");
}

/// Waits until `mnt` is unmounted and `pid` has exited.
fn assert_ended(mnt: &Path, pid: u32) {
    assert!(
        wait_for(20, || !mounted(mnt)),
        "{} is still mounted",
        mnt.display()
    );
    assert!(
        wait_for(20, || process_gone(pid)),
        "daemon {pid} for {} did not exit",
        mnt.display()
    );
    assert!(
        daemon_pids(mnt).is_empty(),
        "a strata process still serves {}",
        mnt.display()
    );
}

#[test]
fn mount_subcommand_form_then_strata_umount() {
    let s = Scratch::new();
    layers(&s);
    let m = s.mount(2);
    check_view(&m.mnt);
    let pid = daemon_pid(&m.mnt);
    let out = strata(&["umount", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "strata umount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ended(&m.mnt, pid);
}

#[test]
fn bare_options_form() {
    let s = Scratch::new();
    layers(&s);
    let m = StrataMount::new(&["-o", &s.opts(2), s.mnt().to_str().unwrap()]);
    check_view(&m.mnt);
    fs::write(m.path("new"), "x").unwrap();
    assert_eq!(fs::read_to_string(s.upper().join("new")).unwrap(), "x");
}

#[test]
fn mount_fuse3_form_options_after_mountpoint() {
    let s = Scratch::new();
    layers(&s);
    let mnt = s.mnt();
    let m = StrataMount::at(
        &["strata-src", mnt.to_str().unwrap(), "-o", &s.opts(2)],
        &mnt,
    );
    check_view(&m.mnt);
}

#[test]
fn mount_fuse3_form_options_before_mountpoint() {
    let s = Scratch::new();
    layers(&s);
    let mnt = s.mnt();
    let m = StrataMount::at(
        &["-o", &s.opts(2), "strata-src", mnt.to_str().unwrap()],
        &mnt,
    );
    check_view(&m.mnt);
    drop(m);
    let m = StrataMount::at(
        &["strata-src", "-o", &s.opts(2), mnt.to_str().unwrap()],
        &mnt,
    );
    check_view(&m.mnt);
}

#[test]
fn several_o_arguments_are_merged() {
    let s = Scratch::new();
    layers(&s);
    let lower = format!("lowerdir={}", s.lowerdir(2));
    let rest = format!(
        "upperdir={},workdir={}",
        s.upper().display(),
        s.work().display()
    );
    let m = StrataMount::new(&[
        "mount",
        "-o",
        &lower,
        "-o",
        &rest,
        s.mnt().to_str().unwrap(),
    ]);
    check_view(&m.mnt);
    fs::write(m.path("new"), "x").unwrap();
    assert!(s.upper().join("new").exists());
}

#[test]
fn read_only_without_upper() {
    let s = Scratch::new();
    layers(&s);
    let before = tree(s.dir.path());
    let lower = format!("lowerdir={}", s.lowerdir(2));
    let m = StrataMount::new(&["mount", "-o", &lower, s.mnt().to_str().unwrap()]);
    check_view(&m.mnt);
    assert_eq!(err_of(fs::write(m.path("new"), "x")), libc_erofs());
    assert_eq!(
        err_of(fs::OpenOptions::new().write(true).open(m.path("f"))),
        libc_erofs()
    );
    assert_eq!(err_of(fs::create_dir(m.path("d"))), libc_erofs());
    assert_eq!(err_of(fs::remove_file(m.path("only1"))), libc_erofs());
    assert_eq!(
        err_of(fs::set_permissions(
            m.path("f"),
            fs::Permissions::from_mode(0o600)
        )),
        libc_erofs()
    );
    drop(m);
    assert_eq!(
        tree(s.dir.path()),
        before,
        "a read-only mount changed the layers"
    );
}

#[test]
fn ro_option_with_upper_shows_upper_and_writes_nothing() {
    let s = Scratch::new();
    layers(&s);
    put(&s.upper().join("f"), "upper");
    let before = tree(s.dir.path());
    let opts = format!("{},ro", s.opts(2));
    let m = StrataMount::new(&["mount", "-o", &opts, s.mnt().to_str().unwrap()]);
    assert_eq!(fs::read_to_string(m.path("f")).unwrap(), "upper");
    assert_eq!(err_of(fs::write(m.path("new"), "x")), libc_erofs());
    assert_eq!(err_of(fs::write(m.path("f"), "x")), libc_erofs());
    assert_eq!(err_of(fs::remove_file(m.path("only1"))), libc_erofs());
    drop(m);
    assert_eq!(tree(s.dir.path()), before, "a ro mount changed the layers");
}

fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}

#[test]
fn plain_umount_ends_the_daemon() {
    let s = Scratch::new();
    layers(&s);
    let m = s.mount(2);
    let pid = daemon_pid(&m.mnt);
    let st = Command::new("umount").arg(&m.mnt).status().unwrap();
    assert!(st.success(), "umount(8) failed");
    assert_ended(&m.mnt, pid);
}

#[test]
fn sigterm_ends_the_daemon() {
    let s = Scratch::new();
    layers(&s);
    let m = s.mount(2);
    check_view(&m.mnt);
    let pid = daemon_pid(&m.mnt);
    signal(pid, Signal::TERM);
    assert_ended(&m.mnt, pid);
}

#[test]
fn sigint_ends_the_daemon() {
    let s = Scratch::new();
    layers(&s);
    let m = s.mount(2);
    check_view(&m.mnt);
    let pid = daemon_pid(&m.mnt);
    signal(pid, Signal::INT);
    assert_ended(&m.mnt, pid);
}

/// Starts `strata mount -f` as a child and waits for the mount.
fn foreground(s: &Scratch) -> (ChildGuard, StrataMount) {
    let child = Command::new(strata_bin())
        .args(["mount", "-f", "-o", &s.opts(2)])
        .arg(s.mnt())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let up = wait_for(20, || {
        mounted(&s.mnt()) || !matches!(child.0.try_wait(), Ok(None))
    });
    assert!(
        up && mounted(&s.mnt()),
        "strata mount -f did not mount {}",
        s.mnt().display()
    );
    (child, StrataMount::adopt(&s.mnt()))
}

fn assert_child_exits_zero(child: &mut ChildGuard, mnt: &Path) {
    let mut status = None;
    assert!(
        wait_for(20, || {
            status = child.0.try_wait().unwrap();
            status.is_some()
        }),
        "foreground strata did not exit"
    );
    let status = status.unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "foreground strata exited with {status:?}"
    );
    assert!(
        !mounted(mnt),
        "{} still mounted after the daemon exited",
        mnt.display()
    );
}

#[test]
fn foreground_daemon_exits_zero_on_sigterm() {
    let s = Scratch::new();
    layers(&s);
    let (mut child, m) = foreground(&s);
    check_view(&m.mnt);
    signal(child.0.id(), Signal::TERM);
    assert_child_exits_zero(&mut child, &m.mnt);
}

#[test]
fn foreground_daemon_exits_zero_on_sigint() {
    let s = Scratch::new();
    layers(&s);
    let (mut child, m) = foreground(&s);
    check_view(&m.mnt);
    signal(child.0.id(), Signal::INT);
    assert_child_exits_zero(&mut child, &m.mnt);
}

#[test]
fn foreground_daemon_exits_zero_on_umount() {
    let s = Scratch::new();
    layers(&s);
    let (mut child, m) = foreground(&s);
    check_view(&m.mnt);
    let out = strata(&["umount", m.mnt.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "strata umount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_child_exits_zero(&mut child, &m.mnt);
}

#[test]
fn strata_umount_of_something_not_mounted_fails() {
    let s = Scratch::new();
    let out = strata(&["umount", s.mnt().to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "strata umount of an unmounted dir succeeded"
    );
    assert!(
        !out.stderr.is_empty(),
        "strata umount failed without a message"
    );
}

/// Runs strata with `args` and checks it failed naming one of `needles`, mounted nothing,
/// left no daemon, and changed nothing below the scratch dir.
fn refused(s: &Scratch, args: &[&str], needles: &[&str]) {
    let before = tree(s.dir.path());
    let out = strata(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let leftover_mount = mounted(&s.mnt());
    let leftover_daemon = daemon_pids(&s.mnt());
    if leftover_mount {
        drop(StrataMount::adopt(&s.mnt()));
    }
    assert!(!out.status.success(), "strata {args:?} succeeded");
    assert!(
        !leftover_mount,
        "strata {args:?} failed but left {} mounted",
        s.mnt().display()
    );
    assert!(
        leftover_daemon.is_empty(),
        "strata {args:?} failed but left daemon {leftover_daemon:?}"
    );
    assert!(
        needles.iter().any(|n| stderr.contains(n)),
        "strata {args:?}: stderr does not name any of {needles:?}: {stderr}"
    );
    assert_eq!(
        tree(s.dir.path()),
        before,
        "strata {args:?} changed files on disk"
    );
}

#[test]
fn unknown_options_are_refused_by_name() {
    let s = Scratch::new();
    layers(&s);
    let mnt = s.mnt();
    let mnt = mnt.to_str().unwrap();
    for bad in [
        "bogus",
        "redirect_dir=off",
        "metacopy=maybe",
        "index=maybe",
        "xino=auto",
        "userxattr",
        "nfs_export=on",
    ] {
        let key = bad.split('=').next().unwrap();
        let opts = format!("{},{bad}", s.opts(2));
        refused(&s, &["mount", "-o", &opts, mnt], &[key]);
        let opts = format!("{bad},{}", s.opts(2));
        refused(&s, &["-o", &opts, mnt], &[key]);
    }
}

#[test]
fn malformed_options_are_refused_by_name() {
    let s = Scratch::new();
    layers(&s);
    let mnt = s.mnt();
    let mnt = mnt.to_str().unwrap();
    for (bad, key) in [
        ("timeout=abc", "timeout"),
        ("timeout=-1", "timeout"),
        ("timeout", "timeout"),
        ("fsync=2", "fsync"),
        ("fsync", "fsync"),
        ("ro=1", "ro"),
        ("allow_other=yes", "allow_other"),
        ("noexec=0", "noexec"),
        ("upperdir=", "upperdir"),
        ("workdir", "workdir"),
    ] {
        let opts = format!("{},{bad}", s.opts(2));
        refused(&s, &["mount", "-o", &opts, mnt], &[key]);
    }
    for lower in ["lowerdir=", "lowerdir"] {
        let opts = format!(
            "{lower},upperdir={},workdir={}",
            s.upper().display(),
            s.work().display()
        );
        refused(&s, &["mount", "-o", &opts, mnt], &["lowerdir"]);
    }
    let opts = format!(
        "lowerdir={}::{},upperdir={},workdir={}",
        s.lower(0).display(),
        s.lower(1).display(),
        s.upper().display(),
        s.work().display()
    );
    refused(&s, &["mount", "-o", &opts, mnt], &["lowerdir"]);
}

#[test]
fn missing_lowerdir_option_is_refused() {
    let s = Scratch::new();
    let opts = format!(
        "upperdir={},workdir={}",
        s.upper().display(),
        s.work().display()
    );
    refused(
        &s,
        &["mount", "-o", &opts, s.mnt().to_str().unwrap()],
        &["lowerdir"],
    );
}

fn opts_with(lower: &str, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    )
}

#[test]
fn missing_or_non_directory_paths_are_refused() {
    let s = Scratch::new();
    layers(&s);
    let missing = s.path("missing");
    let file = s.path("a-file");
    put(&file, "not a dir");
    let mnt = s.mnt();
    let lowers = s.lowerdir(2);
    for bad in [&missing, &file] {
        let b = bad.to_str().unwrap();
        // lowerdir: alone, on top, and below a good layer
        for lower in [
            b.to_string(),
            format!("{b}:{lowers}"),
            format!("{lowers}:{b}"),
        ] {
            let opts = opts_with(&lower, &s.upper(), &s.work());
            refused(&s, &["mount", "-o", &opts, mnt.to_str().unwrap()], &[b]);
        }
        let opts = opts_with(&lowers, bad, &s.work());
        refused(&s, &["mount", "-o", &opts, mnt.to_str().unwrap()], &[b]);
        let opts = opts_with(&lowers, &s.upper(), bad);
        refused(&s, &["mount", "-o", &opts, mnt.to_str().unwrap()], &[b]);
        refused(&s, &["mount", "-o", &s.opts(2), b], &[b]);
        // read-only form too
        refused(&s, &["mount", "-o", &format!("lowerdir={lowers}"), b], &[b]);
        refused(
            &s,
            &[
                "mount",
                "-o",
                &format!("lowerdir={b}"),
                mnt.to_str().unwrap(),
            ],
            &[b],
        );
    }
}

#[test]
fn non_empty_workdir_is_refused() {
    let s = Scratch::new();
    layers(&s);
    put(&s.work().join("leftover"), "x");
    let w = s.work();
    refused(
        &s,
        &["mount", "-o", &s.opts(2), s.mnt().to_str().unwrap()],
        &[w.to_str().unwrap(), "workdir"],
    );
    assert_eq!(fs::read_to_string(s.work().join("leftover")).unwrap(), "x");
}

#[test]
fn workdir_on_another_filesystem_is_refused() {
    let s = Scratch::new();
    layers(&s);
    let t = tmpfs(&s.path("tmpfs"));
    let work = t.mnt.join("work");
    fs::create_dir(&work).unwrap();
    let opts = opts_with(&s.lowerdir(2), &s.upper(), &work);
    refused(
        &s,
        &["mount", "-o", &opts, s.mnt().to_str().unwrap()],
        &[work.to_str().unwrap(), "workdir"],
    );
    // the other way round: upper on the tmpfs, work beside the layers
    let upper = t.mnt.join("upper");
    fs::create_dir(&upper).unwrap();
    let opts = opts_with(&s.lowerdir(2), &upper, &s.work());
    let w = s.work();
    refused(
        &s,
        &["mount", "-o", &opts, s.mnt().to_str().unwrap()],
        &[w.to_str().unwrap(), upper.to_str().unwrap(), "workdir"],
    );
}

#[test]
fn upper_or_work_inside_a_lower_or_the_mountpoint_is_refused() {
    let s = Scratch::new();
    layers(&s);
    let mnt = s.mnt();
    let m = mnt.to_str().unwrap();
    let lowers = s.lowerdir(2);
    let in_lower0 = s.dir("lower0/inner");
    let in_lower1 = s.dir("lower1/deeper/inner");
    let in_mnt = s.dir("mnt/inner");
    for inside in [&in_lower0, &in_lower1, &in_mnt] {
        let i = inside.to_str().unwrap();
        let opts = opts_with(&lowers, inside, &s.work());
        refused(&s, &["mount", "-o", &opts, m], &[i, "upperdir"]);
        let opts = opts_with(&lowers, &s.upper(), inside);
        refused(&s, &["mount", "-o", &opts, m], &[i, "workdir"]);
    }
    // a lower itself as the upper
    let l0 = s.lower(0);
    let opts = opts_with(&lowers, &l0, &s.work());
    refused(
        &s,
        &["mount", "-o", &opts, m],
        &[l0.to_str().unwrap(), "upperdir"],
    );
}

#[test]
fn upperdir_without_workdir_is_refused() {
    let s = Scratch::new();
    layers(&s);
    let m = s.mnt();
    let opts = format!(
        "lowerdir={},upperdir={}",
        s.lowerdir(2),
        s.upper().display()
    );
    refused(
        &s,
        &["mount", "-o", &opts, m.to_str().unwrap()],
        &["workdir"],
    );
    let opts = format!("lowerdir={},workdir={}", s.lowerdir(2), s.work().display());
    refused(
        &s,
        &["mount", "-o", &opts, m.to_str().unwrap()],
        &["upperdir"],
    );
}

#[test]
fn accepted_flag_options_reach_the_mount() {
    let s = Scratch::new();
    layers(&s);
    put(&s.lower(0).join("run.sh"), "#!/bin/sh\necho ran\n");
    fs::set_permissions(s.lower(0).join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    let opts = format!(
        "{},nosuid,nodev,noexec,noatime,timeout=1.5,fsync=0,allow_other,default_permissions",
        s.opts(2)
    );
    let m = StrataMount::new(&["mount", "-o", &opts, s.mnt().to_str().unwrap()]);
    let flags = mount_flags(&m.mnt);
    for f in ["nosuid", "nodev", "noexec", "noatime"] {
        assert!(
            flags.iter().any(|x| x == f),
            "{f} missing from mount flags {flags:?}"
        );
    }
    let err = Command::new(m.path("run.sh")).output().unwrap_err();
    assert_eq!(
        errno(&err),
        rustix::io::Errno::ACCESS.raw_os_error(),
        "noexec mount ran a program"
    );
    drop(m);

    let opts = format!("{},suid,dev,exec,rw,volatile", s.opts(2));
    let m = StrataMount::new(&["mount", "-o", &opts, s.mnt().to_str().unwrap()]);
    let flags = mount_flags(&m.mnt);
    for f in ["nosuid", "nodev", "noexec"] {
        assert!(
            !flags.iter().any(|x| x == f),
            "{f} in mount flags {flags:?} although its opposite was asked"
        );
    }
    let out = Command::new(m.path("run.sh")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
}

/// The per-mount flags of `mnt` in /proc/self/mounts.
fn mount_flags(mnt: &Path) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == mnt.to_str())
        .unwrap();
    line.split(' ')
        .nth(3)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

#[test]
fn escaped_colons_and_commas_in_layer_paths() {
    let s = Scratch::new();
    let odd = s.dir("odd:lower,dir");
    put(&odd.join("f"), "odd");
    put(&s.lower(1).join("g"), "g");
    let esc = |p: &Path| {
        p.display()
            .to_string()
            .replace(':', "\\:")
            .replace(',', "\\,")
    };
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        esc(&odd),
        esc(&s.lower(1)),
        s.upper().display(),
        s.work().display()
    );
    let m = StrataMount::new(&["mount", "-o", &opts, s.mnt().to_str().unwrap()]);
    assert_eq!(fs::read_to_string(m.path("f")).unwrap(), "odd");
    assert_eq!(fs::read_to_string(m.path("g")).unwrap(), "g");
}

#[test]
fn upper_and_work_must_be_separate_trees() {
    let s = Scratch::new();
    layers(&s);
    let m = s.mnt();
    let m = m.to_str().unwrap();
    let lowers = s.lowerdir(2);
    let work_in_upper = s.dir("upper/work");
    let upper_in_work = s.path("work/upper");
    let opts = opts_with(&lowers, &s.upper(), &work_in_upper);
    refused(
        &s,
        &["mount", "-o", &opts, m],
        &[work_in_upper.to_str().unwrap(), "workdir"],
    );
    let opts = opts_with(&lowers, &s.upper(), &s.upper());
    refused(&s, &["mount", "-o", &opts, m], &["workdir"]);
    fs::remove_dir(&work_in_upper).unwrap();
    fs::create_dir(&upper_in_work).unwrap();
    let opts = opts_with(&lowers, &upper_in_work, &s.work());
    refused(
        &s,
        &["mount", "-o", &opts, m],
        &[upper_in_work.to_str().unwrap(), "workdir", "upperdir"],
    );
}

#[test]
fn a_new_mount_survives_the_end_of_the_old_daemon_at_the_same_place() {
    // A lazily unmounted mount lives on while a file in it is open; its daemon ends only
    // when that file is closed, by which time a new mount sits at the same path. The old
    // daemon must not take the new mount away as it ends.
    let s = Scratch::new();
    put(&s.lower(0).join("f"), "x");
    let old = s.mount(1);
    let held = fs::File::open(old.path("f")).unwrap();
    let st = Command::new("umount")
        .arg("-l")
        .arg(&old.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    std::mem::forget(old); // already unmounted: nothing for its guard to do
    let new = s.mount(1);
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        mounted(&new.mnt),
        "the end of the old daemon took the new mount away"
    );
    assert_eq!(fs::read_to_string(new.path("f")).unwrap(), "x");
}
