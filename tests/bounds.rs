//! What keeps the daemon's memory bounded: past 100,000 nodes strata asks the kernel to
//! forget the entries it used least, and the names stay right after the kernel has done so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;
use common::*;
use std::fs;
use std::process::Command;

#[test]
fn walking_more_entries_than_the_table_holds_makes_the_kernel_forget_and_stays_right() {
    let s = Scratch::new();
    let (dirs, files) = (130, 1000);
    for d in 0..dirs {
        let dir = s.lower(0).join(format!("d{d:03}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..files {
            fs::File::create(dir.join(format!("f{f:04}"))).unwrap();
        }
    }
    let m = LoggedMount::new(&s, "");
    let walk = || {
        let out = Command::new("find")
            .arg(s.mnt())
            .args(["-printf", "%s %i\n"])
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    };
    let want = 1 + dirs * (1 + files);
    assert_eq!(walk(), want);
    // The table's thread asks the kernel for forgets a little after the walk passed.
    let forgot = wait_for(20, || m.log().contains("FORGET"));
    // Every name still leads to its file after the kernel dropped some of them.
    assert_eq!(walk(), want);
    for d in [0, dirs / 2, dirs - 1] {
        let p = s.mnt().join(format!("d{d:03}/f0000"));
        assert!(fs::metadata(&p).unwrap().is_file(), "{}", p.display());
    }
    m.finish();
    assert!(forgot, "the kernel was never asked to forget entries");
}
