//! What a layer tar's entry names and link targets may be: pure checks over bytes, used
//! before anything from a tar touches the disk.
//!
//! An entry name is a relative path of plain components (`./` prefixes and `.` components
//! are dropped, empty components collapse); `..`, absolute names and NUL bytes are refused.
//! A hard link's target follows the same rules. A symlink may point anywhere *inside* the
//! layer: an absolute target is read from the layer root (as the container will see it,
//! where `/..` is `/`), a relative one from the link's directory, and a relative one whose
//! `..` climbs above the root is refused. The OCI whiteout names are recognized here too.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::union::layer::{WH_OPAQUE, WH_PREFIX};

/// What is wrong with a name in a tar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tar entry {name:?}: {why}")]
pub struct TarPathError {
    pub name: String,
    pub why: &'static str,
}

fn bad(raw: &[u8], why: &'static str) -> TarPathError {
    TarPathError {
        name: String::from_utf8_lossy(raw).into_owned(),
        why,
    }
}

/// The clean relative path of an entry name (also of a hard link's target).
///
/// # Errors
/// An empty name, an absolute one, a `..` component or a NUL byte.
pub fn entry_path(raw: &[u8]) -> Result<PathBuf, TarPathError> {
    if raw.contains(&0) {
        return Err(bad(raw, "a NUL byte in the name"));
    }
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(raw, "an absolute name"));
            }
            Component::ParentDir => return Err(bad(raw, "a '..' component")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad(raw, "an empty name"));
    }
    Ok(out)
}

/// Whether the symlink `entry` (a clean path from [`entry_path`]) with `target` stays
/// inside the layer when followed from where it is.
pub fn symlink_stays_inside(entry: &Path, target: &[u8]) -> bool {
    let target = Path::new(OsStr::from_bytes(target));
    let absolute = target.is_absolute();
    // Depth below the layer root of the directory the walk is in.
    let mut depth: usize = match absolute {
        true => 0,
        false => entry.parent().map_or(0, |p| p.components().count()),
    };
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                // `/..` is `/`: an absolute target never leaves the root it starts at.
                None if absolute => {}
                None => return false,
            },
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    true
}

/// What an entry's file name says in the OCI layer format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// An ordinary name.
    Plain,
    /// `.wh.NAME`: NAME of the layers below is deleted.
    Whiteout(OsString),
    /// `.wh..wh..opq`: the directory hides everything below it.
    Opaque,
}

/// Reads the OCI whiteout convention from an entry's file name.
pub fn marker(file_name: &OsStr) -> Marker {
    let b = file_name.as_bytes();
    if b == WH_OPAQUE {
        return Marker::Opaque;
    }
    match b.strip_prefix(WH_PREFIX) {
        Some(rest) if !rest.is_empty() => Marker::Whiteout(OsStr::from_bytes(rest).to_os_string()),
        _ => Marker::Plain,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_cleaned_or_refused() {
        let good = [
            ("a", "a"),
            ("./a/b", "a/b"),
            ("a//b/", "a/b"),
            ("a/./b", "a/b"),
            ("./", ""),
            ("usr/lib/x.so", "usr/lib/x.so"),
        ];
        for (raw, want) in good {
            match want {
                "" => assert_eq!(entry_path(raw.as_bytes()).unwrap_err().why, "an empty name"),
                w => assert_eq!(entry_path(raw.as_bytes()).unwrap(), Path::new(w), "{raw}"),
            }
        }
        let refused = [
            ("", "an empty name"),
            ("/etc/passwd", "an absolute name"),
            ("../x", "a '..' component"),
            ("a/../../x", "a '..' component"),
            ("a/..", "a '..' component"),
            ("a\0b", "a NUL byte in the name"),
        ];
        for (raw, why) in refused {
            let e = entry_path(raw.as_bytes()).unwrap_err();
            assert_eq!(e.why, why, "{raw:?}");
            assert!(e.to_string().contains("tar entry"));
        }
    }

    #[test]
    fn symlinks_may_point_anywhere_inside_the_layer_only() {
        let cases = [
            ("usr/bin/sh", "bash", true),
            ("usr/bin/sh", "/bin/bash", true),
            ("usr/bin/sh", "../lib/x", true),
            ("usr/bin/sh", "../../etc/x", true),
            ("usr/bin/sh", "../../../etc/x", false),
            ("top", "..", false),
            ("top", "a/../../b", false),
            ("top", "/../../etc", true),
            ("a/b", "./c/../d", true),
        ];
        for (entry, target, inside) in cases {
            assert_eq!(
                symlink_stays_inside(Path::new(entry), target.as_bytes()),
                inside,
                "{entry} -> {target}"
            );
        }
    }

    #[test]
    fn whiteout_names_are_recognized() {
        assert_eq!(marker(OsStr::new(".wh..wh..opq")), Marker::Opaque);
        assert_eq!(marker(OsStr::new(".wh.x")), Marker::Whiteout("x".into()));
        assert_eq!(marker(OsStr::new(".wh.")), Marker::Plain);
        assert_eq!(marker(OsStr::new("x.wh.y")), Marker::Plain);
    }
}
