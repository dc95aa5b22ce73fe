//! sprout's OCI runtime core.
//!
//! An OCI bundle (runtime-spec 1.x) goes in, a running, isolated process
//! comes out. The public surface is small: [`Runtime`] owns a state root and
//! creates or loads [`Container`]s; everything else (namespaces, rootfs,
//! cgroups, capabilities, seccomp, hooks) is set up by the steps in the
//! modules below, most of them inside the container's init process.

pub mod cgroups;
pub mod channel;
pub mod console;
pub mod container;
pub mod direct;
pub mod error;
pub mod exec;
pub mod hooks;
pub mod init;
pub mod mount_options;
pub mod mountinfo;
pub mod namespaces;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod state;
pub mod syscall;
pub mod timing;

pub use container::{
    Adoption, Container, CreateOptions, OciState, Runtime, RuntimeBuilder, Status, Takeover,
};
pub use error::{Error, Result};
pub use exec::{ExecOptions, ExecProcess};
