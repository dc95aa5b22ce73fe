//! sprout's memory images.
//!
//! A process is checkpointed after its initialization (a function's language
//! runtime waiting for its first request) into an **image**, and restored from
//! it into fresh sandboxes. This crate will hold the dump (ptrace, `/proc`,
//! `process_vm_readv`), the restore (a ptrace-driven rebuild from an exec'd
//! stub) and templates with fork; today it holds the part both sides share:
//! the on-disk image format in [`image`], with its writer, its reader, its
//! validation and an offline [`image::verify`].
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
pub mod ptrace;
pub mod restore;
pub mod template;
