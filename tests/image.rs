//! The image store through the command line: import, images, inspect, history, tag, rmi,
//! prune, mounts of images, commit (checked against the real `umoci unpack`), check, and
//! bad input. Every test has its own store (`--root`) in a scratch directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{put, set_xattr, strata_bin, tree, Scratch, Seen, StrataMount, StrataMountGuard};
use serde_json::Value;

/// A scratch store and helpers to run strata on it.
struct Store {
    s: Scratch,
    root: PathBuf,
}

impl Store {
    fn new() -> Store {
        let s = Scratch::new();
        let root = s.path("store");
        Store { s, root }
    }

    /// `strata --root STORE`, to be given its arguments.
    fn cmd(&self) -> Command {
        let mut c = Command::new(strata_bin());
        c.arg("--root").arg(&self.root);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs strata; asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs strata; asserts failure with a message on stderr; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "strata {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            err.starts_with("strata: "),
            "no clear error for {args:?}: {err:?}"
        );
        err
    }

    fn inspect(&self, image: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", image])).unwrap();
        v[0].clone()
    }

    fn id(&self, image: &str) -> String {
        self.inspect(image)["Id"].as_str().unwrap().to_string()
    }

    /// Mounts `image` at a new directory `name` of the scratch dir.
    fn mount(&self, image: &str, name: &str) -> (StrataMount, String) {
        let mnt = self.s.dir(name);
        let out = self.ok(&["mount", image, mnt.to_str().unwrap()]);
        (StrataMountGuard::adopt(mnt), out.trim().to_string())
    }

    /// Everything the store holds on disk, by path (what bad input must leave alone).
    fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in ["blobs/sha256", "layers", "tmp", "mounts"] {
            if let Ok(rd) = fs::read_dir(self.root.join(d)) {
                for e in rd {
                    out.push(format!("{d}/{}", e.unwrap().file_name().to_string_lossy()));
                }
            }
        }
        out.push(fs::read_to_string(self.root.join("index.json")).unwrap_or_default());
        out.sort();
        out
    }
}

/// A small base tree with every kind of entry.
fn base_tree(dir: &Path) {
    put(&dir.join("etc/motd"), "hello\n");
    put(&dir.join("etc/keep"), "keep\n");
    put(&dir.join("data/a/one"), "one\n");
    put(&dir.join("data/a/two"), "two\n");
    put(&dir.join("data/b/three"), "three\n");
    put(&dir.join("bin/tool"), "#!/bin/sh\necho tool\n");
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("../etc/motd", dir.join("bin/motd-link")).unwrap();
    fs::hard_link(dir.join("etc/keep"), dir.join("etc/keep-link")).unwrap();
    set_xattr(&dir.join("etc"), "user.note", b"etc dir");
    std::os::unix::fs::chown(dir.join("data/b/three"), Some(1234), Some(5678)).unwrap();
}

fn stdout_lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn import_lists_inspects_and_shows_history() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    let id = st.ok(&["import", "-m", "the base", src.to_str().unwrap(), "demo"]);
    let id = id.trim();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    let images = st.ok(&["images"]);
    let lines = stdout_lines(&images);
    assert_eq!(lines.len(), 2, "{images}");
    assert!(
        lines[0].starts_with("REPOSITORY   TAG      IMAGE ID       CREATED"),
        "{images}"
    );
    let cols: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&cols[..3], &["demo", "latest", &id[7..19]], "{images}");
    assert_eq!(st.ok(&["images", "-q"]).trim(), &id[7..19]);
    assert_eq!(st.ok(&["images", "-q", "--no-trunc"]).trim(), id);
    let json: Value = serde_json::from_str(st.ok(&["images", "--format", "json"]).trim()).unwrap();
    assert_eq!(json["Repository"], "demo");
    assert_eq!(
        st.ok(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
            .trim(),
        "demo:latest"
    );

    // The id is the sha256 of the stored config bytes.
    let v = st.inspect("demo");
    assert_eq!(v["Id"], id);
    let config = fs::read(st.root.join("blobs/sha256").join(&id[7..])).unwrap();
    let out = Command::new("sha256sum")
        .arg(st.root.join("blobs/sha256").join(&id[7..]))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&id[7..]));
    let cfg: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(v["RepoTags"], serde_json::json!(["demo:latest"]));
    assert_eq!(v["RootFS"]["Layers"], cfg["rootfs"]["diff_ids"]);
    assert_eq!(v["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Comment"], "the base");
    assert!(v["Size"].as_u64().unwrap() > 20);
    assert_eq!(v["Parent"], "");
    // The layer tar is stored under its diff id.
    let diff = v["RootFS"]["Layers"][0].as_str().unwrap();
    let out = Command::new("sha256sum")
        .arg(st.root.join("blobs/sha256").join(&diff[7..]))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&diff[7..]));

    let history = st.ok(&["history", "demo"]);
    let lines = stdout_lines(&history);
    assert_eq!(lines.len(), 2, "{history}");
    assert!(lines[0].starts_with("IMAGE          CREATED"), "{history}");
    assert!(
        lines[1].starts_with(&id[7..19]) && lines[1].ends_with("the base"),
        "{history}"
    );
    assert_eq!(
        st.ok(&["image", "history", "-q", "demo"]).trim(),
        &id[7..19]
    );

    // The image mounts as the tree it was made from.
    let (m, _) = st.mount("demo", "m1");
    assert_eq!(tree(&m.mnt), tree(&src));
}

/// The changes made on a mount of the base image: every kind of change overlay records.
fn change(mnt: &Path) {
    put(&mnt.join("new/file"), "new\n");
    fs::write(mnt.join("etc/motd"), "changed\n").unwrap();
    fs::remove_file(mnt.join("etc/keep-link")).unwrap();
    fs::remove_dir_all(mnt.join("data/a")).unwrap();
    put(&mnt.join("data/a/fresh"), "fresh\n");
    fs::rename(mnt.join("data/b"), mnt.join("data/moved")).unwrap();
    fs::set_permissions(mnt.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("/etc/motd", mnt.join("new/abs-link")).unwrap();
    fs::hard_link(mnt.join("new/file"), mnt.join("new/file-link")).unwrap();
    let st = Command::new("mkfifo")
        .arg(mnt.join("new/fifo"))
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("mknod")
        .arg(mnt.join("new/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success());
    set_xattr(&mnt.join("new/file"), "user.color", b"blue");
}

/// The tree umoci unpacks from an OCI layout export of `image`.
fn umoci_tree(st: &Store, image: &str, name: &str) -> BTreeMap<PathBuf, Seen> {
    let layout = st.s.path(&format!("{name}-oci"));
    st.ok(&["export-oci", image, layout.to_str().unwrap()]);
    let bundle = st.s.path(&format!("{name}-bundle"));
    let tag = image.rsplit_once(':').map_or("latest", |(_, t)| t);
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci is needed (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tree(&bundle.join("rootfs"))
}

#[test]
fn commit_makes_a_child_image_that_umoci_unpacks_as_the_mount_showed_it() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    st.ok(&["import", src.to_str().unwrap(), "demo:latest"]);
    let base = st.id("demo");
    let (m, mid) = st.mount("demo", "m1");
    assert_eq!(mid.len(), 64, "{mid}");
    change(&m.mnt);
    let merged = tree(&m.mnt);
    let id = st.ok(&[
        "commit",
        "-m",
        "second",
        "-a",
        "Ann <ann@example.com>",
        "-c",
        r#"CMD ["/bin/sh"]"#,
        "-c",
        "ENV A=b",
        m.mnt.to_str().unwrap(),
        "demo:v2",
    ]);
    let id = id.trim().to_string();
    let v = st.inspect("demo:v2");
    assert_eq!(v["Id"], id);
    assert_eq!(v["Parent"], base);
    assert_eq!(v["Author"], "Ann <ann@example.com>");
    assert_eq!(v["Comment"], "second");
    assert_eq!(v["Config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(v["Config"]["Env"], serde_json::json!(["A=b"]));
    assert_eq!(v["RootFS"]["Layers"].as_array().unwrap().len(), 2);

    // history: the new row, then the parent's own row (its id), docker's columns.
    let history = st.ok(&["history", "demo:v2"]);
    let lines = stdout_lines(&history);
    assert_eq!(lines.len(), 3, "{history}");
    assert!(
        lines[1].starts_with(&id[7..19])
            && lines[1].contains("strata commit")
            && lines[1].ends_with("second"),
        "{history}"
    );
    assert!(lines[2].starts_with(&base[7..19]), "{history}");
    let images = st.ok(&["images"]);
    assert_eq!(stdout_lines(&images).len(), 3, "{images}");

    // umoci applies the layers (whiteouts and opaque dirs included) to the merged tree.
    assert_eq!(umoci_tree(&st, "demo:v2", "v2"), merged);
    // And the store's own mount of the new image shows it too.
    let (m2, _) = st.mount("demo:v2", "m2");
    assert_eq!(tree(&m2.mnt), merged);
    drop(m2);
    // The store's layers are kernel overlay lower dirs: the kernel shows the same tree.
    let lowers: Vec<String> = v["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|d| {
            st.root
                .join("layers")
                .join(&d.as_str().unwrap()[7..])
                .display()
                .to_string()
        })
        .collect();
    let kmnt = st.s.dir("kernel");
    let k = common::KernelMount::new(&format!("lowerdir={}", lowers.join(":")), &kmnt);
    assert_eq!(tree(&k.mnt), merged);
    drop(k);

    // No 0/0 char device in the committed tar: whiteouts are .wh. files.
    let diff = v["RootFS"]["Layers"][1].as_str().unwrap().to_string();
    let list = Command::new("tar")
        .arg("tvf")
        .arg(st.root.join("blobs/sha256").join(&diff[7..]))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("etc/.wh.keep-link"), "{list}");
    assert!(list.contains("data/a/.wh..wh..opq"), "{list}");
    assert!(
        !list
            .lines()
            .any(|l| l.starts_with('c') && l.contains(" 0,0 ")),
        "{list}"
    );

    // The same upper committed again gives the same layer.
    let again = st.ok(&["commit", &mid[..12], "demo:v3"]);
    let v3 = st.inspect(again.trim());
    assert_eq!(v3["RootFS"]["Layers"][1], diff.as_str());
}

#[test]
fn a_commit_of_a_live_mount_never_holds_a_half_written_file() {
    let st = Store::new();
    let src = st.s.dir("src");
    put(&src.join("f"), "x");
    st.ok(&["import", src.to_str().unwrap(), "live"]);
    let (m, mid) = st.mount("live", "m1");
    // Opened for writing here: the copy-up is done before the first commit.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.mnt.join("f"))
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    /// Stops the writer even when an assertion fails (its open file would keep the mount busy).
    struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let mut n = 0u8;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let buf = vec![b'a' + n % 26; 4 << 20];
                f.write_all_at(&buf, 0).unwrap();
                n = n.wrapping_add(1);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let mut seen = 0;
    for i in 0..6 {
        let out = st.run(&["commit", &mid, &format!("live:{i}")]);
        if !out.status.success() {
            // Allowed: a file that never holds still is refused, by name.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("kept changing"), "{err}");
            continue;
        }
        let v = st.inspect(&format!("live:{i}"));
        let diff = v["RootFS"]["Layers"][1].as_str().unwrap().to_string();
        let layer = st.root.join("layers").join(&diff[7..]).join("f");
        let data = fs::read(&layer).unwrap();
        assert!(!data.is_empty());
        assert!(
            data.iter().all(|b| *b == data[0]),
            "commit {i} holds a half-written file"
        );
        seen += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        seen > 0,
        "no commit succeeded while the file was being written"
    );
}

#[test]
fn tags_rmi_and_mounts_behave_as_in_docker() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    st.ok(&["import", src.to_str().unwrap(), "demo"]);
    let id = st.id("demo");
    st.ok(&["tag", "demo", "other/name:1"]);
    st.ok(&["tag", &id[7..15], "localhost:5000/x/y"]);
    let v = st.inspect("demo");
    assert_eq!(
        v["RepoTags"],
        serde_json::json!(["demo:latest", "localhost:5000/x/y:latest", "other/name:1"])
    );
    assert_eq!(st.id("docker.io/library/demo:latest"), id);

    // Removing one of several tags only untags.
    assert_eq!(
        st.ok(&["rmi", "other/name:1"]).trim(),
        "Untagged: other/name:1"
    );
    // By id with several tags: refused without -f.
    let err = st.fails(&["rmi", &id[7..19]]);
    assert!(err.contains("referenced in multiple repositories"), "{err}");

    // One tag of several goes even while a mount uses the image (as in docker)…
    let (m, mid) = st.mount("demo", "m1");
    assert_eq!(
        st.ok(&["rmi", "localhost:5000/x/y"]).trim(),
        "Untagged: localhost:5000/x/y:latest"
    );
    // …the last one is refused, naming the mount.
    let err = st.fails(&["rmi", "demo"]);
    assert!(
        err.contains("demo") && err.contains(&mid[..12]) && err.contains(m.mnt.to_str().unwrap()),
        "{err}"
    );
    let ps = st.ok(&["ps"]);
    assert!(
        ps.contains(&mid[..12]) && ps.contains("mounted") && ps.contains("demo:latest"),
        "{ps}"
    );

    // umount by id keeps the mount's upper; rm removes it.
    fs::write(m.mnt.join("etc/motd"), "kept\n").unwrap();
    st.ok(&["umount", &mid[..12]]);
    assert!(common::wait_for(5, || !common::mounted(&m.mnt)));
    assert!(st.ok(&["ps"]).contains("unmounted"));
    let upper = st.root.join("mounts").join(&mid).join("upper");
    assert_eq!(
        fs::read_to_string(upper.join("etc/motd")).unwrap(),
        "kept\n"
    );
    st.ok(&["rm", &mid[..12]]);
    assert!(!upper.exists());
    assert_eq!(st.ok(&["ps", "-q"]), "");
    drop(m);

    // Now it goes: untagged, then deleted, with its layer.
    let out = st.ok(&["rmi", "-f", &id[7..19]]);
    assert!(
        out.contains("Untagged: demo:latest") && out.contains(&format!("Deleted: {id}")),
        "{out}"
    );
    assert_eq!(st.ok(&["images", "-q"]), "");
    assert_eq!(fs::read_dir(st.root.join("layers")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(st.root.join("blobs/sha256")).unwrap().count(),
        0
    );
    st.ok(&["check"]);
}

#[test]
fn prune_removes_dangling_images_and_with_all_every_unused_one() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    st.ok(&["import", src.to_str().unwrap(), "demo"]);
    let base = st.id("demo");
    let (m, mid) = st.mount("demo", "m1");
    put(&m.mnt.join("one"), "1");
    let first = st.ok(&["commit", &mid, "demo:v2"]).trim().to_string();
    put(&m.mnt.join("two"), &"2".repeat(100_000));
    let second = st.ok(&["commit", &mid, "demo:v2"]).trim().to_string();
    // The first v2 lost its tag: dangling, listed as <none>.
    let dangling = st.ok(&["images", "--filter", "dangling=true", "-q", "--no-trunc"]);
    assert_eq!(dangling.trim(), first);
    assert!(st.ok(&["images"]).contains("<none>"));
    let out = st.ok(&["image", "prune", "-f"]);
    assert!(out.starts_with("Deleted Images:\ndeleted: "), "{out}");
    assert!(out.contains(&first) && !out.contains(&second), "{out}");
    assert!(out.contains("Total reclaimed space: "), "{out}");
    assert!(st.run(&["inspect", &first]).status.code() == Some(1));
    // Nothing dangling is left: a second prune deletes nothing.
    assert_eq!(
        st.ok(&["image", "prune", "-f"]).trim(),
        "Total reclaimed space: 0B"
    );
    // Filters and the repository argument.
    assert_eq!(
        st.ok(&[
            "images",
            "--filter",
            "reference=demo:v*",
            "--format",
            "{{.Tag}}"
        ])
        .trim(),
        "v2"
    );
    assert_eq!(st.ok(&["images", "demo", "-q"]).lines().count(), 2);
    assert_eq!(st.ok(&["images", "demo:latest", "-q"]).trim(), &base[7..19]);
    assert_eq!(
        st.ok(&["images", "--filter", "dangling=true"])
            .lines()
            .count(),
        1
    );
    // Without -f it asks, and "no" (or end of input: `run` gives it none) keeps everything.
    let out = st.run(&["image", "prune", "-a"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Are you sure"));
    assert_eq!(st.ok(&["images", "-q"]).lines().count(), 2);

    // An untagged image with a child is an intermediate one: listed only with -a.
    st.ok(&["tag", "demo", "keep:base"]);
    assert_eq!(st.ok(&["rmi", "demo"]).trim(), "Untagged: demo:latest");
    assert_eq!(
        st.ok(&["rmi", "-f", "keep:base"]).trim(),
        "Untagged: keep:base"
    );
    let listed = st.ok(&["images", "-q", "--no-trunc"]);
    assert!(!listed.contains(&base), "{listed}");
    let all = st.ok(&["images", "-a", "-q", "--no-trunc"]);
    assert!(all.contains(&base), "{all}");
    st.ok(&["tag", &base, "demo"]);
    // -a: every image no mount uses. The mount uses demo (the base), so it stays.
    let out = st.ok(&["image", "prune", "-a", "-f"]);
    assert!(
        out.contains("untagged: demo:v2") && out.contains(&second),
        "{out}"
    );
    assert_eq!(st.ok(&["images", "-q", "--no-trunc"]).trim(), base);
    let layers = fs::read_dir(st.root.join("layers")).unwrap().count();
    assert_eq!(layers, 1, "only the base layer is left");
    drop(m);
    st.ok(&["rm", "-f", &mid]);
    let out = st.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("untagged: demo:latest"), "{out}");
    assert_eq!(fs::read_dir(st.root.join("layers")).unwrap().count(), 0);
    st.ok(&["check"]);
}

/// A tar built by hand: (name, type flag, data, link name).
fn raw_tar(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = *kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    st.ok(&["import", src.to_str().unwrap(), "demo"]);
    let before = st.files();
    let outside = st.s.dir("outside");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", raw_tar(&[("a/../../x", b'0', b"x", "")]), "'..'"),
        (
            "absolute",
            raw_tar(&[("/etc/x", b'0', b"x", "")]),
            "absolute",
        ),
        (
            "symlink-out",
            raw_tar(&[("l", b'2', b"", "../../outside")]),
            "outside",
        ),
        (
            "write-through-symlink",
            raw_tar(&[("l", b'2', b"", "/"), ("l/x", b'0', b"x", "")]),
            "l/x",
        ),
        (
            "hardlink-out",
            raw_tar(&[("h", b'1', b"", "../outside/f")]),
            "h",
        ),
        (
            "hardlink-missing",
            raw_tar(&[("h", b'1', b"", "nothing")]),
            "h",
        ),
        (
            "duplicate",
            raw_tar(&[("d", b'0', b"1", ""), ("d", b'0', b"2", "")]),
            "d",
        ),
        (
            "truncated",
            {
                let mut t = raw_tar(&[("big", b'0', &[7u8; 4096], "")]);
                t.truncate(1500);
                t
            },
            "truncated",
        ),
        (
            "oversized",
            raw_tar(&[
                ("pax", b'x', &vec![b'a'; 2 << 20], ""),
                ("f", b'0', b"x", ""),
            ]),
            "limit",
        ),
        (
            "corrupt",
            {
                let mut t = raw_tar(&[("f", b'0', b"x", "")]);
                t[10] = b'Z';
                t
            },
            "corrupt",
        ),
    ];
    for (name, tar, why) in &cases {
        let path = st.s.path(&format!("{name}.tar"));
        fs::write(&path, tar).unwrap();
        let err = st.fails(&["import", path.to_str().unwrap(), &format!("bad:{name}")]);
        assert!(
            err.to_lowercase().contains(&why.to_lowercase()),
            "{name}: {err}"
        );
        assert_eq!(st.files(), before, "{name} left something in the store");
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "{name} wrote outside"
        );
    }
    let gz = st.s.path("bad.tar.gz");
    fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]).unwrap();
    let err = st.fails(&["import", gz.to_str().unwrap()]);
    assert!(err.contains("bad.tar.gz"), "{err}");
    assert_eq!(st.files(), before);

    for r in ["Demo", "a:b:c", ":tag", "demo:", "a//b", "demo@sha256:12"] {
        let err = st.fails(&["tag", "demo", r]);
        assert!(err.contains(r), "{r}: {err}");
    }
    let err = st.fails(&["tag", "missing", "x"]);
    assert!(err.contains("no such image: missing"), "{err}");
    let err = st.fails(&["inspect", "demo", "missing:1"]);
    assert!(err.contains("missing:1"), "{err}");
    let err = st.fails(&["commit", "/tmp", "x"]);
    assert!(err.contains("/tmp is not a mount"), "{err}");
    let err = st.fails(&["import", "/nonexistent/dir", "x"]);
    assert!(err.contains("/nonexistent/dir"), "{err}");
    let err = st.fails(&["commit", "-c", "FROM x", "abc"]);
    assert!(err.contains("FROM x"), "{err}");
    assert_eq!(st.files(), before);

    // A directory that is not a store.
    let err = common::strata(&["--root", src.to_str().unwrap(), "images"]);
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(
        !err.status.success() && msg.contains("is not a strata store"),
        "{msg}"
    );
    assert!(!src.join("index.json").exists() && !src.join("blobs").exists());

    // A corrupted blob is found by check, by name.
    st.ok(&["check"]);
    let diff = st.inspect("demo")["RootFS"]["Layers"][0]
        .as_str()
        .unwrap()
        .to_string();
    let blob = st.root.join("blobs/sha256").join(&diff[7..]);
    let mut data = fs::read(&blob).unwrap();
    data[600] ^= 1;
    fs::write(&blob, &data).unwrap();
    let err = st.fails(&["check"]);
    let out = String::from_utf8_lossy(&st.run(&["check"]).stdout).into_owned();
    assert!(
        out.contains(&diff) && out.contains("corrupted"),
        "{out}{err}"
    );
    let id = st.id("demo");
    let cfg = st.root.join("blobs/sha256").join(&id[7..]);
    fs::write(&cfg, b"{}").unwrap();
    let err = st.fails(&["inspect", "demo"]);
    assert!(err.contains("corrupted"), "{err}");
}

#[test]
fn concurrent_commits_and_prunes_keep_the_store_consistent() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    st.ok(&["import", src.to_str().unwrap(), "demo"]);
    let (m1, id1) = st.mount("demo", "m1");
    let (m2, id2) = st.mount("demo", "m2");
    for round in 0..4 {
        put(&m1.mnt.join(format!("r{round}")), "one");
        put(&m2.mnt.join(format!("r{round}")), "two");
        let spawn = |args: &[&str]| st.cmd().args(args).spawn().unwrap();
        let a = spawn(&["commit", &id1, &format!("one:{round}")]);
        let b = spawn(&["commit", &id2, &format!("two:{round}")]);
        let c = spawn(&["image", "prune", "-f"]);
        for mut ch in [a, b, c] {
            assert!(ch.wait().unwrap().success());
        }
        st.ok(&["check"]);
        assert_eq!(st.ok(&["images", "-q"]).lines().count(), 3 + 2 * round);
    }
    let (m3, _) = st.mount("two:3", "m3");
    assert_eq!(fs::read_to_string(m3.mnt.join("r3")).unwrap(), "two");
    drop((m1, m2, m3));
}

/// Runs `args` with a crash at every crash point in turn until it completes; after each
/// crash, `check --repair` must leave a clean store that still has every image `keep`
/// lists, with the same id, and `check` must then be clean.
fn crash_everywhere(
    st: &Store,
    args: &[&str],
    keep: &[String],
    mut before_each: impl FnMut(),
) -> u64 {
    let mut n = 1;
    loop {
        before_each();
        let out = st
            .cmd()
            .args(args)
            .env("STRATA_CRASH_AT", n.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            return n - 1;
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{args:?} at point {n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        st.ok(&["check", "--repair"]);
        let clean = st.ok(&["check"]);
        assert!(clean.trim_end().ends_with(": ok"), "{clean}");
        let ids = st.ok(&["images", "-a", "-q", "--no-trunc"]);
        for k in keep {
            assert!(
                ids.contains(k.as_str()),
                "{args:?} crashed at point {n} lost {k}"
            );
        }
        n += 1;
        assert!(n < 500, "{args:?} never completed");
    }
}

#[test]
fn a_kill_at_any_point_of_import_commit_or_prune_loses_nothing_published() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    st.ok(&["import", src.to_str().unwrap(), "demo"]);
    let keep = vec![st.id("demo")];
    let points = crash_everywhere(
        &st,
        &["import", src.to_str().unwrap(), "again"],
        &keep,
        || {},
    );
    assert!(points > 5, "import reached only {points} crash points");
    let (m, mid) = st.mount("demo", "m1");
    put(&m.mnt.join("new"), "new");
    let points = crash_everywhere(&st, &["commit", &mid, "demo:v2"], &keep, || {});
    assert!(points > 5, "commit reached only {points} crash points");
    let v2 = st.id("demo:v2");
    assert_eq!(fs::read_to_string(m.mnt.join("new")).unwrap(), "new");
    // Prune: each round has something to delete (a fresh dangling image).
    let keep = vec![keep[0].clone(), v2];
    let mut round = 0;
    let points = crash_everywhere(&st, &["image", "prune", "-f"], &keep, || {
        round += 1;
        put(&src.join("round"), &round.to_string());
        st.ok(&["import", src.to_str().unwrap()]);
    });
    assert!(points > 3, "prune reached only {points} crash points");
    // And kills at moments no crash point marks: in the middle of writing or unpacking.
    let big = st.s.dir("big");
    for i in 0..40 {
        put(&big.join(format!("f{i}")), &"x".repeat(256 << 10));
    }
    for delay_ms in [0, 2, 5, 10, 20, 40, 80, 160] {
        let mut child = st
            .cmd()
            .args(["import", big.to_str().unwrap(), "big"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        // (Ok also when the import finished first.)
        child.kill().unwrap();
        child.wait().unwrap();
        st.ok(&["check", "--repair"]);
        assert!(st.ok(&["check"]).trim_end().ends_with(": ok"));
        let ids = st.ok(&["images", "-a", "-q", "--no-trunc"]);
        assert!(
            keep.iter().all(|k| ids.contains(k.as_str())),
            "a kill after {delay_ms} ms lost an image"
        );
    }
    drop(m);
    let (m2, _) = st.mount("demo:v2", "m2");
    assert_eq!(fs::read_to_string(m2.mnt.join("new")).unwrap(), "new");
    assert_eq!(
        fs::read_to_string(m2.mnt.join("etc/motd")).unwrap(),
        "hello\n"
    );
}

#[test]
fn check_repair_unpacks_a_missing_layer_directory_again_from_its_tar() {
    let st = Store::new();
    let src = st.s.dir("src");
    base_tree(&src);
    st.ok(&["import", src.to_str().unwrap(), "demo"]);
    let diff = st.inspect("demo")["RootFS"]["Layers"][0]
        .as_str()
        .unwrap()
        .to_string();
    let dir = st.root.join("layers").join(&diff[7..]);
    fs::remove_dir_all(&dir).unwrap();
    let out = String::from_utf8_lossy(&st.run(&["check"]).stdout).into_owned();
    assert!(out.contains(&diff) && out.contains("is missing"), "{out}");
    st.fails(&["check"]);
    let out = st.ok(&["check", "--repair"]);
    assert!(out.contains("unpacked again from its tar"), "{out}");
    st.ok(&["check"]);
    let (m, _) = st.mount("demo", "m1");
    assert_eq!(tree(&m.mnt), tree(&src));
}
