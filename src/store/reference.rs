//! Image references and digests, in docker's grammar: pure parsers over `&str`.
//!
//! `[DOMAIN/]PATH[:TAG][@DIGEST]`, where DOMAIN is the first `/`-separated component when it
//! holds a `.` or a `:` or is `localhost`; PATH components are lowercase letters and digits
//! joined by `.`, `_`, `__` or runs of `-`; a TAG is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a
//! DIGEST is `sha256:` and 64 lowercase hex digits. Defaults are docker's: domain
//! `docker.io`, `library/` before a one-component path there, tag `latest` when neither a
//! tag nor a digest is given. Errors name the reference and what is wrong with it.

use std::fmt;

/// The registry a reference without a domain points at.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A content digest: `sha256:` and 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    ///
    /// # Errors
    /// When the algorithm is not sha256 or the hex part is not 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Digest, RefError> {
        let bad = |why: &str| RefError::new(s, why);
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| bad("a digest is ALGORITHM:HEX"))?;
        if algo != "sha256" {
            return Err(bad("only sha256 digests are supported"));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("a sha256 digest has 64 lowercase hex digits"));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// The digest of raw sha256 bytes.
    pub fn from_sha256(bytes: &[u8; 32]) -> Digest {
        Digest {
            hex: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as docker shows image ids.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// An image reference, normalized: a domain, a repository path, and a tag and/or digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A reference that does not parse, with what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid reference {input:?}: {why}")]
pub struct RefError {
    pub input: String,
    pub why: String,
}

impl RefError {
    fn new(input: &str, why: &str) -> RefError {
        RefError {
            input: input.to_string(),
            why: why.to_string(),
        }
    }
}

impl ImageRef {
    /// Parses a reference, filling in docker's defaults (`docker.io`, `library/`,
    /// `latest`).
    ///
    /// # Errors
    /// Any part out of the grammar, named in the error.
    pub fn parse(s: &str) -> Result<ImageRef, RefError> {
        let bad = |why: &str| RefError::new(s, why);
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e.why))?)),
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t).map_err(|why| bad(&why))?;
        }
        if name.len() > NAME_MAX {
            return Err(bad("the repository name is longer than 255 characters"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if is_domain(first) => (first.to_string(), rest.to_string()),
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        check_domain(&domain).map_err(|why| bad(&why))?;
        check_path(&path).map_err(|why| bad(&why))?;
        let domain = match domain.as_str() {
            LEGACY_DOMAIN => DEFAULT_DOMAIN.to_string(),
            _ => domain,
        };
        let path = match domain == DEFAULT_DOMAIN && !path.contains('/') {
            true => format!("library/{path}"),
            false => path,
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, in full.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as docker shows it: without `docker.io/` and `library/`.
    pub fn familiar_repository(&self) -> String {
        match self.domain.as_str() {
            DEFAULT_DOMAIN => self
                .path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_string(),
            _ => self.repository(),
        }
    }

    /// The reference as docker shows it (`ubuntu:latest`, `localhost:5000/a/b:1`).
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_repository();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl fmt::Display for ImageRef {
    /// The full form: `docker.io/library/ubuntu:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// A host name (labels of letters, digits and `-`, joined by `.`), or an IPv6 literal in
/// brackets, then an optional `:PORT`.
fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.strip_prefix('[') {
        Some(v6) => {
            let (addr, rest) = v6
                .split_once(']')
                .ok_or_else(|| format!("domain {d:?} has an unclosed '['"))?;
            if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return Err(format!("domain {d:?} is not an IPv6 address in brackets"));
            }
            let port = match rest {
                "" => None,
                r => Some(
                    r.strip_prefix(':')
                        .ok_or_else(|| format!("domain {d:?} has junk after ']'"))?,
                ),
            };
            (None, port)
        }
        None => match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        },
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_some_and(|h| !h.split('.').all(label_ok)) {
        return Err(format!("domain {d:?} is not a host name"));
    }
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(format!("domain {d:?} has a port that is not a number"));
    }
    Ok(())
}

/// Components of lowercase letters and digits, joined by `.`, `_`, `__` or runs of `-`.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the repository name is empty".into());
    }
    for c in path.split('/') {
        if c.is_empty() {
            return Err("the repository name has an empty component".into());
        }
        if c.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err("repository names must be lowercase".into());
        }
        if !component_ok(c.as_bytes()) {
            return Err(format!(
                "{c:?} is not a repository name component (lowercase letters and digits, \
                 joined by '.', '_', '__' or '-')"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &[u8]) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < c.len() && alnum(&c[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == c.len() {
            return true;
        }
        let sep = i;
        while i < c.len() && !alnum(&c[i]) {
            i += 1;
        }
        let ok = match &c[sep..i] {
            b"." | b"_" | b"__" => true,
            s => s.iter().all(|b| *b == b'-'),
        };
        if !ok || i == c.len() {
            return false;
        }
    }
}

fn check_tag(t: &str) -> Result<(), String> {
    let b = t.as_bytes();
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    match b.first() {
        None => Err("the tag after ':' is empty".into()),
        _ if b.len() > TAG_MAX => Err("a tag has at most 128 characters".into()),
        Some(first) if !word(first) => {
            Err(format!("tag {t:?} must start with a letter, digit or '_'"))
        }
        _ if !b.iter().all(|c| word(c) || *c == b'.' || *c == b'-') => Err(format!(
            "tag {t:?} may hold only letters, digits, '_', '.' and '-'"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Input; domain, path, tag, whether a digest, and the familiar form ("" to skip).
    type Case<'a> = (String, &'a str, &'a str, Option<&'a str>, bool, &'a str);

    #[test]
    fn references_parse_with_dockers_defaults() {
        let d = format!("sha256:{HEX}");
        let cases: Vec<Case> = vec![
            (
                "ubuntu".into(),
                "docker.io",
                "library/ubuntu",
                Some("latest"),
                false,
                "ubuntu:latest",
            ),
            (
                "ubuntu:22.04".into(),
                "docker.io",
                "library/ubuntu",
                Some("22.04"),
                false,
                "ubuntu:22.04",
            ),
            (
                "library/ubuntu".into(),
                "docker.io",
                "library/ubuntu",
                Some("latest"),
                false,
                "ubuntu:latest",
            ),
            (
                "docker.io/ubuntu".into(),
                "docker.io",
                "library/ubuntu",
                Some("latest"),
                false,
                "ubuntu:latest",
            ),
            (
                "index.docker.io/a/b".into(),
                "docker.io",
                "a/b",
                Some("latest"),
                false,
                "a/b:latest",
            ),
            (
                "me/app:v1".into(),
                "docker.io",
                "me/app",
                Some("v1"),
                false,
                "me/app:v1",
            ),
            (
                "localhost/app".into(),
                "localhost",
                "app",
                Some("latest"),
                false,
                "localhost/app:latest",
            ),
            (
                "localhost:5000/a/b:1".into(),
                "localhost:5000",
                "a/b",
                Some("1"),
                false,
                "localhost:5000/a/b:1",
            ),
            (
                "127.0.0.1:5000/x".into(),
                "127.0.0.1:5000",
                "x",
                Some("latest"),
                false,
                "127.0.0.1:5000/x:latest",
            ),
            (
                "[::1]:5000/x:t".into(),
                "[::1]:5000",
                "x",
                Some("t"),
                false,
                "[::1]:5000/x:t",
            ),
            (
                "quay.io/a.b/c_d__e--f".into(),
                "quay.io",
                "a.b/c_d__e--f",
                Some("latest"),
                false,
                "quay.io/a.b/c_d__e--f:latest",
            ),
            (
                format!("alpine@{d}"),
                "docker.io",
                "library/alpine",
                None,
                true,
                "",
            ),
            (
                format!("alpine:3@{d}"),
                "docker.io",
                "library/alpine",
                Some("3"),
                true,
                "",
            ),
        ];
        for (input, domain, path, tag, has_digest, familiar) in cases {
            let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.domain, domain, "{input}");
            assert_eq!(r.path, path, "{input}");
            assert_eq!(r.tag.as_deref(), tag, "{input}");
            assert_eq!(r.digest.is_some(), has_digest, "{input}");
            if !familiar.is_empty() {
                assert_eq!(r.familiar(), familiar, "{input}");
            }
            // The full form parses back to the same reference.
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        let long = "a".repeat(256);
        let long_tag = format!("a:{}", "t".repeat(129));
        let cases: Vec<(&str, &str)> = vec![
            ("", "it is empty"),
            ("Ubuntu", "repository names must be lowercase"),
            ("ubuntu:", "the tag after ':' is empty"),
            ("ubuntu:-x", "must start with a letter, digit or '_'"),
            ("ubuntu:a/b", "port that is not a number"),
            ("ubuntu:a$b", "may hold only letters"),
            (&long_tag, "a tag has at most 128 characters"),
            (&long, "longer than 255 characters"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a..b", "not a repository name component"),
            ("-a", "not a repository name component"),
            ("a-", "not a repository name component"),
            ("a___b", "not a repository name component"),
            ("a@sha256:xyz", "64 lowercase hex digits"),
            ("a@md5:0123", "only sha256"),
            ("a@", "a digest is ALGORITHM:HEX"),
            ("host.io:port/x", "port that is not a number"),
            ("my_host.io/x", "is not a host name"),
            ("-bad.io/x", "is not a host name"),
            ("[::1/x", "unclosed '['"),
        ];
        for (input, want) in cases {
            let e = ImageRef::parse(input).unwrap_err();
            assert_eq!(e.input, input);
            assert!(
                e.why.contains(want),
                "{input:?}: {:?} lacks {want:?}",
                e.why
            );
            assert!(e.to_string().contains(&format!("{input:?}")));
        }
    }

    #[test]
    fn digests_parse_and_print() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(d.short(), "0123456789ab");
        assert_eq!(Digest::from_sha256(&[0xab; 32]).hex(), "ab".repeat(32));
        for bad in [
            "sha256:ABC",
            &format!("sha256:{}", HEX.to_uppercase()),
            "sha512:00",
            "00",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }
}
