//! Reading a layer tar's framing: 512-byte blocks, header checksums, GNU long names and
//! link targets, PAX extended headers and the end-of-archive marker, folded into one
//! [`Member`] per entry for `unpack`, which writes the tree. Nothing here touches the
//! filesystem.
//!
//! The `tar` crate decodes the header fields only: its `Archive` reads long names and PAX
//! headers into memory without a bound, and splits PAX records at newlines, which binary
//! xattr values contain. Here each extension header is checked against [`Limits`] before
//! it is read, and PAX records are split by their length. PAX global headers are read
//! (bounded) and ignored, as docker and containerd do.
//!
//! The stream is read up to the end-of-archive marker (the first zero block) and not a
//! byte further. A stream that ends before that marker, in a header or in an entry's data
//! or padding, or a header with a bad checksum, is [`UnpackError::Corrupt`].

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use super::unpack::{bad, lossy, Limits, UnpackError};

const BLOCK: usize = 512;
const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// One tar entry with its extension headers (GNU long name and link, PAX) folded in.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) name: Vec<u8>,
    pub(super) link: Option<Vec<u8>>,
    /// The type flag (`'0'`, `'5'`, …).
    pub(super) kind: u8,
    /// The bytes of data that follow the header.
    pub(super) size: u64,
    pub(super) meta: Meta,
    /// Major and minor, for char and block devices.
    pub(super) dev: Option<(u32, u32)>,
}

impl Member {
    pub(super) fn shown(&self) -> String {
        lossy(&self.name)
    }
}

/// What a header says about an inode besides its name and kind.
#[derive(Clone, Debug, Default)]
pub(super) struct Meta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Permission bits including set-id and sticky.
    pub(super) mode: u32,
    /// Seconds and nanoseconds.
    pub(super) mtime: (i64, i64),
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Reads a tar stream entry by entry, never past the end-of-archive marker.
pub(super) struct TarReader<'a> {
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
    pub(super) fn new(src: &'a mut dyn Read, limits: &'a Limits) -> TarReader<'a> {
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

    /// Reads into the non-empty `buf` at most `left` bytes of the current entry's `part`
    /// ("data of", "padding after"), which the stream may not end before.
    fn read_part(&mut self, buf: &mut [u8], left: u64, part: &str) -> Result<usize, UnpackError> {
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let n = self.read_some(&mut buf[..want])?;
        if n == 0 {
            return Err(UnpackError::Corrupt(format!(
                "the stream ends at byte {} in the {part} {}",
                self.pos, self.cur
            )));
        }
        Ok(n)
    }

    /// Reads the current entry's data into `buf`; 0 once all of it is read.
    pub(super) fn data(&mut self, buf: &mut [u8]) -> Result<usize, UnpackError> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = self.read_part(buf, self.left, "data of")?;
        self.left -= n as u64;
        Ok(n)
    }

    /// Skips what is left of the current entry's data and its padding.
    fn skip_rest(&mut self) -> Result<(), UnpackError> {
        let mut scratch = [0u8; 8192];
        while self.data(&mut scratch)? > 0 {}
        while self.pad > 0 {
            self.pad -= self.read_part(&mut scratch, self.pad, "padding after")? as u64;
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
    pub(super) fn next_member(&mut self) -> Result<Option<Member>, UnpackError> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use crate::store::tartest::{raw_header, refused, scene, xattr, Tar};
    use crate::store::unpack::unpack;

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
    }
}
