//! The image store (issue 5, being built): content-addressed layers and OCI image configs
//! under a root directory, tags, mounts. So far: the reference grammar.

pub mod reference;
