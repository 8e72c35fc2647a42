//! The inode table: what the kernel knows by node id.
//!
//! A node id is also the `st_ino` the mount reports (fuser sends `attr.ino` as the node id
//! of `create` and `readdirplus` replies), so ids are derived from the file's identity in
//! its layer: hard links are one node, and a directory keeps one id for as long as it is
//! merged (its id comes from its bottom-most layer, which copy-up never changes). A node
//! records the names it is known by, the layer holding its visible copy, and the kernel's
//! lookup count; `forget` drops it when that count reaches zero, so the table stays as
//! large as the kernel's own inode cache and no larger.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;

use super::layer::{LayerIdx, SYNTHETIC_BASE};
use super::Attr;

/// The node id of the mount's root directory (fixed by FUSE).
pub const ROOT_ID: u64 = 1;

/// The parent id under which [`Inodes`] records the other id of a file whose inode number
/// a removed node still held by the kernel has (no node has id 0).
const REUSED: u64 = 0;

/// One layer of a merged directory, and where the directory is in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirLayer {
    pub layer: LayerIdx,
    /// The directory's path in that layer; `None` in the upper layer, where it is always
    /// the merged path. A lower path differs from the merged one below a renamed
    /// directory (a redirect), and never changes: lower layers are read-only.
    pub path: Option<Arc<Path>>,
}

impl DirLayer {
    /// The upper layer `l`.
    pub fn upper(l: LayerIdx) -> DirLayer {
        DirLayer {
            layer: l,
            path: None,
        }
    }
}

/// What kind of node this is; directories know the layers they merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory, with the layers (top first) where it exists as a directory; the list
    /// ends at the first opaque one.
    Dir { layers: Vec<DirLayer> },
    /// Anything else; `fmt` is the `S_IFMT` bits. `data` is set for a metadata-only copy
    /// (metacopy): the upper file has the metadata, the data is still in a lower layer.
    /// `index` is set for a copied-up lower hard link: its name in the index, where the
    /// one copy all its names share is.
    NotDir {
        fmt: u32,
        data: Option<DataLayer>,
        index: Option<Arc<OsStr>>,
    },
}

/// Where the data of a metadata-only copy is: a lower layer and the file's path in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataLayer {
    pub layer: LayerIdx,
    pub path: Arc<Path>,
}

impl NodeKind {
    /// How many layers a directory merges (0 for other nodes).
    pub fn dir_len(&self) -> usize {
        match self {
            NodeKind::Dir { layers } => layers.len(),
            NodeKind::NotDir { .. } => 0,
        }
    }

    /// A kind that is not a directory, with no data elsewhere.
    pub fn plain(fmt: u32) -> NodeKind {
        NodeKind::NotDir {
            fmt,
            data: None,
            index: None,
        }
    }

    /// The index name of a copied-up lower hard link.
    pub fn index(&self) -> Option<&OsStr> {
        match self {
            NodeKind::NotDir { index, .. } => index.as_deref(),
            NodeKind::Dir { .. } => None,
        }
    }

    /// Where the data of a metadata-only copy is.
    pub fn data(&self) -> Option<&DataLayer> {
        match self {
            NodeKind::NotDir { data, .. } => data.as_ref(),
            NodeKind::Dir { .. } => None,
        }
    }
}

/// What a node id is derived from: an inode number made from a layer inode (`None` when
/// it does not fit), and whether every name with that number is the same file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub ino: Option<u64>,
    /// False for lower hard links, whose names part ways on copy-up.
    pub shared: bool,
}

impl Identity {
    /// An identity every name shares.
    pub fn shared(ino: u64) -> Identity {
        Identity {
            ino: Some(ino),
            shared: true,
        }
    }
}

/// One inode the kernel holds.
#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    /// The layer holding the visible copy.
    pub layer: LayerIdx,
    /// The (parent id, name) pairs this node is known by; empty once it was removed.
    pub names: Vec<(u64, OsString)>,
    /// The kernel's lookup count (over every generation of this id).
    pub lookups: u64,
    /// The name last looked up, until a call uses it: the call (an open, a chmod) came
    /// through it.
    pub last_name: Option<(u64, OsString)>,
    /// The name the node was last opened through: a call on a descriptor (`futimens`)
    /// came through it.
    pub opened_via: Option<(u64, OsString)>,
    /// A lower hard link whose names are linked to its copy one by one (see
    /// `Resolved::per_name`).
    pub per_name: bool,

    /// Set once the node's last name was removed: its attributes at that moment.
    pub removed: Option<Box<Attr>>,
    /// When the kernel last looked the node up (a tick of [`Inodes`]): the table asks
    /// the kernel to forget the nodes unused longest when it grows too large.
    pub used: u64,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }
}

/// A name detached by [`Inodes::take_name`], to be attached elsewhere.
struct TakenName {
    from: (u64, OsString),
    node: Option<u64>,
    /// (identity, synthetic id) pairs that were keyed by the name.
    split: Vec<(u64, u64)>,
}

/// The table itself. Callers hold it behind a mutex and keep each critical section short.
#[derive(Debug, Default)]
pub struct Inodes {
    nodes: HashMap<u64, Node>,
    /// Other identities that lead to an existing node: the upper copy of a copied-up file.
    alias: HashMap<u64, u64>,
    /// Names that resolve to an identity already taken by another node (a lower hard link
    /// whose sibling was copied up): (identity, parent, name) to the synthetic id given.
    split: HashMap<(u64, u64, OsString), u64>,
    /// (parent, name) to the node it leads to, for every name of every node.
    by_name: HashMap<(u64, OsString), u64>,
    next_synthetic: u64,
    /// Counts lookups (see [`Node::used`]).
    tick: u64,
}

impl Inodes {
    /// A table holding only the root directory.
    pub fn new(root_layers: Vec<DirLayer>) -> Inodes {
        let mut t = Inodes {
            next_synthetic: SYNTHETIC_BASE,
            ..Default::default()
        };
        let layer = root_layers.first().map_or(0, |d| d.layer);
        t.nodes.insert(
            ROOT_ID,
            Node {
                kind: NodeKind::Dir {
                    layers: root_layers,
                },
                layer,
                names: Vec::new(),
                lookups: 1,
                last_name: None,
                opened_via: None,
                per_name: false,
                removed: None,
                used: 0,
            },
        );
        t
    }

    pub fn get(&self, id: u64) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&id)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn synthetic(&mut self) -> u64 {
        self.next_synthetic += 1;
        self.next_synthetic
    }

    /// Records a lookup of `name` in `parent` that found `kind` in `layer`, whose identity
    /// is `ident` (`None` when the layer inode does not map to a number). `shared` says
    /// every name with that identity is one file; lower hard links are not (their names
    /// part ways on copy-up), so each of their names gets its own node. Returns the node
    /// id, bumping its lookup count when `count` is set.
    pub fn found(
        &mut self,
        parent: u64,
        name: &OsString,
        ident: Identity,
        kind: NodeKind,
        layer: LayerIdx,
        count: bool,
    ) -> u64 {
        // Never the id of a removed node (see `id_for`): the kernel may still hold that one.
        let id = self.id_for(parent, name, ident.ino, ident.shared, &kind, layer);
        let node = self.nodes.entry(id).or_insert_with(|| Node {
            kind: kind.clone(),
            layer,
            names: Vec::new(),
            lookups: 0,
            last_name: None,
            opened_via: None,
            per_name: false,
            removed: None,
            used: 0,
        });
        node.kind = kind;
        node.layer = layer;
        self.tick += 1;
        node.used = self.tick;
        let mut dropped = Vec::new();
        if !node.names.iter().any(|(p, n)| *p == parent && n == name) {
            if node.is_dir() {
                dropped = std::mem::take(&mut node.names);
            }
            node.names.push((parent, name.clone()));
        }
        if count {
            node.lookups += 1;
            node.last_name = Some((parent, name.clone()));
        }
        for old in dropped {
            self.by_name.remove(&old);
        }
        if let Some(prev) = self.by_name.insert((parent, name.clone()), id) {
            if prev != id {
                if let Some(p) = self.nodes.get_mut(&prev) {
                    p.names.retain(|(pp, nn)| !(*pp == parent && nn == name));
                }
            }
        }
        id
    }

    fn id_for(
        &mut self,
        parent: u64,
        name: &OsString,
        ident: Option<u64>,
        shared: bool,
        kind: &NodeKind,
        layer: LayerIdx,
    ) -> u64 {
        let Some(ident) = ident else {
            return self.split_id(0, parent, name);
        };
        if let Some(split) = self.split.get(&(ident, parent, name.clone())) {
            return *split;
        }
        let reused_key = (ident, REUSED, OsString::new());
        if let Some(&other) = self.split.get(&reused_key) {
            // A file that took a still-held removed node's inode number, by any name
            // (unless that file is gone too, and the number was reused once more).
            if self.nodes.get(&other).is_none_or(|n| n.removed.is_none()) {
                return other;
            }
            self.split.remove(&reused_key);
        }
        if !shared {
            return self.split_id(ident, parent, name);
        }
        let via_alias = self.alias.contains_key(&ident);
        let id = self.alias.get(&ident).copied().unwrap_or(ident);
        match self.nodes.get(&id) {
            None => id,
            Some(n) => {
                let is_dir = matches!(kind, NodeKind::Dir { .. });
                // A directory's id comes from its bottom layer, so its top layer may change;
                // a file found in another layer than its node's copy is a different file
                // (a lower hard link of a copied-up file, or a reused inode number). A removed
                // node the kernel still holds keeps its id, so whatever took over its inode
                // number gets another: the old inode stays valid (and empty) for its holders.
                let reused = n.removed.is_some();
                if reused {
                    // Every name of the new file gets the same other id (hard links).
                    self.split_id(ident, REUSED, &OsString::new())
                } else if n.is_dir() == is_dir && (is_dir || n.layer == layer || via_alias) {
                    id
                } else {
                    self.split_id(ident, parent, name)
                }
            }
        }
    }

    /// The synthetic id of `name` in `parent` (found with identity `ident`), made once.
    fn split_id(&mut self, ident: u64, parent: u64, name: &OsString) -> u64 {
        if let Some(id) = self.split.get(&(ident, parent, name.clone())) {
            return *id;
        }
        let id = self.synthetic();
        self.split.insert((ident, parent, name.clone()), id);
        id
    }

    /// The id an identity maps to now, without recording anything (for listings).
    pub fn peek_id(&self, ident: Option<u64>) -> u64 {
        match ident {
            Some(i) => self.alias.get(&i).copied().unwrap_or(i),
            None => SYNTHETIC_BASE - 1,
        }
    }

    /// Another identity (the upper copy's) now leads to node `id`.
    pub fn add_alias(&mut self, ident: u64, id: u64) {
        if ident != id {
            self.alias.insert(ident, id);
        }
    }

    /// The node `name` in `parent` is known to lead to, if the kernel holds one.
    pub fn child(&self, parent: u64, name: &OsString) -> Option<u64> {
        self.by_name.get(&(parent, name.clone())).copied()
    }

    /// `name` in `parent` no longer leads anywhere. A node left without names is marked
    /// removed, keeping `attr` (its attributes as last seen) for the kernel's later asks.
    pub fn remove_name(&mut self, parent: u64, name: &OsString, attr: Option<Attr>) {
        if let Some(id) = self.by_name.remove(&(parent, name.clone())) {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.names.retain(|(p, nm)| !(*p == parent && nm == name));
                if n.names.is_empty() {
                    // A removed directory reads as empty: no links, no size.
                    n.removed = attr.map(|a| {
                        Box::new(Attr {
                            ino: id,
                            nlink: 0,
                            size: if a.is_dir() { 0 } else { a.size },
                            ..a
                        })
                    });
                }
            }
        }
        self.split
            .retain(|(_, p, nm), _| !(*p == parent && nm == name));
    }

    /// What `name` in `parent` led to is now `new_name` in `new_parent` (which led to
    /// nothing, or to a node that loses that name).
    pub fn rename(&mut self, parent: u64, name: &OsString, new_parent: u64, new_name: &OsString) {
        self.remove_name(new_parent, new_name, None);
        let taken = self.take_name(parent, name);
        self.put_name(taken, new_parent, new_name);
    }
    /// The nodes behind two names swap places (`RENAME_EXCHANGE`).
    pub fn exchange(&mut self, a_parent: u64, a_name: &OsString, b_parent: u64, b_name: &OsString) {
        let a = self.take_name(a_parent, a_name);
        let b = self.take_name(b_parent, b_name);
        self.put_name(a, b_parent, b_name);
        self.put_name(b, a_parent, a_name);
    }

    /// Detaches `name` in `parent` from what it leads to: the node (which keeps the name
    /// in its list until [`Inodes::put_name`] renames it) and any synthetic ids of it.
    fn take_name(&mut self, parent: u64, name: &OsString) -> TakenName {
        let node = self.by_name.remove(&(parent, name.clone()));
        let split: Vec<(u64, u64)> = self
            .split
            .iter()
            .filter(|((_, p, nm), _)| *p == parent && nm == name)
            .map(|((ident, _, _), id)| (*ident, *id))
            .collect();
        for (ident, _) in &split {
            self.split.remove(&(*ident, parent, name.clone()));
        }
        TakenName {
            from: (parent, name.clone()),
            node,
            split,
        }
    }

    /// Attaches what [`Inodes::take_name`] detached under `name` in `parent`.
    fn put_name(&mut self, taken: TakenName, parent: u64, name: &OsString) {
        if let Some(id) = taken.node {
            if let Some(n) = self.nodes.get_mut(&id) {
                for entry in n.names.iter_mut().filter(|e| **e == taken.from) {
                    *entry = (parent, name.clone());
                }
            }
            self.by_name.insert((parent, name.clone()), id);
        }
        for (ident, id) in taken.split {
            self.split.insert((ident, parent, name.clone()), id);
        }
    }
    /// The name a call on node `id` came through (FUSE does not say): while the node is
    /// open, the one it was opened through (a call on a descriptor); else the one last
    /// looked up (used up now).
    pub fn take_call_name(&mut self, id: u64, open: bool) -> Option<(u64, OsString)> {
        let node = self.nodes.get_mut(&id)?;
        let last = node.last_name.take();
        let name = match open {
            true => node.opened_via.clone().or(last),
            false => last,
        }?;
        node.names.contains(&name).then_some(name)
    }

    /// A call used the lookup of `name` in `parent` (a rename, say): it says nothing
    /// about the next call on its node.
    pub fn use_lookup(&mut self, parent: u64, name: &OsString) {
        let Some(id) = self.by_name.get(&(parent, name.clone())).copied() else {
            return;
        };
        if let Some(node) = self.nodes.get_mut(&id) {
            if node.last_name.as_ref() == Some(&(parent, name.clone())) {
                node.last_name = None;
            }
        }
    }

    /// Node `id` is being opened: through the name just looked up, if any.
    pub fn opening(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            if let Some(name) = node.last_name.clone() {
                node.opened_via = Some(name);
            }
        }
    }

    /// When the table holds more than `high` nodes: a name of each of the nodes unused
    /// longest, to bring it down to `low` once the kernel forgets them (nodes the kernel
    /// keeps, open files say, are marked used now, so they are not asked for again soon).
    pub fn least_used(&mut self, high: usize, low: usize) -> Vec<(u64, OsString)> {
        if self.nodes.len() <= high {
            return Vec::new();
        }
        let mut ages: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter(|(id, n)| **id != ROOT_ID && !n.names.is_empty())
            .map(|(id, n)| (n.used, *id))
            .collect();
        let n = self.nodes.len().saturating_sub(low).min(ages.len());
        if n == 0 {
            return Vec::new();
        }
        if n < ages.len() {
            ages.select_nth_unstable(n);
        }
        self.tick += 1;
        let mut out = Vec::with_capacity(n);
        for (_, id) in &ages[..n] {
            if let Some(node) = self.nodes.get_mut(id) {
                node.used = self.tick;
                if let Some(name) = node.names.first() {
                    out.push(name.clone());
                }
            }
        }
        out
    }

    /// The kernel forgot `n` lookups of `id`; drops the node when none remain.
    pub fn forget(&mut self, id: u64, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let drop = match self.nodes.get_mut(&id) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if drop {
            if let Some(node) = self.nodes.remove(&id) {
                for name in node.names {
                    if self.by_name.get(&name) == Some(&id) {
                        self.by_name.remove(&name);
                    }
                }
            }
            self.alias.retain(|_, v| *v != id);
            self.split.retain(|_, v| *v != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> OsString {
        OsString::from(s)
    }

    fn root(layers: usize) -> Vec<DirLayer> {
        let root: Arc<Path> = Arc::from(Path::new(""));
        (0..layers)
            .map(|l| DirLayer {
                layer: l,
                path: (l > 0).then(|| Arc::clone(&root)),
            })
            .collect()
    }

    #[test]
    fn hard_links_share_a_node_and_forget_frees_it() {
        let mut t = Inodes::new(root(2));
        let kind = NodeKind::plain(libc::S_IFREG);
        let a = t.found(
            ROOT_ID,
            &name("a"),
            Identity::shared(100),
            kind.clone(),
            1,
            true,
        );
        let b = t.found(ROOT_ID, &name("b"), Identity::shared(100), kind, 1, true);
        assert_eq!(a, b);
        assert_eq!(t.get(a).map(|n| n.names.len()), Some(2));
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
    }

    #[test]
    fn copied_up_file_keeps_its_id_through_the_alias() {
        let mut t = Inodes::new(root(2));
        let kind = NodeKind::plain(libc::S_IFREG);
        let a = t.found(
            ROOT_ID,
            &name("a"),
            Identity::shared(100),
            kind.clone(),
            1,
            true,
        );
        t.get_mut(a).unwrap().layer = 0;
        t.add_alias(500, a);
        assert_eq!(
            t.found(ROOT_ID, &name("a"), Identity::shared(500), kind, 0, true),
            a
        );
    }

    #[test]
    fn lower_link_of_a_copied_up_file_is_a_different_node() {
        let mut t = Inodes::new(root(2));
        let kind = NodeKind::plain(libc::S_IFREG);
        let a = t.found(
            ROOT_ID,
            &name("a"),
            Identity::shared(100),
            kind.clone(),
            1,
            true,
        );
        t.get_mut(a).unwrap().layer = 0;
        t.add_alias(500, a);
        let b = t.found(
            ROOT_ID,
            &name("b"),
            Identity::shared(100),
            kind.clone(),
            1,
            true,
        );
        assert_ne!(a, b);
        assert!(b >= SYNTHETIC_BASE);
        // The same name keeps the same synthetic id.
        assert_eq!(
            t.found(ROOT_ID, &name("b"), Identity::shared(100), kind, 1, true),
            b
        );
    }

    #[test]
    fn a_reused_inode_number_gets_another_id_while_the_old_node_is_held() {
        let mut t = Inodes::new(vec![DirLayer::upper(0)]);
        let dir = || NodeKind::Dir {
            layers: vec![DirLayer::upper(0)],
        };
        let old = t.found(ROOT_ID, &name("d"), Identity::shared(77), dir(), 0, true);
        t.remove_name(ROOT_ID, &name("d"), Some(Attr::default()));
        let new = t.found(ROOT_ID, &name("d"), Identity::shared(77), dir(), 0, true);
        assert_ne!(old, new);
        assert!(t.get(old).unwrap().removed.is_some());
        t.forget(old, 1);
        assert!(t.get(old).is_none());
        assert!(t.get(new).is_some());
    }
}
