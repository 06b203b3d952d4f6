//! The `reco` command's library: the whole platform in one process ([`platform`]), loading a snapshot into
//! running services over their write APIs ([`load`]), and a small client ([`show`]).

pub mod bench;
pub mod dataset;
pub mod eval;
pub mod events_bench;
pub mod load;
pub mod platform;
pub mod processes;
pub mod serve;
pub mod show;
pub mod sync;
pub mod train;
