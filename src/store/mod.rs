//! The image store (issue 5, being built): content-addressed layers and OCI image configs
//! under a root directory, tags, mounts. So far: the reference grammar and the directory
//! layout with its lock, atomic writes and checked blobs.

pub mod layout;
pub mod reference;
