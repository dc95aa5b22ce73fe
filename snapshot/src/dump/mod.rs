//! Checkpoint: a running container's process into an image.
//!
//! The container's cgroup is frozen so its set of threads stops changing,
//! every thread is seized and interrupted, the cgroup is thawed so the
//! interrupts take effect (a task frozen by the v1 freezer gives no ptrace
//! stop), and then, with every thread in a ptrace stop, the dump reads:
//! the address space (maps, smaps, pagemap, contents with
//! `process_vm_readv`, see [`memory`]), each thread ([`threads`]), the
//! process ([`process`]) and the file descriptors ([`crate::fds`]). State
//! only the process can report is read by syscalls injected into it
//! through its vDSO (`ptrace::TraceCtx::syscall`), with outputs in a
//! scratch page mapped for the dump and unmapped afterwards. Then the
//! process is killed, or with `leave_running` let go exactly as it was.

mod memory;
mod process;
pub(crate) mod threads;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sprout_runtime::Container;
use sprout_runtime::timing::Stages;

use crate::image::{Host, ImageError, ImageWriter, ManifestBody, PagesIndex};
use crate::proc::{self, ProcError};
use crate::ptrace::{self, Options, PtraceError, SeizedThread, Stop, Tid, TraceCtx, Tracer};

/// Why a checkpoint failed. The process is left running in every case but
/// a failure of the final kill.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The container has no live process.
    #[error("container {0:?} is not running")]
    NotRunning(String),
    #[error(
        "pid {pid} is not alone (other processes: {children:?}): sprout checkpoints a single process (with its threads)"
    )]
    /// The process has children; only one process (with threads) is
    /// supported.
    ProcessTree {
        /// The process.
        pid: i32,
        /// Its children, or the other processes of its cgroup.
        children: Vec<i32>,
    },
    /// Something in the process sprout cannot checkpoint, named.
    #[error("{0}")]
    Unsupported(String),
    /// Threads with differing credentials.
    #[error(
        "thread {tid} has other credentials than the main thread: sprout records one set per process"
    )]
    ThreadCredentials {
        /// The thread.
        tid: i32,
    },
    /// A ptrace operation failed.
    #[error("ptrace: {0}")]
    Ptrace(#[from] PtraceError),
    /// Writing the image failed.
    #[error("image: {0}")]
    Image(#[from] ImageError),
    /// Reading /proc failed.
    #[error("{0}")]
    Proc(#[from] ProcError),
    /// Freezing or thawing the cgroup failed.
    #[error("freezing the container: {0}")]
    Cgroup(#[from] sprout_runtime::cgroups::CgroupError),
    /// A syscall of the dumper failed.
    #[error("{what}: {source}")]
    Syscall {
        /// What it was for.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A syscall injected into the process failed.
    #[error("injected {what} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Injected {
        /// Which syscall.
        what: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// A file descriptor cannot be checkpointed.
    #[error("file descriptors: {0}")]
    Fd(#[from] crate::fds::FdError),
}

/// Options of a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// Let the process run on after the dump (default: kill it).
    pub leave_running: bool,
}

/// What a checkpoint did and how long each stage took.
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    /// The image directory.
    pub image: PathBuf,
    /// Threads dumped.
    pub threads: usize,
    /// VMAs recorded.
    pub vmas: usize,
    /// Bytes of page data stored.
    pub pages_bytes: u64,
    /// File descriptors recorded.
    pub fds: usize,
    /// Stage timings: freeze, seize, memory, threads, process, fds, write,
    /// kill or release.
    pub stages: Vec<(&'static str, Duration)>,
}

/// Stage names with their durations.
type StageList = Vec<(&'static str, Duration)>;

/// Fails on a `-errno` result of an injected syscall.
pub(crate) fn check(r: i64, what: &'static str) -> Result<i64, DumpError> {
    if (-4095..0).contains(&r) {
        Err(DumpError::Injected {
            what,
            errno: -r as i32,
        })
    } else {
        Ok(r)
    }
}

/// A page mapped in the dumped process for the outputs of injected
/// syscalls (a `struct sigaction`, a `stack_t`, ...).
pub(crate) struct Scratch {
    pid: Tid,
    addr: u64,
}

impl Scratch {
    fn map(ctx: &mut TraceCtx, tid: Tid, pid: Tid) -> Result<Scratch, DumpError> {
        let r = ctx.syscall(
            tid,
            libc::SYS_mmap,
            [
                0,
                4096,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        Ok(Scratch {
            pid,
            addr: check(r, "mmap of a scratch page")? as u64,
        })
    }

    fn unmap(self, ctx: &mut TraceCtx, tid: Tid) -> Result<(), DumpError> {
        check(
            ctx.syscall(tid, libc::SYS_munmap, [self.addr, 4096, 0, 0, 0, 0])?,
            "munmap of the scratch page",
        )?;
        Ok(())
    }

    pub(crate) fn read(&self, len: usize) -> Result<Vec<u8>, DumpError> {
        Ok(ptrace::mem::read_vec(self.pid, self.addr, len)?)
    }

    pub(crate) fn read_u64(&self, off: usize) -> Result<u64, DumpError> {
        let b = self.read(off + 8)?;
        Ok(u64::from_le_bytes(b[off..off + 8].try_into().unwrap()))
    }
}

/// The tid of host thread `tid` inside its own (innermost) pid namespace.
fn ns_tid(pid: Tid, tid: Tid) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last()?.parse().ok())
        })
        .unwrap_or(tid)
}

/// Checkpoints `container` into `image_dir` (which must not exist or be
/// empty). All ptrace work runs on `tracer`'s thread.
pub fn checkpoint(
    tracer: &Tracer,
    container: &Container,
    image_dir: &Path,
    opts: &CheckpointOptions,
) -> Result<CheckpointReport, DumpError> {
    let mut stages = Stages::new();
    let pid = container
        .pid()
        .ok_or_else(|| DumpError::NotRunning(container.id().to_string()))?;
    let children = proc::children(pid)?;
    if !children.is_empty() {
        return Err(DumpError::ProcessTree { pid, children });
    }
    let host = Host::current()?;
    let writer = ImageWriter::create(image_dir)?;
    let cgroup = container.cgroup();
    // cgroup2's freezer where this host has one (hybrid too): it behaves
    // better with ptrace than the v1 freezer (DESIGN "Snapshot").
    let unified = cgroup.unified_dir().is_some();
    if unified {
        cgroup.freeze_unified(true)?;
    } else {
        cgroup.freeze()?;
    }
    // Frozen, nothing can fork any more: the process must be alone in its
    // cgroup. A process that escaped the children check (forked since, or
    // reparented away) would outlive the dump's kill, and one that shares
    // the memory (CLONE_VM) or writes it (/proc/PID/mem) would run while
    // the dump thaws the cgroup and injects code with seccomp suspended.
    let others: Vec<i32> = match cgroup.procs() {
        Ok(p) => p.into_iter().filter(|&p| p != pid).collect(),
        Err(e) => {
            let _ = unfreeze(&cgroup, unified);
            return Err(e.into());
        }
    };
    if !others.is_empty() {
        let _ = unfreeze(&cgroup, unified);
        return Err(DumpError::ProcessTree {
            pid,
            children: others,
        });
    }
    stages.mark("freeze");
    let leave_running = opts.leave_running;
    let image = image_dir.to_path_buf();
    let result = tracer.run(
        move |ctx| -> Result<(CheckpointReport, StageList), DumpError> {
            let mut inner = Stages::new();
            let thaw = &mut || -> ptrace::Result<()> {
                let r = if unified {
                    cgroup.freeze_unified(false)
                } else {
                    cgroup.thaw()
                };
                r.map_err(|e| PtraceError::Invalid(format!("thawing the container: {e}")))
            };
            let seized = match ctx.seize_all_threads_frozen(
                pid,
                Options::TRACECLONE | Options::SUSPEND_SECCOMP,
                thaw,
            ) {
                Ok(s) => s,
                Err(e) => {
                    let _ = thaw();
                    for t in ctx.tracees() {
                        let _ = ctx.detach(t, 0);
                    }
                    return Err(e.into());
                }
            };
            inner.mark("seize");
            let dumped = dump_stopped(ctx, pid, &seized, writer, host, &image, &mut inner);
            // Signals a thread was stopped with, or that arrived during the
            // injections, go back on release, so a live process loses nothing.
            let release = |ctx: &mut TraceCtx, redeliver: &[(Tid, i32)]| {
                for t in &seized {
                    let sig = match &t.stop {
                        Stop::Signal(info) => info.signo(),
                        _ => 0,
                    };
                    let _ = ctx.detach(t.tid, sig);
                }
                for &(tid, sig) in redeliver {
                    // SAFETY: tgkill with plain integers.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
                }
            };
            match dumped {
                Ok((report, _)) if !leave_running => {
                    ctx.kill(pid)?;
                    inner.mark("kill");
                    Ok((report, inner.stages().to_vec()))
                }
                Ok((report, redeliver)) => {
                    release(ctx, &redeliver);
                    inner.mark("release");
                    Ok((report, inner.stages().to_vec()))
                }
                Err(e) => {
                    for t in &seized {
                        let _ = ctx.take_events(t.tid);
                    }
                    release(ctx, &[]);
                    Err(e)
                }
            }
        },
    );
    let (mut report, inner) = match result {
        Ok(r) => r,
        Err(e) => {
            // Whatever happened, never leave the container frozen.
            if unified {
                let _ = container.cgroup().freeze_unified(false);
            } else {
                let _ = container.cgroup().thaw();
            }
            return Err(e);
        }
    };
    let mut all = stages.stages().to_vec();
    all.extend(inner);
    report.stages = all;
    Ok(report)
}

fn unfreeze(
    cgroup: &sprout_runtime::cgroups::Cgroup,
    unified: bool,
) -> Result<(), sprout_runtime::cgroups::CgroupError> {
    if unified {
        cgroup.freeze_unified(false)
    } else {
        cgroup.thaw()
    }
}

fn dump_stopped(
    ctx: &mut TraceCtx,
    pid: Tid,
    seized: &[SeizedThread],
    mut writer: ImageWriter,
    host: Host,
    image: &Path,
    stages: &mut Stages,
) -> Result<(CheckpointReport, Vec<(Tid, i32)>), DumpError> {
    let main_status = proc::status(pid)?;
    for t in seized {
        if t.tid != pid {
            let st = proc::parse_status(
                &std::fs::read_to_string(format!("/proc/{pid}/task/{}/status", t.tid))
                    .unwrap_or_default(),
            )
            .unwrap_or_default();
            if st.uids != main_status.uids
                || st.gids != main_status.gids
                || st.cap_eff != main_status.cap_eff
            {
                return Err(DumpError::ThreadCredentials { tid: t.tid });
            }
        }
    }
    threads::abort_rseq_critical_sections(ctx, pid, seized.iter().map(|t| t.tid))?;
    // Memory first: nothing injected yet, so the maps are exactly the
    // process's own.
    let maps = ptrace::procfs::read_maps(pid)?;
    let mut files = memory::Files::default();
    let mut shared = memory::SharedObjects::default();
    let vmas = memory::dump_memory(&mut writer, pid, &maps, &mut files, &mut shared)?;
    stages.mark("memory");

    let scratch = Scratch::map(ctx, pid, pid)?;
    let result = (|| -> Result<_, DumpError> {
        // The main thread first: the image's first thread is the process.
        let mut ordered: Vec<&SeizedThread> = seized.iter().collect();
        ordered.sort_by_key(|t| (t.tid != pid, t.tid));
        let mut threads = Vec::with_capacity(ordered.len());
        for t in ordered {
            threads.push(threads::dump_thread(
                ctx,
                pid,
                ns_tid(pid, t.tid),
                t.tid,
                &t.stop,
                &scratch,
            )?);
        }
        stages.mark("threads");
        let host_to_ns = |tid: i32| ns_tid(pid, tid);
        let process = process::dump_process(ctx, pid, ns_tid(pid, pid), &scratch, &host_to_ns)?;
        stages.mark("process");
        let fds = crate::fds::dump_fds(ctx, pid)?;
        stages.mark("fds");
        Ok((threads, process, fds))
    })();
    scratch.unmap(ctx, pid)?;
    let (mut threads, process, fds) = result?;
    // Signals that arrived while we injected were dequeued by the stops:
    // they belong in the image, and back in the live process on release.
    let mut redeliver = Vec::new();
    for t in seized {
        for e in ctx.take_events(t.tid) {
            if let Stop::Signal(info) = e {
                let ns = ns_tid(pid, t.tid);
                if let Some(rec) = threads.iter_mut().find(|r| r.tid == ns) {
                    rec.pending.push(crate::image::PendingSignal {
                        signo: info.signo() as u8,
                        siginfo: info.0.to_vec(),
                    });
                }
                redeliver.push((t.tid, info.signo()));
            }
        }
    }
    let pages_bytes = writer.offset();
    let (nthreads, nvmas, nfds) = (threads.len(), vmas.len(), fds.len());
    let body = ManifestBody {
        producer: format!("sprout {}", env!("CARGO_PKG_VERSION")),
        host,
        process,
        threads,
        vmas,
        files: files.records,
        shared_memory: shared.records,
        fds,
        pages: PagesIndex::default(),
    };
    writer.finish(body)?;
    stages.mark("write");
    Ok((
        CheckpointReport {
            image: image.to_path_buf(),
            threads: nthreads,
            vmas: nvmas,
            pages_bytes,
            fds: nfds,
            stages: Vec::new(),
        },
        redeliver,
    ))
}
