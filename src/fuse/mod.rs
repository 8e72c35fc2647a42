//! The FUSE adapter: translates `fuser` requests into [`Union`] calls and results into
//! replies. No overlay logic lives here; nothing here panics.

pub mod daemon;
mod io;
pub mod options;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use self::io::{Mode, OpenModes};
use self::options::Passthrough;
use crate::error::Errno;
use crate::sys::SetTime;
use crate::union::{Attr, Creds, DirEntry, ReadBuf, SetAttr, Union};

/// The inode table's bound (see [`StrataFs::start_evictor`]): about 55 MiB of nodes (a
/// node takes ~550 bytes, per `cargo bench --bench micro`).
const MAX_NODES: usize = 100_000;

/// How the kernel is to cache and move data, decided from the mount options.
#[derive(Clone, Copy, Debug)]
pub struct CachePolicy {
    /// Entry and attribute timeout.
    pub ttl: Duration,
    /// Which files to pass through (asked for only as root: the kernel allows backing
    /// files to privileged servers only).
    pub passthrough: Passthrough,
}

/// The `fuser::Filesystem` over a [`Union`].
pub struct StrataFs {
    union: Arc<Union>,
    policy: CachePolicy,
    /// Set once the session exists; used to drop the kernel's cached attributes where a
    /// change reaches them by a side path (an ACL xattr rewriting the mode bits).
    notifier: Arc<OnceLock<Notifier>>,
    /// Passthrough or page cache, per open inode.
    modes: OpenModes,
}

impl StrataFs {
    pub fn new(
        union: Arc<Union>,
        policy: CachePolicy,
        notifier: Arc<OnceLock<Notifier>>,
    ) -> StrataFs {
        StrataFs {
            union,
            policy,
            notifier,
            modes: OpenModes::new(),
        }
    }

    /// Starts the thread that keeps the inode table bounded: the kernel caches every inode
    /// it meets until memory runs short, and a node is dropped only when the kernel
    /// forgets it, so past [`MAX_NODES`] strata asks the kernel to drop the entries unused
    /// longest (FUSE_NOTIFY_INVAL_ENTRY; entries in use stay). It also closes cached
    /// directory descriptors that went unused. The thread ends with the session.
    fn start_evictor(&self) {
        let union = Arc::downgrade(&self.union);
        let notifier = Arc::clone(&self.notifier);
        let spawned = std::thread::Builder::new()
            .name("strata-evict".into())
            .spawn(move || {
                for round in 0u64.. {
                    std::thread::sleep(Duration::from_millis(20));
                    let Some(union) = union.upgrade() else {
                        return;
                    };
                    // Cached directory descriptors unused for ~0.8 s are closed.
                    if round % 20 == 0 {
                        union.age_caches();
                    }
                    let Some(n) = notifier.get() else {
                        continue;
                    };
                    for (parent, name) in union.least_used(MAX_NODES, MAX_NODES * 3 / 4) {
                        if let Err(e) = n.inval_entry(INodeNo(parent), &name) {
                            if e.raw_os_error() == Some(libc::ENODEV) {
                                return;
                            }
                            log::debug!("invalidating {name:?} in {parent}: {e}");
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("no inode table bound (cannot start its thread): {e}");
        }
    }

    /// Drops the kernel's cached attributes of the nodes a call changed as a side effect.
    fn flush_changed(&self) {
        for id in self.union.take_changed() {
            self.attrs_changed(INodeNo(id));
        }
    }

    fn attrs_changed(&self, ino: INodeNo) {
        if let Some(n) = self.notifier.get() {
            // A negative offset invalidates attributes only, never pages.
            if let Err(e) = n.inval_inode(ino, -1, 0) {
                log::debug!("attribute invalidation of {ino:?} failed: {e}");
            }
        }
    }
}

thread_local! {
    /// Each serving thread reads file data into one buffer, reused.
    static READ_BUF: std::cell::RefCell<ReadBuf> = std::cell::RefCell::new(ReadBuf::default());
}

fn err(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.code())
}

fn time((s, ns): (i64, u32)) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns)
    } else {
        UNIX_EPOCH - Duration::new(s.unsigned_abs(), 0) + Duration::new(0, ns)
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: u32::try_from(a.rdev).unwrap_or(0),
        blksize: a.blksize,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, i64::from(d.subsec_nanos())),
            Err(e) => {
                let d = e.duration();
                SetTime::At(-(d.as_secs() as i64), 0)
            }
        },
    })
}

/// How the kernel is to treat an open file served through the page cache: `O_DIRECT` I/O
/// goes to strata as the caller issued it (offsets, sizes), so the backing file's rules
/// for it apply; other pages stay cached across opens while they are known to be right.
/// No open needs a FLUSH at close: strata keeps nothing to write back.
fn cached_flags(flags: i32, keep_cache: bool) -> FopenFlags {
    let how = if flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else if keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    };
    how | FopenFlags::FOPEN_NOFLUSH
}

/// The entries of a listing from position `offset` on, each with the position after it
/// (entry `i` is at position `i`).
fn from_offset(entries: &[DirEntry], offset: u64) -> impl Iterator<Item = (u64, &DirEntry)> {
    let skip = usize::try_from(offset).unwrap_or(usize::MAX);
    (1u64..).zip(entries).skip(skip)
}

fn creds(req: &Request) -> Creds {
    creds_masked(req, 0)
}

/// The caller's credentials with the umask of a create, mkdir or mknod request.
fn creds_masked(req: &Request, umask: u32) -> Creds {
    Creds {
        uid: req.uid(),
        gid: req.gid(),
        umask,
    }
}

impl StrataFs {
    fn entry(&self, r: Result<Attr, Errno>, reply: ReplyEntry) {
        self.flush_changed();
        match r {
            Ok(a) => {
                // A lower hard link's names are linked to its copy one by one, by the
                // calls that come through them: strata must see every lookup of one.
                let ttl = match self.union.per_name(a.ino) {
                    true => Duration::ZERO,
                    false => self.policy.ttl,
                };
                reply.entry(&ttl, &file_attr(&a), Generation(0))
            }
            Err(e) => reply.error(err(e)),
        }
    }

    fn empty(&self, r: Result<(), Errno>, reply: ReplyEmpty) {
        self.flush_changed();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn xattr(r: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
        match r {
            Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
            Ok(v) if v.len() > size as usize => reply.error(err(Errno::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(err(e)),
        }
    }
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The kernel checks POSIX ACLs itself (read through getxattr) and leaves the umask
        // to strata, which applies it unless a default ACL decides the mode. Directory
        // listings always carry attributes: `find`, `du` and `ls -l` read a whole
        // directory before they stat its entries, which the kernel's "auto" mode answers
        // with one LOOKUP per entry (measured: a cold `find -printf %s` of 50k entries took
        // 3.7 s with auto, 1.5 s without; a bare `ls -f` pays a stat per entry instead).
        // Lookups in one directory run in parallel; symlink targets stay cached.
        for cap in [
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if config.add_capabilities(cap).is_err() {
                log::info!("the kernel does not offer {cap:?}");
            }
        }
        // Passthrough needs a privileged server. Without it files go through the page
        // cache, kept across opens while it is right. (Not the writeback cache: with it
        // the kernel keeps writes and times to itself for a while, and the differential
        // test found the upper's mtime left behind.)
        let p = self.policy;
        let root = rustix::process::geteuid().is_root();
        if p.passthrough != Passthrough::Off
            && root
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        {
            // Depth 1: backing files may not be on a stacking filesystem themselves (such
            // a file goes through the page cache), and one stacking filesystem may still
            // be mounted over strata.
            if let Err(e) = config.set_max_stack_depth(1) {
                log::info!("max_stack_depth 1 refused ({e})");
            }
            self.modes.enable_passthrough(p.passthrough);
        }
        self.start_evictor();
        // Many reads and writes of the page cache in flight at once.
        if let Err(e) = config.set_max_background(64) {
            log::info!("max_background 64 refused ({e})");
        }
        if let Err(e) = config.set_congestion_threshold(48) {
            log::info!("congestion_threshold 48 refused ({e})");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(self.union.lookup(parent.0, name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.union.getattr(ino.0) {
            Ok(a) => reply.attr(&self.policy.ttl, &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let r = self.union.setattr(ino.0, set);
        self.flush_changed();
        match r {
            Ok(a) => reply.attr(&self.policy.ttl, &file_attr(&a)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(err(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let creds = creds_masked(req, umask);
        let r = self
            .union
            .mknod(parent.0, name, mode, u64::from(rdev), creds);
        self.entry(r, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let creds = creds_masked(req, umask);
        self.entry(self.union.mkdir(parent.0, name, mode, creds), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(self.union.unlink(parent.0, name), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.empty(self.union.rmdir(parent.0, name), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.union
                .symlink(parent.0, link_name, target.as_os_str(), creds(req)),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.empty(
            self.union
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(self.union.link(ino.0, newparent.0, newname), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.union.open(ino.0, flags.0);
        self.flush_changed();
        let fh = match r {
            Ok(fh) => fh,
            Err(e) => return reply.error(err(e)),
        };
        match self
            .modes
            .open(&self.union, ino.0, fh, |fd| reply.open_backing(fd))
        {
            Mode::Passthrough(id) => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id)
            }
            Mode::Cached { keep_cache } => {
                reply.opened(FileHandle(fh), cached_flags(flags.0, keep_cache))
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        READ_BUF.with_borrow_mut(|buf| match self.union.read(fh.0, offset, size, buf) {
            Ok(d) => reply.data(d),
            Err(e) => reply.error(err(e)),
        })
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.union.write(fh.0, offset, data) {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(err(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.union.release(fh.0);
        self.modes.release(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(self.union.fsync(fh.0, datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.union.opendir(ino.0) {
            // The kernel keeps the listing in its page cache until the directory changes.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.union.readdir(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        for (next, e) in from_offset(&entries, offset) {
            if reply.add(INodeNo(e.ino), next, kind(e.fmt), &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.union.readdir(fh.0, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(err(e)),
        };
        for (next, e) in from_offset(&entries, offset) {
            let dots = e.name == "." || e.name == "..";
            // The kernel counts a lookup for every entry but the dots, whose attributes
            // it ignores.
            let (attr, looked_up) = if dots {
                let a = Attr {
                    ino: e.ino,
                    mode: e.fmt,
                    ..Attr::default()
                };
                (a, false)
            } else {
                match self.union.lookup_listed(ino.0, e) {
                    Ok(a) => (a, true),
                    // Gone since the listing was taken: leave it out.
                    Err(_) => continue,
                }
            };
            let ttl = match looked_up && self.union.per_name(attr.ino) {
                true => Duration::ZERO,
                false => self.policy.ttl,
            };
            let full = reply.add(
                INodeNo(attr.ino),
                next,
                &e.name,
                &ttl,
                &file_attr(&attr),
                Generation(0),
            );
            if full {
                if looked_up {
                    self.union.forget(attr.ino, 1);
                }
                break;
            }
        }
        self.flush_changed();
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.union.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.empty(self.union.fsyncdir(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(err(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let r = self.union.setxattr(ino.0, name, value, flags);
        if r.is_ok() {
            self.attrs_changed(ino);
        }
        self.empty(r, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        Self::xattr(self.union.getxattr(ino.0, name), size, reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        Self::xattr(self.union.listxattr(ino.0, creds(req)), size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.union.removexattr(ino.0, name);
        if r.is_ok() {
            self.attrs_changed(ino);
        }
        self.empty(r, reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let creds = creds_masked(req, umask);
        let r = self.union.create(parent.0, name, mode, flags, creds);
        self.flush_changed();
        let (a, fh) = match r {
            Ok(v) => v,
            Err(e) => return reply.error(err(e)),
        };
        let (attr, gen, fh) = (file_attr(&a), Generation(0), FileHandle(fh));
        match self
            .modes
            .open(&self.union, a.ino, fh.0, |fd| reply.open_backing(fd))
        {
            Mode::Passthrough(id) => {
                let flags = FopenFlags::FOPEN_NOFLUSH;
                reply.created_passthrough(&self.policy.ttl, &attr, gen, fh, flags, &id)
            }
            Mode::Cached { keep_cache } => {
                let flags = cached_flags(flags, keep_cache);
                reply.created(&self.policy.ttl, &attr, gen, fh, flags)
            }
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.union.lseek(fh.0, offset, whence) {
            Ok(at) => reply.offset(at),
            Err(e) => reply.error(err(e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.empty(self.union.fallocate(fh.0, offset, length, mode), reply);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .union
            .copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(err(e)),
        }
    }
}
