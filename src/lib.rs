//! sprout: the embedding facade. A platform writes `sprout::runtime::...`
//! to run containers and `sprout::snapshot::...` to checkpoint and restore
//! them.
pub use sprout_netplug as netplug;
pub use sprout_pool as pool;
pub use sprout_runtime as runtime;
pub use sprout_shim as shim;
pub use sprout_snapshot as snapshot;
