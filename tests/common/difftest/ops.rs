//! The operations of the differential test and their one-line text form, which is what a
//! reproducer and a regression test hold. A line is an operation name and its arguments,
//! optionally prefixed by `as UID:GID` to run it as that user. Paths are relative to the
//! mount root (`.` is the root), `DATA` is `LEN:SEED` (see `layers::Data`), `MODE` octal,
//! an id `-` means "unchanged", a time `now` means `UTIME_NOW`, `HEX` an xattr value.
//!
//! ```text
//! create P MODE -|excl|trunc|append OFF DATA   write P OFF DATA    append P DATA
//! truncate P LEN   otrunc P   read P   stat P   lstat P   ls P
//! mkdir P MODE   rmdir P   unlink P   rmrf P   mkfifo P MODE   mknod P MODE
//! rename A B [noreplace|exchange]   link A B   symlink TARGET P
//! chmod P MODE   chown|lchown P UID GID   utimens|lutimens P ATIME MTIME
//! setxattr|lsetxattr P NAME HEX -|create|replace   removexattr|lremovexattr P NAME
//! getxattr|lgetxattr P NAME   listxattr|llistxattr P   fallocate P alloc|keep|punch OFF LEN
//! open SLOT P r|w|rw|wa|wt   opendir SLOT P   close SLOT   fread SLOT   fls SLOT
//! fwrite SLOT OFF DATA   ftrunc SLOT LEN   fstat SLOT   fchmod SLOT MODE
//! fchown SLOT UID GID   futimens SLOT ATIME MTIME   fsetxattr SLOT NAME HEX
//! ```

use std::fmt;

use super::layers::Data;
use super::rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateFlag {
    None,
    Excl,
    Trunc,
    Append,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameFlag {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrFlag {
    Any,
    Create,
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocMode {
    Alloc,
    KeepSize,
    Punch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    Read,
    Write,
    ReadWrite,
    WriteAppend,
    WriteTrunc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Create {
        p: String,
        mode: u32,
        flag: CreateFlag,
        off: u64,
        data: Data,
    },
    Write {
        p: String,
        off: u64,
        data: Data,
    },
    Append {
        p: String,
        data: Data,
    },
    Truncate {
        p: String,
        len: u64,
    },
    OTrunc {
        p: String,
    },
    Read {
        p: String,
    },
    Stat {
        p: String,
        follow: bool,
    },
    Ls {
        p: String,
    },
    Mkdir {
        p: String,
        mode: u32,
    },
    Rmdir {
        p: String,
    },
    Unlink {
        p: String,
    },
    RmRf {
        p: String,
    },
    Mkfifo {
        p: String,
        mode: u32,
    },
    Mknod {
        p: String,
        mode: u32,
    },
    Rename {
        a: String,
        b: String,
        flag: RenameFlag,
    },
    Link {
        a: String,
        b: String,
    },
    Symlink {
        target: String,
        p: String,
    },
    Chmod {
        p: String,
        mode: u32,
    },
    Chown {
        p: String,
        uid: Option<u32>,
        gid: Option<u32>,
        follow: bool,
    },
    Utimens {
        p: String,
        atime: Option<i64>,
        mtime: Option<i64>,
        follow: bool,
    },
    SetXattr {
        p: String,
        name: String,
        value: Vec<u8>,
        flag: XattrFlag,
        follow: bool,
    },
    RemoveXattr {
        p: String,
        name: String,
        follow: bool,
    },
    GetXattr {
        p: String,
        name: String,
        follow: bool,
    },
    ListXattr {
        p: String,
        follow: bool,
    },
    Fallocate {
        p: String,
        mode: AllocMode,
        off: u64,
        len: u64,
    },
    Open {
        slot: usize,
        p: String,
        mode: OpenMode,
    },
    OpenDir {
        slot: usize,
        p: String,
    },
    Close {
        slot: usize,
    },
    FRead {
        slot: usize,
    },
    FLs {
        slot: usize,
    },
    FWrite {
        slot: usize,
        off: u64,
        data: Data,
    },
    FTrunc {
        slot: usize,
        len: u64,
    },
    FStat {
        slot: usize,
    },
    FChmod {
        slot: usize,
        mode: u32,
    },
    FChown {
        slot: usize,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    FUtimens {
        slot: usize,
        atime: Option<i64>,
        mtime: Option<i64>,
    },
    FSetXattr {
        slot: usize,
        name: String,
        value: Vec<u8>,
    },
}

/// One step of a sequence: an operation, run as root or as `user` (uid, gid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub user: Option<(u32, u32)>,
    pub op: Op,
}

fn id(v: Option<u32>) -> String {
    v.map_or("-".into(), |x| x.to_string())
}

fn time(v: Option<i64>) -> String {
    v.map_or("now".into(), |x| x.to_string())
}

impl Op {
    /// The descriptor slot an operation on a descriptor uses (not `open`: it replaces it).
    pub fn slot(&self) -> Option<usize> {
        match self {
            Op::Close { slot }
            | Op::FRead { slot }
            | Op::FLs { slot }
            | Op::FWrite { slot, .. }
            | Op::FTrunc { slot, .. }
            | Op::FStat { slot }
            | Op::FChmod { slot, .. }
            | Op::FChown { slot, .. }
            | Op::FUtimens { slot, .. }
            | Op::FSetXattr { slot, .. } => Some(*slot),
            _ => None,
        }
    }

    /// The name of the operation, as the first word of its line.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Append { .. } => "append",
            Op::Truncate { .. } => "truncate",
            Op::OTrunc { .. } => "otrunc",
            Op::Read { .. } => "read",
            Op::Stat { follow: true, .. } => "stat",
            Op::Stat { follow: false, .. } => "lstat",
            Op::Ls { .. } => "ls",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::RmRf { .. } => "rmrf",
            Op::Mkfifo { .. } => "mkfifo",
            Op::Mknod { .. } => "mknod",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Chmod { .. } => "chmod",
            Op::Chown { follow: true, .. } => "chown",
            Op::Chown { follow: false, .. } => "lchown",
            Op::Utimens { follow: true, .. } => "utimens",
            Op::Utimens { follow: false, .. } => "lutimens",
            Op::SetXattr { follow: true, .. } => "setxattr",
            Op::SetXattr { follow: false, .. } => "lsetxattr",
            Op::RemoveXattr { follow: true, .. } => "removexattr",
            Op::RemoveXattr { follow: false, .. } => "lremovexattr",
            Op::GetXattr { follow: true, .. } => "getxattr",
            Op::GetXattr { follow: false, .. } => "lgetxattr",
            Op::ListXattr { follow: true, .. } => "listxattr",
            Op::ListXattr { follow: false, .. } => "llistxattr",
            Op::Fallocate { .. } => "fallocate",
            Op::Open { .. } => "open",
            Op::OpenDir { .. } => "opendir",
            Op::Close { .. } => "close",
            Op::FRead { .. } => "fread",
            Op::FLs { .. } => "fls",
            Op::FWrite { .. } => "fwrite",
            Op::FTrunc { .. } => "ftrunc",
            Op::FStat { .. } => "fstat",
            Op::FChmod { .. } => "fchmod",
            Op::FChown { .. } => "fchown",
            Op::FUtimens { .. } => "futimens",
            Op::FSetXattr { .. } => "fsetxattr",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let n = self.name();
        match self {
            Op::Create {
                p,
                mode,
                flag,
                off,
                data,
            } => {
                let fl = match flag {
                    CreateFlag::None => "-",
                    CreateFlag::Excl => "excl",
                    CreateFlag::Trunc => "trunc",
                    CreateFlag::Append => "append",
                };
                write!(f, "{n} {p} {mode:o} {fl} {off} {data}")
            }
            Op::Write { p, off, data } => write!(f, "{n} {p} {off} {data}"),
            Op::Append { p, data } => write!(f, "{n} {p} {data}"),
            Op::Truncate { p, len } => write!(f, "{n} {p} {len}"),
            Op::OTrunc { p }
            | Op::Read { p }
            | Op::Stat { p, .. }
            | Op::Ls { p }
            | Op::Rmdir { p }
            | Op::Unlink { p }
            | Op::RmRf { p }
            | Op::ListXattr { p, .. } => write!(f, "{n} {p}"),
            Op::Mkdir { p, mode } | Op::Mkfifo { p, mode } | Op::Mknod { p, mode } => {
                write!(f, "{n} {p} {mode:o}")
            }
            Op::Chmod { p, mode } => write!(f, "{n} {p} {mode:o}"),
            Op::Rename { a, b, flag } => match flag {
                RenameFlag::Plain => write!(f, "{n} {a} {b}"),
                RenameFlag::NoReplace => write!(f, "{n} {a} {b} noreplace"),
                RenameFlag::Exchange => write!(f, "{n} {a} {b} exchange"),
            },
            Op::Link { a, b } => write!(f, "{n} {a} {b}"),
            Op::Symlink { target, p } => write!(f, "{n} {target} {p}"),
            Op::Chown { p, uid, gid, .. } => write!(f, "{n} {p} {} {}", id(*uid), id(*gid)),
            Op::Utimens {
                p, atime, mtime, ..
            } => write!(f, "{n} {p} {} {}", time(*atime), time(*mtime)),
            Op::SetXattr {
                p,
                name,
                value,
                flag,
                ..
            } => {
                let fl = match flag {
                    XattrFlag::Any => "-",
                    XattrFlag::Create => "create",
                    XattrFlag::Replace => "replace",
                };
                write!(f, "{n} {p} {name} {} {fl}", rng::hex(value))
            }
            Op::RemoveXattr { p, name, .. } | Op::GetXattr { p, name, .. } => {
                write!(f, "{n} {p} {name}")
            }
            Op::Fallocate { p, mode, off, len } => {
                let m = match mode {
                    AllocMode::Alloc => "alloc",
                    AllocMode::KeepSize => "keep",
                    AllocMode::Punch => "punch",
                };
                write!(f, "{n} {p} {m} {off} {len}")
            }
            Op::Open { slot, p, mode } => {
                let m = match mode {
                    OpenMode::Read => "r",
                    OpenMode::Write => "w",
                    OpenMode::ReadWrite => "rw",
                    OpenMode::WriteAppend => "wa",
                    OpenMode::WriteTrunc => "wt",
                };
                write!(f, "{n} {slot} {p} {m}")
            }
            Op::OpenDir { slot, p } => write!(f, "{n} {slot} {p}"),
            Op::Close { slot } | Op::FRead { slot } | Op::FLs { slot } | Op::FStat { slot } => {
                write!(f, "{n} {slot}")
            }
            Op::FWrite { slot, off, data } => write!(f, "{n} {slot} {off} {data}"),
            Op::FTrunc { slot, len } => write!(f, "{n} {slot} {len}"),
            Op::FChmod { slot, mode } => write!(f, "{n} {slot} {mode:o}"),
            Op::FChown { slot, uid, gid } => write!(f, "{n} {slot} {} {}", id(*uid), id(*gid)),
            Op::FUtimens { slot, atime, mtime } => {
                write!(f, "{n} {slot} {} {}", time(*atime), time(*mtime))
            }
            Op::FSetXattr { slot, name, value } => {
                write!(f, "{n} {slot} {name} {}", rng::hex(value))
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some((u, g)) = self.user {
            write!(f, "as {u}:{g} ")?;
        }
        write!(f, "{}", self.op)
    }
}

/// The words of a line, taken in order.
struct Words<'a> {
    line: &'a str,
    w: std::str::SplitWhitespace<'a>,
}

impl<'a> Words<'a> {
    fn next(&mut self, what: &str) -> Result<&'a str, String> {
        self.w
            .next()
            .ok_or_else(|| format!("op {:?}: missing {what}", self.line))
    }
    fn s(&mut self, what: &str) -> Result<String, String> {
        Ok(self.next(what)?.to_string())
    }
    fn num<T: std::str::FromStr>(&mut self, what: &str) -> Result<T, String> {
        let v = self.next(what)?;
        v.parse()
            .map_err(|_| format!("op {:?}: bad {what} {v:?}", self.line))
    }
    fn mode(&mut self) -> Result<u32, String> {
        let v = self.next("mode")?;
        u32::from_str_radix(v, 8).map_err(|_| format!("op {:?}: bad mode {v:?}", self.line))
    }
    fn id(&mut self) -> Result<Option<u32>, String> {
        match self.next("id")? {
            "-" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| format!("op {:?}: bad id {v:?}", self.line)),
        }
    }
    fn time(&mut self) -> Result<Option<i64>, String> {
        match self.next("time")? {
            "now" => Ok(None),
            v => v
                .parse()
                .map(Some)
                .map_err(|_| format!("op {:?}: bad time {v:?}", self.line)),
        }
    }
    fn data(&mut self) -> Result<Data, String> {
        Data::parse(self.next("data")?)
    }
    fn hex(&mut self) -> Result<Vec<u8>, String> {
        rng::unhex(self.next("value")?)
    }
    fn end(mut self) -> Result<(), String> {
        match self.w.next() {
            None => Ok(()),
            Some(x) => Err(format!("op {:?}: extra word {x:?}", self.line)),
        }
    }
}

impl Step {
    pub fn parse(line: &str) -> Result<Step, String> {
        let mut w = Words {
            line,
            w: line.split_whitespace(),
        };
        let mut name = w.next("operation")?;
        let mut user = None;
        if name == "as" {
            let v = w.next("user")?;
            let (u, g) = v
                .split_once(':')
                .ok_or_else(|| format!("op {line:?}: want as UID:GID"))?;
            user = Some((
                u.parse().map_err(|_| format!("op {line:?}: bad uid"))?,
                g.parse().map_err(|_| format!("op {line:?}: bad gid"))?,
            ));
            name = w.next("operation")?;
        }
        let follow = !matches!(
            name,
            "lstat"
                | "lchown"
                | "lutimens"
                | "lsetxattr"
                | "lremovexattr"
                | "lgetxattr"
                | "llistxattr"
        );
        let op = match name {
            "create" => {
                let p = w.s("path")?;
                let mode = w.mode()?;
                let flag = match w.next("flag")? {
                    "-" => CreateFlag::None,
                    "excl" => CreateFlag::Excl,
                    "trunc" => CreateFlag::Trunc,
                    "append" => CreateFlag::Append,
                    x => return Err(format!("op {line:?}: bad flag {x:?}")),
                };
                Op::Create {
                    p,
                    mode,
                    flag,
                    off: w.num("offset")?,
                    data: w.data()?,
                }
            }
            "write" => Op::Write {
                p: w.s("path")?,
                off: w.num("offset")?,
                data: w.data()?,
            },
            "append" => Op::Append {
                p: w.s("path")?,
                data: w.data()?,
            },
            "truncate" => Op::Truncate {
                p: w.s("path")?,
                len: w.num("length")?,
            },
            "otrunc" => Op::OTrunc { p: w.s("path")? },
            "read" => Op::Read { p: w.s("path")? },
            "stat" | "lstat" => Op::Stat {
                p: w.s("path")?,
                follow,
            },
            "ls" => Op::Ls { p: w.s("path")? },
            "mkdir" => Op::Mkdir {
                p: w.s("path")?,
                mode: w.mode()?,
            },
            "rmdir" => Op::Rmdir { p: w.s("path")? },
            "unlink" => Op::Unlink { p: w.s("path")? },
            "rmrf" => Op::RmRf { p: w.s("path")? },
            "mkfifo" => Op::Mkfifo {
                p: w.s("path")?,
                mode: w.mode()?,
            },
            "mknod" => Op::Mknod {
                p: w.s("path")?,
                mode: w.mode()?,
            },
            "rename" => {
                let a = w.s("source")?;
                let b = w.s("target")?;
                let flag = match w.w.next() {
                    None => RenameFlag::Plain,
                    Some("noreplace") => RenameFlag::NoReplace,
                    Some("exchange") => RenameFlag::Exchange,
                    Some(x) => return Err(format!("op {line:?}: bad rename flag {x:?}")),
                };
                Op::Rename { a, b, flag }
            }
            "link" => Op::Link {
                a: w.s("source")?,
                b: w.s("target")?,
            },
            "symlink" => Op::Symlink {
                target: w.s("target")?,
                p: w.s("path")?,
            },
            "chmod" => Op::Chmod {
                p: w.s("path")?,
                mode: w.mode()?,
            },
            "chown" | "lchown" => Op::Chown {
                p: w.s("path")?,
                uid: w.id()?,
                gid: w.id()?,
                follow,
            },
            "utimens" | "lutimens" => Op::Utimens {
                p: w.s("path")?,
                atime: w.time()?,
                mtime: w.time()?,
                follow,
            },
            "setxattr" | "lsetxattr" => {
                let p = w.s("path")?;
                let name = w.s("name")?;
                let value = w.hex()?;
                let flag = match w.next("flag")? {
                    "-" => XattrFlag::Any,
                    "create" => XattrFlag::Create,
                    "replace" => XattrFlag::Replace,
                    x => return Err(format!("op {line:?}: bad xattr flag {x:?}")),
                };
                Op::SetXattr {
                    p,
                    name,
                    value,
                    flag,
                    follow,
                }
            }
            "removexattr" | "lremovexattr" => Op::RemoveXattr {
                p: w.s("path")?,
                name: w.s("name")?,
                follow,
            },
            "getxattr" | "lgetxattr" => Op::GetXattr {
                p: w.s("path")?,
                name: w.s("name")?,
                follow,
            },
            "listxattr" | "llistxattr" => Op::ListXattr {
                p: w.s("path")?,
                follow,
            },
            "fallocate" => {
                let p = w.s("path")?;
                let mode = match w.next("mode")? {
                    "alloc" => AllocMode::Alloc,
                    "keep" => AllocMode::KeepSize,
                    "punch" => AllocMode::Punch,
                    x => return Err(format!("op {line:?}: bad fallocate mode {x:?}")),
                };
                Op::Fallocate {
                    p,
                    mode,
                    off: w.num("offset")?,
                    len: w.num("length")?,
                }
            }
            "open" => {
                let slot = w.num("slot")?;
                let p = w.s("path")?;
                let mode = match w.next("mode")? {
                    "r" => OpenMode::Read,
                    "w" => OpenMode::Write,
                    "rw" => OpenMode::ReadWrite,
                    "wa" => OpenMode::WriteAppend,
                    "wt" => OpenMode::WriteTrunc,
                    x => return Err(format!("op {line:?}: bad open mode {x:?}")),
                };
                Op::Open { slot, p, mode }
            }
            "opendir" => Op::OpenDir {
                slot: w.num("slot")?,
                p: w.s("path")?,
            },
            "close" => Op::Close {
                slot: w.num("slot")?,
            },
            "fread" => Op::FRead {
                slot: w.num("slot")?,
            },
            "fls" => Op::FLs {
                slot: w.num("slot")?,
            },
            "fstat" => Op::FStat {
                slot: w.num("slot")?,
            },
            "fwrite" => Op::FWrite {
                slot: w.num("slot")?,
                off: w.num("offset")?,
                data: w.data()?,
            },
            "ftrunc" => Op::FTrunc {
                slot: w.num("slot")?,
                len: w.num("length")?,
            },
            "fchmod" => Op::FChmod {
                slot: w.num("slot")?,
                mode: w.mode()?,
            },
            "fchown" => Op::FChown {
                slot: w.num("slot")?,
                uid: w.id()?,
                gid: w.id()?,
            },
            "futimens" => Op::FUtimens {
                slot: w.num("slot")?,
                atime: w.time()?,
                mtime: w.time()?,
            },
            "fsetxattr" => Op::FSetXattr {
                slot: w.num("slot")?,
                name: w.s("name")?,
                value: w.hex()?,
            },
            x => return Err(format!("op {line:?}: unknown operation {x:?}")),
        };
        w.end()?;
        Ok(Step { user, op })
    }
}

/// Parses a whole sequence.
pub fn parse(lines: &[&str]) -> Vec<Step> {
    lines
        .iter()
        .map(|l| Step::parse(l).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}
