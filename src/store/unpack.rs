//! A layer tar becomes a directory in the kernel overlay format, ready to be a lower dir.
//!
//! CONTRACT (the store calls only [`unpack`]):
//! - `src` is an *uncompressed* tar stream (the caller decompresses and hashes).
//!   `unpack` reads entries until the end-of-archive marker (the first zero block) and not a
//!   byte further; the caller drains the rest. A stream that ends before that marker, in a
//!   header or in a file's data, or a header with a bad checksum, is corrupt.
//! - `dest` is an existing, empty directory the caller made in the store's `tmp/`; on an
//!   error the caller removes it, so `unpack` never has to clean up.
//! - Every name goes through `tarpath::entry_path`; symlink targets through
//!   `tarpath::symlink_stays_inside`; hard link targets must name an earlier non-directory
//!   entry of the same tar. `.wh.NAME` becomes a 0/0 char device NAME; `.wh..wh..opq` sets
//!   `trusted.overlay.opaque=y` on its directory. Regular files, dirs, symlinks, hard links,
//!   fifos, char/block devices; owner (when run as root), mode (incl. set-id bits), mtime,
//!   PAX `SCHILY.xattr.*` (overlay xattrs, `trusted.overlay.*` and `user.overlay.*`, are
//!   dropped, never applied). A hard link entry adds a name, not metadata.
//! - Nothing is ever written outside `dest`: every directory is opened with
//!   `sys::open_beneath` (no symlink followed), every create is a `*at` call on one plain
//!   name in it, never following a symlink. Parents the tar omits are created as
//!   directories (0755). Directories get their mode, owner and times last, deepest first,
//!   so writing their children changes nothing afterwards.
//! - Refused with an [`UnpackError`] naming the entry: bad names, links leaving the layer,
//!   duplicate entries (a directory entry for a directory made implicitly is not a
//!   duplicate; `.wh.x` and `x` are), oversized entries (see [`Limits`]; a name component
//!   over 255 bytes), kinds the overlay format cannot hold (GNU sparse files, volume labels,
//!   a plain 0/0 char device, which would read as a whiteout), a truncated or corrupt
//!   stream.
//!
//! The tar framing (headers, GNU long names, PAX records) is read here, with the `tar`
//! crate decoding the header fields: its `Archive` reads long names and PAX headers into
//! memory without a bound, and splits PAX records at newlines, which binary xattr values
//! contain. PAX global headers are read (bounded) and ignored, as docker and containerd do.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use super::tarpath::{self, Marker};
use crate::sys;
use crate::union::layer::OPAQUE_XATTR;

/// Bounds on what one tar may contain.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest PAX extended header, in bytes.
    pub max_pax: u64,
    /// The largest xattr value.
    pub max_xattr: usize,
    /// The longest entry path, in bytes.
    pub max_path: usize,
    /// The most entries.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_pax: 1 << 20,
            max_xattr: 64 << 10,
            max_path: 4096,
            max_entries: 10_000_000,
        }
    }
}

/// What an unpacked layer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// The sum of the sizes of the regular files (docker's layer size).
    pub bytes: u64,
}

/// Why a tar was refused; names the entry (or the stream position) that was wrong.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    Name(#[from] super::tarpath::TarPathError),
    #[error("tar entry {name:?}: {why}")]
    Entry { name: String, why: String },
    #[error("the tar is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn bad(name: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Entry {
        name: name.to_owned(),
        why: why.into(),
    }
}

/// A failed system call on behalf of the entry `name`.
fn sys_err<'a>(name: &'a str, op: &'a str) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        path: format!("tar entry {name:?}: {op}"),
        source: e.into(),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Unpacks the tar `src` into the empty directory `dest`.
///
/// # Errors
/// See [`UnpackError`].
pub fn unpack(
    src: &mut dyn Read,
    dest: &Path,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let root = rustix::fs::open(
        dest,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        path: dest.display().to_string(),
        source: e.into(),
    })?;
    let mut tar = TarReader::new(src, limits);
    let mut out = Out::new(root);
    let mut stats = UnpackStats::default();
    while let Some(m) = tar.next_member()? {
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(bad(
                &m.shown(),
                format!("over the limit of {} entries", limits.max_entries),
            ));
        }
        stats.bytes += out.entry(&m, &mut tar)?;
    }
    out.finish()?;
    Ok(stats)
}

// ---------------------------------------------------------------------------------------
// Reading the tar stream.

const BLOCK: usize = 512;
/// The copy buffer for file data: large, since layers reach gigabytes.
const COPY_BUF: usize = 1 << 20;
/// The longest file name the kernel takes (`NAME_MAX`).
const NAME_MAX: usize = 255;
const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// One tar entry with its extension headers (GNU long name and link, PAX) folded in.
#[derive(Debug)]
struct Member {
    name: Vec<u8>,
    link: Option<Vec<u8>>,
    /// The type flag (`'0'`, `'5'`, …).
    kind: u8,
    /// The bytes of data that follow the header.
    size: u64,
    meta: Meta,
    /// Major and minor, for char and block devices.
    dev: Option<(u32, u32)>,
}

impl Member {
    fn shown(&self) -> String {
        lossy(&self.name)
    }
}

/// What a header says about an inode besides its name and kind.
#[derive(Clone, Debug, Default)]
struct Meta {
    uid: u32,
    gid: u32,
    /// Permission bits including set-id and sticky.
    mode: u32,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
    xattrs: Vec<(OsString, Vec<u8>)>,
}

struct TarReader<'a> {
    src: &'a mut dyn Read,
    limits: &'a Limits,
    /// Bytes consumed so far.
    pos: u64,
    /// Data of the current entry not read yet, then the padding to the next block.
    left: u64,
    pad: u64,
    /// The current entry, for errors.
    cur: String,
}

impl<'a> TarReader<'a> {
    fn new(src: &'a mut dyn Read, limits: &'a Limits) -> TarReader<'a> {
        TarReader {
            src,
            limits,
            pos: 0,
            left: 0,
            pad: 0,
            cur: String::new(),
        }
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        loop {
            match self.src.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(UnpackError::Io {
                        path: format!("the tar stream at byte {}", self.pos),
                        source,
                    })
                }
            }
        }
    }

    /// One header block; `None` when the stream ends right where a header would start.
    fn block(&mut self) -> Result<Option<[u8; BLOCK]>, UnpackError> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            let n = self.read_some(&mut b[got..])?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(UnpackError::Corrupt(format!(
                    "the stream ends inside the header at byte {}",
                    self.pos - got as u64
                )));
            }
            got += n;
        }
        Ok(Some(b))
    }

    /// Starts reading the data of an entry of `size` bytes.
    fn start(&mut self, size: u64, what: String) {
        self.left = size;
        self.pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.cur = what;
    }

    /// Reads the current entry's data into `buf`; 0 once all of it is read.
    fn data(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = self.read_some(&mut buf[..want])?;
        if n == 0 {
            return Err(UnpackError::Corrupt(format!(
                "the stream ends at byte {} in the data of {}",
                self.pos, self.cur
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }

    /// Skips what is left of the current entry's data and its padding.
    fn skip_rest(&mut self) -> Result<(), UnpackError> {
        let mut scratch = [0u8; 8192];
        while self.data(&mut scratch)? > 0 {}
        while self.pad > 0 {
            let want = usize::try_from(self.pad).map_or(scratch.len(), |p| p.min(scratch.len()));
            let n = self.read_some(&mut scratch[..want])?;
            if n == 0 {
                return Err(UnpackError::Corrupt(format!(
                    "the stream ends at byte {} in the padding after {}",
                    self.pos, self.cur
                )));
            }
            self.pad -= n as u64;
        }
        Ok(())
    }

    /// The whole data of an extension header (already checked against its limit).
    fn read_ext(&mut self, size: u64, what: String) -> Result<Vec<u8>, UnpackError> {
        self.start(size, what);
        let mut v = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
        let mut got = 0;
        while got < v.len() {
            got += self.data(&mut v[got..])?;
        }
        self.skip_rest()?;
        Ok(v)
    }

    /// The next entry, its extension headers read; `None` at the end-of-archive marker.
    fn next_member(&mut self) -> Result<Option<Member>, UnpackError> {
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let at = self.pos;
            let pending = long_name.is_some() || long_link.is_some() || pax.is_some();
            let Some(block) = self.block()? else {
                return Err(UnpackError::Corrupt(format!(
                    "the stream ends at byte {at} without the end-of-archive marker"
                )));
            };
            if block.iter().all(|b| *b == 0) {
                if pending {
                    return Err(UnpackError::Corrupt(format!(
                        "extension headers describe no entry: the archive ends at byte {at}"
                    )));
                }
                return Ok(None);
            }
            check_sum(&block)
                .map_err(|why| UnpackError::Corrupt(format!("the header at byte {at}: {why}")))?;
            let h = tar::Header::from_byte_slice(&block);
            let size = h.entry_size().map_err(|e| {
                UnpackError::Corrupt(format!("the header at byte {at}: a bad size field: {e}"))
            })?;
            match h.entry_type().as_byte() {
                kind @ (b'L' | b'K') => {
                    let (slot, what) = match kind {
                        b'L' => (&mut long_name, "name"),
                        _ => (&mut long_link, "link target"),
                    };
                    if slot.is_some() {
                        return Err(UnpackError::Corrupt(format!(
                            "two GNU long {what} headers for one entry, at byte {at}"
                        )));
                    }
                    // The name and its terminating NUL.
                    if size > self.limits.max_path as u64 + 1 {
                        self.start(size, format!("a GNU long {what}"));
                        let mut head = [0u8; 120];
                        let n = self.data(&mut head)?;
                        return Err(bad(
                            &format!("{}...", lossy(&head[..n])),
                            format!(
                                "a long {what} of {size} bytes, over the limit of {} bytes",
                                self.limits.max_path
                            ),
                        ));
                    }
                    let mut v = self.read_ext(size, format!("a GNU long {what} at byte {at}"))?;
                    if let Some(end) = v.iter().position(|b| *b == 0) {
                        v.truncate(end);
                    }
                    *slot = Some(v);
                }
                kind @ (b'x' | b'g') => {
                    if size > self.limits.max_pax {
                        // Writers name it after the entry it describes, or not at all.
                        let name = match h.path_bytes() {
                            n if n.is_empty() => format!("(a PAX header at byte {at})"),
                            n => lossy(&n),
                        };
                        return Err(bad(
                            &name,
                            format!(
                                "a PAX header of {size} bytes, over the limit of {} bytes",
                                self.limits.max_pax
                            ),
                        ));
                    }
                    let v = self.read_ext(size, format!("a PAX header at byte {at}"))?;
                    if kind == b'g' {
                        continue;
                    }
                    if pax.is_some() {
                        return Err(UnpackError::Corrupt(format!(
                            "two PAX headers for one entry, at byte {at}"
                        )));
                    }
                    pax = Some(v);
                }
                _ => {
                    let m = member(h, size, long_name, long_link, pax.as_deref(), self.limits)?;
                    self.start(m.size, format!("{:?}", m.shown()));
                    return Ok(Some(m));
                }
            }
        }
    }
}

/// Checks a header's checksum: the sum of its bytes with the checksum field read as
/// spaces, unsigned as POSIX says or signed as some old tars wrote it.
fn check_sum(block: &[u8; BLOCK]) -> Result<(), String> {
    let field = &block[148..156];
    let text = field
        .iter()
        .map(|b| *b as char)
        .collect::<String>()
        .trim_matches(|c| c == ' ' || c == '\0')
        .to_owned();
    let stored = u32::from_str_radix(&text, 8)
        .map_err(|_| format!("a bad checksum field {:?}", lossy(field)))?;
    let spaces = 8 * u32::from(b' ');
    let (mut unsigned, mut signed) = (spaces, spaces as i32);
    for (i, b) in block.iter().enumerate() {
        if !(148..156).contains(&i) {
            unsigned += u32::from(*b);
            signed += i32::from(*b as i8);
        }
    }
    if stored == unsigned || i64::from(stored) == i64::from(signed) {
        return Ok(());
    }
    Err(format!(
        "checksum mismatch (the header says {stored}, its bytes sum to {unsigned})"
    ))
}

/// Whether a numeric header field is empty (all NULs and spaces), which old tars write for
/// fields they do not use.
fn blank(field: &[u8]) -> bool {
    field.iter().all(|b| *b == 0 || *b == b' ')
}

/// Folds a header and its extension headers into one entry, checked against `limits`.
fn member(
    h: &tar::Header,
    size: u64,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<&[u8]>,
    limits: &Limits,
) -> Result<Member, UnpackError> {
    let name = long_name.unwrap_or_else(|| h.path_bytes().into_owned());
    let link = long_link.or_else(|| h.link_name_bytes().map(|l| l.into_owned()));
    let shown = lossy(&name);
    let old = h.as_old();
    let num = |field: &[u8], v: io::Result<u64>, what: &str| -> Result<u64, UnpackError> {
        match blank(field) {
            true => Ok(0),
            false => v.map_err(|e| bad(&shown, format!("a bad {what} field: {e}"))),
        }
    };
    let mode = num(&old.mode, h.mode().map(u64::from), "mode")?;
    let mut uid = num(&old.uid, h.uid(), "uid")?;
    let mut gid = num(&old.gid, h.gid(), "gid")?;
    let mtime = num(&old.mtime, h.mtime(), "mtime")?;
    let kind = h.entry_type().as_byte();
    let mut m = Member {
        name,
        link,
        kind,
        size,
        meta: Meta {
            mode: (mode & 0o7777) as u32,
            mtime: (i64::try_from(mtime).unwrap_or(i64::MAX), 0),
            ..Meta::default()
        },
        dev: None,
    };
    let (mut major, mut minor) = (None, None);
    if matches!(kind, b'3' | b'4') {
        let fields = match (h.as_ustar(), h.as_gnu()) {
            (Some(u), _) => Some((u.dev_major, u.dev_minor)),
            (None, Some(g)) => Some((g.dev_major, g.dev_minor)),
            (None, None) => None,
        };
        if let Some((maj_f, min_f)) = fields {
            let dev = |f: &[u8], v: io::Result<Option<u32>>, what: &str| match blank(f) {
                true => Ok(Some(0)),
                false => v.map_err(|e| bad(&shown, format!("a bad {what} field: {e}"))),
            };
            major = dev(&maj_f, h.device_major(), "device major")?;
            minor = dev(&min_f, h.device_minor(), "device minor")?;
        }
    }
    if let Some(pax) = pax {
        let records =
            pax_records(pax).map_err(|why| bad(&shown, format!("a PAX header: {why}")))?;
        for (key, value) in records {
            if let Some(xname) = key.strip_prefix(XATTR_PREFIX) {
                m.meta
                    .xattrs
                    .push((OsStr::from_bytes(xname).to_os_string(), value.to_vec()));
                continue;
            }
            if key.starts_with(b"GNU.sparse.") {
                return Err(bad(
                    &shown,
                    "a GNU sparse file (PAX format) is not supported",
                ));
            }
            // An empty value removes the record, leaving the header's field.
            if value.is_empty() {
                continue;
            }
            let number = |what: &str| {
                decimal(value).ok_or_else(|| {
                    bad(
                        &shown,
                        format!("a bad PAX {what} record {:?}", lossy(value)),
                    )
                })
            };
            match key {
                b"path" => m.name = value.to_vec(),
                b"linkpath" => m.link = Some(value.to_vec()),
                b"size" => m.size = number("size")?,
                b"uid" => uid = number("uid")?,
                b"gid" => gid = number("gid")?,
                b"mtime" => {
                    m.meta.mtime = pax_time(value).ok_or_else(|| {
                        bad(&shown, format!("a bad PAX mtime record {:?}", lossy(value)))
                    })?;
                }
                b"SCHILY.devmajor" => major = Some(dev_number(number("devmajor")?, &shown)?),
                b"SCHILY.devminor" => minor = Some(dev_number(number("devminor")?, &shown)?),
                // atime, ctime, uname, gname (the numeric ids decide), comment, charset,
                // vendor records: nothing a layer keeps.
                _ => {}
            }
        }
    }
    let shown = m.shown();
    m.meta.uid = u32::try_from(uid).map_err(|_| bad(&shown, format!("uid {uid} is too large")))?;
    m.meta.gid = u32::try_from(gid).map_err(|_| bad(&shown, format!("gid {gid} is too large")))?;
    if let (Some(major), Some(minor)) = (major, minor) {
        m.dev = Some((major, minor));
    }
    if m.name.len() > limits.max_path {
        return Err(bad(
            &shown,
            format!(
                "a name of {} bytes, over the limit of {} bytes",
                m.name.len(),
                limits.max_path
            ),
        ));
    }
    if let Some(link) = &m.link {
        if link.len() > limits.max_path {
            return Err(bad(
                &shown,
                format!(
                    "a link target of {} bytes, over the limit of {} bytes",
                    link.len(),
                    limits.max_path
                ),
            ));
        }
    }
    for (xname, value) in &m.meta.xattrs {
        if value.len() > limits.max_xattr {
            return Err(bad(
                &shown,
                format!(
                    "xattr {xname:?} of {} bytes, over the limit of {} bytes",
                    value.len(),
                    limits.max_xattr
                ),
            ));
        }
        if xname.is_empty() || xname.as_bytes().contains(&0) {
            return Err(bad(&shown, format!("a bad xattr name {xname:?}")));
        }
    }
    Ok(m)
}

fn dev_number(n: u64, shown: &str) -> Result<u32, UnpackError> {
    u32::try_from(n).map_err(|_| bad(shown, format!("device number {n} is too large")))
}

/// One PAX record: a key and its raw value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX extended header, `LEN KEY=VALUE\n` each, where LEN counts the whole
/// record: values are raw bytes (an xattr value may hold newlines and NULs).
fn pax_records(mut data: &[u8]) -> Result<Vec<PaxRecord<'_>>, &'static str> {
    let mut out = Vec::new();
    // Some writers pad the header's data with NULs.
    while !data.iter().all(|b| *b == 0) {
        let sp = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("a record without a length")?;
        let len = decimal(&data[..sp]).ok_or("a record with a bad length")?;
        let len = usize::try_from(len).map_err(|_| "a record longer than the header")?;
        if len > data.len() {
            return Err("a record longer than the header");
        }
        let rec = data
            .get(sp + 1..len)
            .and_then(|r| r.strip_suffix(b"\n"))
            .ok_or("a record not ending in a newline")?;
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a record without '='")?;
        if eq == 0 {
            return Err("a record without a key");
        }
        out.push((&rec[..eq], &rec[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

/// A decimal number of ASCII digits only.
fn decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// A PAX time, `[-]SECONDS[.FRACTION]`, as seconds and nanoseconds (0..1e9).
fn pax_time(b: &[u8]) -> Option<(i64, i64)> {
    let (neg, b) = match b.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, b),
    };
    let (secs, frac) = match b.iter().position(|c| *c == b'.') {
        Some(dot) => (&b[..dot], &b[dot + 1..]),
        None => (b, &b""[..]),
    };
    let secs = i64::try_from(decimal(secs)?).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec: i64 = 0;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    Some(match (neg, nsec) {
        (false, _) => (secs, nsec),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

// ---------------------------------------------------------------------------------------
// Writing the layer.

/// What an earlier entry made at a path of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Made {
    /// A parent the tar did not list (yet).
    ImplicitDir,
    Dir,
    File,
    Symlink,
    /// A fifo or a device.
    Node,
    Whiteout,
    /// The `.wh..wh..opq` marker itself.
    Opaque,
}

impl Made {
    fn what(self) -> &'static str {
        match self {
            Made::ImplicitDir => "a directory (the parent of an earlier entry)",
            Made::Dir => "a directory",
            Made::File => "a regular file",
            Made::Symlink => "a symlink",
            Made::Node => "a fifo or device",
            Made::Whiteout => "a whiteout",
            Made::Opaque => "an opaque marker",
        }
    }
}

/// The layer being written.
struct Out {
    root: OwnedFd,
    made: HashMap<PathBuf, Made>,
    /// Directories listed in the tar, their metadata set once everything is written.
    dirs: Vec<(PathBuf, String, Meta)>,
    /// The directory of the previous entry: consecutive entries mostly share one.
    last_dir: Option<(PathBuf, Rc<OwnedFd>)>,
    /// Whether owners are applied (only root may give files away).
    chown: bool,
    buf: Vec<u8>,
}

impl Out {
    fn new(root: OwnedFd) -> Out {
        Out {
            root,
            made: HashMap::new(),
            dirs: Vec::new(),
            last_dir: None,
            chown: sys::euid() == 0,
            buf: vec![0u8; COPY_BUF],
        }
    }

    /// Writes one entry, reading its data from `tar`; returns the bytes of a regular file.
    fn entry(&mut self, m: &Member, tar: &mut TarReader<'_>) -> Result<u64, UnpackError> {
        let shown = m.shown();
        // Old tars mark a directory by the trailing slash of a regular entry's name.
        let kind = match m.kind {
            b'\0' if m.name.ends_with(b"/") => b'5',
            k => k,
        };
        // `tar` of `.` lists the root itself as `./`: its metadata is the layer root's.
        if is_root_name(&m.name) && kind == b'5' {
            self.dir(&shown, Path::new(""), m)?;
            return Ok(0);
        }
        let path = tarpath::entry_path(&m.name)?;
        let mut comps = path.iter().peekable();
        while let Some(c) = comps.next() {
            if c.len() > NAME_MAX {
                return Err(bad(
                    &shown,
                    format!(
                        "a name component of {} bytes, over the limit of {NAME_MAX}",
                        c.len()
                    ),
                ));
            }
            if comps.peek().is_some() && tarpath::marker(c) != Marker::Plain {
                return Err(bad(
                    &shown,
                    format!("the whiteout name {c:?} used as a directory"),
                ));
            }
        }
        let (parent, name) = split(&path);
        match tarpath::marker(name) {
            Marker::Opaque => return self.opaque(&shown, &path, parent).map(|()| 0),
            Marker::Whiteout(n) => return self.whiteout(&shown, parent, &n).map(|()| 0),
            Marker::Plain => {}
        }
        if !matches!(kind, b'0' | b'\0' | b'7') && m.size != 0 {
            return Err(bad(
                &shown,
                format!("{} with {} bytes of data", kind_name(kind), m.size),
            ));
        }
        match kind {
            b'0' | b'\0' | b'7' => self.file(&shown, &path, m, tar),
            b'5' => self.dir(&shown, &path, m).map(|()| 0),
            b'2' => self.symlink(&shown, &path, m).map(|()| 0),
            b'1' => self.hard_link(&shown, &path, m).map(|()| 0),
            b'3' | b'4' | b'6' => self.node(&shown, &path, kind, m).map(|()| 0),
            k => Err(bad(
                &shown,
                format!("{} (type {:?}) is not supported", kind_name(k), k as char),
            )),
        }
    }

    /// Records that `path` is made by this entry; an earlier entry for it is a duplicate.
    fn claim(&mut self, shown: &str, path: &Path, made: Made) -> Result<(), UnpackError> {
        match self.made.get(path) {
            None => {}
            Some(Made::ImplicitDir) if made == Made::Dir => {}
            Some(prev) => {
                return Err(bad(
                    shown,
                    format!(
                        "a duplicate: an earlier entry already made {path:?} {}",
                        prev.what()
                    ),
                ))
            }
        }
        self.made.insert(path.to_path_buf(), made);
        Ok(())
    }

    /// Opens a directory of the layer, never through a symlink.
    fn open_dir(&self, shown: &str, dir: &Path) -> Result<OwnedFd, UnpackError> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        sys::open_beneath(self.root.as_fd(), dir, flags, 0).map_err(|e| match e {
            Errno::LOOP | Errno::XDEV => bad(
                shown,
                format!("{dir:?} is a symlink or leads through one: nothing is written through a symlink"),
            ),
            Errno::NOTDIR => bad(shown, format!("{dir:?} is not a directory")),
            e => sys_err(shown, "open its directory")(e),
        })
    }

    /// The directory `dir` (made as needed) to create the entry `shown` in.
    fn parent(&mut self, shown: &str, dir: &Path) -> Result<Rc<OwnedFd>, UnpackError> {
        if let Some((p, fd)) = &self.last_dir {
            if p == dir {
                return Ok(fd.clone());
            }
        }
        self.make_dirs(shown, dir)?;
        let fd = Rc::new(self.open_dir(shown, dir)?);
        self.last_dir = Some((dir.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// Makes `dir` and its parents where no entry made them yet (0755, like the kernel's
    /// `mkdir -p` under a umask of 022); refuses when an earlier non-directory is in the way.
    fn make_dirs(&mut self, shown: &str, dir: &Path) -> Result<(), UnpackError> {
        if matches!(self.made.get(dir), Some(Made::Dir | Made::ImplicitDir)) {
            return Ok(());
        }
        let mut cur = PathBuf::new();
        for c in dir.iter() {
            cur.push(c);
            match self.made.get(&cur) {
                Some(Made::Dir | Made::ImplicitDir) => continue,
                Some(other) => {
                    return Err(bad(
                        shown,
                        format!(
                            "{cur:?} is not a directory: an earlier entry made it {}",
                            other.what()
                        ),
                    ))
                }
                None => {}
            }
            let up = self.open_dir(shown, cur.parent().unwrap_or(Path::new("")))?;
            match rustix::fs::mkdirat(&up, c, Mode::from_raw_mode(0o755)) {
                Ok(()) => rustix::fs::chmodat(&up, c, Mode::from_raw_mode(0o755), AtFlags::empty())
                    .map_err(sys_err(shown, "chmod a parent"))?,
                // Not made by this tar (`dest` was not empty): a directory will do; a symlink
                // or anything else is refused by the confined open.
                Err(Errno::EXIST) => drop(self.open_dir(shown, &cur)?),
                Err(e) => return Err(sys_err(shown, "mkdir a parent")(e)),
            }
            self.made.insert(cur.clone(), Made::ImplicitDir);
        }
        Ok(())
    }

    fn file(
        &mut self,
        shown: &str,
        path: &Path,
        m: &Member,
        tar: &mut TarReader<'_>,
    ) -> Result<u64, UnpackError> {
        self.claim(shown, path, Made::File)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(
            &*dir,
            name,
            flags | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(sys_err(shown, "create"))?;
        let mut file = std::fs::File::from(fd);
        loop {
            let n = tar.data(&mut self.buf)?;
            if n == 0 {
                break;
            }
            file.write_all(&self.buf[..n])
                .map_err(|source| UnpackError::Io {
                    path: format!("tar entry {shown:?}: write"),
                    source,
                })?;
        }
        let fd = file.as_fd();
        if self.chown {
            rustix::fs::fchown(fd, Some(uid(&m.meta)), Some(gid(&m.meta)))
                .map_err(sys_err(shown, "chown"))?;
        }
        // After chown, which clears the set-id bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m.meta.mode))
            .map_err(sys_err(shown, "chmod"))?;
        for (xname, value) in kept_xattrs(shown, &m.meta) {
            rustix::fs::fsetxattr(fd, xname, value, XattrFlags::empty())
                .map_err(sys_err(shown, "set an xattr"))?;
        }
        rustix::fs::futimens(fd, &timestamps(m.meta.mtime)).map_err(sys_err(shown, "set times"))?;
        Ok(m.size)
    }

    fn dir(&mut self, shown: &str, path: &Path, m: &Member) -> Result<(), UnpackError> {
        let before = self.made.get(path).copied();
        self.claim(shown, path, Made::Dir)?;
        if before.is_none() && !path.as_os_str().is_empty() {
            let (parent, name) = split(path);
            let dir = self.parent(shown, parent)?;
            // Owner-writable until its metadata is set at the end.
            rustix::fs::mkdirat(&*dir, name, Mode::RWXU).map_err(sys_err(shown, "mkdir"))?;
        }
        self.dirs
            .push((path.to_path_buf(), shown.to_owned(), m.meta.clone()));
        Ok(())
    }

    fn symlink(&mut self, shown: &str, path: &Path, m: &Member) -> Result<(), UnpackError> {
        let target = match m.link.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => return Err(bad(shown, "a symlink without a target")),
        };
        if target.contains(&0) {
            return Err(bad(shown, "a NUL byte in the symlink target"));
        }
        if !tarpath::symlink_stays_inside(path, target) {
            return Err(bad(
                shown,
                format!(
                    "a symlink to {:?}: a symlink or hard link pointing outside the layer",
                    lossy(target)
                ),
            ));
        }
        self.claim(shown, path, Made::Symlink)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        rustix::fs::symlinkat(OsStr::from_bytes(target), &*dir, name)
            .map_err(sys_err(shown, "symlink"))?;
        self.set_meta_at(shown, &dir, name, &m.meta, true)
    }

    fn hard_link(&mut self, shown: &str, path: &Path, m: &Member) -> Result<(), UnpackError> {
        let raw = match m.link.as_deref() {
            Some(t) if !t.is_empty() => t,
            _ => return Err(bad(shown, "a hard link without a target")),
        };
        let target = tarpath::entry_path(raw).map_err(|e| {
            bad(
                shown,
                format!(
                    "a hard link to {:?} ({}): a symlink or hard link pointing outside the layer",
                    lossy(raw),
                    e.why
                ),
            )
        })?;
        let made = match self.made.get(&target) {
            Some(k @ (Made::File | Made::Symlink | Made::Node)) => *k,
            Some(k) => {
                return Err(bad(
                    shown,
                    format!("a hard link to {target:?}, which is {}", k.what()),
                ))
            }
            None => {
                return Err(bad(
                    shown,
                    format!(
                        "a hard link to {target:?}, which is not an earlier entry of this layer"
                    ),
                ))
            }
        };
        self.claim(shown, path, made)?;
        let (tparent, tname) = split(&target);
        let tdir = self.open_dir(shown, tparent)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        rustix::fs::linkat(&tdir, tname, &*dir, name, AtFlags::empty())
            .map_err(sys_err(shown, "link"))
    }

    fn node(&mut self, shown: &str, path: &Path, kind: u8, m: &Member) -> Result<(), UnpackError> {
        let (ftype, rdev) = match kind {
            b'6' => (libc::S_IFIFO, 0),
            _ => {
                let Some((major, minor)) = m.dev else {
                    return Err(bad(shown, "a device without major and minor numbers"));
                };
                if kind == b'3' && (major, minor) == (0, 0) {
                    return Err(bad(
                        shown,
                        "a character device 0/0, which is a whiteout in the overlay format \
                         (a deleted name is a .wh. entry in a layer tar)",
                    ));
                }
                let ftype = match kind {
                    b'3' => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                (ftype, rustix::fs::makedev(major, minor))
            }
        };
        self.claim(shown, path, Made::Node)?;
        let (parent, name) = split(path);
        let dir = self.parent(shown, parent)?;
        sys::mknod_at(dir.as_fd(), name, ftype | 0o600, rdev).map_err(sys_err(shown, "mknod"))?;
        self.set_meta_at(shown, &dir, name, &m.meta, false)
    }

    fn whiteout(&mut self, shown: &str, parent: &Path, name: &OsStr) -> Result<(), UnpackError> {
        if name == "." || name == ".." {
            return Err(bad(shown, "a whiteout of '.' or '..'"));
        }
        self.claim(shown, &parent.join(name), Made::Whiteout)?;
        let dir = self.parent(shown, parent)?;
        sys::mknod_whiteout(dir.as_fd(), name).map_err(sys_err(shown, "mknod the whiteout"))
    }

    fn opaque(&mut self, shown: &str, path: &Path, parent: &Path) -> Result<(), UnpackError> {
        self.claim(shown, path, Made::Opaque)?;
        let dir = self.parent(shown, parent)?;
        sys::xattr_set(dir.as_fd(), OsStr::new(OPAQUE_XATTR), b"y", 0)
            .map_err(sys_err(shown, "set the opaque xattr"))
    }

    /// Owner, mode (not on a symlink), xattrs and times of the inode `name` in `dir`.
    fn set_meta_at(
        &self,
        shown: &str,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), UnpackError> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(sys_err(shown, "open"))?;
        self.set_meta(shown, fd.as_fd(), meta, symlink)
    }

    /// The same through an `O_PATH` descriptor of the inode itself.
    fn set_meta(
        &self,
        shown: &str,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), UnpackError> {
        if self.chown {
            sys::chown_fd(fd, Some(meta.uid), Some(meta.gid)).map_err(sys_err(shown, "chown"))?;
        }
        if !symlink {
            sys::chmod_fd(fd, meta.mode).map_err(sys_err(shown, "chmod"))?;
        }
        for (xname, value) in kept_xattrs(shown, meta) {
            sys::xattr_set(fd, xname, value, 0).map_err(sys_err(shown, "set an xattr"))?;
        }
        let (s, n) = meta.mtime;
        sys::utimens_fd(fd, sys::SetTime::At(s, n), sys::SetTime::At(s, n))
            .map_err(sys_err(shown, "set times"))
    }

    /// Sets the metadata of the directories listed in the tar, deepest first, now that
    /// nothing is written in them any more.
    fn finish(mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _, _)| std::cmp::Reverse(p.components().count()));
        for (path, shown, meta) in &dirs {
            let fd = self.open_dir(shown, path)?;
            self.set_meta(shown, fd.as_fd(), meta, false)?;
        }
        Ok(())
    }
}

/// The parent directory and the file name of a clean entry path.
fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("")),
        path.file_name().unwrap_or(path.as_os_str()),
    )
}

/// Whether a tar name means the layer root itself (`.`, `./`).
fn is_root_name(raw: &[u8]) -> bool {
    !raw.is_empty() && raw.split(|b| *b == b'/').all(|c| c.is_empty() || c == b".")
}

/// The xattrs of an entry that are applied: never the overlay's own.
fn kept_xattrs<'m>(
    shown: &'m str,
    meta: &'m Meta,
) -> impl Iterator<Item = (&'m OsStr, &'m [u8])> + 'm {
    meta.xattrs.iter().filter_map(move |(xname, value)| {
        let b = xname.as_bytes();
        if b.starts_with(b"trusted.overlay.") || b.starts_with(b"user.overlay.") {
            log::warn!("tar entry {shown:?}: the overlay xattr {xname:?} is not applied");
            return None;
        }
        Some((xname.as_os_str(), value.as_slice()))
    })
}

fn uid(meta: &Meta) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(meta.uid)
}

fn gid(meta: &Meta) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(meta.gid)
}

fn timestamps((s, n): (i64, i64)) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: n as _,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// A tar type flag in words, for errors.
fn kind_name(kind: u8) -> &'static str {
    match kind {
        b'0' | b'\0' | b'7' => "a regular file",
        b'1' => "a hard link",
        b'2' => "a symlink",
        b'3' => "a character device",
        b'4' => "a block device",
        b'5' => "a directory",
        b'6' => "a fifo",
        b'S' => "a GNU sparse file",
        b'D' => "a GNU dump directory",
        b'M' => "a GNU multi-volume continuation",
        b'V' => "a volume label",
        b'N' => "an old GNU long name",
        _ => "an entry of an unknown kind",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::{EntryType, Header};

    /// A tar being built: well-formed entries through the `tar` crate, malicious ones by hand.
    struct Tar(tar::Builder<Vec<u8>>);

    fn header(kind: EntryType, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_size(0);
        h
    }

    /// A ustar header with any name and link bytes, the checksum right.
    fn raw_header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> [u8; 512] {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_entry_type(EntryType::new(kind));
        h.set_cksum();
        *h.as_bytes()
    }

    impl Tar {
        fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }
        fn add(&mut self, mut h: Header, name: &str, data: &[u8]) -> &mut Tar {
            h.set_size(data.len() as u64);
            self.0.append_data(&mut h, name, data).unwrap();
            self
        }
        fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
            self.add(header(EntryType::Regular, 0o644), name, data)
        }
        fn dir(&mut self, name: &str) -> &mut Tar {
            self.add(header(EntryType::Directory, 0o755), name, b"")
        }
        fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Tar {
            let mut h = header(kind, 0o777);
            self.0.append_link(&mut h, name, target).unwrap();
            self
        }
        fn node(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Tar {
            let mut h = header(kind, 0o644);
            h.set_device_major(major).unwrap();
            h.set_device_minor(minor).unwrap();
            self.add(h, name, b"")
        }
        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
            self.0
                .append_pax_extensions(records.iter().copied())
                .unwrap();
            self
        }
        fn raw(&mut self, name: &[u8], kind: u8, data: &[u8], link: &[u8]) -> &mut Tar {
            let v = self.0.get_mut();
            v.extend_from_slice(&raw_header(name, kind, data.len() as u64, link));
            v.extend_from_slice(data);
            v.resize(v.len().next_multiple_of(512), 0);
            self
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    /// A destination and, next to it, a directory no tar may touch.
    struct Scene {
        t: tempfile::TempDir,
        dest: PathBuf,
        outside: PathBuf,
    }

    fn scene() -> Scene {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("dest");
        let outside = t.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        Scene { t, dest, outside }
    }

    impl Scene {
        fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
            self.unpack_with(tar, &Limits::default())
        }
        fn unpack_with(&self, tar: &[u8], limits: &Limits) -> Result<UnpackStats, UnpackError> {
            unpack(&mut &tar[..], &self.dest, limits)
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dest.join(rel)
        }
        /// Nothing appeared or changed next to `dest`.
        fn outside_untouched(&self) {
            let names = |d: &Path| {
                let mut v: Vec<_> = fs::read_dir(d)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(names(self.t.path()), ["dest", "outside"]);
            assert_eq!(names(&self.outside), ["secret"]);
            let secret = self.outside.join("secret");
            assert_eq!(fs::read_to_string(&secret).unwrap(), "s");
            assert_eq!(fs::symlink_metadata(&secret).unwrap().nlink(), 1);
        }
        fn dest_names(&self) -> Vec<String> {
            let mut v: Vec<_> = fs::read_dir(&self.dest)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = [0u8; 256];
        match rustix::fs::lgetxattr(path, name, &mut buf) {
            Ok(n) => Some(buf[..n].to_vec()),
            Err(Errno::NODATA) => None,
            Err(e) => panic!("getxattr {path:?} {name}: {e}"),
        }
    }

    /// The error's message, which must name `entry`.
    fn refused(r: Result<UnpackStats, UnpackError>, entry: &str) -> String {
        let msg = match r {
            Ok(s) => panic!("accepted ({s:?}), expected an error naming {entry:?}"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(entry), "{msg:?} does not name {entry:?}");
        msg
    }

    #[test]
    fn every_kind_round_trips() {
        let s = scene();
        let long = format!("long/{}", "n".repeat(150));
        let mut t = Tar::new();
        t.pax(&[("SCHILY.xattr.user.note", b"hi")]);
        let mut h = header(EntryType::Directory, 0o750);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1000);
        t.add(h, "d/", b"");
        let mut h = header(EntryType::Regular, 0o4755);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mtime(1_600_000_000);
        t.add(h, "d/f", b"hello world");
        let mut h = header(EntryType::Symlink, 0o777);
        h.set_uid(11);
        h.set_gid(12);
        h.set_mtime(1234);
        t.0.append_link(&mut h, "d/s", "f").unwrap();
        t.link(EntryType::Link, "d/h", "d/f")
            .add(header(EntryType::Fifo, 0o640), "p", b"")
            .node(EntryType::Char, "null", 1, 3)
            .node(EntryType::Block, "sda", 8, 0)
            .file("d/.wh.gone", b"")
            .file("o/.wh..wh..opq", b"")
            .file(&long, b"data")
            .file("i/j/k", b"k");
        let stats = s.unpack(&t.bytes()).unwrap();
        assert_eq!(
            stats,
            UnpackStats {
                entries: 11,
                bytes: 11 + 4 + 1
            }
        );

        let f = fs::symlink_metadata(s.p("d/f")).unwrap();
        assert!(f.is_file());
        assert_eq!(fs::read(s.p("d/f")).unwrap(), b"hello world");
        assert_eq!(f.mode() & 0o7777, 0o4755);
        assert_eq!((f.uid(), f.gid()), (1234, 5678));
        assert_eq!(f.mtime(), 1_600_000_000);

        let d = fs::symlink_metadata(s.p("d")).unwrap();
        assert!(d.is_dir());
        assert_eq!(d.mode() & 0o7777, 0o750);
        assert_eq!((d.uid(), d.gid()), (7, 8));
        assert_eq!(
            d.mtime(),
            1000,
            "the directory's mtime is set after its children"
        );
        assert_eq!(xattr(&s.p("d"), "user.note").as_deref(), Some(&b"hi"[..]));

        let l = fs::symlink_metadata(s.p("d/s")).unwrap();
        assert!(l.file_type().is_symlink());
        assert_eq!(fs::read_link(s.p("d/s")).unwrap(), Path::new("f"));
        assert_eq!((l.uid(), l.gid(), l.mtime()), (11, 12, 1234));
        // The symlink's own times changed, not its target's.
        assert_eq!(fs::metadata(s.p("d/s")).unwrap().mtime(), 1_600_000_000);

        let hl = fs::symlink_metadata(s.p("d/h")).unwrap();
        assert_eq!(hl.ino(), f.ino());
        assert_eq!(hl.nlink(), 2);

        let p = fs::symlink_metadata(s.p("p")).unwrap();
        assert!(p.file_type().is_fifo());
        assert_eq!(p.mode() & 0o7777, 0o640);
        let null = fs::symlink_metadata(s.p("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        let sda = fs::symlink_metadata(s.p("sda")).unwrap();
        assert!(sda.file_type().is_block_device());
        assert_eq!(sda.rdev(), rustix::fs::makedev(8, 0));

        let wh = fs::symlink_metadata(s.p("d/gone")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(!s.p("d/.wh.gone").exists());

        assert!(s.p("o").is_dir());
        assert_eq!(xattr(&s.p("o"), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
        assert!(!s.p("o/.wh..wh..opq").exists());
        assert_eq!(xattr(&s.p("d"), OPAQUE_XATTR), None);

        assert_eq!(fs::read(s.p(&long)).unwrap(), b"data");
        for implicit in ["i", "i/j", "long", "o"] {
            let m = fs::symlink_metadata(s.p(implicit)).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o7777, 0o755, "{implicit}");
        }
        assert_eq!(fs::read(s.p("i/j/k")).unwrap(), b"k");
        s.outside_untouched();
    }

    #[test]
    fn reading_stops_at_the_end_of_archive_marker() {
        let s = scene();
        let mut t = Tar::new();
        t.file("a", b"x");
        let mut bytes = t.bytes();
        let end = bytes.len() as u64 - 512;
        bytes.extend_from_slice(b"TRAILER");
        let mut src = io::Cursor::new(bytes);
        unpack(&mut src, &s.dest, &Limits::default()).unwrap();
        assert_eq!(src.position(), end, "only the first zero block is read");
    }

    #[test]
    fn pax_records_name_link_time_and_binary_xattrs() {
        let s = scene();
        let long = format!("deep/{}/file", "p".repeat(200));
        let target = format!("../{}", "q".repeat(150));
        let mut t = Tar::new();
        t.pax(&[
            ("path", long.as_bytes()),
            ("mtime", b"1700000000.5"),
            ("uid", b"4242"),
            ("SCHILY.xattr.user.bin", b"a\nb\0c"),
            ("atime", b"1.25"),
        ]);
        t.raw(b"short", b'0', b"body", b"");
        t.pax(&[("linkpath", target.as_bytes())]);
        t.raw(b"deep/lnk", b'2', b"", b"x");
        s.unpack(&t.bytes()).unwrap();
        let m = fs::symlink_metadata(s.p(&long)).unwrap();
        assert_eq!(fs::read(s.p(&long)).unwrap(), b"body");
        assert_eq!(
            (m.mtime(), m.mtime_nsec(), m.uid()),
            (1_700_000_000, 500_000_000, 4242)
        );
        assert_eq!(
            xattr(&s.p(&long), "user.bin").as_deref(),
            Some(&b"a\nb\0c"[..])
        );
        assert_eq!(fs::read_link(s.p("deep/lnk")).unwrap(), Path::new(&target));
        assert!(!s.p("short").exists());
    }

    #[test]
    fn overlay_xattrs_in_a_tar_are_dropped() {
        let s = scene();
        let mut t = Tar::new();
        let records: &[(&str, &[u8])] = &[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/x"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.keep", b"1"),
        ];
        t.pax(records).dir("d").pax(records).file("f", b"");
        s.unpack(&t.bytes()).unwrap();
        for p in [s.p("d"), s.p("f")] {
            assert_eq!(xattr(&p, "trusted.overlay.opaque"), None, "{p:?}");
            assert_eq!(xattr(&p, "trusted.overlay.redirect"), None, "{p:?}");
            assert_eq!(xattr(&p, "user.overlay.opaque"), None, "{p:?}");
            assert_eq!(xattr(&p, "user.keep").as_deref(), Some(&b"1"[..]), "{p:?}");
        }
    }

    #[test]
    fn names_that_leave_the_layer_are_refused() {
        let probe = scene();
        let abs = format!("{}/abs", probe.outside.display());
        for (name, kind) in [
            (abs.as_str(), b'0'),
            ("/etc/strata-unpack-test", b'0'),
            ("../outside/dotdot", b'0'),
            ("a/../../outside/x", b'0'),
            ("../outside/d", b'5'),
        ] {
            let s = if name.starts_with(&*probe.outside.to_string_lossy()) {
                // The absolute name points into this very scene.
                &probe
            } else {
                &scene()
            };
            let mut t = Tar::new();
            t.raw(name.as_bytes(), kind, b"data", b"");
            let msg = refused(s.unpack(&t.bytes()), name);
            assert!(msg.contains("absolute") || msg.contains("'..'"), "{msg}");
            s.outside_untouched();
            assert!(s.dest_names().is_empty());
        }
        assert!(!Path::new("/etc/strata-unpack-test").exists());
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        for entry in ["a/x", "a/sub/x", "a/.wh.x", "a/.wh..wh..opq"] {
            let s = scene();
            let mut t = Tar::new();
            t.link(EntryType::Symlink, "a", &s.outside.to_string_lossy());
            t.file(entry, b"evil");
            let msg = refused(s.unpack(&t.bytes()), entry);
            assert!(msg.contains("symlink"), "{msg}");
            s.outside_untouched();
        }
        // Also when the symlink was not made by this tar (the kernel refuses to follow it).
        let s = scene();
        std::os::unix::fs::symlink(&s.outside, s.p("b")).unwrap();
        let mut t = Tar::new();
        t.file("b/x", b"evil");
        let msg = refused(s.unpack(&t.bytes()), "b/x");
        assert!(msg.contains("symlink"), "{msg}");
        s.outside_untouched();
    }

    #[test]
    fn symlinks_climbing_out_of_the_layer_are_refused() {
        for (name, target) in [
            ("d/s", "../../outside/secret"),
            ("s", ".."),
            ("s", "a/../../x"),
        ] {
            let s = scene();
            let mut t = Tar::new();
            t.link(EntryType::Symlink, name, target);
            let msg = refused(s.unpack(&t.bytes()), name);
            assert!(msg.contains("outside the layer"), "{msg}");
            assert!(fs::symlink_metadata(s.p(name)).is_err());
            s.outside_untouched();
        }
    }

    #[test]
    fn hard_links_must_name_an_earlier_entry_of_the_layer() {
        let cases: [(&[u8], &str); 6] = [
            (b"missing", "not an earlier entry"),
            (b"later", "not an earlier entry"),
            (b"../outside/secret", "outside the layer"),
            (b"/etc/passwd", "outside the layer"),
            (b"d", "a directory"),
            (b"w", "a whiteout"),
        ];
        for (target, why) in cases {
            let s = scene();
            let mut t = Tar::new();
            t.dir("d").file(".wh.w", b"");
            t.raw(b"h", b'1', b"", target);
            t.file("later", b"");
            let msg = refused(s.unpack(&t.bytes()), "\"h\"");
            assert!(msg.contains(why), "{msg}");
            assert!(!s.p("h").exists());
            s.outside_untouched();
        }
    }

    #[test]
    fn duplicates_are_refused_but_explicit_parents_are_not() {
        let refused_cases: [(&[(&str, char)], &str); 7] = [
            (&[("f", 'f'), ("f", 'f')], "f"),
            (&[(".wh.x", 'f'), ("x", 'f')], "x"),
            (&[("x", 'f'), (".wh.x", 'f')], ".wh.x"),
            (&[("d", 'd'), ("d", 'd')], "d"),
            (&[("a/b", 'f'), ("a", 'f')], "a"),
            (
                &[("o/.wh..wh..opq", 'f'), ("o/.wh..wh..opq", 'f')],
                "o/.wh..wh..opq",
            ),
            (&[("./", 'd'), (".", 'd')], "."),
        ];
        for (entries, dup) in refused_cases {
            let s = scene();
            let mut t = Tar::new();
            for (name, kind) in entries {
                match kind {
                    'd' => t.raw(name.as_bytes(), b'5', b"", b""),
                    _ => t.raw(name.as_bytes(), b'0', b"", b""),
                };
            }
            let msg = refused(s.unpack(&t.bytes()), &format!("{dup:?}"));
            assert!(msg.contains("duplicate"), "{msg}");
        }

        let s = scene();
        let mut t = Tar::new();
        t.file("a/b", b"")
            .add(header(EntryType::Directory, 0o700), "a", b"");
        t.dir("o").file("o/.wh..wh..opq", b"");
        t.file("p/.wh..wh..opq", b"").dir("p");
        s.unpack(&t.bytes()).unwrap();
        assert_eq!(
            fs::symlink_metadata(s.p("a")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(xattr(&s.p("o"), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
        assert_eq!(xattr(&s.p("p"), OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn truncated_streams_are_corrupt() {
        let mut t = Tar::new();
        t.file("big", &[7u8; 2000]).file("next", b"n");
        let whole = t.bytes();
        let second = 512 + 2048;
        for (cut, says) in [
            (0, "without the end-of-archive marker"),
            (300, "inside the header at byte 0"),
            (512 + 100, "in the data of \"big\""),
            (512 + 2010, "in the padding after \"big\""),
            (second, "without the end-of-archive marker"),
            (second + 200, "inside the header at byte 2560"),
            (second + 512 + 512, "without the end-of-archive marker"),
        ] {
            let s = scene();
            let msg = match s.unpack(&whole[..cut]) {
                Err(e @ UnpackError::Corrupt(_)) => e.to_string(),
                other => panic!("cut at {cut}: {other:?}"),
            };
            assert!(msg.contains(says), "cut at {cut}: {msg}");
            s.outside_untouched();
        }
        // The same stream whole is fine.
        scene().unpack(&whole).unwrap();
    }

    #[test]
    fn a_bad_header_checksum_is_corrupt() {
        let mut t = Tar::new();
        t.file("a", b"x").file("b", b"y");
        let mut bytes = t.bytes();
        bytes[1024] = b'c';
        let s = scene();
        match s.unpack(&bytes) {
            Err(UnpackError::Corrupt(m)) => {
                assert!(
                    m.contains("checksum mismatch") && m.contains("byte 1024"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(check_sum(&raw_header(b"a", b'0', 0, b"")).is_ok());
        let mut signed = raw_header("é".as_bytes(), b'0', 0, b"");
        let sum: i32 = signed
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i32::from(*b as i8)
                }
            })
            .sum();
        signed[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert!(check_sum(&signed).is_ok(), "a signed checksum is accepted");
    }

    #[test]
    fn limits_are_enforced() {
        let small = Limits {
            max_pax: 1024,
            max_xattr: 4,
            max_path: 60,
            max_entries: 2,
        };
        let small_pax = Limits {
            max_pax: 64,
            ..small
        };
        let build = |f: &dyn Fn(&mut Tar)| {
            let mut t = Tar::new();
            f(&mut t);
            t.bytes()
        };
        let long = "l".repeat(80);
        let longer = "m".repeat(200);
        let cases: [(Vec<u8>, &Limits, &str, &str); 6] = [
            (
                build(&|t| {
                    t.pax(&[("comment", "c".repeat(100).as_bytes())])
                        .file("p", b"");
                }),
                &small_pax,
                "a PAX header at byte 0",
                "PAX header of 113 bytes, over the limit of 64",
            ),
            (
                build(&|t| {
                    t.file(&long, b"");
                }),
                &small,
                &long,
                "a name of 80 bytes, over the limit of 60",
            ),
            (
                build(&|t| {
                    t.file(&longer, b"");
                }),
                &small,
                "mmmm",
                "a long name of 201 bytes",
            ),
            (
                build(&|t| {
                    t.pax(&[("path", longer.as_bytes())]).file("x", b"");
                }),
                &small,
                &longer,
                "a name of 200 bytes",
            ),
            (
                build(&|t| {
                    t.pax(&[("SCHILY.xattr.user.big", b"0123456789")])
                        .file("x", b"");
                }),
                &small,
                "\"x\"",
                "of 10 bytes, over the limit of 4",
            ),
            (
                build(&|t| {
                    t.file("one", b"").file("two", b"").file("three", b"");
                }),
                &small,
                "three",
                "limit of 2 entries",
            ),
        ];
        for (tar, limits, entry, says) in cases {
            let s = scene();
            let msg = refused(s.unpack_with(&tar, limits), entry);
            assert!(msg.contains(says), "{msg}");
            s.outside_untouched();
        }
        // A component over NAME_MAX, whatever the path limit.
        let s = scene();
        let mut t = Tar::new();
        let name = format!("a/{}", "x".repeat(256));
        t.file(&name, b"");
        let msg = refused(s.unpack(&t.bytes()), &name);
        assert!(msg.contains("component of 256 bytes"), "{msg}");
    }

    #[test]
    fn kinds_the_overlay_format_cannot_hold_are_refused() {
        let cases: [(&[u8], u8, &[u8], &str); 6] = [
            (b"sparse", b'S', b"", "a GNU sparse file"),
            (b"label", b'V', b"", "a volume label"),
            (b"what", b'Z', b"", "unknown kind (type 'Z')"),
            (b"s", b'2', b"data", "a symlink with 4 bytes of data"),
            (b"null0", b'3', b"", "a character device 0/0"),
            (
                b"d/.wh.x/y",
                b'0',
                b"",
                "whiteout name \".wh.x\" used as a directory",
            ),
        ];
        for (name, kind, data, says) in cases {
            let s = scene();
            let mut t = Tar::new();
            t.raw(name, kind, data, b"t");
            let msg = refused(s.unpack(&t.bytes()), &lossy(name));
            assert!(msg.contains(says), "{msg}");
        }
        let s = scene();
        let mut t = Tar::new();
        t.pax(&[("GNU.sparse.major", b"1")]).file("sp", b"");
        let msg = refused(s.unpack(&t.bytes()), "sp");
        assert!(msg.contains("GNU sparse"), "{msg}");
    }

    #[test]
    fn a_root_entry_sets_the_layer_root() {
        let s = scene();
        let mut h = header(EntryType::Directory, 0o711);
        h.set_mtime(5);
        let mut t = Tar::new();
        t.add(h, "./", b"").file("./a", b"a");
        s.unpack(&t.bytes()).unwrap();
        let m = fs::metadata(&s.dest).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o711, 5));
        assert_eq!(s.dest_names(), ["a"]);
        let mut t = Tar::new();
        t.raw(b"./", b'0', b"", b"");
        refused(scene().unpack(&t.bytes()), "an empty name");
    }

    #[test]
    fn pax_records_are_read_by_their_length() {
        let ok: [(&[u8], &[PaxRecord<'_>]); 4] = [
            (b"", &[]),
            (b"8 a=bcd\n", &[(b"a", b"bcd")]),
            (b"8 k=a\nb\n6 x=y\n\0\0", &[(b"k", b"a\nb"), (b"x", b"y")]),
            (b"6 e==\n", &[(b"e", b"=")]),
        ];
        for (data, want) in ok {
            assert_eq!(pax_records(data).unwrap(), want, "{:?}", lossy(data));
        }
        for data in [
            &b"x a=b\n"[..],
            b"99 a=b\n",
            b"6 a=bc",
            b"5 ab\n",
            b"5 =b\n",
            b"a=b\n",
        ] {
            assert!(pax_records(data).is_err(), "{:?}", lossy(data));
        }
    }

    #[test]
    fn pax_times_and_numbers() {
        type Time = Option<(i64, i64)>;
        let times: [(&[u8], Time); 8] = [
            (b"12", Some((12, 0))),
            (b"12.5", Some((12, 500_000_000))),
            (b"12.0000000019", Some((12, 1))),
            (b"-1.5", Some((-2, 500_000_000))),
            (b"-3", Some((-3, 0))),
            (b"1.", Some((1, 0))),
            (b"1.x", None),
            (b"", None),
        ];
        for (raw, want) in times {
            assert_eq!(pax_time(raw), want, "{:?}", lossy(raw));
        }
        assert_eq!(decimal(b"0042"), Some(42));
        for raw in [&b""[..], b"-1", b"+1", b" 1", b"99999999999999999999999"] {
            assert_eq!(decimal(raw), None, "{:?}", lossy(raw));
        }
        for (raw, root) in [
            (&b"."[..], true),
            (b"./", true),
            (b".//./", true),
            (b"", false),
            (b"./a", false),
        ] {
            assert_eq!(is_root_name(raw), root, "{:?}", lossy(raw));
        }
    }
}
