//! Tests of the image format: round trip, every refusal, the host probe,
//! rootfs resolution, and random mutations of the manifest parser.

#![deny(clippy::undocumented_unsafe_blocks)]

mod common;
mod host;
mod mutations;
mod refusals;
mod rootfs;
mod roundtrip;
