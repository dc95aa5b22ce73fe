//! sprout: the embedding facade.
pub use sprout_runtime as runtime;
