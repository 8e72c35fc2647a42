//! The image store (issue 5, being built): content-addressed layers and OCI image configs
//! under a root directory, tags, mounts. So far: the reference grammar, the directory
//! layout with its lock, atomic writes and checked blobs, image configs, and the checks on
//! a layer tar's names.

pub mod diff;
pub mod layout;
pub mod oci;
pub mod reference;
pub mod tarpath;
pub mod unpack;
