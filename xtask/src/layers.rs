//! Sample layers: `layers/NAME/` (plain files) plus `layers/NAME.spec` (what git cannot
//! hold), stacked as listed in `layers/stack.txt` (top first), built into
//! `layers/build/NAME`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::Result;

/// One line of a layer spec.
#[derive(Debug, PartialEq, Eq)]
pub enum Directive {
    Mode(PathBuf, u32),
    Dir(PathBuf),
    Symlink(PathBuf, String),
    Whiteout(PathBuf),
    Opaque(PathBuf),
    Xattr(PathBuf, String, String),
}

/// A path inside a layer: relative, without `..`.
fn layer_path(s: &str, line: usize) -> Result<PathBuf> {
    let p = PathBuf::from(s);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(p)
    } else {
        Err(format!("line {line}: '{s}' is not a plain relative path"))
    }
}

/// Parses a spec file's text.
pub fn parse_spec(text: &str) -> Result<Vec<Directive>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = l.split_whitespace().collect();
        let d = match words.as_slice() {
            ["mode", p, m] => {
                let mode = u32::from_str_radix(m, 8)
                    .map_err(|_| format!("line {line}: bad mode '{m}'"))?;
                Directive::Mode(layer_path(p, line)?, mode)
            }
            ["dir", p] => Directive::Dir(layer_path(p, line)?),
            ["symlink", p, t] => Directive::Symlink(layer_path(p, line)?, (*t).to_string()),
            ["whiteout", p] => Directive::Whiteout(layer_path(p, line)?),
            ["opaque", p] => Directive::Opaque(layer_path(p, line)?),
            ["xattr", p, n, v] => {
                Directive::Xattr(layer_path(p, line)?, (*n).to_string(), (*v).to_string())
            }
            _ => return Err(format!("line {line}: cannot read '{l}'")),
        };
        out.push(d);
    }
    Ok(out)
}

fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &to)?;
        } else {
            fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

fn apply(layer: &Path, d: &Directive) -> std::io::Result<()> {
    match d {
        Directive::Mode(p, m) => fs::set_permissions(layer.join(p), fs::Permissions::from_mode(*m)),
        Directive::Dir(p) => fs::create_dir_all(layer.join(p)),
        Directive::Symlink(p, t) => std::os::unix::fs::symlink(t, layer.join(p)),
        Directive::Whiteout(p) => {
            let path = layer.join(p);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            Ok(rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::empty(),
                0,
            )?)
        }
        Directive::Opaque(p) => {
            let path = layer.join(p);
            fs::create_dir_all(&path)?;
            Ok(rustix::fs::setxattr(
                &path,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )?)
        }
        Directive::Xattr(p, n, v) => Ok(rustix::fs::lsetxattr(
            layer.join(p),
            n.as_str(),
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )?),
    }
}

/// Builds every layer of `layers/stack.txt`; returns their paths, top first.
pub fn build_all(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("layers");
    let stack =
        fs::read_to_string(dir.join("stack.txt")).map_err(|e| format!("layers/stack.txt: {e}"))?;
    let build = dir.join("build");
    if build.exists() {
        fs::remove_dir_all(&build).map_err(|e| format!("{}: {e}", build.display()))?;
    }
    let mut out = Vec::new();
    for name in stack.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let src = dir.join(name);
        let dst = build.join(name);
        copy_tree(&src, &dst).map_err(|e| format!("layer {name}: {e}"))?;
        let spec_path = dir.join(format!("{name}.spec"));
        if spec_path.exists() {
            let text = fs::read_to_string(&spec_path)
                .map_err(|e| format!("{}: {e}", spec_path.display()))?;
            for d in parse_spec(&text).map_err(|e| format!("{}: {e}", spec_path.display()))? {
                apply(&dst, &d).map_err(|e| format!("{}: {d:?}: {e}", spec_path.display()))?;
            }
        }
        out.push(dst);
    }
    println!(
        "built layers (top first): {}",
        out.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(out)
}

/// One line per entry below `dir`, marking whiteouts, opaque directories and xattrs.
pub fn describe(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let m = fs::symlink_metadata(&p)?;
        let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        let ft = m.file_type();
        let mut line = if ft.is_dir() {
            format!("{rel}/")
        } else if ft.is_symlink() {
            format!("{rel} -> {}", fs::read_link(&p)?.display())
        } else if ft.is_char_device() && m.rdev() == 0 {
            format!("{rel}  (whiteout: character device 0/0)")
        } else {
            format!("{rel}  ({} bytes)", m.len())
        };
        let mut names = vec![0u8; 1 << 16];
        if let Ok(len) = rustix::fs::llistxattr(&p, &mut names[..]) {
            for n in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
                let n = OsStr::from_bytes(n);
                let mut v = vec![0u8; 1 << 16];
                let vlen = rustix::fs::lgetxattr(&p, n, &mut v[..]).unwrap_or(0);
                v.truncate(vlen);
                line.push_str(&format!(
                    "  [{}={}]",
                    n.to_string_lossy(),
                    String::from_utf8_lossy(&v)
                ));
            }
        }
        out.push(line);
        if ft.is_dir() {
            describe(root, &p, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_lines_parse() {
        let d = parse_spec("# c\n\nmode bin/x 0755\nwhiteout a/b\nopaque srv\nxattr f user.k v\nsymlink l t\ndir d\n").unwrap();
        assert_eq!(
            d,
            vec![
                Directive::Mode("bin/x".into(), 0o755),
                Directive::Whiteout("a/b".into()),
                Directive::Opaque("srv".into()),
                Directive::Xattr("f".into(), "user.k".into(), "v".into()),
                Directive::Symlink("l".into(), "t".into()),
                Directive::Dir("d".into()),
            ]
        );
    }

    #[test]
    fn spec_refuses_escaping_paths_and_junk() {
        assert!(parse_spec("whiteout ../x")
            .unwrap_err()
            .contains("not a plain relative path"));
        assert!(parse_spec("whiteout /etc")
            .unwrap_err()
            .contains("not a plain relative path"));
        assert!(parse_spec("frobnicate x")
            .unwrap_err()
            .contains("cannot read"));
        assert!(parse_spec("mode x 9z").unwrap_err().contains("bad mode"));
    }
}
