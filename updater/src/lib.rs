//! Berth A/B updater.
//!
//! Not implemented yet: this crate is reserved for the updater described in
//! `docs/ARCHITECTURE.md` (pull a signed OS artifact, write the inactive slot, boot it
//! with boot counting, roll back). Nothing here pretends to work.
