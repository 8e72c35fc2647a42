//! The docker image verbs over the store: `import`, `images`, `inspect`, `history`, `tag`,
//! `rmi`, `image prune`, `commit`, `ps`, `rm`, `check`. Output follows docker's: the same
//! columns, `--format json` for scripts.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::{json, Value};

use crate::store::index::Index;
use crate::store::mounts::is_mounted;
use crate::store::reference::ImageRef;
use crate::store::time::{human_size, Timestamp};
use crate::store::{familiar, short_id, Change, CommitOptions, Removal, Store};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A commit message for the image's history.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// A directory (its whole tree) or a layer tar (plain or gzip).
    pub source: PathBuf,
    /// REPOSITORY[:TAG] to tag the new image with.
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Show all images (intermediate ones too).
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Only the image ids.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Show digests.
    #[arg(long)]
    pub digests: bool,
    /// Do not truncate ids.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// dangling=true|false, reference=PATTERN.
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// table, json, or a template with {{.Field}}s.
    #[arg(long)]
    pub format: Option<String>,
    /// Only images of this REPOSITORY[:TAG].
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// table, json, or a template with {{.Field}}s.
    #[arg(long)]
    pub format: Option<String>,
    pub image: String,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Untag an image in use, or with several tags, too.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// Keep untagged parents.
    #[arg(long = "no-prune")]
    pub no_prune: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Every image no mount uses, not only dangling ones.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Do not ask.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    #[arg(short = 'a', long = "author")]
    pub author: Option<String>,
    /// A Dockerfile instruction: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR.
    #[arg(short = 'c', long = "change")]
    pub change: Vec<String>,
    /// The mount: its id (or a prefix) or its mountpoint.
    pub mount: String,
    /// REPOSITORY[:TAG] for the new image.
    pub reference: Option<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Accepted for docker's sake: every mount is listed.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    #[arg(long)]
    pub format: Option<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Unmount a mounted one first.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    #[arg(required = true)]
    pub mounts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Remove garbage, unpack missing layer dirs again, drop tags of missing images.
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub image: String,
    /// The OCI image layout directory to write (made if missing).
    pub dir: PathBuf,
}

/// `strata image …`: docker's aliases.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    #[command(alias = "list")]
    Ls(ImagesArgs),
    #[command(alias = "remove")]
    Rm(RmiArgs),
    Prune(PruneArgs),
    Inspect(InspectArgs),
    History(HistoryArgs),
    Tag(TagArgs),
    Import(ImportArgs),
}

fn open(root: &Path) -> anyhow::Result<Store> {
    Store::open(root).with_context(|| format!("store {}", root.display()))
}

/// The outcome of a command run on several arguments, each done or refused on its own:
/// an error with one line per refusal (`main` prefixes the first with `strata: `).
fn each_ok(failed: &[String]) -> anyhow::Result<()> {
    match failed.is_empty() {
        true => Ok(()),
        false => bail!("{}", failed.join("\nstrata: ")),
    }
}

fn tag_ref(reference: Option<&str>) -> anyhow::Result<Option<ImageRef>> {
    let Some(r) = reference else { return Ok(None) };
    let parsed = ImageRef::parse(r)?;
    if parsed.digest.is_some() {
        bail!("{r}: a tag cannot name a digest");
    }
    Ok(Some(parsed))
}

pub fn import(root: &Path, a: ImportArgs) -> anyhow::Result<()> {
    let tag = tag_ref(a.reference.as_deref())?;
    let store = open(root)?;
    let id = store.import(&a.source, tag.as_ref(), a.message)?;
    println!("{id}");
    Ok(())
}

pub fn commit(root: &Path, a: CommitArgs) -> anyhow::Result<()> {
    let tag = tag_ref(a.reference.as_deref())?;
    let changes = a
        .change
        .iter()
        .map(|c| Change::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    let store = open(root)?;
    let id = store.commit(
        &a.mount,
        tag.as_ref(),
        CommitOptions {
            message: a.message,
            author: a.author,
            changes,
        },
    )?;
    println!("{id}");
    Ok(())
}

pub fn tag(root: &Path, a: TagArgs) -> anyhow::Result<()> {
    open(root)?.tag(&a.source, &a.target)?;
    Ok(())
}

/// Prints `rows` under `headers` as docker's tabwriter does (three spaces between
/// columns, the last one not padded).
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, c) in cells.enumerate() {
            s.push_str(c);
            if i + 1 < widths.len() {
                let pad = widths[i] - c.chars().count() + 3;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(&mut headers.iter().copied()));
    for r in rows {
        let _ = writeln!(out, "{}", line(&mut r.iter().map(String::as_str)));
    }
}

/// Renders `{{.Field}}` (and `{{json .Field}}`) from `fields`; `\t` and `\n` escapes as
/// docker reads them. A leading `table ` is dropped.
fn render(template: &str, fields: &BTreeMap<&str, Value>) -> String {
    let t = template.strip_prefix("table ").unwrap_or(template);
    let t = t.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = t.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = rest[start + 2..start + end].trim();
        let (as_json, key) = match expr.strip_prefix("json ") {
            Some(k) => (true, k.trim()),
            None => (false, expr),
        };
        let key = key.strip_prefix('.').unwrap_or(key);
        let v = fields.get(key).cloned().unwrap_or(Value::Null);
        match (as_json, &v) {
            (false, Value::String(s)) => out.push_str(s),
            (false, Value::Null) => out.push_str("<no value>"),
            _ => out.push_str(&v.to_string()),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Prints rows: with `quiet` only their `ID`s; else as `--format` asks: `None`/`table` →
/// the table, `json` → one object per line, anything else a template per row.
fn print_rows(
    quiet: bool,
    format: Option<&str>,
    headers: &[&str],
    cols: &[&str],
    rows: &[BTreeMap<&str, Value>],
) {
    if quiet {
        for r in rows {
            if let Some(Value::String(id)) = r.get("ID") {
                println!("{id}");
            }
        }
        return;
    }
    match format {
        None | Some("table") => {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    cols.iter()
                        .map(|c| match r.get(c) {
                            Some(Value::String(s)) => s.clone(),
                            Some(v) => v.to_string(),
                            None => String::new(),
                        })
                        .collect()
                })
                .collect();
            print_table(headers, &cells);
        }
        Some("json") => {
            for r in rows {
                println!(
                    "{}",
                    Value::Object(
                        r.iter()
                            .map(|(k, v)| ((*k).to_string(), v.clone()))
                            .collect()
                    )
                );
            }
        }
        Some(t) => {
            for r in rows {
                println!("{}", render(t, r));
            }
        }
    }
}

/// docker's `CreatedAt`: `2026-11-27 23:10:05 +0000 UTC`.
fn created_at(rfc3339: &str) -> String {
    Timestamp::parse(rfc3339).map_or_else(String::new, |t| {
        let s = Timestamp { nanos: 0, ..t }.rfc3339();
        format!("{} +0000 UTC", s.trim_end_matches('Z').replace('T', " "))
    })
}

fn ago(rfc3339: &str, now: Timestamp) -> String {
    Timestamp::parse(rfc3339).map_or_else(|| "N/A".into(), |t| t.ago(now))
}

/// Matches `pattern` (with `*` and `?`, as Go's `path.Match` within one segment) to `s`.
fn glob(pattern: &[u8], s: &[u8]) -> bool {
    match (pattern.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], s) || (!s.is_empty() && s[0] != b'/' && glob(pattern, &s[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pattern[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pattern[1..], &s[1..]),
        _ => false,
    }
}

/// What `images` lists: its `--filter`s and its `REPOSITORY[:TAG]` argument.
struct Selection {
    all: bool,
    dangling: Option<bool>,
    patterns: Vec<String>,
    /// The full repository, and the tag when the argument named one.
    repository: Option<(String, Option<String>)>,
}

impl Selection {
    fn of(a: &ImagesArgs) -> anyhow::Result<Selection> {
        let mut sel = Selection {
            all: a.all,
            dangling: None,
            patterns: Vec::new(),
            repository: None,
        };
        for f in &a.filter {
            match f.split_once('=') {
                Some(("dangling", "true" | "1")) => sel.dangling = Some(true),
                Some(("dangling", "false" | "0")) => sel.dangling = Some(false),
                Some(("reference", v)) => sel.patterns.push(v.to_string()),
                _ => {
                    bail!("invalid filter {f:?}: expected dangling=true|false or reference=PATTERN")
                }
            }
        }
        if let Some(r) = &a.reference {
            let parsed = ImageRef::parse(r)?;
            let tagged = r.rsplit('/').next().is_some_and(|last| last.contains(':'));
            sel.repository = Some((parsed.repository(), parsed.tag.filter(|_| tagged)));
        }
        Ok(sel)
    }

    /// Whether the untagged image `id` is listed (as `<none>`): dangling ones are, and
    /// intermediate ones (with a child) only with `-a`; never under a name filter.
    fn untagged(&self, idx: &Index, id: &str) -> bool {
        self.dangling != Some(false)
            && (self.all || idx.children_of(id).is_empty())
            && self.repository.is_none()
            && self.patterns.is_empty()
    }

    /// Whether the tag `n` is listed.
    fn tagged(&self, n: &ImageRef) -> bool {
        if self.dangling == Some(true) {
            return false;
        }
        if let Some((repo, tag)) = &self.repository {
            if n.repository() != *repo || (tag.is_some() && n.tag != *tag) {
                return false;
            }
        }
        let (fam, fam_repo) = (n.familiar(), n.familiar_repository());
        self.patterns.is_empty()
            || self.patterns.iter().any(|p| {
                glob(p.as_bytes(), fam.as_bytes()) || glob(p.as_bytes(), fam_repo.as_bytes())
            })
    }
}

pub fn images(root: &Path, a: ImagesArgs) -> anyhow::Result<()> {
    let sel = Selection::of(&a)?;
    let store = open(root)?;
    let idx = store.index()?;
    let mut ids: Vec<(&String, &crate::store::index::ImageRecord)> = idx.images.iter().collect();
    ids.sort_by(|x, y| y.1.created.cmp(&x.1.created).then(x.0.cmp(y.0)));
    let now = Timestamp::now();
    let mut rows: Vec<BTreeMap<&str, Value>> = Vec::new();
    for (id, rec) in ids {
        let tags = idx.tags_of(id);
        let names: Vec<(String, String)> = match tags.is_empty() {
            true if sel.untagged(&idx, id) => vec![("<none>".into(), "<none>".into())],
            true => Vec::new(),
            false => tags
                .iter()
                .filter_map(|t| ImageRef::parse(t).ok())
                .filter(|n| sel.tagged(n))
                .map(|n| {
                    let tag = n.tag.clone().unwrap_or_else(|| "<none>".into());
                    (n.familiar_repository(), tag)
                })
                .collect(),
        };
        let shown_id = match a.no_trunc {
            true => id.clone(),
            false => short_id(id).to_string(),
        };
        let size = human_size(idx.image_size(id));
        for (repo, tag) in names {
            let mut r = BTreeMap::new();
            r.insert("Containers", json!("N/A"));
            r.insert("CreatedAt", json!(created_at(&rec.created)));
            r.insert("CreatedSince", json!(ago(&rec.created, now)));
            r.insert("Digest", json!("<none>"));
            r.insert("ID", json!(shown_id));
            r.insert("Repository", json!(repo));
            r.insert("SharedSize", json!("N/A"));
            r.insert("Size", json!(size));
            r.insert("Tag", json!(tag));
            r.insert("UniqueSize", json!("N/A"));
            r.insert("VirtualSize", json!(size));
            rows.push(r);
        }
    }
    if a.quiet {
        // One line per image, not per tag.
        let mut seen = std::collections::HashSet::new();
        rows.retain(|r| seen.insert(r.get("ID").cloned()));
    }
    let (headers, cols): (Vec<&str>, Vec<&str>) = match a.digests {
        true => (
            vec!["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"],
            vec!["Repository", "Tag", "Digest", "ID", "CreatedSince", "Size"],
        ),
        false => (
            vec!["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            vec!["Repository", "Tag", "ID", "CreatedSince", "Size"],
        ),
    };
    print_rows(a.quiet, a.format.as_deref(), &headers, &cols, &rows);
    Ok(())
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    repo_tags: Vec<String>,
    repo_digests: Vec<String>,
    parent: String,
    comment: String,
    created: String,
    author: String,
    config: Value,
    architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<Value>,
    os: String,
    size: u64,
    graph_driver: Value,
    #[serde(rename = "RootFS")]
    root_fs: RootFs,
    metadata: Value,
}

/// docker's `RootFS`, its keys in docker's order.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RootFs {
    #[serde(rename = "Type")]
    kind: &'static str,
    layers: Vec<String>,
}

fn inspect_one(store: &Store, idx: &Index, input: &str) -> anyhow::Result<Inspect> {
    let id = store.resolve(idx, input)?;
    let rec = &idx.images[&id];
    let (bytes, config) = store.config(&id)?;
    let raw: Value = serde_json::from_slice(&bytes)?;
    let lowers: Vec<String> = rec
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(l).display().to_string())
        .collect();
    Ok(Inspect {
        repo_tags: {
            let mut t: Vec<String> = idx.tags_of(&id).iter().map(|t| familiar(t)).collect();
            t.sort();
            t
        },
        repo_digests: Vec::new(),
        parent: rec.parent.clone().unwrap_or_default(),
        comment: config
            .history
            .last()
            .and_then(|h| h.comment.clone())
            .unwrap_or_default(),
        created: config.created.clone().unwrap_or_default(),
        author: config.author.clone().unwrap_or_default(),
        config: raw.get("config").cloned().unwrap_or_else(|| json!({})),
        architecture: config.architecture.clone(),
        variant: raw.get("variant").cloned(),
        os: config.os.clone(),
        size: idx.image_size(&id),
        graph_driver: json!({"Data": {"LowerDir": lowers.join(":")}, "Name": "strata"}),
        root_fs: RootFs {
            kind: "layers",
            layers: config.rootfs.diff_ids.clone(),
        },
        metadata: json!({"LastTagTime": rec.last_tag_time.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into())}),
        id,
    })
}

pub fn inspect(root: &Path, a: InspectArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let idx = store.index()?;
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for i in &a.images {
        match inspect_one(&store, &idx, i) {
            Ok(v) => found.push(v),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    found.serialize(&mut ser)?;
    println!("{}", String::from_utf8_lossy(&out));
    each_ok(&failed)
}

pub fn history(root: &Path, a: HistoryArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let idx = store.index()?;
    let id = store.resolve(&idx, &a.image)?;
    let (_, config) = store.config(&id)?;
    let n = config.history.len();
    let mut ancestors = Vec::new();
    let mut parent = idx.images[&id].parent.clone();
    while let Some(p) = parent {
        let Ok((_, pc)) = store.config(&p) else { break };
        ancestors.push((p.clone(), pc.history.len()));
        parent = idx.images.get(&p).and_then(|r| r.parent.clone());
    }
    let owner = history_owners(n, &id, &ancestors);
    let mut layer_sizes = config
        .rootfs
        .diff_ids
        .iter()
        .map(|d| idx.layers.get(d).map_or(0, |l| l.size));
    let sizes: Vec<u64> = config
        .history
        .iter()
        .map(|h| match h.empty_layer {
            true => 0,
            false => layer_sizes.next().unwrap_or(0),
        })
        .collect();
    let now = Timestamp::now();
    let mut rows = Vec::new();
    for i in (0..n).rev() {
        let h = &config.history[i];
        let shown = match &owner[i] {
            Some(o) if a.no_trunc => o.clone(),
            Some(o) => short_id(o).to_string(),
            None => "<missing>".into(),
        };
        let created = h.created.clone().unwrap_or_default();
        let by = h.created_by.clone().unwrap_or_default().replace('\t', " ");
        let by = match !a.no_trunc && by.chars().count() > 45 {
            true => format!("{}…", by.chars().take(44).collect::<String>()),
            false => by,
        };
        let mut r = BTreeMap::new();
        r.insert("Comment", json!(h.comment.clone().unwrap_or_default()));
        r.insert("CreatedAt", json!(created));
        r.insert("CreatedBy", json!(by));
        r.insert("CreatedSince", json!(ago(&created, now)));
        r.insert("ID", json!(shown));
        r.insert("Size", json!(human_size(sizes[i])));
        rows.push(r);
    }
    print_rows(
        a.quiet,
        a.format.as_deref(),
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &["ID", "CreatedSince", "CreatedBy", "Size", "Comment"],
        &rows,
    );
    Ok(())
}

/// Which local image each history entry (oldest first) belongs to, as docker shows it: the
/// newest entry is the image's, each local ancestor (nearest first, with its history
/// length) owns its own newest entry, and the rest are `<missing>` (`None`).
fn history_owners(n: usize, top: &str, ancestors: &[(String, usize)]) -> Vec<Option<String>> {
    let mut owner: Vec<Option<String>> = vec![None; n];
    if n > 0 {
        owner[n - 1] = Some(top.to_string());
    }
    for (id, len) in ancestors {
        if *len == 0 || *len > n {
            break;
        }
        owner[len - 1].get_or_insert_with(|| id.clone());
    }
    owner
}

fn print_removals(out: &[Removal]) {
    for r in out {
        match r {
            Removal::Untagged(t) => println!("Untagged: {t}"),
            Removal::Deleted(id) => println!("Deleted: {id}"),
        }
    }
}

pub fn rmi(root: &Path, a: RmiArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let (done, errors) = store.rmi(&a.images, a.force, a.no_prune)?;
    print_removals(&done);
    let msgs: Vec<String> = errors.iter().map(|e| format!("{e}")).collect();
    each_ok(&msgs)
}

pub fn prune(root: &Path, a: PruneArgs) -> anyhow::Result<()> {
    if !a.force {
        let what = match a.all {
            true => "all images without at least one mount associated to them",
            false => "all dangling images",
        };
        eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            if !std::io::stdin().is_terminal() && line.is_empty() {
                eprintln!();
            }
            return Ok(());
        }
    }
    let store = open(root)?;
    let (done, freed) = store.prune(a.all)?;
    if !done.is_empty() {
        println!("Deleted Images:");
        for r in &done {
            match r {
                Removal::Untagged(t) => println!("untagged: {t}"),
                Removal::Deleted(id) => println!("deleted: {id}"),
            }
        }
        println!();
    }
    println!("Total reclaimed space: {}", human_size(freed));
    Ok(())
}

pub fn ps(root: &Path, a: PsArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let idx = store.index()?;
    let now = Timestamp::now();
    let mut mounts: Vec<_> = idx.mounts.iter().collect();
    mounts.sort_by(|x, y| y.1.created.cmp(&x.1.created));
    let mut rows = Vec::new();
    for (id, m) in mounts {
        let image = match idx.tags_of(&m.image).first() {
            Some(t) => familiar(t),
            None => short_id(&m.image).to_string(),
        };
        let shown = match a.no_trunc {
            true => id.clone(),
            false => short_id(id).to_string(),
        };
        let status = match is_mounted(&m.mountpoint) {
            true => "mounted",
            false => "unmounted",
        };
        let mut r = BTreeMap::new();
        r.insert("ID", json!(shown));
        r.insert("Image", json!(image));
        r.insert("Mountpoint", json!(m.mountpoint.display().to_string()));
        r.insert("CreatedAt", json!(created_at(&m.created)));
        r.insert("RunningFor", json!(ago(&m.created, now)));
        r.insert("Status", json!(status));
        rows.push(r);
    }
    print_rows(
        a.quiet,
        a.format.as_deref(),
        &["MOUNT ID", "IMAGE", "MOUNTPOINT", "CREATED", "STATUS"],
        &["ID", "Image", "Mountpoint", "RunningFor", "Status"],
        &rows,
    );
    Ok(())
}

pub fn rm(root: &Path, a: RmArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let mut failed = Vec::new();
    for m in &a.mounts {
        let r = (|| -> anyhow::Result<String> {
            let idx = store.index()?;
            let id = store.find_mount(&idx, m)?;
            let mp = idx.mounts[&id].mountpoint.clone();
            if is_mounted(&mp) {
                if !a.force {
                    bail!(
                        "mount {} is mounted at {} (strata umount it first, or rm -f)",
                        short_id(&id),
                        mp.display()
                    );
                }
                crate::fuse::daemon::umount(&mp, false)?;
            }
            store.remove_mount(&id)?;
            Ok(id)
        })();
        match r {
            Ok(id) => println!("{}", short_id(&id)),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    each_ok(&failed)
}

pub fn check(root: &Path, a: CheckArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let r = store.check(a.repair)?;
    for l in &r.repaired {
        println!("repaired: {l}");
    }
    for l in &r.problems {
        println!("problem: {l}");
    }
    println!(
        "{}: {} images, {} layers, {} tags, {} mounts: {}",
        root.display(),
        r.images,
        r.layers,
        r.tags,
        r.mounts,
        match r.problems.len() {
            0 => "ok".to_string(),
            n => format!("{n} problems"),
        }
    );
    if !r.problems.is_empty() {
        bail!("the store has {} problems", r.problems.len());
    }
    Ok(())
}

pub fn export(root: &Path, a: ExportArgs) -> anyhow::Result<()> {
    let store = open(root)?;
    let idx = store.index()?;
    let id = store.resolve(&idx, &a.image)?;
    let name = ImageRef::parse(&a.image)
        .ok()
        .filter(|r| idx.tags.contains_key(&r.to_string()))
        .and_then(|r| r.tag)
        .unwrap_or_else(|| "latest".into());
    let digest = store.export_oci(&id, &a.dir, &name)?;
    println!("{digest}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_fields() {
        let mut f = BTreeMap::new();
        f.insert("ID", json!("abc"));
        f.insert("Size", json!("1MB"));
        assert_eq!(render("{{.ID}}\\t{{ .Size }}", &f), "abc\t1MB");
        assert_eq!(
            render("table {{json .ID}} {{.X}}", &f),
            "\"abc\" <no value>"
        );
    }

    #[test]
    fn history_rows_belong_to_the_image_its_ancestors_or_are_missing() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            history_owners(5, "b", &[("a".into(), 3)]),
            vec![None, None, s("a"), None, s("b")]
        );
        assert_eq!(
            history_owners(2, "b", &[("a".into(), 7)]),
            vec![None, s("b")]
        );
        assert_eq!(history_owners(0, "b", &[]), Vec::<Option<String>>::new());
    }

    #[test]
    fn globs_match_within_a_segment() {
        assert!(glob(b"demo*", b"demo:v2"));
        assert!(glob(b"d?mo", b"demo"));
        assert!(!glob(b"*", b"a/b"));
        assert!(glob(b"*/b", b"a/b"));
    }
}
