//! The random operation generator: picks the next operation from what the kernel's mount
//! shows now (paths and their types) and which descriptor slots are open, so most
//! operations hit existing names, and some hit new or wrong ones on purpose. Names come
//! from a small fixed set so that operations collide with each other and with the layers.

use super::compare;
use super::exec::SLOTS;
use super::layers::{self, Data, DIR_MODES, FILE_MODES, IDS, NAMES, XATTR_NAMES};
use super::ops::{AllocMode, CreateFlag, Op, OpenMode, RenameFlag, Step, XattrFlag};
use super::rng::Rng;

/// A path the mount shows and its type (`f` file, `d` dir, `l` symlink, `o` other).
pub type View = Vec<(String, char)>;

/// Users that some operations run as (uid, gid); the layers own files as some of them.
const USERS: &[(u32, u32)] = &[(1000, 1000), (1001, 1001), (65534, 65534)];
const NEW_NAMES: &[&str] = &["g", "h", "zz"];

struct Pick<'a> {
    r: &'a mut Rng,
    all: Vec<&'a str>,
    files: Vec<&'a str>,
    dirs: Vec<&'a str>,
}

impl Pick<'_> {
    fn new_path(&mut self) -> String {
        let n = if self.r.chance(60) {
            self.r.pick(NAMES)
        } else {
            self.r.pick(NEW_NAMES)
        };
        if !self.dirs.is_empty() && self.r.chance(70) {
            format!("{}/{n}", self.r.pick(&self.dirs))
        } else {
            n.to_string()
        }
    }
    fn any(&mut self) -> String {
        if !self.all.is_empty() && self.r.chance(75) {
            self.r.pick(&self.all).to_string()
        } else {
            self.new_path()
        }
    }
    fn file(&mut self) -> String {
        if !self.files.is_empty() && self.r.chance(85) {
            self.r.pick(&self.files).to_string()
        } else {
            self.any()
        }
    }
    /// A path that is a regular file now if there is one (else a new name).
    fn regular_file(&mut self) -> String {
        if self.files.is_empty() {
            self.new_path()
        } else {
            self.r.pick(&self.files).to_string()
        }
    }
    fn dir(&mut self) -> String {
        if self.r.chance(5) {
            ".".into()
        } else if !self.dirs.is_empty() && self.r.chance(85) {
            self.r.pick(&self.dirs).to_string()
        } else {
            self.any()
        }
    }
    fn data(&mut self) -> Data {
        Data {
            len: layers::data_len(self.r),
            seed: self.r.next_u64() % 1_000_000,
        }
    }
    fn off(&mut self) -> u64 {
        self.r.pick(&[0, 0, 1, 100, 4095, 4096, 9000, 200_000])
    }
    fn id(&mut self) -> Option<u32> {
        if self.r.chance(15) {
            None
        } else {
            Some(self.r.pick(IDS))
        }
    }
    fn time(&mut self) -> Option<i64> {
        if self.r.chance(20) {
            None
        } else {
            Some(layers::old_time(self.r))
        }
    }
    fn xattr(&mut self) -> String {
        if self.r.chance(15) {
            "user.new".into()
        } else {
            self.r.pick(XATTR_NAMES).to_string()
        }
    }
    fn value(&mut self) -> Vec<u8> {
        let n = self.r.below(30);
        super::rng::bytes(n, self.r.next_u64())
    }
}

/// The next step. With `lenient`, steps that hit a known strata bug that cannot be
/// forgiven by comparing are not made (see `compare::KNOWN_BUGS`).
pub fn step(r: &mut Rng, view: &View, slots: &[Option<bool>], lenient: bool) -> Step {
    let open_files: Vec<usize> = (0..SLOTS).filter(|i| slots[*i] == Some(false)).collect();
    let open_dirs: Vec<usize> = (0..SLOTS).filter(|i| slots[*i] == Some(true)).collect();
    let open_any: Vec<usize> = (0..SLOTS).filter(|i| slots[*i].is_some()).collect();
    let mut w: Vec<(&str, u32)> = vec![
        ("create", 8),
        ("write", 8),
        ("append", 5),
        ("truncate", 5),
        ("otrunc", 2),
        ("read", 3),
        ("stat", 3),
        ("ls", 3),
        ("mkdir", 6),
        ("rmdir", 4),
        ("unlink", 6),
        ("rmrf", 2),
        ("rename", 8),
        ("rename2", 6),
        ("link", 5),
        ("symlink", 3),
        ("chmod", 4),
        ("chown", 4),
        ("utimens", 4),
        ("setxattr", 4),
        ("removexattr", 3),
        ("getxattr", 1),
        ("listxattr", 1),
        ("mkfifo", 2),
        ("mknod", 1),
        ("fallocate", 2),
        ("open", 5),
        ("opendir", 2),
    ];
    if !open_files.is_empty() {
        w.extend([("fread", 6), ("fwrite", 3), ("ftrunc", 1)]);
    }
    if !open_dirs.is_empty() {
        w.push(("fls", 4));
    }
    if !open_any.is_empty() {
        w.extend([
            ("fstat", 3),
            ("fchmod", 1),
            ("fchown", 1),
            ("futimens", 1),
            ("fsetxattr", 1),
            ("close", 2),
        ]);
    }
    let kind = r.weighted(&w);
    let user = if r.chance(12) {
        Some(r.pick(USERS))
    } else {
        None
    };
    let follow = r.chance(60);
    let fslot = open_files.first().map(|_| r.pick(&open_files)).unwrap_or(0);
    let dslot = open_dirs.first().map(|_| r.pick(&open_dirs)).unwrap_or(0);
    let aslot = open_any.first().map(|_| r.pick(&open_any)).unwrap_or(0);
    let newslot = r.below(SLOTS);
    let mut k = Pick {
        all: view.iter().map(|(p, _)| p.as_str()).collect(),
        files: view
            .iter()
            .filter(|(_, t)| *t == 'f')
            .map(|(p, _)| p.as_str())
            .collect(),
        dirs: view
            .iter()
            .filter(|(_, t)| *t == 'd')
            .map(|(p, _)| p.as_str())
            .collect(),
        r,
    };
    let op = match kind {
        "create" => {
            let p = match k.r.below(3) {
                0 => k.new_path(),
                1 => k.any(),
                _ => k.file(),
            };
            Op::Create {
                p,
                mode: k.r.pick(FILE_MODES),
                flag: k.r.pick(&[
                    CreateFlag::None,
                    CreateFlag::None,
                    CreateFlag::Excl,
                    CreateFlag::Trunc,
                    CreateFlag::Append,
                ]),
                off: k.r.pick(&[0, 0, 0, 3, 5000]),
                data: k.data(),
            }
        }
        "write" => Op::Write {
            p: k.file(),
            off: k.off(),
            data: k.data(),
        },
        "append" => Op::Append {
            p: k.file(),
            data: k.data(),
        },
        "truncate" => Op::Truncate {
            p: k.file(),
            len: k.r.pick(&[0, 1, 50, 4096, 10000, 300_000]),
        },
        "otrunc" => Op::OTrunc { p: k.file() },
        "read" => Op::Read { p: k.file() },
        "stat" => Op::Stat { p: k.any(), follow },
        "ls" => Op::Ls { p: k.dir() },
        "mkdir" => Op::Mkdir {
            p: if k.r.chance(60) {
                k.new_path()
            } else {
                k.any()
            },
            mode: k.r.pick(DIR_MODES),
        },
        "rmdir" => Op::Rmdir { p: k.dir() },
        "unlink" => Op::Unlink { p: k.any() },
        "rmrf" => Op::RmRf { p: k.dir() },
        "rename" | "rename2" => {
            let a = match k.r.below(3) {
                0 => k.file(),
                1 => k.dir(),
                _ => k.any(),
            };
            let b = match k.r.below(4) {
                0 => k.new_path(),
                1 => k.any(),
                2 => k.file(),
                _ => k.dir(),
            };
            let flag = if kind == "rename" {
                RenameFlag::Plain
            } else {
                k.r.pick(&[
                    RenameFlag::NoReplace,
                    RenameFlag::Exchange,
                    RenameFlag::Exchange,
                ])
            };
            Op::Rename { a, b, flag }
        }
        "link" => Op::Link {
            a: k.file(),
            b: if k.r.chance(70) {
                k.new_path()
            } else {
                k.any()
            },
        },
        "symlink" => Op::Symlink {
            target: k.r.pick(&["a", "b/c", "../a", "x", ".", "f"]).to_string(),
            p: if k.r.chance(70) {
                k.new_path()
            } else {
                k.any()
            },
        },
        "chmod" => {
            let p = k.any();
            let mode = if k.r.chance(50) {
                k.r.pick(FILE_MODES)
            } else {
                k.r.pick(DIR_MODES)
            };
            Op::Chmod { p, mode }
        }
        "chown" => {
            let (p, uid, mut gid) = (k.any(), k.id(), k.id());
            if uid.is_none() && gid.is_none() && compare::avoid("noop-chown-no-copy-up", lenient) {
                gid = Some(k.r.pick(IDS));
            }
            Op::Chown {
                p,
                uid,
                gid,
                follow,
            }
        }
        "utimens" => Op::Utimens {
            p: k.any(),
            atime: k.time(),
            mtime: k.time(),
            follow,
        },
        "setxattr" => {
            let (p, name, value) = (k.any(), k.xattr(), k.value());
            let mut flag = k.r.pick(&[
                XattrFlag::Any,
                XattrFlag::Any,
                XattrFlag::Create,
                XattrFlag::Replace,
            ]);
            if compare::avoid("stale-attrs-after-failed-setxattr", lenient) {
                flag = XattrFlag::Any;
            }
            Op::SetXattr {
                p,
                name,
                value,
                flag,
                follow,
            }
        }
        "removexattr" => Op::RemoveXattr {
            p: k.any(),
            name: k.xattr(),
            follow,
        },
        "getxattr" => Op::GetXattr {
            p: k.any(),
            name: k.xattr(),
            follow,
        },
        "listxattr" => Op::ListXattr { p: k.any(), follow },
        "mkfifo" => Op::Mkfifo {
            p: if k.r.chance(70) {
                k.new_path()
            } else {
                k.any()
            },
            mode: 0o644,
        },
        "mknod" => Op::Mknod {
            p: if k.r.chance(70) {
                k.new_path()
            } else {
                k.any()
            },
            mode: 0o644,
        },
        "fallocate" => Op::Fallocate {
            p: k.file(),
            mode: k
                .r
                .pick(&[AllocMode::Alloc, AllocMode::KeepSize, AllocMode::Punch]),
            off: k.r.pick(&[0, 1, 4096, 8192]),
            len: k.r.pick(&[1, 4096, 12288, 100_000]),
        },
        "open" => Op::Open {
            slot: newslot,
            p: if compare::avoid("reused-ino-second-node", lenient) {
                k.regular_file()
            } else {
                k.file()
            },
            mode: k.r.pick(&[
                OpenMode::Read,
                OpenMode::Read,
                OpenMode::ReadWrite,
                OpenMode::Write,
                OpenMode::WriteAppend,
                OpenMode::WriteTrunc,
            ]),
        },
        "opendir" => Op::OpenDir {
            slot: newslot,
            p: k.dir(),
        },
        "fread" => Op::FRead { slot: fslot },
        "fwrite" => Op::FWrite {
            slot: fslot,
            off: k.r.pick(&[0, 10, 5000]),
            data: k.data(),
        },
        "ftrunc" => Op::FTrunc {
            slot: fslot,
            len: k.r.pick(&[0, 10, 7000]),
        },
        "fls" => Op::FLs { slot: dslot },
        "fstat" => Op::FStat { slot: aslot },
        "fchmod" => Op::FChmod {
            slot: aslot,
            mode: k.r.pick(FILE_MODES),
        },
        "fchown" => Op::FChown {
            slot: aslot,
            uid: k.id(),
            gid: k.id(),
        },
        "futimens" => Op::FUtimens {
            slot: aslot,
            atime: k.time(),
            mtime: k.time(),
        },
        "fsetxattr" => Op::FSetXattr {
            slot: aslot,
            name: k.xattr(),
            value: k.value(),
        },
        _ => Op::Close { slot: aslot },
    };
    Step { user, op }
}
