//! Writing a layer tar's bytes: ustar headers, PAX extended headers, padding, the
//! end-of-archive marker, and the hard links of one tar (a second name of an inode is a
//! link to the first name written). `diff` walks the tree and says what each entry is;
//! nothing here reads the filesystem.
//!
//! The bytes: ustar headers (name split into prefix/name where it fits, as Go does),
//! one PAX header before an entry that needs records (xattrs, a `path` or `linkpath` too
//! long for ustar), records sorted by key; uname/gname empty, no atime/ctime. Whiteouts
//! and opaque markers are empty regular files with mode 0, owner 0:0 and mtime 0 (as
//! umoci writes them).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;

use super::diff::DiffStats;
use crate::sys;
use crate::union::layer::{WH_OPAQUE, WH_PREFIX};
use crate::union::Attr;

/// The output buffer: headers and small files are gathered, large data goes straight out.
const OUT_BUF: usize = 128 << 10;
const BLOCK: usize = 512;
/// The name of every PAX extended header (its records name the entry).
const PAX_NAME: &[u8] = b"././@PaxHeader";
/// The ustar name and prefix fields, and the link name field.
const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;

/// The ustar (prefix, name) fields for `name`, if it fits them: the name field alone up to
/// 100 bytes, else split at the last `/` that leaves at most 155 bytes before it and 1 to
/// 100 after it (Go's rule).
fn ustar_split(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= NAME_LEN {
        return Some((&[], name));
    }
    let mut end = name.len().min(PREFIX_LEN + 1);
    if end == name.len() && name.ends_with(b"/") {
        end -= 1;
    }
    let i = name[..end].iter().rposition(|b| *b == b'/')?;
    let rest = name.len() - i - 1;
    (i > 0 && rest > 0 && rest <= NAME_LEN && i <= PREFIX_LEN).then(|| (&name[..i], &name[i + 1..]))
}

/// Appends one PAX record `LEN KEY=VALUE\n` to `out`; LEN counts the whole record,
/// its own digits included.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let digits = |n: usize| n.to_string().len();
    let mut len = body + digits(body);
    if digits(len) != digits(body) {
        len = body + digits(len);
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The fields of an entry's header, from `lstat` or from the union.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    /// The full `st_mode`.
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u64),
    ctime: (i64, u64),
    rdev: u64,
    nlink: u64,
    /// The inode, for hard links.
    pub(super) key: LinkKey,
}

/// What identifies an inode among the entries of one tar: a file of a directory tree, or
/// a node of the union (whose numbers are its own). So an upper file with a name below a
/// renamed directory (read through the union) and another one elsewhere is written twice,
/// as two files: correct, only not shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum LinkKey {
    Disk(u64, u64),
    Node(u64),
}

impl Meta {
    pub(super) fn of_stat(st: &sys::Stat) -> Meta {
        Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            rdev: st.st_rdev,
            nlink: st.st_nlink,
            key: LinkKey::Disk(st.st_dev, st.st_ino),
        }
    }

    pub(super) fn of_attr(a: &Attr) -> Meta {
        Meta {
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            mtime: (a.mtime.0, u64::from(a.mtime.1)),
            ctime: (a.ctime.0, u64::from(a.ctime.1)),
            rdev: a.rdev,
            nlink: u64::from(a.nlink),
            key: LinkKey::Node(a.ino),
        }
    }

    /// A whiteout or an opaque marker.
    fn marker() -> Meta {
        Meta {
            mode: libc::S_IFREG,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            ctime: (0, 0),
            rdev: 0,
            nlink: 1,
            key: LinkKey::Node(0),
        }
    }

    pub(super) fn fmt(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// What follows a header.
pub(super) enum Body<'a> {
    /// A regular file of this size (its data written separately).
    File(u64),
    Dir,
    Symlink(&'a [u8]),
    /// A hard link to an earlier entry.
    Link(&'a [u8]),
    Char,
    Block,
    Fifo,
}

/// The ustar header of entry `name`, and the PAX records (key, value) it needs besides the
/// `extra` ones: a name or a link target that does not fit the header.
fn header(
    name: &[u8],
    meta: &Meta,
    body: &Body<'_>,
    records: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    let ustar = h
        .as_ustar_mut()
        .ok_or_else(|| io::Error::other("not a ustar header"))?;
    match ustar_split(name) {
        Some((prefix, rest)) => {
            ustar.prefix[..prefix.len()].copy_from_slice(prefix);
            ustar.name[..rest.len()].copy_from_slice(rest);
        }
        None => {
            // Readers that know PAX take the record; the field keeps the start of it.
            ustar.name.copy_from_slice(&name[..NAME_LEN]);
            records.push((b"path".to_vec(), name.to_vec()));
        }
    }
    let (ty, size, link) = match body {
        Body::File(size) => (tar::EntryType::Regular, *size, None),
        Body::Dir => (tar::EntryType::Directory, 0, None),
        Body::Symlink(t) => (tar::EntryType::Symlink, 0, Some(*t)),
        Body::Link(t) => (tar::EntryType::Link, 0, Some(*t)),
        Body::Char => (tar::EntryType::Char, 0, None),
        Body::Block => (tar::EntryType::Block, 0, None),
        Body::Fifo => (tar::EntryType::Fifo, 0, None),
    };
    if let Some(target) = link {
        let field = &mut ustar.linkname;
        match target.len() <= NAME_LEN {
            true => field[..target.len()].copy_from_slice(target),
            false => {
                field.copy_from_slice(&target[..NAME_LEN]);
                records.push((b"linkpath".to_vec(), target.to_vec()));
            }
        }
    }
    h.set_entry_type(ty);
    h.set_mode(meta.mode & 0o7777);
    h.set_uid(u64::from(meta.uid));
    h.set_gid(u64::from(meta.gid));
    h.set_mtime(u64::try_from(meta.mtime.0).unwrap_or(0));
    h.set_size(size);
    if matches!(body, Body::Char | Body::Block) {
        h.set_device_major(rustix::fs::major(meta.rdev))?;
        h.set_device_minor(rustix::fs::minor(meta.rdev))?;
    }
    h.set_cksum();
    Ok(h)
}

/// The tar being written.
pub(super) struct TarOut<'w> {
    pub(super) out: io::BufWriter<&'w mut dyn Write>,
    pub(super) stats: DiffStats,
    /// The first name written of each inode with more than one link.
    links: HashMap<LinkKey, Vec<u8>>,
}

impl<'w> TarOut<'w> {
    /// A tar written into `out`, through a buffer.
    pub(super) fn new(out: &'w mut dyn Write) -> TarOut<'w> {
        TarOut {
            out: io::BufWriter::with_capacity(OUT_BUF, out),
            stats: DiffStats::default(),
            links: HashMap::new(),
        }
    }

    /// Writes the header(s) of entry `name` with its `xattrs` (name, value), sorted by name;
    /// a regular file's data follows (see `Snapshot::write_to`).
    pub(super) fn entry(
        &mut self,
        name: &[u8],
        meta: &Meta,
        body: &Body<'_>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = xattrs
            .iter()
            .map(|(n, v)| ([b"SCHILY.xattr.", &n[..]].concat(), v.clone()))
            .collect();
        let h = header(name, meta, body, &mut records)?;
        if !records.is_empty() {
            records.sort();
            let mut pax = Vec::new();
            for (k, v) in &records {
                pax_record(&mut pax, k, v);
            }
            let mut ph = tar::Header::new_ustar();
            if let Some(u) = ph.as_ustar_mut() {
                u.name[..PAX_NAME.len()].copy_from_slice(PAX_NAME);
            }
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(0);
            ph.set_size(pax.len() as u64);
            ph.set_cksum();
            self.out.write_all(ph.as_bytes())?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        self.out.write_all(h.as_bytes())?;
        self.stats.entries += 1;
        Ok(())
    }

    /// The zeroes that fill the last block of `len` bytes of data.
    pub(super) fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][rem..])?;
        }
        Ok(())
    }

    /// `.wh.NAME` in directory `prefix` for each of `names`.
    pub(super) fn whiteouts(&mut self, prefix: &[u8], names: &[OsString]) -> io::Result<()> {
        for n in names {
            let name = [prefix, WH_PREFIX, n.as_bytes()].concat();
            self.entry(&name, &Meta::marker(), &Body::File(0), &[])?;
        }
        Ok(())
    }

    /// The opaque marker of directory `dir` (its name ends with `/`).
    pub(super) fn opaque(&mut self, dir: &[u8]) -> io::Result<()> {
        let name = [dir, WH_OPAQUE].concat();
        self.entry(&name, &Meta::marker(), &Body::File(0), &[])
    }

    /// Writes `name` as a hard link if its inode was written before under another name.
    pub(super) fn link(&mut self, name: &[u8], meta: &Meta) -> io::Result<bool> {
        if meta.nlink <= 1 {
            return Ok(false);
        }
        let Some(first) = self.links.get(&meta.key).cloned() else {
            return Ok(false);
        };
        self.entry(name, meta, &Body::Link(&first), &[])?;
        Ok(true)
    }

    /// Records `name` as the first name of its inode, if it has several.
    pub(super) fn linked(&mut self, name: Vec<u8>, meta: &Meta) {
        if meta.nlink > 1 {
            self.links.entry(meta.key).or_insert(name);
        }
    }

    /// The end-of-archive marker (two zero blocks), and everything out.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ustar_names_split_as_go_does() {
        let long_dir = format!("{}/{}", "d".repeat(60), "f".repeat(70));
        let cases: Vec<(String, Option<(String, String)>)> = vec![
            ("a".into(), Some(("".into(), "a".into()))),
            ("x".repeat(100), Some(("".into(), "x".repeat(100)))),
            // One byte too long for the name field and no '/' to split at.
            ("x".repeat(101), None),
            (long_dir.clone(), Some(("d".repeat(60), "f".repeat(70)))),
            // A directory's trailing '/' stays in the name part.
            (
                format!("{long_dir}/"),
                Some(("d".repeat(60), format!("{}/", "f".repeat(70)))),
            ),
            // The part after the last usable '/' is longer than 100 bytes.
            (format!("a/{}", "x".repeat(101)), None),
            // The prefix would be longer than 155 bytes.
            (format!("{}/b{}", "p".repeat(156), "c".repeat(50)), None),
            // The last '/' within the first 156 bytes is taken.
            (
                format!("a/b/{}", "c".repeat(99)),
                Some(("a/b".into(), "c".repeat(99))),
            ),
        ];
        for (name, want) in cases {
            let got = ustar_split(name.as_bytes()).map(|(p, n)| {
                (
                    String::from_utf8(p.to_vec()).unwrap(),
                    String::from_utf8(n.to_vec()).unwrap(),
                )
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn pax_records_count_their_own_length() {
        // From the POSIX text: "30 mtime=1350244992.023960108\n".
        let mut v = Vec::new();
        pax_record(&mut v, b"mtime", b"1350244992.023960108");
        assert_eq!(v, b"30 mtime=1350244992.023960108\n");
        // Around the lengths where the count gains a digit.
        for n in 0..1200 {
            let mut v = Vec::new();
            pax_record(&mut v, b"path", &vec![b'p'; n]);
            let sp = v.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&v[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, v.len(), "value of {n} bytes");
        }
    }
}
