//! A real client: Debian's buildah with strata as the `mount_program` of containers/storage's
//! overlay driver, in a private store under a scratch directory (no network, scratch images
//! only). buildah mounts every container and every parent image through strata, and with a
//! mount program it computes a commit's layer by comparing the container's mount with its
//! parent's (the "naive diff": readdir + lstat), so a commit is only right when strata's
//! lookup and readdir agree. Each committed image is pushed to an OCI layout and unpacked by
//! umoci, and the unpacked tree must be exactly the expected one, deletions included.
//!
//! With a mount program, containers/storage stores a layer's whiteouts as OCI `.wh.NAME` and
//! `.wh..wh..opq` files in its `diff/` directory, while strata's own uppers hold 0/0
//! character devices and opaque xattrs: building on committed or pulled images exercises
//! both conventions in lower layers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A private containers/storage store whose overlay driver mounts through strata. On Drop
/// (also when the test panics) it unmounts and removes every buildah container of the
/// store and lazily detaches anything still mounted below the scratch directory.
struct Buildah {
    s: Scratch,
}

impl Buildah {
    fn new() -> Buildah {
        for tool in ["buildah", "umoci", "tar"] {
            let ok = Command::new(tool)
                .arg("--version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            assert!(
                ok,
                "`{tool} --version` failed: this test needs Debian's buildah and umoci \
                 (`cargo xtask test` installs them)"
            );
        }
        let s = Scratch::new();
        let root = s.dir.path().to_path_buf();
        let cs = s.dir("cs");
        s.dir("tmp");
        fs::write(
            cs.join("storage.conf"),
            format!(
                "[storage]\n\
                 driver = \"overlay\"\n\
                 runroot = \"{root}/cs/run\"\n\
                 graphroot = \"{root}/cs/graph\"\n\
                 \n\
                 [storage.options.overlay]\n\
                 mount_program = \"{strata}\"\n",
                root = root.display(),
                strata = strata_bin()
            ),
        )
        .unwrap();
        // Keep the system's registries, containers.conf, credentials and trust policy out of
        // the test.
        fs::write(
            cs.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
        fs::write(cs.join("containers.conf"), "").unwrap();
        fs::write(cs.join("auth.json"), r#"{"auths":{}}"#).unwrap();
        fs::write(
            cs.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        Buildah { s }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.s.path(rel)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.s.dir.path());
        let cs = self.path("cs");
        c.env("CONTAINERS_STORAGE_CONF", cs.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", cs.join("registries.conf"))
            .env("CONTAINERS_CONF", cs.join("containers.conf"))
            .env("REGISTRY_AUTH_FILE", cs.join("auth.json"))
            .env("TMPDIR", self.path("tmp"));
        c
    }

    /// Runs `buildah ARGS`, which must succeed; returns its stdout's last line.
    fn run(&self, args: &[&str]) -> String {
        // Only the commands that read or write images take a trust policy.
        let policy = self.path("cs/policy.json");
        let mut cmd = self.command("buildah");
        cmd.arg(args[0]);
        if ["from", "commit", "push", "pull"].contains(&args[0]) {
            cmd.arg("--signature-policy").arg(&policy);
        }
        cmd.args(&args[1..]);
        run_ok(&mut cmd)
    }

    /// `buildah mount CTR`: the merged directory, which must be a strata mount.
    fn mount(&self, ctr: &str) -> PathBuf {
        let mnt = PathBuf::from(self.run(&["mount", ctr]));
        assert_eq!(
            fstype(&mnt).as_deref(),
            Some("fuse.strata"),
            "buildah mount {ctr} did not mount through strata at {}",
            mnt.display()
        );
        mnt
    }

    /// Commits `ctr` as `image`, pushes it to the OCI layout `oci:<scratch>/oci:TAG` and
    /// unpacks it there with umoci; returns the unpacked root filesystem.
    fn commit_push_unpack(&self, ctr: &str, image: &str, tag: &str) -> PathBuf {
        self.run(&["commit", "--format", "oci", ctr, image]);
        let layout = self.path("oci");
        self.run(&["push", image, &format!("oci:{}:{tag}", layout.display())]);
        let bundle = self.path(&format!("bundle-{tag}"));
        run_ok(
            Command::new("umoci")
                .arg("unpack")
                .arg("--image")
                .arg(format!("{}:{tag}", layout.display()))
                .arg(&bundle),
        );
        bundle.join("rootfs")
    }

    /// The layer directories of the store (`<graph>/overlay/<id>/diff`).
    fn layer_diffs(&self) -> Vec<PathBuf> {
        let overlay = self.path("cs/graph/overlay");
        let mut out: Vec<PathBuf> = fs::read_dir(&overlay)
            .unwrap()
            .map(|e| e.unwrap().path().join("diff"))
            .filter(|p| p.is_dir())
            .collect();
        out.sort();
        out
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        for args in [["umount", "--all"], ["rm", "--all"]] {
            match self.command("buildah").args(args).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "cleanup: buildah {args:?} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("cleanup: buildah {args:?}: {e}"),
            }
        }
        // Whatever is still mounted below the scratch directory (a strata mount of a
        // container, containers/storage's private bind mount of `overlay/`): innermost first.
        let prefix = self.s.dir.path();
        let mut left: Vec<PathBuf> = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .map(PathBuf::from)
            .filter(|m| m.starts_with(prefix))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in left {
            eprintln!("cleanup: {} was left mounted", m.display());
            match Command::new("umount").arg("-l").arg(&m).status() {
                Ok(st) if st.success() => {}
                other => eprintln!("cleanup: umount -l {}: {other:?}", m.display()),
            }
        }
    }
}

/// Runs `cmd`, which must succeed; returns the last line of its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The filesystem type of the mount at `mnt`, per /proc/self/mounts.
fn fstype(mnt: &Path) -> Option<String> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && Path::new(f[1]) == mnt)
        .map(|f| f[2].to_string())
}

// ---------------------------------------------------------------------------------------------
// Expected trees
// ---------------------------------------------------------------------------------------------

type Tree = BTreeMap<PathBuf, Seen>;

/// Builds an expected tree, entry by entry (owner root unless changed).
#[derive(Default)]
struct Want(Tree);

impl Want {
    fn add(mut self, path: &str, kind: &'static str, mode: u32, data: &str) -> Want {
        let type_bits = match kind {
            "dir" => 0o040000,
            "file" => 0o100000,
            "symlink" => 0o120000,
            _ => unreachable!(),
        };
        let size = if kind == "dir" { 0 } else { data.len() as u64 };
        self.0.insert(
            PathBuf::from(path),
            Seen {
                kind,
                mode: type_bits | mode,
                uid: 0,
                gid: 0,
                size,
                data: data.as_bytes().to_vec(),
                xattrs: BTreeMap::new(),
            },
        );
        self
    }
    fn dir(self, path: &str, mode: u32) -> Want {
        self.add(path, "dir", mode, "")
    }
    fn file(self, path: &str, mode: u32, data: &str) -> Want {
        self.add(path, "file", mode, data)
    }
    fn symlink(self, path: &str, target: &str) -> Want {
        self.add(path, "symlink", 0o777, target)
    }
    fn xattr(mut self, path: &str, name: &str, value: &str) -> Want {
        let e = self.0.get_mut(Path::new(path)).unwrap();
        e.xattrs.insert(name.into(), value.as_bytes().to_vec());
        self
    }
    fn owner(mut self, path: &str, uid: u32, gid: u32) -> Want {
        let e = self.0.get_mut(Path::new(path)).unwrap();
        e.uid = uid;
        e.gid = gid;
        self
    }
}

/// Asserts `root` holds exactly `want`, naming every entry that is missing, extra or different.
fn assert_tree(root: &Path, want: &Tree, what: &str) {
    let got = tree(root);
    let mut problems = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => problems.push(format!("missing {}: want {w:?}", p.display())),
            Some(g) if g != w => problems.push(format!(
                "differs {}:\n   got  {g:?}\n   want {w:?}",
                p.display()
            )),
            Some(_) => {}
        }
    }
    for (p, g) in &got {
        if !want.contains_key(p) {
            problems.push(format!("unexpected {}: {g:?}", p.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "{what} ({}) is not the expected tree:\n{}",
        root.display(),
        problems.join("\n")
    );
}

fn assert_enoent(p: &Path) {
    match fs::symlink_metadata(p) {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::NotFound,
            "stat {}: {e}",
            p.display()
        ),
        Ok(m) => panic!(
            "{} should not exist, but is a {:?}",
            p.display(),
            m.file_type()
        ),
    }
}

/// Writes `data` to `p` with permission bits `mode` (independent of the umask).
fn write_mode(p: &Path, data: &str, mode: u32) {
    fs::write(p, data).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Creates directory `p` with permission bits `mode` (independent of the umask).
fn mkdir_mode(p: &Path, mode: u32) {
    fs::create_dir(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn same_inode(a: &Path, b: &Path) -> bool {
    let (a, b) = (
        fs::symlink_metadata(a).unwrap(),
        fs::symlink_metadata(b).unwrap(),
    );
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

// ---------------------------------------------------------------------------------------------
// buildah from scratch → copy → commit; from → write, delete, rm -rf + mkdir → commit
// ---------------------------------------------------------------------------------------------

/// The tree `buildah copy` puts into the scratch container.
fn base_source(src: &Path) {
    for (d, mode) in [
        ("bin", 0o755),
        ("data", 0o755),
        ("data/sub", 0o755),
        ("data/sub/deep", 0o755),
        ("etc", 0o755),
        ("private", 0o700),
        ("tree", 0o755),
        ("var", 0o755),
        ("var/empty", 0o755),
    ] {
        mkdir_mode(&src.join(d), mode);
    }
    write_mode(&src.join("bin/tool"), "#!/bin/sh\necho tool\n", 0o755);
    write_mode(&src.join("data/a"), "a\n", 0o644);
    write_mode(&src.join("data/old"), "old\n", 0o644);
    write_mode(&src.join("data/hard1"), "linked\n", 0o644);
    fs::hard_link(src.join("data/hard1"), src.join("data/hard2")).unwrap();
    symlink("../etc/motd", src.join("data/link")).unwrap();
    write_mode(&src.join("data/sub/b"), "b\n", 0o644);
    write_mode(&src.join("data/sub/deep/d"), "d\n", 0o644);
    write_mode(&src.join("etc/motd"), "hello\n", 0o644);
    write_mode(&src.join("etc/secret"), "secret\n", 0o600);
    write_mode(&src.join("private/key"), "key\n", 0o400);
    write_mode(&src.join("tree/x"), "x\n", 0o644);
    make_old(src);
}

/// Sets the times of everything below `dir` (symlinks included) to 2020-01-01.
///
/// With a mount program, containers/storage finds a commit's changes by comparing lstat
/// results of the container's mount and its parent's: mode, owner, size and mtime, the
/// mtime in whole seconds when one side has no nanoseconds (as files unpacked from a tar
/// layer). A same-size change (a symlink retargeted to a path of the same length) made in
/// the same second as the base image's files would go unseen, whatever the mount program;
/// base images are older than that in real life, and here too.
fn make_old(dir: &Path) {
    run_ok(Command::new("find").arg(dir).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        "@1577836800",
        "{}",
        "+",
    ]));
}

fn base_tree() -> Want {
    Want::default()
        .dir("bin", 0o755)
        .file("bin/tool", 0o755, "#!/bin/sh\necho tool\n")
        .dir("data", 0o755)
        .file("data/a", 0o644, "a\n")
        .file("data/old", 0o644, "old\n")
        .file("data/hard1", 0o644, "linked\n")
        .file("data/hard2", 0o644, "linked\n")
        .symlink("data/link", "../etc/motd")
        .dir("data/sub", 0o755)
        .file("data/sub/b", 0o644, "b\n")
        .dir("data/sub/deep", 0o755)
        .file("data/sub/deep/d", 0o644, "d\n")
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, "hello\n")
        .file("etc/secret", 0o600, "secret\n")
        .dir("private", 0o700)
        .file("private/key", 0o400, "key\n")
        .dir("tree", 0o755)
        .file("tree/x", 0o644, "x\n")
        .dir("var", 0o755)
        .dir("var/empty", 0o755)
}

/// The changes made through `buildah mount` on a container of the base image.
fn change_through_mount(m: &Path) {
    // New files, a new directory and a hard link made in the upper.
    write_mode(&m.join("data/new"), "new\n", 0o644);
    set_xattr(&m.join("data/new"), "user.note", b"hi");
    set_xattr(&m.join("etc/motd"), "user.note", b"lower");
    fs::create_dir_all(m.join("opt/app")).unwrap();
    fs::set_permissions(m.join("opt"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(m.join("opt/app"), fs::Permissions::from_mode(0o750)).unwrap();
    write_mode(&m.join("opt/app/f"), "f\n", 0o644);
    fs::hard_link(m.join("opt/app/f"), m.join("opt/app/f2")).unwrap();
    // Files of the parent layer: contents, mode and owner changed (copy-up).
    let mut motd = fs::read_to_string(m.join("etc/motd")).unwrap();
    motd.push_str("changed\n");
    fs::write(m.join("etc/motd"), motd).unwrap();
    fs::set_permissions(m.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(m.join("etc/secret"), Some(1000), Some(1000)).unwrap();
    // A directory of the parent layer removed and made again (fuse-overlayfs #324): none
    // of its old entries may come back, neither in readdir nor in a lookup.
    fs::remove_dir_all(m.join("data/sub")).unwrap();
    mkdir_mode(&m.join("data/sub"), 0o755);
    write_mode(&m.join("data/sub/c"), "c\n", 0o644);
    assert_eq!(names(&m.join("data/sub")), ["c"]);
    assert_enoent(&m.join("data/sub/b"));
    assert_enoent(&m.join("data/sub/deep"));
    assert_enoent(&m.join("data/sub/deep/d"));
    // A file, an empty directory and a symlink of the parent layer deleted or replaced.
    fs::remove_file(m.join("data/a")).unwrap();
    fs::remove_dir(m.join("var/empty")).unwrap();
    fs::remove_file(m.join("data/link")).unwrap();
    symlink("../bin/tool", m.join("data/link")).unwrap();
    // A lower file renamed; a lower directory moved by mv(1) (a rename, by redirect).
    fs::rename(m.join("data/old"), m.join("data/renamed")).unwrap();
    run_ok(Command::new("mv").arg(m.join("tree")).arg(m.join("moved")));
}

fn derived_tree() -> Want {
    Want::default()
        .dir("bin", 0o755)
        .file("bin/tool", 0o700, "#!/bin/sh\necho tool\n")
        .dir("data", 0o755)
        .file("data/renamed", 0o644, "old\n")
        .file("data/hard1", 0o644, "linked\n")
        .file("data/hard2", 0o644, "linked\n")
        .symlink("data/link", "../bin/tool")
        .file("data/new", 0o644, "new\n")
        .xattr("data/new", "user.note", "hi")
        .dir("data/sub", 0o755)
        .file("data/sub/c", 0o644, "c\n")
        .dir("etc", 0o755)
        .file("etc/motd", 0o644, "hello\nchanged\n")
        .xattr("etc/motd", "user.note", "lower")
        .file("etc/secret", 0o600, "secret\n")
        .owner("etc/secret", 1000, 1000)
        .dir("moved", 0o755)
        .file("moved/x", 0o644, "x\n")
        .dir("opt", 0o755)
        .dir("opt/app", 0o750)
        .file("opt/app/f", 0o644, "f\n")
        .file("opt/app/f2", 0o644, "f\n")
        .dir("private", 0o700)
        .file("private/key", 0o400, "key\n")
        .dir("var", 0o755)
}

#[test]
fn buildah_commit_through_strata_keeps_writes_and_deletions() {
    let b = Buildah::new();
    let src = b.s.dir("src");
    base_source(&src);

    // Image 1: a scratch container filled by `buildah copy` (written through strata).
    let c1 = b.run(&["from", "scratch"]);
    b.run(&["copy", &c1, &format!("{}/", src.display()), "/"]);
    let m1 = b.mount(&c1);
    // containers/storage's call form: `strata -o lowerdir=…,upperdir=…,workdir=…,volatile MNT`.
    let cmdline = fs::read(format!("/proc/{}/cmdline", daemon_pid(&m1))).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains(" -o lowerdir=") && cmdline.contains(",volatile "),
        "unexpected mount_program call: {cmdline}"
    );
    let base = base_tree().0;
    assert_tree(&m1, &base, "the scratch container's mount");
    let rootfs1 = b.commit_push_unpack(&c1, "localhost/strata-base", "base");
    assert_tree(&rootfs1, &base, "the unpacked base image");
    assert!(
        same_inode(&rootfs1.join("data/hard1"), &rootfs1.join("data/hard2")),
        "the hard link written through strata was not committed as one"
    );

    // Image 2: a container of image 1, changed through `buildah mount`.
    let c2 = b.run(&["from", "localhost/strata-base"]);
    let m2 = b.mount(&c2);
    assert_tree(&m2, &base, "a new container of the base image");
    change_through_mount(&m2);
    let derived = derived_tree().0;
    assert_tree(&m2, &derived, "the changed container's mount");
    let rootfs2 = b.commit_push_unpack(&c2, "localhost/strata-derived", "derived");
    assert_tree(&rootfs2, &derived, "the unpacked derived image");
    assert!(same_inode(
        &rootfs2.join("opt/app/f"),
        &rootfs2.join("opt/app/f2")
    ));
    assert!(same_inode(
        &rootfs2.join("data/hard1"),
        &rootfs2.join("data/hard2")
    ));

    // The committed layer is stored with OCI `.wh.` files; a container of image 2 mounts it
    // as a lower layer and must show the same tree.
    assert!(
        b.layer_diffs()
            .iter()
            .any(|d| d.join("data/.wh.a").is_file()),
        "no stored layer holds data/.wh.a: the OCI whiteout convention is not exercised"
    );
    let c3 = b.run(&["from", "localhost/strata-derived"]);
    let m3 = b.mount(&c3);
    assert_tree(&m3, &derived, "a new container of the derived image");
}

// ---------------------------------------------------------------------------------------------
// A pulled image whose layer holds `.wh.NAME` and `.wh..wh..opq` files
// ---------------------------------------------------------------------------------------------

/// Writes `files` (path, data; directories end with `/`) below `dir` and tars them into
/// `tarball` (names relative, owner root, times of 2020: see [`make_old`]).
fn layer_tar(dir: &Path, tarball: &Path, files: &[(&str, &str)]) {
    for (p, data) in files {
        if let Some(d) = p.strip_suffix('/') {
            mkdir_mode(&dir.join(d), 0o755);
        } else {
            write_mode(&dir.join(p), data, 0o644);
        }
    }
    run_ok(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0"])
            .args(["--mtime=@1577836800", "-C"])
            .arg(dir)
            .arg("-cf")
            .arg(tarball)
            .arg("data"),
    );
}

#[test]
fn buildah_builds_on_a_pulled_layer_with_oci_whiteouts() {
    let b = Buildah::new();
    // Two layers, the second deleting from the first the OCI way.
    let l1 = b.s.dir("l1");
    let l2 = b.s.dir("l2");
    layer_tar(
        &l1,
        &b.path("l1.tar"),
        &[
            ("data/", ""),
            ("data/keep", "keep\n"),
            ("data/drop", "drop\n"),
            ("data/gone", "gone\n"),
            ("data/sub/", ""),
            ("data/sub/x", "x\n"),
            ("data/sub/y", "y\n"),
            ("data/olddir/", ""),
            ("data/olddir/o", "o\n"),
            ("data/redo/", ""),
            ("data/redo/r1", "r1\n"),
        ],
    );
    layer_tar(
        &l2,
        &b.path("l2.tar"),
        &[
            ("data/", ""),
            ("data/.wh.gone", ""),
            ("data/.wh.olddir", ""),
            ("data/sub/", ""),
            ("data/sub/.wh..wh..opq", ""),
            ("data/sub/z", "z\n"),
            ("data/redo/", ""),
            ("data/redo/.wh..wh..opq", ""),
            ("data/redo/r2", "r2\n"),
        ],
    );
    let layout = b.path("wh");
    let image = format!("{}:base", layout.display());
    run_ok(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    run_ok(Command::new("umoci").args(["new", "--image", &image]));
    for tarball in ["l1.tar", "l2.tar"] {
        run_ok(
            Command::new("umoci")
                .args(["raw", "add-layer", "--image", &image])
                .arg(b.path(tarball)),
        );
    }
    // A relative layout path: buildah names the image after it, and the scratch
    // directory's name is not a valid (lowercase) repository name.
    let id = b.run(&["pull", "--quiet", "oci:wh:base"]);
    b.run(&["tag", &id, "localhost/strata-wh"]);
    // The premise: with a mount program the store keeps the markers as regular files.
    let diffs = b.layer_diffs();
    assert!(
        diffs.iter().any(|d| d.join("data/.wh.gone").is_file())
            && diffs
                .iter()
                .any(|d| d.join("data/sub/.wh..wh..opq").is_file()),
        "buildah stored the pulled layer without OCI .wh. files, so this test would not \
         exercise them; layers: {diffs:?}"
    );

    let c = b.run(&["from", "localhost/strata-wh"]);
    let m = b.mount(&c);
    let pulled = Want::default()
        .dir("data", 0o755)
        .file("data/keep", 0o644, "keep\n")
        .file("data/drop", 0o644, "drop\n")
        .dir("data/sub", 0o755)
        .file("data/sub/z", 0o644, "z\n")
        .dir("data/redo", 0o755)
        .file("data/redo/r2", 0o644, "r2\n");
    assert_tree(&m, &pulled.0, "a container of the pulled image");
    for gone in [
        "data/gone",
        "data/.wh.gone",
        "data/olddir",
        "data/sub/x",
        "data/sub/.wh..wh..opq",
        "data/redo/r1",
    ] {
        assert_enoent(&m.join(gone));
    }

    // Build on it: write into the opaque directory (copy-up), delete a file, bring back a
    // whited-out file and directory, and remove and remake a directory.
    write_mode(&m.join("data/sub/w"), "w\n", 0o644);
    fs::remove_file(m.join("data/drop")).unwrap();
    write_mode(&m.join("data/gone"), "back\n", 0o644);
    mkdir_mode(&m.join("data/olddir"), 0o755);
    write_mode(&m.join("data/olddir/n"), "n\n", 0o644);
    fs::remove_dir_all(m.join("data/redo")).unwrap();
    mkdir_mode(&m.join("data/redo"), 0o755);
    write_mode(&m.join("data/redo/r3"), "r3\n", 0o644);
    assert_enoent(&m.join("data/olddir/o"));
    assert_enoent(&m.join("data/sub/x"));
    assert_enoent(&m.join("data/redo/r1"));
    assert_enoent(&m.join("data/redo/r2"));

    let built = Want::default()
        .dir("data", 0o755)
        .file("data/keep", 0o644, "keep\n")
        .file("data/gone", 0o644, "back\n")
        .dir("data/olddir", 0o755)
        .file("data/olddir/n", 0o644, "n\n")
        .dir("data/sub", 0o755)
        .file("data/sub/w", 0o644, "w\n")
        .file("data/sub/z", 0o644, "z\n")
        .dir("data/redo", 0o755)
        .file("data/redo/r3", 0o644, "r3\n")
        .0;
    assert_tree(&m, &built, "the changed container's mount");
    let rootfs = b.commit_push_unpack(&c, "localhost/strata-wh-built", "built");
    assert_tree(
        &rootfs,
        &built,
        "the unpacked image built on the pulled one",
    );
}
