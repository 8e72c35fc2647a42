//! OCI image configs (`application/vnd.oci.image.config.v1+json`): reading one from its
//! stored bytes, and making the bytes of a new one.
//!
//! A stored config is never written back: the image id is the sha256 of its exact bytes, so
//! [`ImageConfig::parse`] reads what it needs and keeps every other key (docker's
//! `container_config`, say) only so that `inspect` can show it. A new config is serialized
//! once by [`ImageConfig::to_bytes`] and those bytes are what gets stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::layout::sha256;
use super::reference::Digest;

/// An image config: what docker and podman read of it, and the rest as it was.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Keys this code does not model, kept for display.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// How a container of the image runs (the config's `config`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The layers, bottom first, by diff id (the sha256 of the uncompressed tar).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// One step of the image's making: a layer, or (`empty_layer`) a config change only.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// A config that cannot be read, with what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the image config is not valid JSON of the OCI form: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the image config's rootfs type is {0:?}, not \"layers\"")]
    RootFsType(String),
    #[error("the image config's diff id {0:?} is not a sha256 digest")]
    DiffId(String),
}

impl ImageConfig {
    /// Reads a stored config.
    ///
    /// # Errors
    /// Invalid JSON, a missing required key, a rootfs that is not `layers`, or a diff id
    /// that is not a sha256 digest.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ConfigError> {
        let c: ImageConfig = serde_json::from_slice(bytes)?;
        if c.rootfs.kind != "layers" {
            return Err(ConfigError::RootFsType(c.rootfs.kind));
        }
        c.diff_ids()?;
        Ok(c)
    }

    /// The diff ids, bottom layer first.
    ///
    /// # Errors
    /// A diff id that is not a sha256 digest.
    pub fn diff_ids(&self) -> Result<Vec<Digest>, ConfigError> {
        self.rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d).map_err(|_| ConfigError::DiffId(d.clone())))
            .collect()
    }

    /// The bytes of a new config (compact JSON, keys in a fixed order), to be stored as
    /// they are; the image id is their sha256.
    ///
    /// # Errors
    /// Serialization failing (a value JSON cannot hold).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ConfigError> {
        Ok(serde_json::to_vec(self)?)
    }
}

/// The chain id of a stack of diff ids (bottom first): the first diff id, then
/// `sha256(previous chain id + " " + diff id)` for each next one.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    let mut it = diff_ids.iter();
    let first = it.next()?.clone();
    Some(it.fold(first, |chain, d| sha256(format!("{chain} {d}").as_bytes())))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    /// A docker-format config, as buildah writes one (keys strata does not model included).
    const DOCKER: &str = r#"{"architecture":"amd64","config":{"Env":["PATH=/usr/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/app","Labels":{"a":"b"},"OnBuild":null},"container_config":{"Cmd":["x"]},"created":"2026-11-27T10:00:00Z","docker_version":"20.10","history":[{"created":"2026-11-27T10:00:00Z","created_by":"/bin/sh -c #(nop) ADD file:1 in /"},{"created":"2026-11-27T10:00:01Z","created_by":"/bin/sh -c #(nop) CMD [\"/bin/sh\"]","empty_layer":true}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"]}}"#;

    #[test]
    fn a_docker_format_config_reads_and_keeps_what_it_does_not_model() {
        let c = ImageConfig::parse(DOCKER.as_bytes()).unwrap();
        assert_eq!((c.architecture.as_str(), c.os.as_str()), ("amd64", "linux"));
        let run = c.config.as_ref().unwrap();
        assert_eq!(run.cmd.as_deref(), Some(&["/bin/sh".to_string()][..]));
        assert_eq!(run.working_dir.as_deref(), Some("/app"));
        assert!(run.extra.contains_key("OnBuild"));
        assert!(c.extra.contains_key("container_config") && c.extra.contains_key("docker_version"));
        assert_eq!(c.history.len(), 2);
        assert!(!c.history[0].empty_layer && c.history[1].empty_layer);
        assert_eq!(c.diff_ids().unwrap().len(), 1);
    }

    #[test]
    fn a_new_config_serializes_once_and_reads_back_the_same() {
        let d = Digest::from_sha256(&[7; 32]);
        let c = ImageConfig {
            created: Some("2026-11-27T10:00:00Z".into()),
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![d.to_string()],
            },
            history: vec![History {
                created_by: Some("strata import".into()),
                ..History::default()
            }],
            ..ImageConfig::default()
        };
        let bytes = c.to_bytes().unwrap();
        assert_eq!(c.to_bytes().unwrap(), bytes, "the same bytes every time");
        assert_eq!(ImageConfig::parse(&bytes).unwrap(), c);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            !text.contains("empty_layer") && !text.contains("null"),
            "{text}"
        );
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases = [
            ("{", "not valid JSON"),
            (
                r#"{"os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
                "architecture",
            ),
            (
                r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"x","diff_ids":[]}}"#,
                "rootfs type is \"x\"",
            ),
            (
                r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["md5:1"]}}"#,
                "\"md5:1\" is not a sha256 digest",
            ),
        ];
        for (json, want) in cases {
            let e = ImageConfig::parse(json.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = Digest::from_sha256(&[1; 32]);
        let b = Digest::from_sha256(&[2; 32]);
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let want = sha256(format!("{a} {b}").as_bytes());
        assert_eq!(chain_id(&[a, b]), Some(want));
    }
}
