//! Project glue: `cargo xtask layers | demo | test | difftest | bench`.
//!
//! - `layers`: builds the sample layers of `layers/` (plain files plus `NAME.spec`) into
//!   `layers/build/NAME`, with real whiteouts, opaque directories and xattrs.
//! - `demo`: mounts the sample layers, shows the merged tree, writes and deletes through
//!   the mount, shows the upper directory with its whiteout, and unmounts.
//! - `test`: installs what the tests need when it is missing (Debian packages: fuse3,
//!   python3, buildah, umoci), checks formatting and lints, runs every test, and checks
//!   no mount was left behind.
//! - `difftest --seconds N [--seed S]`: the kernel-differential test's random run for N
//!   seconds (from seed S), longer than CI's.
//! - `bench [--quick] [--reps N] [--only W1,W2] [--systems S1,S2]`: strata side by side
//!   with kernel overlayfs and fuse-overlayfs on a generated data set; results go to
//!   `bench/results/` (see `bench/README.md`).

mod bench;
mod layers;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("layers") => layers::build_all(&root()).map(|_| ()),
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("difftest") => difftest(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        _ => Err(
            "usage: cargo xtask <layers | demo | test [-- ARGS FOR THE TEST RUNNER] \
             | difftest --seconds N [--seed S] \
             | bench [--quick] [--reps N] [--only W1,W2] [--systems S1,S2]>"
                .to_string(),
        ),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command, failing with its name when it does not succeed.
fn run(cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}");
    let st = cmd.status().map_err(|e| format!("{shown}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({st})"))
    }
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Installs the Debian packages whose files are missing (without recommends: buildah's
/// would pull in fuse-overlayfs, podman's runtimes and more); `apt-get update` only
/// when the install fails on stale package lists.
fn ensure_packages(wanted: &[(&str, &str)]) -> Result {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "missing Debian packages {missing:?}; install them as root"
        ));
    }
    eprintln!("xtask: installing {missing:?}");
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    if run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .envs(env))
    .is_err()
    {
        run(Command::new("apt-get").args(["update", "-q"]).envs(env))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .envs(env))?;
    }
    Ok(())
}

/// The mount points of this namespace (the second field of `/proc/self/mounts`).
fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .map(str::to_string)
        .collect()
}

/// True when `mnt` is a mount point in this namespace.
fn is_mounted(mnt: &Path) -> bool {
    let want = mnt.display().to_string();
    mount_points().contains(&want)
}

/// Mounts left behind by tests (their scratch directories are named `strata-test-*`).
fn leftover_mounts() -> Vec<String> {
    mount_points()
        .into_iter()
        .filter(|m| m.contains("strata-test-"))
        .collect()
}

fn test(extra: &[String]) -> Result {
    if !is_root() {
        return Err("the tests mount filesystems: run `cargo xtask test` as root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: the FUSE tests cannot run here".into());
    }
    // mount.fuse3 for the `mount -t fuse.strata` test; python3 reads xattrs in tests;
    // buildah (with strata as its mount_program) and umoci for the real-client test.
    ensure_packages(&[
        ("/sbin/mount.fuse3", "fuse3"),
        ("/usr/bin/python3", "python3"),
        ("/usr/bin/buildah", "buildah"),
        ("/usr/bin/umoci", "umoci"),
    ])?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["build", "--workspace"]))?;
    let extra: Vec<&String> = extra.iter().skip_while(|a| *a == "--").collect();
    let r = if has_nextest() {
        run(cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .args(&extra))
    } else {
        run(cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(&extra))
    };
    let left = leftover_mounts();
    if !left.is_empty() {
        for m in &left {
            if let Err(e) = run(Command::new("umount").args(["-l", m])) {
                eprintln!("xtask: {e}");
            }
        }
        return Err(format!("tests left mounts behind: {left:?}"));
    }
    r
}

fn has_nextest() -> bool {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Checks what a mounting test run needs: root and `/dev/fuse`.
fn can_mount(what: &str) -> Result {
    if !is_root() {
        return Err(format!(
            "{what} mounts filesystems: run `cargo xtask {what}` as root"
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(format!("/dev/fuse is missing: {what} cannot run here"));
    }
    Ok(())
}

/// `difftest --seconds N [--seed S]`: builds, then runs the differential test's random run
/// with `STRATA_DIFFTEST_SECONDS=N` (and `STRATA_DIFFTEST_SEED=S`), its output shown.
fn difftest(args: &[String]) -> Result {
    let usage = "usage: cargo xtask difftest --seconds N [--seed S]";
    let (mut seconds, mut seed) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64> {
            let v = it.next().ok_or(format!("{name} needs a number; {usage}"))?;
            v.parse()
                .map_err(|_| format!("{name} {v:?} is not a number; {usage}"))
        };
        match a.as_str() {
            "--seconds" => seconds = Some(num("--seconds")?),
            "--seed" => seed = Some(num("--seed")?),
            _ => return Err(format!("unknown argument {a:?}; {usage}")),
        }
    }
    let seconds = seconds.ok_or(usage.to_string())?;
    can_mount("difftest")?;
    run(cargo().args(["build", "--tests", "--package", "strata"]))?;
    let mut cmd = cargo();
    if has_nextest() {
        cmd.args([
            "nextest",
            "run",
            "--test",
            "difftest",
            "--no-capture",
            "--",
            "--exact",
            "random_time_bounded",
        ]);
    } else {
        cmd.args([
            "test",
            "--test",
            "difftest",
            "--",
            "--exact",
            "random_time_bounded",
            "--nocapture",
        ]);
    }
    cmd.env("STRATA_DIFFTEST_SECONDS", seconds.to_string());
    if let Some(s) = seed {
        cmd.env("STRATA_DIFFTEST_SEED", s.to_string());
    }
    let r = run(&mut cmd);
    let left = leftover_mounts();
    if !left.is_empty() {
        return Err(format!("the difftest left mounts behind: {left:?}"));
    }
    r
}

/// Unmounts the demo mount when the demo ends, however it ends.
struct DemoMount(PathBuf);

impl Drop for DemoMount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            if let Err(e) = run(Command::new("umount").arg("-l").arg(&self.0)) {
                eprintln!("xtask: {e}");
            }
        }
    }
}

fn show_tree(title: &str, dir: &Path) -> Result {
    println!("\n== {title} ({})", dir.display());
    let mut lines = Vec::new();
    layers::describe(dir, dir, &mut lines).map_err(|e| format!("{}: {e}", dir.display()))?;
    for l in lines {
        println!("   {l}");
    }
    Ok(())
}

fn step(what: &str) {
    println!("\n$ {what}");
}

fn demo() -> Result {
    if !is_root() {
        return Err("the demo mounts a filesystem: run `cargo xtask demo` as root".into());
    }
    let root = root();
    run(cargo().args(["build", "--quiet", "--package", "strata"]))?;
    let strata = root.join("target/debug/strata");
    let built = layers::build_all(&root)?;
    let scratch = root.join("target/demo");
    if scratch.exists() {
        // A previous demo may have been interrupted while mounted.
        drop(DemoMount(scratch.join("merged")));
        std::fs::remove_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    }
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(scratch.join(d))
            .map_err(|e| format!("{}: {e}", scratch.display()))?;
    }
    let lowerdir = built
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let (upper, work, merged) = (
        scratch.join("upper"),
        scratch.join("work"),
        scratch.join("merged"),
    );
    let opts = format!(
        "lowerdir={lowerdir},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    step(&format!("strata mount -o {opts} {}", merged.display()));
    run(Command::new(&strata)
        .args(["mount", "-o", &opts])
        .arg(&merged))?;
    let guard = DemoMount(merged.clone());
    show_tree("merged view: top over app over base", &merged)?;

    let m = |rel: &str| merged.join(rel);
    step("cat merged/etc/motd    # app's copy hides base's");
    print!(
        "{}",
        std::fs::read_to_string(m("etc/motd")).map_err(|e| e.to_string())?
    );
    step("echo 'edited through strata' >> merged/etc/motd    # copy-up");
    let mut motd = std::fs::read_to_string(m("etc/motd")).map_err(|e| e.to_string())?;
    motd.push_str("edited through strata\n");
    std::fs::write(m("etc/motd"), motd).map_err(|e| e.to_string())?;
    step("echo hi > merged/notes.txt    # a new file");
    std::fs::write(m("notes.txt"), "hi\n").map_err(|e| e.to_string())?;
    step("rm merged/app/config.yaml    # a lower file: leaves a whiteout");
    std::fs::remove_file(m("app/config.yaml")).map_err(|e| e.to_string())?;
    step("rm -r merged/usr/share/doc    # a merged directory: a whiteout for the directory");
    std::fs::remove_dir_all(m("usr/share/doc")).map_err(|e| e.to_string())?;
    show_tree("merged view after the changes", &merged)?;
    show_tree(
        "upper directory: the changes in kernel overlayfs format",
        &upper,
    )?;

    step(&format!("strata umount {}", merged.display()));
    run(Command::new(&strata).arg("umount").arg(&merged))?;
    drop(guard);
    demo_store(&strata, &scratch, &lowerdir)?;
    println!(
        "\nDone. The layers are in layers/build/, the upper directory in {}, the image store in {}.",
        upper.display(),
        scratch.join("store").display()
    );
    Ok(())
}

/// The image store part of the demo: the sample layers become `demo:latest`, a mount of it
/// is changed and committed as `demo:v2`, then images, history and prune.
fn demo_store(strata: &Path, scratch: &Path, lowerdir: &str) -> Result {
    let store = scratch.join("store");
    let shown = |args: &[&str]| -> String {
        let quoted: Vec<String> = args
            .iter()
            .map(|a| match a.contains([' ', '"', '<', '>']) {
                true => format!("'{a}'"),
                false => (*a).to_string(),
            })
            .collect();
        format!("strata {}", quoted.join(" "))
    };
    let sh = |args: &[&str]| -> Result {
        step(&shown(args));
        run(Command::new(strata).arg("--root").arg(&store).args(args))
    };
    let out = |args: &[&str]| -> std::result::Result<String, String> {
        step(&shown(args));
        let o = Command::new(strata)
            .arg("--root")
            .arg(&store)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!(
                "strata {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        print!("{s}");
        Ok(s.trim().to_string())
    };
    println!(
        "\n== the image store ({}; STRATA_ROOT or --root)",
        store.display()
    );
    // The merged view of the sample layers (read-only: no upper) is the image's one layer.
    let view = scratch.join("view");
    let image_mnt = scratch.join("image");
    for d in [&view, &image_mnt] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    step(&format!(
        "strata mount -o lowerdir=… {}    # read-only",
        view.display()
    ));
    run(Command::new(strata)
        .args(["mount", "-o", &format!("lowerdir={lowerdir}")])
        .arg(&view))?;
    let guard = DemoMount(view.clone());
    let view_s = view.display().to_string();
    sh(&["import", "-m", "the sample layers", &view_s, "demo:latest"])?;
    run(Command::new(strata).arg("umount").arg(&view))?;
    drop(guard);

    let mnt_s = image_mnt.display().to_string();
    let id = out(&["mount", "demo:latest", &mnt_s])?;
    let guard = DemoMount(image_mnt.clone());
    step("echo 'committed by the demo' > image/etc/motd; rm image/notes.txt 2>/dev/null; mkdir image/srv");
    std::fs::write(image_mnt.join("etc/motd"), "committed by the demo\n")
        .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(image_mnt.join("srv")).map_err(|e| e.to_string())?;
    sh(&["commit", "-m", "a first try", &id, "demo:v2"])?;
    step("echo hello > image/srv/hello    # one more change, committed under the same tag");
    std::fs::write(image_mnt.join("srv/hello"), "hello\n").map_err(|e| e.to_string())?;
    sh(&[
        "commit",
        "-m",
        "motd and srv/hello",
        "-a",
        "The Demo <demo@example.com>",
        "-c",
        "CMD [\"/bin/sh\"]",
        &id,
        "demo:v2",
    ])?;
    sh(&["ps"])?;
    sh(&["images"])?;
    sh(&["history", "demo:v2"])?;
    sh(&["umount", &id[..12]])?;
    drop(guard);
    sh(&["rm", &id[..12]])?;
    sh(&["image", "prune", "-f"])?;
    sh(&["images"])?;
    sh(&["check"])?;
    Ok(())
}
