//! sprout's own checkpoint/restore: memory images of initialized processes.
//!
//! A process is checkpointed after its initialization (a function's language
//! runtime waiting for its first request) into an **image**, and restored from
//! it into fresh sandboxes, any number of times, concurrently. The crate holds:
//! - [`dump`]: the checkpoint of a running container's process (freeze, seize
//!   and interrupt every thread, read memory with `process_vm_readv` and
//!   state from `/proc` and injected syscalls), with the readers of `/proc`
//!   in [`proc`] and of file descriptors in [`fds`];
//! - [`image`]: the on-disk format, with its writer, its reader, its
//!   validation and an offline [`image::verify`];
//! - [`restore`]: the rebuild of an image inside a sandbox the `runtime`
//!   crate prepares, driven from outside by ptrace from an exec'd static
//!   stub; the sandbox (user, capabilities, seccomp, rlimits) comes from the
//!   bundle, the process (memory, threads, fds, signal state) from the image;
//! - [`template`]: an image restored once into a holder and forked
//!   copy-on-write into new sandboxes, with [`profile`]: the pages a
//!   function's first request writes, copied for later forks up front;
//! - [`ptrace`]: the tracer thread, register and xstate access and the batch
//!   gadget that runs injected syscalls, shared by all of the above.
//!
//! An image is untrusted input: operators copy images between nodes and
//! containerd imports them. Everything in [`image`] treats it so: sizes and
//! counts are bounded ([`image::limits`]), every offset is checked, the
//! manifest is checksummed and validated before anything uses it, the pages
//! are checked chunk by chunk, and every path is resolved inside the
//! container's rootfs with `openat2(RESOLVE_IN_ROOT)`.

#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod dump;
pub mod fds;
pub mod image;
pub mod proc;
pub mod profile;
pub mod ptrace;
pub mod restore;
mod sandbox;
pub mod template;
