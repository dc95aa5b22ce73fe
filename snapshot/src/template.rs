//! Templates and fork: instances that share a restored process's memory
//! copy-on-write (Catalyzer's "sfork").
//!
//! [`Template::load`] restores an image once into a **holder** sandbox: the
//! holder's init forks the restore stub and stays as its pid namespace's
//! reaper, so the template is never a namespace init. The restore stops
//! early: memory, mm map, signal handlers — no threads, no fds but a control
//! socket, no credentials, no seccomp — and the template waits, stopped
//! under ptrace, with the batch gadget in place.
//!
//! [`Template::fork`] makes an instance: the instance's fds (network
//! namespace, stdio, cgroup) are passed in over the control socket, a
//! `clone3` injected into the template creates the child with new pid,
//! uts and ipc namespaces, `CLONE_PARENT` (its parent is the holder's
//! reaper, which collects its exit status; the template can go while it
//! lives) and `CLONE_INTO_CGROUP`. In the child: it moves itself into its
//! v1 cgroups, joins the network namespace, takes its hostname and
//! populates its write set; meanwhile the instance's rootfs is built as a
//! mount namespace on another thread, which the child then takes from a
//! socketpair passed in with the other fds, joins and completes with
//! fresh proc/mqueue/cgroup mounts, the masked and read-only paths and its
//! stdio; then, as after a restore, every fd is
//! re-created (fork shares open file descriptions), the other threads are
//! made from the saved registers, timers and pending signals come back,
//! and the instance's credentials, no_new_privs and seccomp are applied
//! last. Memory is never copied: the child shares the template's pages.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources};
use sprout_runtime::container::wait_pidfd;
use sprout_runtime::rootfs::RootfsConfig;
use sprout_runtime::rootfs::detached::{self, DeferredMount};
use sprout_runtime::spawn::pidfd_open;
use sprout_runtime::spec::{Bundle, load_bundle};
use sprout_runtime::timing::Stages;
use sprout_runtime::{Adoption, Container, CreateOptions, Runtime, Takeover};

use crate::image::{Backing, Image, VmFlag};
use crate::profile::{Populated, WritableLayout, WriteSet};
use crate::ptrace::{Entry, Gadget, Options, Stop, Tid, TraceCtx, Tracer};
use crate::restore::{self, RestoreError, SandboxSpec};
use crate::sandbox::{self, RootfsPlan, enter_rootfs, receive_fds, send_fds};

/// The template's end of its control socket (fd 3 in the template).
const CONTROL_FD: i32 = 3;

/// Why a template could not be loaded or an instance forked.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Restoring the image (or an instance's last steps) failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The sandbox of the holder or an instance could not be made.
    #[error(transparent)]
    Runtime(#[from] sprout_runtime::Error),
    /// The image maps shared memory, which fork would share between
    /// instances.
    #[error(
        "image {image}: the process maps shared memory at {start:#x} ({what}); fork would share it between instances, so it cannot be a template"
    )]
    SharedMemory {
        /// The image.
        image: PathBuf,
        /// The mapping.
        start: u64,
        /// What it is.
        what: String,
    },
    /// The process kept memory from fork (`MADV_DONTFORK`): instances
    /// would not have it.
    #[error(
        "image {image}: the process marked memory at {start:#x} MADV_DONTFORK; instances forked from it would lack it, so it cannot be a template"
    )]
    DontFork {
        /// The image.
        image: PathBuf,
        /// The mapping.
        start: u64,
    },
    /// The bundle does not ask for what a template or instance needs.
    #[error("bundle {bundle}: {reason}")]
    Bundle {
        /// The bundle.
        bundle: PathBuf,
        /// What is missing or unsupported.
        reason: String,
    },
    /// A syscall of the forker failed.
    #[error("{what}: {source}")]
    Io {
        /// What for.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The instance's rootfs could not be built.
    #[error("bundle {bundle}: building the instance's rootfs: {source}")]
    Rootfs {
        /// The bundle.
        bundle: PathBuf,
        /// Why.
        #[source]
        source: sprout_runtime::rootfs::RootfsError,
    },
    /// The template process is gone.
    #[error("the template of {0:?} is gone")]
    Gone(String),
}

impl From<crate::ptrace::PtraceError> for TemplateError {
    fn from(e: crate::ptrace::PtraceError) -> Self {
        TemplateError::Restore(e.into())
    }
}

impl From<crate::ptrace::GadgetError> for TemplateError {
    fn from(e: crate::ptrace::GadgetError) -> Self {
        TemplateError::Restore(e.into())
    }
}

/// What a fork is asked for.
#[derive(Debug, Default)]
pub struct ForkSpec {
    /// The instance's bundle: its config decides namespaces, cgroup and
    /// limits, mounts, user, capabilities, seccomp. `None`: the template's.
    /// Its rootfs may be another than the template's, but every file the
    /// template maps must hold the same content there (checked).
    pub bundle: Option<PathBuf>,
    /// stdin, stdout, stderr; `None` is /dev/null.
    pub stdio: [Option<OwnedFd>; 3],
    /// The network namespace to join (e.g. from netplug's pool); `None`
    /// joins the one the bundle names by `path`, else makes a fresh one
    /// with `lo` up.
    pub netns: Option<OwnedFd>,
    /// Sent to the instance once it runs, so a function can re-seed what
    /// it cached at init (PRNG seeds, ids): every instance starts from the
    /// template's memory.
    pub after_fork_signal: Option<i32>,
    /// Replaces the bundle's `linux.cgroupsPath`: instances that share a
    /// bundle need one each.
    pub cgroups_path: Option<PathBuf>,
    /// Replaces the bundle's `linux.resources`.
    pub resources: Option<LinuxResources>,
    /// Added to the bundle's annotations in the instance's state.
    pub annotations: HashMap<String, String>,
    /// The function's recorded write set ([`WriteSet::record`]): its pages
    /// are copied for the instance before it runs, in one batch, so its
    /// first request does not fault on them one by one. This moves the
    /// copy-on-write work into the fork rather than removing it (a page
    /// costs the fork about what its fault would cost the request): worth
    /// it where the fork is off the request's path, as for pre-warmed
    /// instances. Pages outside the template's private writable memory are
    /// skipped and a range the kernel refuses is left to fault as usual: a
    /// wrong profile costs memory, never correctness.
    pub populate: Option<Arc<WriteSet>>,
}

/// A forked instance.
#[derive(Debug)]
pub struct Forked {
    /// The instance, a running container of the runtime it was forked in.
    pub container: Container,
    /// A pidfd of the instance, opened while it was still stopped under
    /// ptrace (so it names the instance even if it exits at once and its
    /// pid is reused).
    pub pidfd: OwnedFd,
    /// How long each step took.
    pub timings: Timings,
    /// What [`ForkSpec::populate`] did (all zero without a profile).
    pub populated: Populated,
}

/// Stage timings of a load (open image, prepare holder, the restore's
/// memory stages) or a fork (prepare: bundle, cgroup, netns; fds in,
/// clone, sandbox, populate (with a profile), threads, fds, timers and
/// signals, credentials, resume, record).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// (stage, time) in order.
    pub stages: Vec<(&'static str, Duration)>,
}

impl Timings {
    /// Total time.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|(_, d)| *d).sum()
    }
}

struct Held {
    pid: Tid,
    /// Readable once the template has exited (killed from outside): it
    /// stays a zombie, unreaped, until its tracer collects it.
    pidfd: OwnedFd,
    gadget: Gadget,
}

/// A function's restored, stopped process, ready to fork instances.
pub struct Template {
    name: String,
    tracer: Tracer,
    holder: Container,
    bundle: Bundle,
    image: Arc<Image>,
    /// Where a write set may be populated (from the image).
    writable: Arc<WritableLayout>,
    held: Arc<Mutex<Option<Held>>>,
    control: UnixStream,
    /// Held from passing an instance's fds to the template until the
    /// template received them: concurrent forks must not take each
    /// other's.
    handover: Mutex<()>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Template")
            .field("name", &self.name)
            .field("holder", &self.holder.id())
            .finish()
    }
}

/// Refuses images whose memory fork would share between instances, or
/// not copy into them at all.
fn check_forkable(image: &Image, dir: &Path) -> Result<(), TemplateError> {
    for v in &image.manifest().vmas {
        if v.flags.contains(&VmFlag::DontCopy) {
            return Err(TemplateError::DontFork {
                image: dir.to_path_buf(),
                start: v.start,
            });
        }
        let shared_mem = matches!(v.backing, Backing::SharedMemory { .. });
        if shared_mem || (v.shared && v.prot.write) {
            return Err(TemplateError::SharedMemory {
                image: dir.to_path_buf(),
                start: v.start,
                what: if shared_mem {
                    "MAP_SHARED anonymous memory, shmem or memfd".into()
                } else {
                    "a writable MAP_SHARED file mapping".into()
                },
            });
        }
    }
    Ok(())
}

fn has_new(bundle: &Bundle, t: LinuxNamespaceType) -> bool {
    bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .any(|n| n.typ() == t && n.path().is_none())
}

/// The path of the namespace of type `t` the bundle joins, if it names one.
fn joined_path(bundle: &Bundle, t: LinuxNamespaceType) -> Option<PathBuf> {
    bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| ns.iter().find(|n| n.typ() == t))
        .and_then(|n| n.path().clone())
}

fn set_cgroups_path(bundle: &mut Bundle, path: &Path) {
    let mut linux = bundle.spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(path.to_path_buf()));
    bundle.spec.set_linux(Some(linux));
}

/// A fresh network namespace with `lo` up, for an instance that names
/// none.
pub fn fresh_netns() -> std::io::Result<OwnedFd> {
    sprout_runtime::namespaces::new_network_namespace(true)
}

fn dev_null() -> Result<OwnedFd, TemplateError> {
    Ok(std::fs::File::open("/dev/null")
        .map_err(|source| TemplateError::Io {
            what: "opening /dev/null",
            source,
        })?
        .into())
}

impl Template {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder container (its init is the reaper of the template's and
    /// every instance's pid namespace tree).
    pub fn holder(&self) -> &Container {
        &self.holder
    }

    /// The template process (host pid), while it exists.
    pub fn pid(&self) -> Option<Tid> {
        self.held.lock().ok()?.as_ref().map(|h| h.pid)
    }

    /// Restores `image_dir` once into a template held in a new sandbox of
    /// `bundle` (which must ask for a new pid namespace). The holder is
    /// container `holder_id` in `rt`, in cgroup `holder_cgroups_path` when
    /// given (else the bundle's `cgroupsPath`, else its id).
    ///
    /// The holder's init is the reaper of the template and of every
    /// instance: it must outlive them. Deleting the holder kills every
    /// instance forked from the template (they live in pid namespaces
    /// nested in the holder's).
    pub fn load(
        rt: &Runtime,
        tracer: &Tracer,
        name: &str,
        holder_id: &str,
        image_dir: &Path,
        bundle_dir: &Path,
        holder_cgroups_path: Option<&Path>,
    ) -> Result<(Template, Timings), TemplateError> {
        let mut stages = Stages::new();
        let image = Image::open(image_dir).map_err(RestoreError::from)?;
        image
            .check_host(&crate::image::Host::current().map_err(RestoreError::from)?)
            .map_err(RestoreError::from)?;
        check_forkable(&image, image_dir)?;
        let image = Arc::new(image);
        let bundle = load_bundle(bundle_dir).map_err(sprout_runtime::Error::from)?;
        let mut holder_bundle = bundle.clone();
        if let Some(p) = holder_cgroups_path {
            set_cgroups_path(&mut holder_bundle, p);
        }
        if !has_new(&bundle, LinuxNamespaceType::Pid) {
            return Err(TemplateError::Bundle {
                bundle: bundle_dir.to_path_buf(),
                reason: "a template needs a new pid namespace".into(),
            });
        }
        // Each instance is pid 1 of a new pid namespace, its threads at
        // their dumped tids: the image's process must have been pid 1.
        restore::check_pid(&bundle.spec, image.manifest())?;
        restore::check_privileges(&bundle.spec, image.manifest())?;
        stages.mark("open image");
        let (ours, theirs) = UnixStream::pair().map_err(|source| TemplateError::Io {
            what: "control socketpair",
            source,
        })?;
        // The holder gets the bundle's limits first; the stub's stack limit
        // must fit under its hard limit (no CAP_SYS_RESOURCE to raise it).
        let rlimit_stack =
            restore::exec_stack_limit(image.manifest(), restore::bundle_stack_hard(&bundle));
        let holder = rt.create_from_bundle(
            holder_id,
            holder_bundle,
            CreateOptions {
                stdio: [Some(dev_null()?), Some(dev_null()?), Some(dev_null()?)],
                takeover: Some(Takeover {
                    exe: restore::stub::memfd().map_err(|source| TemplateError::Io {
                        what: "creating the restore stub",
                        source,
                    })?,
                    rlimit_stack,
                    inherit: vec![theirs.into()],
                    holder: true,
                }),
                ..Default::default()
            },
        )?;
        stages.mark("prepare holder");
        let init = holder
            .pid()
            .ok_or_else(|| TemplateError::Gone(name.to_string()))?;
        let result = (|| -> Result<Held, TemplateError> {
            tracer.run(move |ctx| {
                ctx.seize(
                    init,
                    Options::TRACEFORK | Options::TRACECLONE | Options::TRACEEXEC,
                )
            })?;
            // `release` returns once the init's program is exec'd, which
            // happens in the forked child only after the tracer lets it go
            // on: release on a thread of its own while the tracer follows.
            let mut releasing = holder.clone();
            let releaser = std::thread::spawn(move || releasing.release());
            let img = image.clone();
            let fs_user = restore::fs_user_of(&bundle.spec.process().clone().unwrap_or_default());
            let traced = tracer.run(move |ctx| -> Result<_, TemplateError> {
                let mut inner = Stages::new();
                let pid = catch_template(ctx, init)?;
                let r = pidfd_open(pid)
                    .map_err(|source| TemplateError::Io {
                        what: "opening a pidfd of the template",
                        source,
                    })
                    .and_then(|pidfd| {
                        let (gadget, _) = restore::rebuild_memory(
                            ctx,
                            pid,
                            &img,
                            None,
                            fs_user.as_ref(),
                            &mut inner,
                        )?;
                        Ok(Held { pid, pidfd, gadget })
                    });
                match r {
                    Ok(held) => Ok((held, inner.stages().to_vec())),
                    Err(e) => {
                        let _ = ctx.kill(pid);
                        Err(e)
                    }
                }
            });
            if traced.is_err() {
                // The release waits for an exec that will not come.
                let _ = holder.kill(libc::SIGKILL, true);
            }
            let released = releaser.join().map_err(|_| TemplateError::Io {
                what: "starting the holder",
                source: std::io::Error::other("the release thread panicked"),
            });
            let (held, inner) = traced?;
            released??;
            stages.append(&inner);
            Ok(held)
        })();
        let held = match result {
            Ok(h) => h,
            Err(e) => {
                let _ = holder.clone().delete(true);
                return Err(e);
            }
        };
        Ok((
            Template {
                name: name.to_string(),
                tracer: tracer.clone(),
                holder,
                bundle,
                writable: Arc::new(WritableLayout::from_vmas(&image.manifest().vmas)),
                image,
                held: Arc::new(Mutex::new(Some(held))),
                control: ours,
                handover: Mutex::new(()),
            },
            Timings {
                stages: stages.stages().to_vec(),
            },
        ))
    }

    /// Whether the template process still exists: not dropped, and not
    /// killed from outside (a dead template stays an unreaped zombie
    /// until [`Template::drop_template`] collects it). Cheap: no ptrace,
    /// no waiting.
    pub fn is_alive(&self) -> bool {
        let held = match self.held.try_lock() {
            Ok(h) => h,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // A fork is using it right now; if it has died, that fork
            // finds out (TemplateError::Gone). Never wait here: sproutd
            // asks on its async path.
            Err(std::sync::TryLockError::WouldBlock) => return true,
        };
        let Some(h) = held.as_ref() else {
            return false;
        };
        !wait_pidfd(&h.pidfd, Some(Duration::ZERO)).unwrap_or(false)
    }

    /// Forks an instance as container `id` of `rt`.
    pub fn fork(&self, rt: &Runtime, id: &str, spec: ForkSpec) -> Result<Forked, TemplateError> {
        if !self.is_alive() {
            return Err(TemplateError::Gone(self.name.clone()));
        }
        let mut stages = Stages::new();
        let mut bundle = match &spec.bundle {
            Some(b) => load_bundle(b).map_err(sprout_runtime::Error::from)?,
            None => self.bundle.clone(),
        };
        for t in [LinuxNamespaceType::User, LinuxNamespaceType::Time] {
            if has_new(&bundle, t) {
                return Err(TemplateError::Bundle {
                    bundle: bundle.dir.clone(),
                    reason: format!("a {t} namespace is not supported for instances"),
                });
            }
        }
        if bundle.spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) {
            return Err(TemplateError::Bundle {
                bundle: bundle.dir.clone(),
                reason: "process.terminal is not supported for forked instances: pass stdio".into(),
            });
        }
        if let Some(p) = &spec.cgroups_path {
            set_cgroups_path(&mut bundle, p);
        }
        if let Some(r) = &spec.resources {
            let mut linux = bundle.spec.linux().clone().unwrap_or_default();
            linux.set_resources(Some(r.clone()));
            bundle.spec.set_linux(Some(linux));
        }
        if !spec.annotations.is_empty() {
            let mut a = bundle.spec.annotations().clone().unwrap_or_default();
            a.extend(spec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
            bundle.spec.set_annotations(Some(a));
        }
        // An instance is a clone of the template and keeps its LSM labels
        // (applied at the restore stub's exec, which a fork never makes):
        // a bundle asking for other ones is refused, not run under the
        // template's.
        let labels = |b: &Bundle| {
            b.spec.process().as_ref().map(|p| {
                (
                    p.apparmor_profile().clone().filter(|l| !l.is_empty()),
                    p.selinux_label().clone().filter(|l| !l.is_empty()),
                )
            })
        };
        if labels(&bundle).unwrap_or_default() != labels(&self.bundle).unwrap_or_default() {
            return Err(TemplateError::Bundle {
                bundle: bundle.dir.clone(),
                reason: "process.apparmorProfile or process.selinuxLabel differs from the \
                         template's, which a forked instance keeps"
                    .into(),
            });
        }
        // The instance's bundle may give less than the template's.
        crate::restore::check_privileges(&bundle.spec, self.image.manifest())?;
        let mut adoption = rt.adopt(id, bundle)?;
        let (child, pidfd, populated) = self.fork_into(&adoption, spec, &mut stages)?;
        let container = match adoption.finish(child) {
            Ok(c) => c,
            Err(e) => {
                // Dead before the adoption drops: its cgroup must be empty
                // to be removed. (Its parent, the holder's reaper, reaps it.)
                let _ = sprout_runtime::container::pidfd_kill(&pidfd, libc::SIGKILL);
                let _ = sprout_runtime::container::wait_pidfd(&pidfd, Some(Duration::from_secs(5)));
                drop(adoption);
                return Err(e.into());
            }
        };
        stages.mark("record");
        Ok(Forked {
            container,
            pidfd,
            timings: Timings {
                stages: stages.stages().to_vec(),
            },
            populated,
        })
    }

    /// The template's private writable memory, as every instance inherits
    /// it.
    pub(crate) fn writable_layout(&self) -> &WritableLayout {
        &self.writable
    }

    /// Forks the instance into `adoption`'s cgroup; returns its host pid,
    /// a pidfd of it and what populating its write set did.
    fn fork_into(
        &self,
        adoption: &Adoption,
        spec: ForkSpec,
        stages: &mut Stages,
    ) -> Result<(Tid, OwnedFd, Populated), TemplateError> {
        let bundle = adoption.bundle();
        let cgroup = adoption.cgroup();
        // The fd handed over (a pooled namespace), else the one the bundle
        // names by path (as runc would join it), else a fresh one.
        let netns = match (spec.netns, joined_path(bundle, LinuxNamespaceType::Network)) {
            (Some(n), _) => n,
            (None, Some(path)) => {
                std::fs::File::open(&path)
                    .map(OwnedFd::from)
                    .map_err(|source| TemplateError::Bundle {
                        bundle: bundle.dir.clone(),
                        reason: format!("network namespace {}: {source}", path.display()),
                    })?
            }
            (None, None) => fresh_netns().map_err(|source| TemplateError::Io {
                what: "making a network namespace",
                source,
            })?,
        };
        let mut rootfs_cfg = RootfsConfig::for_bundle(bundle, false);
        rootfs_cfg.cgroup_dirs = Some(cgroup.dirs());
        // The rootfs (a mount namespace) is built on a thread of its own
        // while the template clones the child and the child joins its
        // cgroups and namespaces and populates its write set; it reaches
        // the child through this socketpair, whose other end goes in with
        // the instance's other fds.
        let (rootfs_ours, rootfs_theirs) =
            UnixStream::pair().map_err(|source| TemplateError::Io {
                what: "making the rootfs socketpair",
                source,
            })?;
        let [a, b, c] = spec.stdio;
        let stdio = [
            a.map_or_else(dev_null, Ok)?,
            b.map_or_else(dev_null, Ok)?,
            c.map_or_else(dev_null, Ok)?,
        ];
        let unified = cgroup
            .try_unified_dir_fd()
            .map_err(|e| sprout_runtime::Error::Cgroup {
                id: adoption.id().to_string(),
                source: e,
            })?;
        let tasks = cgroup
            .open_v1_task_files()
            .map_err(|e| sprout_runtime::Error::Cgroup {
                id: adoption.id().to_string(),
                source: e,
            })?;
        let plan = ChildPlan::new(bundle, &rootfs_cfg, &self.image)?;
        let sandbox = SandboxSpec::of(&bundle.spec)?;

        let passed = Passed {
            has_unified: unified.is_some(),
            tasks: tasks.len(),
        };
        let mut fds: Vec<OwnedFd> = vec![rootfs_theirs.into()];
        fds.extend(stdio);
        fds.extend(unified);
        fds.extend(tasks);
        stages.mark("prepare");
        let handover = self.handover.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent: Vec<_> = vec![netns.as_fd()];
        sent.extend(fds.iter().map(|f| f.as_fd()));
        send_fds(&self.control, &sent)?;
        drop(sent);
        drop(fds);

        let held = self.held.clone();
        let name = self.name.clone();
        let writable = self.writable.clone();
        let profile = spec.populate;
        let bundle_dir = bundle.dir.clone();
        let (cloned, built) = std::thread::scope(|scope| {
            let builder = detached::spawn_build(scope, &rootfs_cfg, Some(netns.as_fd()), {
                let bundle_dir = bundle_dir.clone();
                move |built| -> Result<Vec<DeferredMount>, TemplateError> {
                    let rootfs = built.map_err(|source| TemplateError::Rootfs {
                        bundle: bundle_dir,
                        source,
                    })?;
                    send_fds(&rootfs_ours, &[rootfs.mnt_ns.as_fd()])?;
                    Ok(rootfs.deferred)
                }
            });
            // First half, on the tracer while the rootfs is built: the
            // clone, its cgroups and namespaces, the write set.
            let cloned = self
                .tracer
                .run(move |ctx| -> Result<Cloned, TemplateError> {
                    let mut inner = Stages::new();
                    let mut guard = held.lock().unwrap_or_else(|e| e.into_inner());
                    let h = guard.as_mut().ok_or(TemplateError::Gone(name))?;
                    let got = receive_fds(ctx, &mut h.gadget, h.pid, CONTROL_FD, passed.count())?;
                    let received = Received(got);
                    inner.mark("fds in");
                    let cloned = clone_instance(ctx, h, &plan, received.unified(&passed));
                    // The template keeps nothing of the instance's.
                    let close: Vec<Entry> = received
                        .0
                        .iter()
                        .map(|&fd| Entry::new(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]))
                        .collect();
                    h.gadget.run(ctx, h.pid, &close)?;
                    let child = cloned?;
                    let pidfd = match pidfd_open(child) {
                        Ok(fd) => fd,
                        Err(source) => {
                            let _ = ctx.kill(child);
                            return Err(TemplateError::Io {
                                what: "opening a pidfd of the instance",
                                source,
                            });
                        }
                    };
                    inner.mark("clone");
                    let mut gadget = h.gadget.for_child(child);
                    let r = (|| -> Result<Populated, TemplateError> {
                        join_namespaces(ctx, child, &mut gadget, &plan, &received, &passed)?;
                        inner.mark("namespaces");
                        // In its memory cgroup by now (v1: moved just above),
                        // so the copies are the instance's charge.
                        let mut populated = Populated::default();
                        if let Some(set) = &profile {
                            populated =
                                crate::profile::populate(ctx, child, &mut gadget, set, &writable)?;
                            inner.mark("populate");
                        }
                        Ok(populated)
                    })();
                    match r {
                        Ok(populated) => Ok(Cloned {
                            child,
                            pidfd,
                            populated,
                            stages: inner.stages().to_vec(),
                            state: ChildState {
                                gadget,
                                received,
                                plan,
                            },
                        }),
                        Err(e) => {
                            let _ = ctx.kill(child);
                            Err(e)
                        }
                    }
                });
            // The template has the fds: the next fork may hand over its own.
            drop(handover);
            // Joined off the tracer, which serves other templates
            // meanwhile, however long a mount takes.
            let built = builder.join().unwrap_or_else(|_| {
                Err(TemplateError::Rootfs {
                    bundle: bundle_dir.clone(),
                    source: detached::builder_panicked(),
                })
            });
            (cloned, built)
        });
        // A failed build explains a child that got no rootfs; a rootfs built
        // for a child that failed otherwise goes with the socketpair.
        let cloned = match (cloned, built) {
            (Ok(mut c), Ok(deferred)) => {
                c.state.plan.rootfs.deferred = deferred;
                c
            }
            (Ok(c), Err(e)) => {
                self.tracer.kill(c.child);
                return Err(e);
            }
            (Err(_), Err(e @ TemplateError::Rootfs { .. })) | (Err(e), _) => return Err(e),
        };
        stages.append(&cloned.stages);
        stages.mark("rootfs wait");
        // The instance's own limits, not the template's it inherited.
        if let Err(e) = sprout_runtime::direct::apply_limits(cloned.child, sandbox.process()) {
            self.tracer.kill(cloned.child);
            return Err(e.into());
        }

        // Second half: the rootfs (already in the socket), the process's
        // own state, the sandbox's credentials, release.
        let image = self.image.clone();
        let child = cloned.child;
        let state = cloned.state;
        let finished = self
            .tracer
            .run(move |ctx| -> Result<Vec<_>, TemplateError> {
                let mut inner = Stages::new();
                let ChildState {
                    mut gadget,
                    received,
                    plan,
                } = state;
                let g = &mut gadget;
                let r = (|| -> Result<(), TemplateError> {
                    let mnt_ns = receive_fds(ctx, g, child, received.rootfs_socket(), 1)?[0];
                    enter_rootfs(
                        ctx,
                        child,
                        g,
                        &plan.rootfs,
                        mnt_ns,
                        received.stdio(),
                        &received.0,
                    )?;
                    g.release_thread(child);
                    restore::check_files(child, image.manifest())?;
                    inner.mark("sandbox");
                    let rules = sandbox.rules();
                    let opts = crate::fds::RestoreOptions {
                        reserved: Vec::new(),
                        close_others: true,
                        fs_user: restore::fs_user_of(rules.process),
                        force_socket_buffers: restore::may_force_socket_buffers(rules.process),
                    };
                    restore::release(ctx, child, g, &image, &rules, &opts, &mut inner)
                        .map_err(TemplateError::from)
                })();
                match r {
                    Ok(()) => Ok(inner.stages().to_vec()),
                    Err(e) => {
                        let _ = ctx.kill(child);
                        Err(e)
                    }
                }
            });
        stages.append(&finished?);
        if let Some(sig) = spec.after_fork_signal {
            let _ = sprout_runtime::container::pidfd_kill(&cloned.pidfd, sig);
        }
        Ok((child, cloned.pidfd, cloned.populated))
    }

    /// Kills the template process. Its instances live on (their parent is
    /// the holder's reaper); the holder container stays until its caller
    /// deletes it, which kills whatever still runs below it.
    pub fn drop_template(&self) -> Result<(), TemplateError> {
        let held = self.held.clone();
        self.tracer.run(move |ctx| {
            if let Some(h) = held.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = ctx.kill(h.pid);
            }
        });
        Ok(())
    }
}

/// Follows the holder's init through its fork to the template child and
/// the child to its exec'd stub, at execve's syscall-exit stop.
fn catch_template(ctx: &mut TraceCtx, init: Tid) -> Result<Tid, TemplateError> {
    let child = loop {
        match ctx.wait(init)? {
            Stop::Clone { new_tid, .. } => break new_tid,
            Stop::Signal(info) => ctx.cont(init, info.signo())?,
            Stop::Exited { code } => {
                return Err(RestoreError::InitExited(format!("exit code {code}")).into());
            }
            Stop::Killed { signal, .. } => {
                return Err(RestoreError::InitExited(format!("killed by signal {signal}")).into());
            }
            _ => ctx.cont(init, 0)?,
        }
    };
    // The init goes on as the reaper, untraced.
    ctx.detach(init, 0)?;
    match ctx.wait(child)? {
        Stop::Interrupt => {}
        other => {
            return Err(RestoreError::Incompatible(format!(
                "the template process stopped with {other:?}"
            ))
            .into());
        }
    }
    // If sproutd dies, its templates die with it; instances do not.
    ctx.set_options(
        child,
        Options(
            Options::TRACECLONE.0
                | Options::TRACEFORK.0
                | Options::TRACEEXEC.0
                | Options::EXITKILL.0,
        ),
    )?;
    ctx.cont(child, 0)?;
    loop {
        match ctx.wait(child)? {
            Stop::Exec { .. } => break,
            Stop::Signal(info) => ctx.cont(child, info.signo())?,
            Stop::Exited { code } => {
                return Err(RestoreError::InitExited(format!("template exit code {code}")).into());
            }
            Stop::Killed { signal, .. } => {
                return Err(RestoreError::InitExited(format!(
                    "template killed by signal {signal}"
                ))
                .into());
            }
            _ => ctx.cont(child, 0)?,
        }
    }
    ctx.cont_syscall(child, 0)?;
    match ctx.wait(child)? {
        Stop::Syscall => Ok(child),
        other => Err(RestoreError::Incompatible(format!(
            "the stub stopped with {other:?} after its exec"
        ))
        .into()),
    }
}

/// The first half of a fork, done: the stopped child and what its second
/// half needs.
struct Cloned {
    child: Tid,
    pidfd: OwnedFd,
    populated: Populated,
    stages: Vec<(&'static str, Duration)>,
    state: ChildState,
}

/// What the second half of a fork runs with.
struct ChildState {
    /// The template's gadget, in the child.
    gadget: Gadget,
    received: Received,
    plan: ChildPlan,
}

/// What was passed to the template, in this order: the network
/// namespace, the child's end of the rootfs socketpair, stdin, stdout,
/// stderr, the cgroup2 directory (if any), the v1 `tasks` files.
#[derive(Clone, Copy)]
struct Passed {
    has_unified: bool,
    tasks: usize,
}

impl Passed {
    fn count(&self) -> usize {
        5 + self.has_unified as usize + self.tasks
    }
}

/// The fd numbers the template got them at (the child has the same).
struct Received(Vec<i32>);

impl Received {
    fn netns(&self) -> i32 {
        self.0[0]
    }
    fn rootfs_socket(&self) -> i32 {
        self.0[1]
    }
    fn stdio(&self) -> &[i32] {
        &self.0[2..5]
    }
    fn unified(&self, p: &Passed) -> Option<i32> {
        p.has_unified.then(|| self.0[5])
    }
    fn tasks(&self, p: &Passed) -> &[i32] {
        &self.0[5 + p.has_unified as usize..]
    }
}

/// The instance's sandbox, as the steps injected into the child need it.
struct ChildPlan {
    clone_flags: u64,
    new_cgroup_ns: bool,
    hostname: Option<String>,
    rootfs: RootfsPlan,
}

impl ChildPlan {
    fn new(bundle: &Bundle, cfg: &RootfsConfig, image: &Image) -> Result<ChildPlan, TemplateError> {
        let mut flags = 0u64;
        for (t, f) in [
            (LinuxNamespaceType::Pid, libc::CLONE_NEWPID),
            (LinuxNamespaceType::Mount, libc::CLONE_NEWNS),
            (LinuxNamespaceType::Uts, libc::CLONE_NEWUTS),
            (LinuxNamespaceType::Ipc, libc::CLONE_NEWIPC),
        ] {
            if has_new(bundle, t) {
                flags |= f as u64;
            }
        }
        if flags & libc::CLONE_NEWPID as u64 == 0 || flags & libc::CLONE_NEWNS as u64 == 0 {
            return Err(TemplateError::Bundle {
                bundle: bundle.dir.clone(),
                reason: "an instance needs new pid and mount namespaces".into(),
            });
        }
        Ok(ChildPlan {
            // Its mount namespace is the rootfs builder's, joined later: a
            // copy of the template's would only have to be torn down.
            clone_flags: flags & !(libc::CLONE_NEWNS as u64),
            new_cgroup_ns: cfg.cgroup_namespace,
            hostname: bundle.spec.hostname().clone().filter(|h| !h.is_empty()),
            rootfs: RootfsPlan::new(bundle, cfg, &image.manifest().process.cwd),
        })
    }
}

/// clone3 in the template: the child, in its new namespaces and cgroup, a
/// child of the holder's reaper. Returns its host tid, stopped.
fn clone_instance(
    ctx: &mut TraceCtx,
    h: &mut Held,
    plan: &ChildPlan,
    cgroup_fd: Option<i32>,
) -> Result<Tid, TemplateError> {
    let mut flags = plan.clone_flags | libc::CLONE_PARENT as u64;
    if cgroup_fd.is_some() {
        flags |= 0x2_0000_0000; // CLONE_INTO_CGROUP
    }
    let mut args = [0u64; 11];
    args[0] = flags;
    // exit_signal 0 with CLONE_PARENT: the child inherits the template's.
    args[10] = cgroup_fd.map_or(0, |f| f as u64);
    let bytes: Vec<u8> = args.iter().flat_map(|w| w.to_le_bytes()).collect();
    let a = h.gadget.data(&bytes)?;
    h.gadget.run(
        ctx,
        h.pid,
        &[Entry::new(libc::SYS_clone3, [a, 88, 0, 0, 0, 0])],
    )?;
    let child = ctx
        .take_events(h.pid)
        .into_iter()
        .find_map(|e| match e {
            Stop::Clone { new_tid, .. } => Some(new_tid),
            _ => None,
        })
        .ok_or_else(|| RestoreError::Incompatible("the injected clone reported no child".into()))?;
    match ctx.wait(child)? {
        Stop::Interrupt => Ok(child),
        other => Err(RestoreError::Incompatible(format!(
            "the new instance stopped with {other:?}"
        ))
        .into()),
    }
}

fn batch_error(what: &'static str) -> impl FnOnce(crate::ptrace::GadgetError) -> TemplateError {
    move |err| sandbox::batch_error(what)(err).into()
}

/// The first part of the instance's sandbox, injected into the stopped
/// child: its cgroups (v1: it moves itself in), network and cgroup
/// namespaces, hostname.
fn join_namespaces(
    ctx: &mut TraceCtx,
    child: Tid,
    g: &mut Gadget,
    plan: &ChildPlan,
    received: &Received,
    passed: &Passed,
) -> Result<(), TemplateError> {
    let mut e = Vec::new();
    let zero = g.data(b"0")?;
    for &t in received.tasks(passed) {
        e.push(Entry::new(libc::SYS_write, [t as u64, zero, 1, 0, 0, 0]));
    }
    e.push(Entry::new(
        libc::SYS_setns,
        [
            received.netns() as u64,
            libc::CLONE_NEWNET as u64,
            0,
            0,
            0,
            0,
        ],
    ));
    if plan.new_cgroup_ns {
        // After the move: the namespace's root is the instance's cgroup.
        e.push(Entry::new(
            libc::SYS_unshare,
            [libc::CLONE_NEWCGROUP as u64, 0, 0, 0, 0, 0],
        ));
    }
    if let Some(h) = &plan.hostname {
        let p = g.data(h.as_bytes())?;
        e.push(Entry::new(
            libc::SYS_sethostname,
            [p, h.len() as u64, 0, 0, 0, 0],
        ));
    }
    g.run(ctx, child, &e)
        .map_err(batch_error("joining the instance's cgroups and namespaces"))?;
    Ok(())
}

/// Reads the exit statuses the holder's reaper recorded: (pid in the
/// holder's pid namespace, status: exit code or 128 + signal).
pub fn holder_exits(holder_state_dir: &Path) -> Vec<(i32, i32)> {
    std::fs::read_to_string(holder_state_dir.join(sprout_runtime::init::EXITS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (p, s) = l.split_once(' ')?;
            Some((p.parse().ok()?, s.parse().ok()?))
        })
        .collect()
}

impl Drop for Template {
    fn drop(&mut self) {
        let _ = self.drop_template();
    }
}
