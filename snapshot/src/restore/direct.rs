//! A restore into a sandbox made without the init helper
//! (`sprout_runtime::direct`): what the helper would do one step after
//! another runs side by side here.
//!
//! - a thread opens and checks the image (and starts reading its working
//!   set) while the container's id and cgroup are taken
//!   (`Runtime::adopt`);
//! - a second thread builds the rootfs as a mount namespace while the
//!   sandbox's first process is cloned into its namespaces and cgroup and
//!   the tracer seizes it at its gate;
//! - with the image's `RLIMIT_STACK` set, the gate opens: the process
//!   execs the stub; the tracer moves it into the rootfs (the namespace
//!   comes over a socketpair), then rebuilds it as for any restore.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use sprout_runtime::direct::{self, DirectRequest};
use sprout_runtime::rootfs::RootfsConfig;
use sprout_runtime::rootfs::detached::{self, DeferredMount};
use sprout_runtime::spec::Bundle;
use sprout_runtime::timing::Stages;
use sprout_runtime::{Adoption, Runtime};

use super::{
    EnterRootfs, RebuildJob, RestoreError, RestoreOptions, Restored, SandboxSpec,
    bundle_stack_hard, check_pid, check_privileges, exec_stack_limit, open_image, stub,
};
use crate::ptrace::{Options, Tracer};
use crate::sandbox::RootfsPlan;

/// Restores `image_dir` as container `id` in a sandbox made without the
/// init helper. The bundle must not need it
/// (`sprout_runtime::direct::helper_needed`), nor `opts` a console.
pub(super) fn restore(
    rt: &Runtime,
    tracer: &Tracer,
    id: &str,
    bundle: Bundle,
    image_dir: &Path,
    mut opts: RestoreOptions,
) -> Result<Restored, RestoreError> {
    let mut stages = Stages::new();
    let bundle_hard = bundle_stack_hard(&bundle);
    let sandbox = SandboxSpec::of(&bundle.spec)?;
    let opening = {
        let dir = image_dir.to_path_buf();
        let memory = std::mem::take(&mut opts.memory);
        std::thread::Builder::new()
            .name("sprout-image".into())
            .spawn(move || open_image(&dir, memory))
            .map_err(|source| RestoreError::Io {
                what: "starting the image's reader thread",
                source,
            })?
    };
    let opened = || {
        opening.join().unwrap_or_else(|_| {
            Err(RestoreError::Io {
                what: "opening the image",
                source: std::io::Error::other("the image's reader thread panicked"),
            })
        })
    };
    let mut adoption = match rt.adopt(id, bundle) {
        Ok(a) => a,
        Err(e) => {
            // Its reader may hold the working set's pages: let it end.
            let _ = opened();
            return Err(e.into());
        }
    };
    let mut cfg = RootfsConfig::for_bundle(adoption.bundle(), false);
    cfg.cgroup_dirs = Some(adoption.cgroup().dirs());
    let netns = match direct::network_namespace(adoption.bundle()) {
        Ok(n) => n,
        Err(e) => {
            let _ = opened();
            return Err(e.into());
        }
    };
    stages.mark("prepare sandbox");

    let made = std::thread::scope(|scope| {
        let (rootfs_ours, rootfs_theirs) =
            UnixStream::pair().map_err(|source| RestoreError::Io {
                what: "making the rootfs socketpair",
                source,
            })?;
        let rootfs_error = |source| RestoreError::Rootfs {
            bundle: adoption.bundle().dir.clone(),
            source,
        };
        let builder = detached::spawn_build(scope, &cfg, Some(netns.as_fd()), {
            move |built| -> Result<Vec<DeferredMount>, RestoreError> {
                let rootfs = built.map_err(rootfs_error)?;
                crate::sandbox::send_fds(&rootfs_ours, &[rootfs.mnt_ns.as_fd()])?;
                Ok(rootfs.deferred)
            }
        });
        let joined = || {
            builder
                .join()
                .unwrap_or_else(|_| Err(rootfs_error(detached::builder_panicked())))
        };
        let started = start_stub(
            tracer,
            &adoption,
            &netns,
            rootfs_theirs.into(),
            &mut opts,
            bundle_hard,
            opened,
            &mut stages,
        );
        // The builder always ends; a failed start leaves its namespace
        // to go with the socket.
        let built = joined();
        let (pid, socket, image, memory, prepared) = started?;
        let deferred = match built {
            Ok(d) => d,
            Err(e) => {
                tracer.kill(pid);
                reap(pid);
                return Err(e);
            }
        };
        stages.mark("rootfs wait");
        Ok((pid, socket, image, memory, prepared, deferred))
    });
    let (pid, socket, image, memory, prepared, deferred) = made?;
    let mut plan = RootfsPlan::new(adoption.bundle(), &cfg, &image.manifest().process.cwd);
    plan.deferred = deferred;
    let job = RebuildJob {
        pid,
        image: Arc::new(image),
        sandbox,
        loading: memory,
        prepared,
        rootfs: Some(EnterRootfs { socket, plan }),
    };
    let rebuilt = match job.run(tracer, &mut stages) {
        Ok(r) => r,
        Err(e) => {
            reap(pid);
            return Err(e);
        }
    };
    let (pages_bytes, memory, loader) = rebuilt;
    let container = match adoption.finish(pid) {
        Ok(c) => c,
        Err(e) => {
            // The loader (if any) ends with the process.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            reap(pid);
            if let Some(l) = loader {
                let _ = l.wait();
            }
            return Err(e.into());
        }
    };
    if let Some(p) = &opts.pid_file
        && let Err(e) = sprout_runtime::container::write_pid_file(p, pid)
    {
        let _ = container.delete(true);
        if let Some(l) = loader {
            let _ = l.wait();
        }
        return Err(e.into());
    }
    Ok(Restored::new(
        container,
        &stages,
        (pages_bytes, memory, loader),
    ))
}

/// The sandbox's first process, seized at its gate, then exec'ing the
/// stub once the image (read meanwhile by `opened`) gives its
/// `RLIMIT_STACK`. Returns its pid, the number of its end of the rootfs
/// socketpair and the opened image.
#[allow(clippy::too_many_arguments)]
fn start_stub(
    tracer: &Tracer,
    adoption: &Adoption,
    netns: &OwnedFd,
    rootfs_socket: OwnedFd,
    opts: &mut RestoreOptions,
    bundle_hard: Option<u64>,
    opened: impl FnOnce() -> Result<
        (
            crate::image::Image,
            super::MemoryLoading,
            super::lazy::Prepared,
        ),
        RestoreError,
    >,
    stages: &mut Stages,
) -> Result<
    (
        i32,
        i32,
        crate::image::Image,
        super::MemoryLoading,
        super::lazy::Prepared,
    ),
    RestoreError,
> {
    let spawned = stub::memfd()
        .map_err(|source| RestoreError::Io {
            what: "creating the restore stub",
            source,
        })
        .and_then(|program| {
            direct::spawn(
                adoption,
                DirectRequest {
                    program,
                    netns: netns.as_fd(),
                    stdio: std::mem::take(&mut opts.stdio),
                    pass: vec![rootfs_socket],
                    new_keyring: !opts.no_new_keyring,
                },
            )
            .map_err(RestoreError::from)
        });
    let init = match spawned {
        Ok(i) => i,
        Err(e) => {
            let _ = opened();
            return Err(e);
        }
    };
    let pid = init.pid();
    let socket = init.passed()[0];
    stages.mark("clone");
    let seized = tracer.run(move |ctx| {
        ctx.seize(
            pid,
            Options::EXITKILL | Options::TRACEEXEC | Options::TRACECLONE,
        )
    });
    let traced = seized.is_ok();
    let started = (|| {
        let (image, memory, prepared) = opened()?;
        seized?;
        check_pid(&adoption.bundle().spec, image.manifest())?;
        check_privileges(&adoption.bundle().spec, image.manifest())?;
        stages.mark("open image");
        let rlimit_stack = exec_stack_limit(image.manifest(), bundle_hard);
        init.open(adoption.bundle(), rlimit_stack)?;
        Ok((pid, socket, image, memory, prepared))
    })();
    if started.is_err() && traced {
        // Its tracer kills and reaps it, and forgets it.
        tracer.kill(pid);
    }
    started
}

/// Collects the exit of our child `pid`, killed by now.
fn reap(pid: i32) {
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
}
