//! `containerd-shim-sprout-v2`: containerd's runtime shim v2 for sprout
//! (`io.containerd.sprout.v2`).
//!
//! containerd runs the binary three ways ([`actions`]): `start` (find or
//! spawn the shim server for this container's group and print its socket
//! address), `delete` (clean up after a task whose shim is gone; run after
//! every delete, so idempotent), and server mode ([`server`]), which serves
//! the task service ([`service`]) over ttrpc until containerd shuts down
//! its last task.
//!
//! Plain containers run through the `runtime` library in the shim's own
//! process ([`task`], [`process`]); template containers
//! (`io.sprout.function=<name>`) get an instance from sproutd, claimed
//! from its warm pool or forked ([`template`]).
//! Stdio is copied between pipes and
//! containerd's fifos ([`stdio`]) and the snapshotter's rootfs mounted by
//! the shim ([`mounts`]). Events go back to containerd ([`events`]);
//! `Stats` answers in containerd's cgroup metrics format ([`metrics`]).
//!
//! Built on the `containerd-shim` crate's protocol types and event
//! publisher, with our own `main`: the crate's `run()` (0.12) speaks task
//! v3 and answers `start` with JSON, which containerd 1.6 rejects. This
//! shim prints the plain address (accepted by 1.6, 1.7 and 2.x) and
//! registers its service as both `containerd.task.v2.Task` and `…v3.Task`
//! (identical messages).

pub mod actions;
pub mod error;
pub mod events;
pub mod metrics;
pub mod mounts;
pub mod process;
pub mod server;
pub mod service;
pub mod stdio;
pub mod task;
pub mod template;

use std::path::{Path, PathBuf};

/// The runtime name containerd knows the shim by.
pub const RUNTIME_NAME: &str = "io.containerd.sprout.v2";

/// Part of every shim socket's name: a binary speaking another version
/// hashes to another socket, so an upgraded shim never attaches to an old
/// server (and old servers finish their tasks undisturbed).
pub const SHIM_PROTOCOL: &str = "1";

/// Annotations that put containers in one shim, in order of precedence:
/// sprout's own, then CRI's pod (sandbox) id. Without them a container
/// gets a shim of its own.
pub const GROUP_ANNOTATIONS: [&str; 2] = ["io.sprout.group", "io.kubernetes.cri.sandbox-id"];

/// The shim's state directory for containerd's tasks of `namespace`:
/// beside containerd's own task state (bundles are
/// `<state>/io.containerd.runtime.v2.task/<ns>/<id>`), so every containerd
/// daemon has its own and it goes with containerd's state. Other bundle
/// layouts fall back to `/run/sprout-shim/<namespace>`.
pub fn state_root(bundle: &Path, namespace: &str) -> PathBuf {
    let task_dir = bundle.parent().and_then(Path::parent);
    match task_dir {
        Some(t)
            if t.file_name()
                .is_some_and(|n| n == "io.containerd.runtime.v2.task") =>
        {
            t.parent()
                .unwrap_or(Path::new("/"))
                .join("sprout-shim")
                .join(namespace)
        }
        _ => Path::new("/run/sprout-shim").join(namespace),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_root_sits_beside_containerds_task_state() {
        assert_eq!(
            state_root(
                Path::new("/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"),
                "k8s.io"
            ),
            Path::new("/run/containerd/sprout-shim/k8s.io")
        );
        assert_eq!(
            state_root(Path::new("/elsewhere/abc"), "default"),
            Path::new("/run/sprout-shim/default")
        );
    }
}
