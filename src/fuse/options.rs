//! Mount options: the fuse-overlayfs option language, parsed and checked before mounting.
//!
//! [`MountOptions::parse`] is a pure function over the `-o` strings; [`MountOptions::validate`]
//! looks at the file system (every path must be a directory, the work directory empty and
//! on the upper's filesystem, no upper or work directory inside a lower or the mountpoint)
//! and changes nothing. Unknown options are errors, never ignored.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::MountError;
use crate::union::StackPaths;

/// Everything a mount command line says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MountOptions {
    /// Lower layers, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub read_only: bool,
    /// `volatile` or `fsync=0`: fsync becomes a no-op.
    pub no_fsync: bool,
    /// `metacopy=off`: a metadata change copies the data up too.
    pub no_metacopy: bool,
    /// `index=off`: the names of a lower hard link part ways on copy-up.
    pub no_index: bool,
    /// Entry and attribute cache timeout.
    pub timeout: Option<Duration>,
    /// How file data reaches the kernel (`passthrough=`).
    pub passthrough: Passthrough,
    pub allow_other: Option<bool>,
    pub default_permissions: Option<bool>,
    pub noatime: bool,
    pub dev: Option<bool>,
    pub suid: Option<bool>,
    pub exec: Option<bool>,
    pub debug: bool,
}

/// Which open files the kernel reads and writes directly (FUSE passthrough) instead of
/// asking strata for every page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Passthrough {
    /// Files whose data can no longer move: upper files, and every file of a read-only
    /// mount. A lower file of a writable mount goes through the page cache, so a reader
    /// sees the data of a copy-up that happens while it holds the file open.
    #[default]
    On,
    /// Lower files too: faster, but a descriptor opened on a lower file before another
    /// process copies it up keeps reading the lower data.
    All,
    /// Never: everything goes through the page cache.
    Off,
}

/// Splits `s` at every `sep` not escaped by a backslash; escapes are kept.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                if let Some(last) = out.last_mut() {
                    last.push('\\');
                    last.push(n);
                }
            }
        } else if c == sep {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// Removes backslash escapes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn bad(option: &str, reason: impl Into<String>) -> MountError {
    MountError::BadOption {
        option: option.to_string(),
        reason: reason.into(),
    }
}

impl MountOptions {
    /// Adds one `-o` argument (a comma-separated list) to these options.
    ///
    /// # Errors
    /// The first unknown or malformed option, by name.
    pub fn parse(&mut self, arg: &str) -> Result<(), MountError> {
        for opt in split_unescaped(arg, ',') {
            if opt.is_empty() {
                continue;
            }
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, MountError> {
                v.filter(|v| !v.is_empty())
                    .ok_or_else(|| bad(key, "needs a value"))
            }
            let flag = |v: Option<&str>| match v {
                None => Ok(()),
                Some(_) => Err(bad(key, "takes no value")),
            };
            match key {
                "lowerdir" => {
                    let v = need(key, value)?;
                    self.lowers = split_unescaped(v, ':')
                        .iter()
                        .map(|p| PathBuf::from(unescape(p)))
                        .collect();
                    if self.lowers.iter().any(|p| p.as_os_str().is_empty()) {
                        return Err(bad(key, "empty layer path in the list"));
                    }
                }
                "upperdir" => self.upper = Some(PathBuf::from(unescape(need(key, value)?))),
                "workdir" => self.work = Some(PathBuf::from(unescape(need(key, value)?))),
                "ro" => {
                    flag(value)?;
                    self.read_only = true;
                }
                "rw" => {
                    flag(value)?;
                    self.read_only = false;
                }
                "volatile" => {
                    flag(value)?;
                    self.no_fsync = true;
                }
                "fsync" => match need(key, value)? {
                    "0" => self.no_fsync = true,
                    "1" => self.no_fsync = false,
                    other => return Err(bad(key, format!("'{other}' is not 0 or 1"))),
                },
                "index" => match need(key, value)? {
                    "on" => self.no_index = false,
                    "off" => self.no_index = true,
                    other => return Err(bad(key, format!("'{other}' is not on or off"))),
                },
                "passthrough" => {
                    self.passthrough = match need(key, value)? {
                        "on" => Passthrough::On,
                        "all" => Passthrough::All,
                        "off" => Passthrough::Off,
                        other => return Err(bad(key, format!("'{other}' is not on, all or off"))),
                    }
                }
                "metacopy" => match need(key, value)? {
                    "on" => self.no_metacopy = false,
                    "off" => self.no_metacopy = true,
                    other => return Err(bad(key, format!("'{other}' is not on or off"))),
                },
                // Renamed directories always get redirects, and redirects are followed.
                "redirect_dir" => match need(key, value)? {
                    "on" | "follow" => {}
                    other => {
                        return Err(bad(
                            key,
                            format!("'{other}' is not supported: strata always uses redirects"),
                        ))
                    }
                },
                "timeout" => {
                    let v = need(key, value)?;
                    let secs: f64 = v
                        .parse()
                        .map_err(|_| bad(key, format!("'{v}' is not a number of seconds")))?;
                    if !secs.is_finite() || secs < 0.0 {
                        return Err(bad(key, format!("'{v}' is not a number of seconds")));
                    }
                    self.timeout = Some(Duration::from_secs_f64(secs.min(1e9)));
                }
                "allow_other" => {
                    flag(value)?;
                    self.allow_other = Some(true);
                }
                "default_permissions" => {
                    flag(value)?;
                    self.default_permissions = Some(true);
                }
                "noatime" => {
                    flag(value)?;
                    self.noatime = true;
                }
                "dev" | "nodev" => {
                    flag(value)?;
                    self.dev = Some(key == "dev");
                }
                "suid" | "nosuid" => {
                    flag(value)?;
                    self.suid = Some(key == "suid");
                }
                "exec" | "noexec" => {
                    flag(value)?;
                    self.exec = Some(key == "exec");
                }
                "debug" => {
                    flag(value)?;
                    self.debug = true;
                }
                _ => return Err(MountError::UnknownOption(opt.clone())),
            }
        }
        Ok(())
    }

    /// Checks every path against the file system and returns the stack to mount.
    /// Reads only; nothing is created or changed.
    ///
    /// # Errors
    /// The first path or option at fault, by name.
    pub fn validate(&self, mountpoint: &Path) -> Result<StackPaths, MountError> {
        if self.lowers.is_empty() {
            return Err(MountError::NoLower);
        }
        let mnt = existing_dir("mountpoint", mountpoint)?;
        let mut lowers = Vec::new();
        for l in &self.lowers {
            lowers.push(existing_dir("lowerdir", l)?);
        }
        let (upper, work) = match (&self.upper, &self.work) {
            (None, None) => (None, None),
            (Some(_), None) => {
                return Err(bad("upperdir", "needs a workdir as well (-o workdir=DIR)"));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "workdir",
                    "needs an upperdir as well (-o upperdir=DIR)",
                ))
            }
            (Some(u), Some(w)) => {
                let upper = existing_dir("upperdir", u)?;
                let work = existing_dir("workdir", w)?;
                check_placement("upperdir", u, &upper, &lowers, &mnt)?;
                check_placement("workdir", w, &work, &lowers, &mnt)?;
                if upper.starts_with(&work) || work.starts_with(&upper) {
                    return Err(path_err(
                        "workdir",
                        w,
                        "must not be inside the upperdir, nor the upperdir inside it",
                    ));
                }
                let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
                if dev(&upper) != dev(&work) {
                    return Err(path_err(
                        "workdir",
                        w,
                        "is not on the same filesystem as the upperdir",
                    ));
                }
                check_work_empty(w)?;
                (Some(upper), Some(work))
            }
        };
        match upper {
            // A read-only mount with an upper serves the merged view and never writes.
            Some(u) if self.read_only => {
                let lowers = std::iter::once(u).chain(lowers).collect();
                Ok(StackPaths {
                    lowers,
                    upper: None,
                    work: None,
                })
            }
            upper => Ok(StackPaths {
                lowers,
                upper,
                work,
            }),
        }
    }
}

fn path_err(what: &'static str, path: &Path, reason: &str) -> MountError {
    MountError::BadPath {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The canonical form of `path`, which must be an existing directory.
fn existing_dir(what: &'static str, path: &Path) -> Result<PathBuf, MountError> {
    let meta = std::fs::metadata(path).map_err(|e| MountError::BadPath {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(path_err(what, path, "is not a directory"));
    }
    std::fs::canonicalize(path).map_err(|e| MountError::BadPath {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// An upper or work directory may not sit inside (or be) a lower or the mountpoint.
fn check_placement(
    what: &'static str,
    given: &Path,
    canon: &Path,
    lowers: &[PathBuf],
    mnt: &Path,
) -> Result<(), MountError> {
    for l in lowers {
        if canon.starts_with(l) {
            return Err(MountError::BadPath {
                what,
                path: given.to_path_buf(),
                reason: format!("is inside the lowerdir {}", l.display()),
            });
        }
        if l.starts_with(canon) {
            return Err(MountError::BadPath {
                what,
                path: given.to_path_buf(),
                reason: format!("contains the lowerdir {}", l.display()),
            });
        }
    }
    if canon.starts_with(mnt) {
        return Err(path_err(what, given, "is inside the mountpoint"));
    }
    Ok(())
}

/// Strata's leftovers from an interrupted run in a work directory (cleared at mount).
pub fn is_work_leftover(name: &OsStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    name.as_bytes().starts_with(b"#strata.")
}

fn check_work_empty(work: &Path) -> Result<(), MountError> {
    let entries = std::fs::read_dir(work).map_err(|e| path_err("workdir", work, &e.to_string()))?;
    for e in entries {
        let e = e.map_err(|e| path_err("workdir", work, &e.to_string()))?;
        let name = e.file_name();
        // The kernel's own staging directory, empty, and the hard-link index (shared by
        // the kernel and strata).
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let kernel_own = is_dir
            && (name == "index"
                || (name == "work" && e.path().read_dir().is_ok_and(|mut d| d.next().is_none())));
        if !kernel_own && !is_work_leftover(&name) {
            return Err(path_err(
                "workdir",
                work,
                &format!("is not empty (holds {:?})", name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MountOptions, MountError> {
        let mut o = MountOptions::default();
        o.parse(s)?;
        Ok(o)
    }

    #[test]
    fn lowerdir_is_split_top_first_with_escaped_colons() {
        let o = parse(r"lowerdir=/a:/b\:c:/d,upperdir=/u,workdir=/w").unwrap();
        assert_eq!(
            o.lowers,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b:c"),
                PathBuf::from("/d")
            ]
        );
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert_eq!(o.work, Some(PathBuf::from("/w")));
    }

    #[test]
    fn escaped_commas_stay_in_paths() {
        let o = parse(r"lowerdir=/a\,b").unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("/a,b")]);
    }

    #[test]
    fn flags_and_values() {
        let o = parse("ro,volatile,timeout=2.5,allow_other,default_permissions,noatime,nodev,suid,noexec,debug").unwrap();
        assert!(o.read_only && o.no_fsync && o.noatime && o.debug);
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(
            (o.allow_other, o.default_permissions),
            (Some(true), Some(true))
        );
        assert_eq!(
            (o.dev, o.suid, o.exec),
            (Some(false), Some(true), Some(false))
        );
        assert!(parse("fsync=0").unwrap().no_fsync);
        assert!(!parse("fsync=1").unwrap().no_fsync);
        assert!(parse("metacopy=off").unwrap().no_metacopy);
        assert!(!parse("metacopy=on").unwrap().no_metacopy);
        assert!(parse("redirect_dir=on,redirect_dir=follow").is_ok());
        assert!(parse("index=off").unwrap().no_index);
        assert_eq!(parse("").unwrap().passthrough, Passthrough::On);
        assert_eq!(
            parse("passthrough=all").unwrap().passthrough,
            Passthrough::All
        );
        assert_eq!(
            parse("passthrough=off").unwrap().passthrough,
            Passthrough::Off
        );
    }

    #[test]
    fn bad_options_are_named() {
        let cases = [
            ("bogus", "unknown mount option 'bogus'"),
            ("lowerdir=", "mount option 'lowerdir': needs a value"),
            (
                "lowerdir=/a::/b",
                "mount option 'lowerdir': empty layer path in the list",
            ),
            ("fsync=2", "mount option 'fsync': '2' is not 0 or 1"),
            (
                "metacopy=yes",
                "mount option 'metacopy': 'yes' is not on or off",
            ),
            (
                "passthrough=lower",
                "mount option 'passthrough': 'lower' is not on, all or off",
            ),
            (
                "redirect_dir=off",
                "mount option 'redirect_dir': 'off' is not supported: strata always uses redirects",
            ),
            (
                "timeout=soon",
                "mount option 'timeout': 'soon' is not a number of seconds",
            ),
            (
                "timeout=-1",
                "mount option 'timeout': '-1' is not a number of seconds",
            ),
            ("ro=1", "mount option 'ro': takes no value"),
            ("xino=on", "unknown mount option 'xino=on'"),
        ];
        for (input, msg) in cases {
            assert_eq!(parse(input).unwrap_err().to_string(), msg, "{input}");
        }
    }
}
