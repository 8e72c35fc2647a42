//! The kernel-differential test: random operation sequences over random layer stacks, run
//! on strata and on kernel overlayfs, compared step by step and at the end (see
//! `common/difftest/mod.rs` for what is compared and the accepted differences).
//!
//! - `fixed_seeds`: a fixed set of seeds, the same on every run.
//! - `random_time_bounded`: new seeds for `STRATA_DIFFTEST_SECONDS` seconds (default 45),
//!   starting at `STRATA_DIFFTEST_SEED` (default: from the clock); a failure prints its
//!   seed, and `STRATA_DIFFTEST_SEED=S STRATA_DIFFTEST_SECONDS=0` runs exactly that seed.
//! - `regress_*`: every divergence found, shrunk, replayed.
//!
//! `STRATA_DIFFTEST_KERNEL_OPTS` sets the kernel's mount options (default: the plain
//! format strata writes), `STRATA_DIFFTEST_SHRINK_SECONDS` the time a shrink may take.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
#[path = "common/difftest/mod.rs"]
mod difftest;

use difftest::{check_seed, replay, replay_diverging, report};
use std::time::{Duration, Instant};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// Seeds every run checks.
const FIXED_SEEDS: std::ops::Range<u64> = 1..201;

#[test]
fn fixed_seeds() {
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in FIXED_SEEDS {
        if let Err(e) = check_seed(seed) {
            eprintln!("difftest: {e}");
            failures.push(e);
        }
    }
    report("fixed_seeds", started, failures.is_empty());
    assert!(
        failures.is_empty(),
        "{} of {} fixed seeds diverge:\n\n{}",
        failures.len(),
        FIXED_SEEDS.count(),
        failures.join("\n\n")
    );
}

#[test]
fn random_time_bounded() {
    let started = Instant::now();
    let secs = env_u64("STRATA_DIFFTEST_SECONDS").unwrap_or(45);
    let first = env_u64("STRATA_DIFFTEST_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_000_000
    });
    eprintln!("difftest: random run from seed {first} for {secs} s");
    let deadline = started + Duration::from_secs(secs);
    let mut seed = first;
    loop {
        if let Err(e) = check_seed(seed) {
            report("random_time_bounded", started, false);
            panic!(
                "{e}\n\nreplay: STRATA_DIFFTEST_SEED={seed} STRATA_DIFFTEST_SECONDS=0 \
                 cargo nextest run --test difftest random_time_bounded --no-capture"
            );
        }
        seed += 1;
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!("difftest: seeds {first}..={} clean", seed - 1);
    report("random_time_bounded", started, true);
}

/// The harness itself: a layer stack and operations survive their text form.
#[test]
fn text_forms_round_trip() {
    use difftest::{gen, layers, ops, rng::Rng};
    for seed in 0..200 {
        let mut r = Rng::new(seed);
        for e in layers::generate(&mut r) {
            let line = e.to_string();
            assert_eq!(layers::Entry::parse(&line).unwrap(), e, "{line}");
        }
        let view = vec![("a".to_string(), 'f'), ("d".to_string(), 'd')];
        let slots = vec![Some(false), Some(true), None, None];
        for _ in 0..50 {
            let st = gen::step(&mut r, &view, &slots, false);
            let line = st.to_string();
            assert_eq!(ops::Step::parse(&line).unwrap(), st, "{line}");
        }
    }
}

/// The comparator sees what it must: a content difference, and inode classes that differ
/// (two names of one file against two files), forgiven only for lower hard links.
#[test]
fn the_comparator_sees_differences() {
    use difftest::{compare, layers};
    let dir = tempfile::Builder::new()
        .prefix("strata-test-difftest-self-")
        .tempdir_in("/tmp")
        .unwrap();
    let a = layers::materialize(
        &layers::parse(&["L0 file x d=5:1", "L0 link y =x", "L0 file z d=5:2"]),
        &dir.path().join("a"),
    );
    let b = layers::materialize(
        &layers::parse(&["L0 file x d=5:1", "L0 file y d=5:1", "L0 file z d=5:3"]),
        &dir.path().join("b"),
    );
    let (ta, tb) = (
        compare::snapshot(&a.lowers[0], false),
        compare::snapshot(&b.lowers[0], true),
    );
    let d = compare::trees(&ta, &tb, None, false);
    let what: Vec<(&str, &str)> = d.iter().map(|d| (d.path.as_str(), d.field)).collect();
    // x and y: link counts 2 against 1; z: contents
    assert_eq!(
        what,
        [("x", "nlink"), ("y", "nlink"), ("z", "data")],
        "{d:?}"
    );
    // same trees but for the inode classes: `b` as strata, `a` as the kernel
    let c = layers::materialize(
        &layers::parse(&["L0 file x d=5:1", "L0 link y =x", "L0 file z d=5:2"]),
        &dir.path().join("c"),
    );
    let tc = compare::snapshot(&c.lowers[0], false);
    assert!(compare::trees(&tc, &ta, None, false).is_empty());
    let mut split = tc.clone();
    if let Some(Ok(n)) = split.get_mut("y") {
        n.ino += 1_000_000;
    }
    let d = compare::trees(&split, &ta, None, false);
    assert_eq!(
        d.iter().map(|d| d.field).collect::<Vec<_>>(),
        ["ino"],
        "{d:?}"
    );
    // not forgiven whatever strata's upper holds: every name of a hard link is one file
    let empty_upper = dir.path().join("empty");
    std::fs::create_dir(&empty_upper).unwrap();
    assert!(!compare::trees(&split, &ta, Some(&empty_upper), false).is_empty());
    // ddmin on a plain predicate
    let small = difftest::shrink::ddmin(
        (0..40).collect::<Vec<u32>>(),
        |v| v.contains(&7) && v.contains(&31),
        Instant::now() + Duration::from_secs(5),
    );
    assert_eq!(small, [7, 31]);
}

// ---------------------------------------------------------------------------------------------
// Regressions: every divergence the differential test found, shrunk. Layer lines are
// `LAYER KIND PATH [ATTR...]` (see common/difftest/layers.rs), steps are operation lines
// (see common/difftest/ops.rs).
// ---------------------------------------------------------------------------------------------

/// Found by seeds 29, 1012, 2006 (`final:nlink`, `step:stat:ok/ok`): `f` is a lower
/// directory (st_nlink 2); the `chmod` copies `f` up, which makes it a merged directory
/// (st_nlink 1 on both, as a remount of strata shows), but strata does not tell the
/// kernel that `f`'s attributes changed, so its cached st_nlink 2 stays. Any copy-up below
/// a lower directory does it (open for writing, chown, setxattr, ...); `create` does not,
/// as the kernel drops the parent's cached attributes itself.
#[test]
fn regress_dir_nlink_after_copy_up_below_it() {
    replay(
        &["L0 file f/a d=5:1"],
        &["stat f", "chmod f/a 600", "stat f"],
    );
}

/// Found by seeds 100055, 130151, 170138 (`step:fstat:ok/ok`): the same stale st_nlink,
/// seen through a descriptor of the directory.
#[test]
fn regress_dir_nlink_after_copy_up_below_it_through_a_descriptor() {
    replay(
        &["L0 dir e/b/d"],
        &[
            "opendir 3 e/b",
            "lutimens e/b/d 1130009037 1211957995",
            "fstat 3",
        ],
    );
}

/// Found by seeds 10109, 20197, 40173, 50109, 60124 (`final:nlink`, `remount:nlink`):
/// `chown(p, -1, -1)` copies a lower entry up on the kernel (and its parents: here `e`,
/// `e/c`, `e/c/d` become merged directories with st_nlink 1); strata leaves it in the
/// lower layer. Visible in st_nlink (of merged directories, of lower hard links) and in
/// the upper directory.
#[test]
fn regress_chown_without_change_copies_up() {
    replay(&["L1 dir e/c/d"], &["lchown e/c/d - -"]);
}

/// Found by seed 1088 (`final:mode`): accepted difference `sgid-kept-without-group-exec`.
#[test]
fn regress_truncate_by_non_member_keeps_sgid_without_group_exec() {
    replay(
        &[
            "L2 file e/d d=4096:468582 m=2745 o=1000:0",
            "L2 link e/b/c =e/d",
        ],
        &["as 1000:1000 truncate e/b/c 10000"],
    );
}

/// Found by seeds 78, 2023, 3006, 5008 (`step:read:EACCES/ok`, ...): a device node made
/// through the mount could be opened on the kernel's mount but not on strata's (`nodev`
/// by default): the kernel side is now mounted `nodev` too.
#[test]
fn regress_device_nodes_are_refused_on_both() {
    replay(
        &["L0 dir a/a"],
        &["mknod a/a/b 644", "read a/a/b", "truncate a/a/b 10000"],
    );
}

/// Found by seeds 30081, 70021, 80164 (`step:futimens:ENOENT/EEXIST`,
/// `step:fchmod:ENOENT/EIO`, `step:fchmod:ENOENT/ENOTDIR`): accepted difference
/// `removed-lower-fd-change`.
#[test]
fn regress_metadata_change_through_a_descriptor_of_a_removed_lower_entry() {
    replay(
        &["L0 file e d=7:1", "L0 dir a/f/c", "L0 dir c/f"],
        &[
            "open 3 e r",
            "opendir 1 a/f/c",
            "opendir 0 c/f",
            "unlink e",
            "rmrf a/f",
            "rmdir c/f",
            "futimens 3 1010914494 1237314040",
            "fchmod 1 444",
            "fchmod 0 600",
        ],
    );
}

/// Found by seed 13 (`step:rmrf:ok/ENOTEMPTY`): a kernel quirk the generator avoids. An
/// upper-only directory holding only a whiteout (a state only offline changes make) looks
/// empty on both, but the kernel's `rmdir` fails with `ENOTEMPTY` (it removes the upper
/// directory without clearing the whiteout); strata removes it.
#[test]
fn regress_kernel_quirk_rmdir_of_an_upper_dir_holding_a_whiteout() {
    replay_diverging(&["U wh e/d/e"], &["rmrf e"], "step:rmrf:ok/ENOTEMPTY");
}

/// Found by seed 140104 (`final:nlink`): `f/e/e` and `c/d` are one lower file (st_nlink
/// 2). `setxattr(XATTR_REPLACE)` of a name it does not have fails with `ENODATA` on both,
/// after both copied `f/e/e` up (so it has st_nlink 1); strata does not tell the kernel
/// that the attributes changed, so its cached st_nlink 2 stays (a remount shows 1).
#[test]
fn regress_failing_setxattr_leaves_stale_attributes() {
    replay(
        &["L2 file f/e/e d=70000:530431", "L2 link c/d =f/e/e"],
        &[
            "create f/e/e 600 excl 3 9000:10971",
            "lsetxattr f/e/e user.zz f826e64a2f794f3bf16a394bd4faf3c7b1 replace",
        ],
    );
}

/// Found by seed 160187 (`step:fread:ok/ok`). The fifo `f` is removed while open; its
/// upper inode is freed at once (the kernel serves the open fifo itself), but strata keeps
/// the node as the kernel still holds it. `e` then gets the freed inode number, so strata
/// gives it a remapped node; `link e d` looks `d` up and gets a second node for the same
/// file. The two names then have different st_ino and separate kernel caches: after a
/// truncate through `d`, an `O_APPEND` write through `e` lands at `e`'s stale end (100),
/// leaving 5100 bytes where the kernel has 5050.
#[test]
fn regress_link_to_a_file_with_a_reused_inode_number() {
    replay(
        &[],
        &[
            "mkfifo f 644",
            "open 0 f r",
            "unlink f",
            "create e 755 trunc 0 100:261502",
            "open 0 e r",
            "link e d",
            "truncate d 50",
            "create e 4755 append 0 5000:60678",
            "fread 0",
        ],
    );
}

/// The same, seen in inode numbers: `e` and `d` are one file, with two numbers on strata.
#[test]
fn regress_link_to_a_file_with_a_reused_inode_number_shows_two_inodes() {
    replay(
        &[],
        &[
            "mkfifo f 644",
            "open 0 f r",
            "unlink f",
            "create e 644 - 0 1:1",
            "close 0",
            "link e d",
        ],
    );
}

/// Found by seed 150044 (`step:futimens:ENOENT/ok`): accepted difference
/// `kernel-copy-up-over-a-new-name`, a kernel bug. The lower fifo `b` is open when `g` is
/// renamed over it; `futimens` through the descriptor makes the kernel copy the fifo up
/// over the new `b` in its upper dir (a remount shows a fifo there); strata says `ENOENT`.
#[test]
fn regress_kernel_bug_copy_up_through_a_descriptor_over_a_new_name() {
    replay(
        &["L0 fifo b"],
        &[
            "mknod g 644",
            "open 3 b r",
            "rename g b",
            "futimens 3 1116361016 1079292451",
        ],
    );
}

/// Found by seed 47 (`final:mtime`), with metadata-only copy-up: a write to a file whose
/// metadata alone was copied up.
#[test]
fn regress_write_after_metadata_only_copy_up_sets_mtime() {
    replay(
        &["L1 file b/a/b at=4096 d=5000:795175 t=1126244790"],
        &["chmod b/a/b 600", "create b/a/b 644 - 5000 0:337963"],
    );
}

/// Found by seed 72 (`final:mtime`): a write after an exchange of a lower file with a
/// lower fifo.
#[test]
fn regress_write_after_exchange_sets_mtime() {
    replay(
        &["L1 file e/d/a d=7:704054 t=994176460", "L1 fifo c"],
        &["rename e/d/a c exchange", "write c 4095 0:214911"],
    );
}

/// Found by seeds 44, 56, 111, 125 (`final:nlink` of a directory): a write through one
/// name of a lower hard link links only that name to the copy in the index (copying up
/// its parent, which then reports one link as a merged directory), not every name in use.
#[test]
fn regress_write_through_one_name_of_a_lower_hard_link_links_only_that_name() {
    replay(
        &["L0 file e/e/c d=7:506110", "L0 link b/f =e/e/c"],
        &["append e/e/c 70000:370555"],
    );
    replay(
        &["L0 file a/f/a d=7:505115", "L0 link c =a/f/a"],
        &[
            "stat a/f/a",
            "write c 9000 0:968142",
            "stat a/f",
            "stat a/f/a",
        ],
    );
}

/// Found by seed 130 (`final:nlink` of a directory): renames and an exchange of
/// directories made on the mount over a lower directory.
#[test]
fn regress_exchange_and_rename_over_a_lower_directory() {
    replay(
        &["L0 file e/b/f d=9000:397098", "L0 dir b/f"],
        &[
            "mkdir e/d 711",
            "rename e/d b/g",
            "mkdir b/d 2775",
            "link e/b/f b/g/g",
            "rename b/g b/d exchange",
            "rename b/f b/d",
        ],
    );
}

/// Found by seed 47 again (`final:mtime`): the kernel copies only the metadata of a lower
/// hard link into the index too, and its data at the first open for writing.
#[test]
fn regress_metadata_only_copy_of_a_lower_hard_link() {
    replay(
        &[
            "L1 file b/a/b at=4096 d=5000:795175 t=1126244790",
            "L1 link c =b/a/b",
        ],
        &["chmod b/a/b 600", "create b/a/b 644 - 5000 0:337963"],
    );
}

/// Found by seed 9 (`step:fstat`): copying the data of a file that has none (all hole)
/// must not set its modification time.
#[test]
fn regress_copying_up_a_file_of_holes_keeps_its_mtime() {
    replay(
        &["L2 file f/a/a at=100000 d=0:999897"],
        &[
            "open 1 f/a/a r",
            "futimens 1 1185974647 1260800313",
            "write f/a/a 100 0:157394",
            "fstat 1",
        ],
    );
}

/// Found by seeds 59, 96, 105 (`final:mtime`): a hard link to a metadata-only copy keeps
/// it metadata-only (with a redirect to its data from the layer roots), as the kernel does.
#[test]
fn regress_link_to_a_metadata_only_copy() {
    replay(
        &["L1 file d/c d=5000:566592 t=1082381855", "L1 dir d/a/a"],
        &["mkdir d/g 2775", "rename d/c d/a/c", "link d/a/c d/g/h"],
    );
    replay(
        &["L0 wh e/e", "L0 file b/e d=9000:812806"],
        &[
            "utimens b/e 1160127655 1037603653",
            "link b/e h",
            "rename e b/e exchange",
            "stat e",
        ],
    );
}

/// Found by seed 189 (`final:mtime` of a directory): a lower file and a lower directory
/// exchanged, then a rename out of the directory that fails; accepted difference
/// `kernel-failed-rename-mtime`.
#[test]
fn regress_failing_rename_out_of_an_exchanged_directory() {
    replay(
        &[
            "L1 file d/f/a at=100000 d=5000:238580",
            "L0 file a/e at=100000 d=5000:894472",
            "U file b/e d=1:871375",
            "U link f/c/a =b/e",
        ],
        &["rename a/e d exchange", "rename a/e/f f/c"],
    );
}

/// Found by seed 225509716606 (`step:ftrunc:ENOENT/ok`): a lower hard link opened for
/// writing (copied into the index), then every name removed (the index entry with the
/// last), then a truncate through the descriptor.
#[test]
fn regress_truncate_through_a_descriptor_of_a_removed_indexed_hard_link() {
    replay(
        &["L2 file e/e/c d=100:741766", "L2 link e/b =e/e/c"],
        &["open 1 e/e/c wt", "rmrf .", "ftrunc 1 7000"],
    );
}

/// Found by seed 557368875401 (`final:nlink` of directories): an xattr change through a
/// name of a lower hard link already in the index links no name (the kernel's
/// `ovl_xattr_set` copies up only an inode without an upper), while chmod does.
#[test]
fn regress_xattr_change_through_another_name_of_an_indexed_hard_link() {
    replay(
        &["L1 file b/f/f at=4096 d=1:160403", "L1 link e/c/b =b/f/f"],
        &["chmod b/f/f 755", "lsetxattr e/c/b user.x 863220 -"],
    );
}

/// Found by seed 907350645431 (`step:fstat`): `fstat` of a descriptor of a removed
/// metadata-only copy shows the copy's metadata, not its lower data file's.
#[test]
fn regress_fstat_of_a_removed_metadata_only_copy() {
    replay(
        &["L1 file a/b d=0:832032"],
        &["chmod a/b 700", "open 3 a/b r", "unlink a/b", "fstat 3"],
    );
}

/// Found by seed 154746603545 (`step:fstat`): accepted difference
/// `kernel-failed-rename-mtime`, seen through a descriptor of the source's parent.
#[test]
fn regress_failed_rename_of_a_lower_dir_over_a_full_one() {
    replay(
        &["L0 dir f/a/e", "U file d/c d=9000:198211"],
        &["rename f/a/e d", "opendir 1 f/a", "fstat 1"],
    );
}

/// Found by seed 213182965084 (`final:mtime`): accepted difference
/// `kernel-failed-rename-mtime` on a directory renamed after the failed rename.
#[test]
fn regress_failed_rename_mtime_moves_with_its_directory() {
    replay(
        &["L1 file a/e/e d=0:176767", "L0 dir d/b opq", "U dir a/a"],
        &["mkdir a/a/zz 1777", "rename a/e a/a", "rename a d/h"],
    );
}

/// Found by seed 526136825931 (`final:nlink`): the last linked name of a lower hard link
/// removed, so its index entry has one link: the count of names still comes from the
/// nlink xattr.
#[test]
fn regress_link_count_of_an_index_entry_with_no_linked_name() {
    replay(
        &[
            "L0 file f/c d=100:147179",
            "L0 link c/c =f/c",
            "L0 link d/d =f/c",
        ],
        &["rmrf c"],
    );
}

/// Found by seed 839125147034 (`final:extra`): a redirect to a path stops at an opaque
/// directory on the way in a layer below, as the kernel walks it.
#[test]
fn regress_redirect_path_stops_at_an_opaque_directory_on_the_way() {
    replay(
        &[
            "L3 dir f/a/e",
            "L1 dir f opq",
            "L0 file b/c d=70000:296455",
            "L0 dir f/a",
        ],
        &["rename f/a b/c exchange", "chmod b/c 1777"],
    );
}

/// Found by seed 141242893753 (`step:open:EIO/ok`): a name of a lower hard link renamed in
/// its directory while metadata-only; another name, below a renamed directory, must still
/// find the data (the shared redirect is a path from the roots).
#[test]
fn regress_renamed_name_of_a_metadata_only_hard_link() {
    replay(
        &[
            "L1 file b/b/d d=100:440969",
            "L0 file c d=5000:483876",
            "L0 link e/b =c",
        ],
        &[
            "rename c a",
            "rename b/b/d e exchange",
            "lutimens b/b/d/b 1216828953 1105488304",
            "open 2 b/b/d/b wa",
        ],
    );
}

/// Found by seed 700615397516 (`step:fsetxattr:ENOENT/ok`): accepted difference
/// `kernel-copy-up-over-a-new-name` (a kernel bug): an xattr set through a descriptor of an
/// unlinked lower fifo; the kernel copies the fifo up over its own whiteout.
#[test]
fn regress_kernel_bug_copy_up_of_an_unlinked_fifo_over_its_whiteout() {
    replay(
        &["L0 fifo f/e/b"],
        &[
            "open 1 f/e/b r",
            "unlink f/e/b",
            "fsetxattr 1 trusted.t 138f0bb4bd0ee087",
        ],
    );
}

/// Found by seed 555042023797 (`final:nlink` of directories): `futimens` through a
/// descriptor of a lower hard link comes through the name it was opened by, not through
/// the name a failed rename looked up since.
#[test]
fn regress_call_on_a_descriptor_of_a_hard_link_comes_through_its_open_name() {
    replay(
        &[
            "L0 file a/d/d d=7:184379",
            "L0 file f/a/c d=100:111130",
            "L0 link e/b =a/d/d",
            "L0 link b/b/a =a/d/d",
        ],
        &[
            "open 2 e/b rw",
            "rename f/a b/b/a",
            "futimens 2 1119699609 1048179177",
        ],
    );
}

/// Found by seed 118616617179 (`step:fstat`): `fstat` of a descriptor of a lower hard link
/// whose copy is in the index, after its last visible name was removed: the count of
/// names comes from the index entry's nlink xattr (the lower file's other names count).
#[test]
fn regress_fstat_of_a_removed_indexed_hard_link_counts_its_hidden_names() {
    replay(
        &[
            "L1 file d d=7:584940",
            "L1 link f =d",
            "L1 link e/e =d",
            "L0 sym e ->nonexist",
            "U file f/b at=4096 d=70000:314354",
        ],
        &[
            "create d 0 - 0 70000:132676",
            "open 1 d r",
            "rmrf .",
            "fstat 1",
        ],
    );
}

/// Found by seed 582921012627 (`final:nlink` of a directory): `link` always comes through
/// the path it names, even while the file is open through another name.
#[test]
fn regress_link_of_an_open_hard_link_comes_through_its_path() {
    replay(
        &[
            "L0 file f/a/a d=5000:966832",
            "L0 link d/f =f/a/a",
            "L0 file f/b/e d=4096:306419",
        ],
        &["open 1 d/f wt", "link f/a/a f/b/d"],
    );
}

/// Found by seed 243796753591 (`final:nlink` of a directory): accepted difference
/// `hard-link-call-name`: a path `utimens` of one name of a lower hard link while it is
/// open through another; strata links the open name, the kernel the path's.
#[test]
fn regress_hard_link_call_name_is_not_known_to_fuse() {
    replay(
        &["L2 file d/d/c d=70000:246874", "L2 link d/b =d/d/c"],
        &["open 2 d/b r", "utimens d/d/c 1259780083 now"],
    );
}

/// Found by seed 321524160458: `chown(-1, -1)` by a user outside the group of a set-gid
/// file that is not group-executable (EPERM on the kernel, accepted: the FUSE rule).
#[test]
fn regress_chown_nothing_of_a_set_gid_file_by_another_user() {
    replay(
        &[
            "L0 file c/a d=5000:79983",
            "L0 file e/b/b at=100000 d=0:289372 m=2745",
        ],
        &[
            "mkdir c/b 755",
            "rename e/b/b c/b/h",
            "as 1000:1000 lchown c/b/h - -",
        ],
    );
}

/// Found by seed 490726718723: futimens through a descriptor of a removed lower directory
/// whose name now holds a new directory with an entry (the kernel's copy-up attempt fails
/// with ENOTEMPTY; strata ENOENT: `removed-lower-fd-change`).
#[test]
fn regress_futimens_of_a_removed_lower_dir_replaced_by_a_full_one() {
    replay(
        &["L0 dir d opq", "L0 fifo f"],
        &[
            "opendir 1 d",
            "rmdir d",
            "mkdir d 1777",
            "link f d/zz",
            "futimens 1 now now",
        ],
    );
}
