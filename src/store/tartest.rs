//! Test helpers for the layer tar code, in one place: tars built for the reader and
//! `unpack` (well-formed entries through the `tar` crate, malicious ones byte by byte), a
//! scratch destination with a neighbour no tar may touch, and tars written by `diff` read
//! back through the `tar` crate.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use tar::{EntryType, Header};

use super::diff::{write_layer, DiffStats, Source};
use super::unpack::{unpack, Limits, UnpackError, UnpackStats};

// ---------------------------------------------------------------------------------------
// Tars to read.

/// A tar being built: well-formed entries through the `tar` crate, malicious ones by hand.
pub(super) struct Tar(pub(super) tar::Builder<Vec<u8>>);

pub(super) fn header(kind: EntryType, mode: u32) -> Header {
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
pub(super) fn raw_header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> [u8; 512] {
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
    pub(super) fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    pub(super) fn add(&mut self, mut h: Header, name: &str, data: &[u8]) -> &mut Tar {
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, name, data).unwrap();
        self
    }
    pub(super) fn file(&mut self, name: &str, data: &[u8]) -> &mut Tar {
        self.add(header(EntryType::Regular, 0o644), name, data)
    }
    pub(super) fn dir(&mut self, name: &str) -> &mut Tar {
        self.add(header(EntryType::Directory, 0o755), name, b"")
    }
    pub(super) fn link(&mut self, kind: EntryType, name: &str, target: &str) -> &mut Tar {
        let mut h = header(kind, 0o777);
        self.0.append_link(&mut h, name, target).unwrap();
        self
    }
    pub(super) fn node(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Tar {
        let mut h = header(kind, 0o644);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.add(h, name, b"")
    }
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        self.0
            .append_pax_extensions(records.iter().copied())
            .unwrap();
        self
    }
    pub(super) fn raw(&mut self, name: &[u8], kind: u8, data: &[u8], link: &[u8]) -> &mut Tar {
        let v = self.0.get_mut();
        v.extend_from_slice(&raw_header(name, kind, data.len() as u64, link));
        v.extend_from_slice(data);
        v.resize(v.len().next_multiple_of(512), 0);
        self
    }
    pub(super) fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A destination and, next to it, a directory no tar may touch.
pub(super) struct Scene {
    t: tempfile::TempDir,
    pub(super) dest: PathBuf,
    pub(super) outside: PathBuf,
}

pub(super) fn scene() -> Scene {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let outside = t.path().join("outside");
    fs::create_dir(&dest).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), "s").unwrap();
    Scene { t, dest, outside }
}

impl Scene {
    pub(super) fn unpack(&self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        self.unpack_with(tar, &Limits::default())
    }
    pub(super) fn unpack_with(
        &self,
        tar: &[u8],
        limits: &Limits,
    ) -> Result<UnpackStats, UnpackError> {
        unpack(&mut &tar[..], &self.dest, limits)
    }
    pub(super) fn p(&self, rel: &str) -> PathBuf {
        self.dest.join(rel)
    }
    /// Nothing appeared or changed next to `dest`.
    pub(super) fn outside_untouched(&self) {
        assert_eq!(dir_names(self.t.path()), ["dest", "outside"]);
        assert_eq!(dir_names(&self.outside), ["secret"]);
        let secret = self.outside.join("secret");
        assert_eq!(fs::read_to_string(&secret).unwrap(), "s");
        assert_eq!(fs::symlink_metadata(&secret).unwrap().nlink(), 1);
    }
    pub(super) fn dest_names(&self) -> Vec<String> {
        dir_names(&self.dest)
    }
}

/// The names in the directory `d`, sorted.
fn dir_names(d: &Path) -> Vec<String> {
    let mut v: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The value of the xattr `name` of `path` (a symlink itself, not its target), if any.
pub(super) fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(Errno::NODATA) => None,
        Err(e) => panic!("getxattr {path:?} {name}: {e}"),
    }
}

/// The error's message, which must name `entry`.
pub(super) fn refused(r: Result<UnpackStats, UnpackError>, entry: &str) -> String {
    let msg = match r {
        Ok(s) => panic!("accepted ({s:?}), expected an error naming {entry:?}"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(entry), "{msg:?} does not name {entry:?}");
    msg
}

// ---------------------------------------------------------------------------------------
// Tars written, read back.

/// An entry read back with the `tar` crate.
#[derive(Debug)]
pub(super) struct Ent {
    pub(super) path: Vec<u8>,
    pub(super) ty: tar::EntryType,
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime: u64,
    pub(super) size: u64,
    pub(super) link: Option<Vec<u8>>,
    pub(super) dev: Option<(u32, u32)>,
    /// Every PAX key of the entry.
    pub(super) pax: Vec<String>,
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
    pub(super) data: Vec<u8>,
}

pub(super) fn read_tar(bytes: &[u8]) -> Vec<Ent> {
    assert_eq!(bytes.len() % 512, 0);
    assert!(bytes.ends_with(&[0u8; 1024]), "no end-of-archive marker");
    let mut ar = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut pax = Vec::new();
        let mut xattrs = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                let key = x.key().unwrap().to_string();
                if let Some(n) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((n.to_string(), x.value_bytes().to_vec()));
                }
                pax.push(key);
            }
        }
        let h = e.header();
        let ty = h.entry_type();
        let dev = match ty {
            tar::EntryType::Char | tar::EntryType::Block => Some((
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            )),
            _ => None,
        };
        let mut ent = Ent {
            path: e.path_bytes().to_vec(),
            ty,
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            size: h.size().unwrap(),
            link: e.link_name_bytes().map(|l| l.to_vec()),
            dev,
            pax,
            xattrs,
            data: Vec::new(),
        };
        e.read_to_end(&mut ent.data).unwrap();
        out.push(ent);
    }
    out
}

pub(super) fn names(ents: &[Ent]) -> Vec<String> {
    ents.iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect()
}

pub(super) fn find<'a>(ents: &'a [Ent], name: &str) -> &'a Ent {
    ents.iter()
        .find(|e| e.path == name.as_bytes())
        .unwrap_or_else(|| panic!("{name} not in the tar: {:?}", names(ents)))
}

pub(super) fn write(src: &Source) -> (Vec<u8>, DiffStats) {
    let mut out = Vec::new();
    let stats = write_layer(src, &std::env::temp_dir(), &mut out).unwrap();
    (out, stats)
}
