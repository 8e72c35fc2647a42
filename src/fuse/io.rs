//! How the data of each open file reaches the kernel: by FUSE passthrough (the kernel reads
//! and writes the backing file itself, at native speed) or through the page cache (reads
//! and writes come to strata).
//!
//! The kernel allows one mode per inode at a time: while an inode has passthrough opens,
//! every new open of it must be passthrough with the same backing file, and while it has
//! cached opens, none may be passthrough. So an inode's mode is chosen at its first open
//! and kept until its last release; a passthrough inode has one backing id, shared by its
//! opens and closed with the last of them. Strata hears of a release only after the kernel
//! has dropped the open, so its counts are never below the kernel's and the mode it picks
//! never conflicts with an open the kernel still has.

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;

use super::options::Passthrough;
use crate::union::{LayerIdx, Union};

/// The mode an open gets.
pub enum Mode {
    Passthrough(Arc<BackingId>),
    /// Through the page cache; `keep_cache`: pages cached by earlier opens are still right.
    Cached {
        keep_cache: bool,
    },
}

/// The open inodes and their modes.
pub struct OpenModes {
    /// What may be passed through, or `None` when the kernel did not agree to passthrough.
    passthrough: Option<Passthrough>,
    inodes: Mutex<HashMap<u64, InodeIo>>,
}

#[derive(Default)]
struct InodeIo {
    /// The backing id and the layer of the file it stands for.
    backing: Option<(Arc<BackingId>, LayerIdx)>,
    opens: u32,
}

impl OpenModes {
    pub fn new() -> OpenModes {
        OpenModes {
            passthrough: None,
            inodes: Mutex::new(HashMap::new()),
        }
    }

    /// Called from `init`: the kernel agreed to passthrough for files `which` allows.
    pub fn enable_passthrough(&mut self, which: Passthrough) {
        self.passthrough = (which != Passthrough::Off).then_some(which);
    }

    /// Picks the mode of a new open of inode `ino` (handle `fh`); `register` makes a
    /// backing id of a descriptor. Must be followed by [`OpenModes::release`] when the
    /// kernel releases the handle (or at once when the open is not sent).
    pub fn open(
        &self,
        union: &Union,
        ino: u64,
        fh: u64,
        register: impl FnOnce(BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> Mode {
        let mut inodes = self.inodes.lock();
        let io = inodes.entry(ino).or_default();
        io.opens += 1;
        let layer = union.data_layer(fh);
        match &io.backing {
            Some((id, l)) if Some(*l) == layer => return Mode::Passthrough(Arc::clone(id)),
            // Page-cache opens are live: this one must join them.
            None if io.opens > 1 => return self.cached(union, layer),
            // Either no open is live, or (`passthrough=all` only) the data moved up since
            // the live opens were passed the lower file: never hand a lower file to this
            // open. A new backing file is registered; the kernel refuses the open (EIO)
            // if a passed-through open of the lower file is still live.
            _ => {}
        }
        let Some(which) = self.passthrough else {
            return self.cached(union, layer);
        };
        let registered = union.with_settled_fd(fh, which == Passthrough::All, register);
        match (registered, layer) {
            (Some(Ok(id)), Some(l)) => {
                let id = Arc::new(id);
                io.backing = Some((Arc::clone(&id), l));
                Mode::Passthrough(id)
            }
            (Some(Err(e)), _) => {
                // A layer on a stacking filesystem (overlayfs, another passthrough FUSE
                // mount) is refused by the kernel: that file goes through the page cache.
                log::debug!("no passthrough for inode {ino}: {e}");
                self.cached(union, layer)
            }
            _ => self.cached(union, layer),
        }
    }

    /// Cached pages stay right while the data is in a lower layer (it never changes
    /// there), or when nothing is passed through (every change then goes through the
    /// page cache); otherwise a passthrough write may have changed the file behind them.
    fn cached(&self, union: &Union, layer: Option<LayerIdx>) -> Mode {
        Mode::Cached {
            keep_cache: self.passthrough.is_none() || layer.is_some_and(|l| union.is_lower(l)),
        }
    }

    /// A handle of inode `ino` was released (or its open failed).
    pub fn release(&self, ino: u64) {
        let mut inodes = self.inodes.lock();
        if let Some(io) = inodes.get_mut(&ino) {
            io.opens = io.opens.saturating_sub(1);
            if io.opens == 0 {
                // Dropping the last reference closes the backing id.
                inodes.remove(&ino);
            }
        }
    }
}
