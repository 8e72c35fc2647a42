//! strata: a userspace union filesystem (kernel overlayfs on-disk format, served through
//! FUSE) with a daemonless container-image store on top.
//!
//! Module map (dependencies point one way: `fuse → union → sys`):
//! - [`sys`]: the system-call boundary, the only place with `unsafe`;
//! - [`union`]: overlay semantics over a layer stack, without FUSE;
//! - [`fuse`]: the `fuser` adapter, mount options and the daemon;
//! - [`store`]: the image store (image references so far);
//! - [`cli`]: the command line;
//! - [`error`]: typed errors.

pub mod cli;
pub mod error;
pub mod fuse;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;
pub mod union;
