//! sprout's node side. `sproutd`, the node daemon: a registry of
//! functions, their templates (through an [`engine::Engine`]), the
//! instances forked from them, and a stream of instance events, served as
//! HTTP/JSON on a unix socket plus a side channel that passes fds
//! (`API.md` documents both). [`containerd`] is the containerd shim v2
//! (`containerd-shim-sprout-v2`).
//!
//! The daemon's logic is [`daemon::Daemon`]; [`server`] puts it on its
//! sockets; [`client`] is a blocking client for the CLI and tests.

pub mod client;
pub mod containerd;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod events;
pub mod fake;
pub mod http;
pub mod metrics;
pub mod network;
pub mod pidfd;
pub mod proto;
pub mod registry;
pub mod server;
pub mod sfork;
pub mod side;
