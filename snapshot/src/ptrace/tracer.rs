//! The tracer thread and the tracee operations that run on it.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::error::PtraceError;
use super::regs::{Regs, RseqConfig, SyscallInfo, Xstate};
use super::stop::{CloneKind, SigInfo, Stop};
use super::sys::{self, *};
use super::{Result, Tid, procfs};

/// `PTRACE_O_*` options for [`TraceCtx::seize`].
///
/// [`Options::TRACESYSGOOD`] is always added: syscall stops must never be
/// mistaken for a `SIGTRAP`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options(pub u32);

impl Options {
    /// No option.
    pub const NONE: Options = Options(0);
    /// `PTRACE_O_TRACESYSGOOD`: syscall stops report `SIGTRAP | 0x80`.
    pub const TRACESYSGOOD: Options = Options(1);
    /// `PTRACE_O_TRACEFORK`.
    pub const TRACEFORK: Options = Options(2);
    /// `PTRACE_O_TRACEVFORK`.
    pub const TRACEVFORK: Options = Options(4);
    /// `PTRACE_O_TRACECLONE`: new threads are auto-attached and stop before
    /// running user code (restore-pitfalls §6.5).
    pub const TRACECLONE: Options = Options(8);
    /// `PTRACE_O_TRACEEXEC`.
    pub const TRACEEXEC: Options = Options(0x10);
    /// `PTRACE_O_TRACEVFORKDONE`.
    pub const TRACEVFORKDONE: Options = Options(0x20);
    /// `PTRACE_O_TRACEEXIT`.
    pub const TRACEEXIT: Options = Options(0x40);
    /// `PTRACE_O_TRACESECCOMP`.
    pub const TRACESECCOMP: Options = Options(0x80);
    /// `PTRACE_O_EXITKILL`: the tracee gets `SIGKILL` when the tracer thread
    /// exits (restore-pitfalls §1.6).
    pub const EXITKILL: Options = Options(1 << 20);
    /// `PTRACE_O_SUSPEND_SECCOMP`: the tracee's seccomp filters do not apply
    /// while traced (needs `CAP_SYS_ADMIN` in the initial user namespace;
    /// restore-pitfalls §9.1).
    pub const SUSPEND_SECCOMP: Options = Options(1 << 21);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Options) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Options {
    type Output = Options;
    fn bitor(self, rhs: Options) -> Options {
        Options(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for Options {
    fn bitor_assign(&mut self, rhs: Options) {
        self.0 |= rhs.0;
    }
}

type Job = Box<dyn FnOnce(&mut TraceCtx) + Send>;

thread_local! {
    static ON_TRACER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A handle on a long-lived tracer thread. Cheap to clone; all clones talk
/// to the same thread.
///
/// When the last handle is dropped the thread stops. Before it exits it
/// **detaches** every tracee it still traces, except those seized with
/// [`Options::EXITKILL`], which the kernel then **kills** (`SIGKILL`) as the
/// thread exits. A tracee that is running is first interrupted so that it
/// can be detached; one left in a signal-delivery stop by the caller gets its
/// signal back on detach. Signals that injections set aside
/// ([`TraceCtx::take_events`]) and that the caller did not collect are lost
/// (and logged).
#[derive(Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    tid: Tid,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            // The last handle may be dropped by a closure running on the
            // tracer thread itself; it then ends on its own.
            if !ON_TRACER.with(|c| c.get()) {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("tid", &self.inner.tid)
            .finish()
    }
}

impl Tracer {
    /// Starts the tracer thread, named `name`.
    pub fn spawn(name: &str) -> std::io::Result<Tracer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                ON_TRACER.with(|c| c.set(true));
                let mut ctx = TraceCtx::new();
                let _ = tid_tx.send(ctx.me);
                while let Ok(job) = rx.recv() {
                    job(&mut ctx);
                }
                ctx.shutdown();
            })?;
        let tid = tid_rx
            .recv()
            .map_err(|_| std::io::Error::other("tracer thread died at start"))?;
        Ok(Tracer {
            inner: Arc::new(Inner {
                tx: Some(tx),
                handle: Some(handle),
                tid,
            }),
        })
    }

    /// The tracer thread's kernel tid (what `TracerPid:` in
    /// `/proc/TID/status` of its tracees shows).
    pub fn tid(&self) -> Tid {
        self.inner.tid
    }

    /// Kills traced process `tid` and reaps it on the tracer thread, which
    /// then forgets it; errors (it is gone already) are ignored. For
    /// failure paths.
    pub fn kill(&self, tid: Tid) {
        self.run(move |ctx| {
            let _ = ctx.kill(tid);
        });
    }

    /// Runs `f` on the tracer thread and returns its result. Calls from
    /// several threads are served one at a time, in order.
    ///
    /// A panic in `f` is caught on the tracer thread (which keeps running
    /// and keeps its tracees) and resumed here.
    ///
    /// # Panics
    /// When called from the tracer thread itself (from inside another
    /// `run`): use the [`TraceCtx`] you have.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce(&mut TraceCtx) -> R + Send + 'static,
        R: Send + 'static,
    {
        assert!(
            !ON_TRACER.with(|c| c.get()),
            "Tracer::run called on the tracer thread; use the TraceCtx at hand"
        );
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |ctx: &mut TraceCtx| {
            let r = catch_unwind(AssertUnwindSafe(|| f(ctx)));
            let _ = rtx.send(r);
        });
        self.inner
            .tx
            .as_ref()
            .expect("tracer channel open while a handle exists")
            .send(job)
            .expect("tracer thread is gone");
        match rrx.recv().expect("tracer thread died while running a job") {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }
}

/// Where a tracee is, as far as this tracer knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Resumed (or just seized) and not waited for since.
    Running,
    /// In a ptrace stop; the last stop reported.
    Stopped(Stop),
    /// In the stop an injection or gadget run ended in (a `SIGTRAP`
    /// signal-delivery or syscall-exit stop of ours): no signal in hand.
    AfterInjection,
}

pub(super) struct Tracee {
    pub(super) opts: Options,
    pub(super) tgid: Option<Tid>,
    pub(super) state: State,
    /// Stops consumed by injections that the caller may need.
    pub(super) events: Vec<Stop>,
}

/// A thread stopped by [`TraceCtx::seize_all_threads`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeizedThread {
    /// Its tid.
    pub tid: Tid,
    /// The stop it is in: normally [`Stop::Interrupt`]; a
    /// [`Stop::Signal`] carries a signal that was already dequeued (save it,
    /// restore-pitfalls §7.1); a [`Stop::GroupStop`] for a stopped process.
    pub stop: Stop,
}

/// All ptrace operations, available only on the tracer thread (through
/// [`Tracer::run`]). Not `Send`: it cannot leave that thread.
///
/// Tids are those of the tracer's pid namespace.
pub struct TraceCtx {
    pub(super) me: Tid,
    pub(super) tracees: HashMap<Tid, Tracee>,
    /// Per thread group: the address of a `syscall` instruction to inject
    /// through.
    pub(super) insn_cache: HashMap<Tid, u64>,
    pub(super) xstate_len: Option<usize>,
    pub(super) stop_timeout: Option<Duration>,
    _not_send: PhantomData<*const ()>,
}

/// Signals whose synchronous (kernel-generated) delivery means the injected
/// code faulted.
pub(super) fn is_fault(info: &SigInfo) -> bool {
    matches!(
        info.signo(),
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
    ) && info.code() > 0
}

impl TraceCtx {
    fn new() -> TraceCtx {
        TraceCtx {
            me: sys::gettid(),
            tracees: HashMap::new(),
            insn_cache: HashMap::new(),
            xstate_len: None,
            stop_timeout: None,
            _not_send: PhantomData,
        }
    }

    /// The tracer thread's tid.
    pub fn tracer_tid(&self) -> Tid {
        self.me
    }

    /// How long injections, gadget runs and [`TraceCtx::seize_all_threads`]
    /// wait for a stop before failing with [`PtraceError::Timeout`]
    /// (`None`, the default: injections wait forever; seize_all_threads uses
    /// 30 s). After a timeout in an injection the thread is still running
    /// injected code: kill it.
    pub fn set_stop_timeout(&mut self, timeout: Option<Duration>) {
        self.stop_timeout = timeout;
    }

    /// The tids this tracer traces (seized or auto-attached), sorted.
    pub fn tracees(&self) -> Vec<Tid> {
        let mut v: Vec<Tid> = self.tracees.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The last stop of `tid` this tracer saw, if it is stopped now. After
    /// an injection or gadget run this is [`Stop::Interrupt`]: a stop with
    /// no signal in hand, to be resumed with signal 0.
    pub fn current_stop(&self, tid: Tid) -> Option<Stop> {
        match self.tracees.get(&tid)?.state {
            State::Stopped(s) => Some(s),
            State::AfterInjection => Some(Stop::Interrupt),
            State::Running => None,
        }
    }

    /// Stops that injections and gadget runs in `tid` consumed and the
    /// caller may need, oldest first, emptied by this call:
    /// [`Stop::Clone`] (a thread or process created by an injected clone;
    /// it is traced and reports its own first stop), [`Stop::Signal`] (a
    /// signal that arrived meanwhile and was set aside: its siginfo must be
    /// re-queued before the process runs, restore-pitfalls §7.1),
    /// [`Stop::GroupStop`] and [`Stop::Seccomp`].
    pub fn take_events(&mut self, tid: Tid) -> Vec<Stop> {
        self.tracees
            .get_mut(&tid)
            .map(|t| std::mem::take(&mut t.events))
            .unwrap_or_default()
    }

    pub(super) fn push_event(&mut self, tid: Tid, stop: Stop) {
        if let Some(t) = self.tracees.get_mut(&tid) {
            t.events.push(stop);
        }
    }

    /// The thread group of `tid` (cached).
    pub fn tgid(&mut self, tid: Tid) -> Result<Tid> {
        if let Some(Some(g)) = self.tracees.get(&tid).map(|t| t.tgid) {
            return Ok(g);
        }
        let g = procfs::tgid_of(tid)?;
        if let Some(t) = self.tracees.get_mut(&tid) {
            t.tgid = Some(g);
        }
        Ok(g)
    }

    // ---------------------------------------------------------------
    // Attaching, stopping, resuming.

    /// `PTRACE_SEIZE` with `opts` (plus `TRACESYSGOOD`). The thread keeps
    /// running; [`TraceCtx::interrupt`] stops it.
    pub fn seize(&mut self, tid: Tid, opts: Options) -> Result<()> {
        let opts = opts | Options::TRACESYSGOOD;
        sys::ptrace_int(PTRACE_SEIZE, tid, 0, opts.0 as usize)?;
        self.tracees.insert(
            tid,
            Tracee {
                opts,
                tgid: None,
                state: State::Running,
                events: Vec::new(),
            },
        );
        Ok(())
    }

    /// `PTRACE_SETOPTIONS` (plus `TRACESYSGOOD`).
    pub fn set_options(&mut self, tid: Tid, opts: Options) -> Result<()> {
        let opts = opts | Options::TRACESYSGOOD;
        sys::ptrace_int(PTRACE_SETOPTIONS, tid, 0, opts.0 as usize)?;
        if let Some(t) = self.tracees.get_mut(&tid) {
            t.opts = opts;
        }
        Ok(())
    }

    /// The options `tid` was seized (or auto-attached) with.
    pub fn options(&self, tid: Tid) -> Option<Options> {
        self.tracees.get(&tid).map(|t| t.opts)
    }

    /// `PTRACE_INTERRUPT`: the thread stops with [`Stop::Interrupt`] (a
    /// thread sleeping interruptibly in a syscall leaves it; its registers
    /// then show the restart code, see [`super::interrupted_syscall`]).
    pub fn interrupt(&mut self, tid: Tid) -> Result<()> {
        sys::ptrace_int(PTRACE_INTERRUPT, tid, 0, 0)?;
        Ok(())
    }

    fn resume(&mut self, request: u32, tid: Tid, sig: i32) -> Result<()> {
        sys::ptrace_int(request, tid, 0, sig as usize)?;
        if let Some(t) = self.tracees.get_mut(&tid) {
            t.state = State::Running;
        }
        Ok(())
    }

    pub(super) fn resume_raw(&mut self, request: u32, tid: Tid) -> Result<()> {
        self.resume(request, tid, 0)
    }

    /// `PTRACE_CONT` with signal `sig` (0 for none).
    pub fn cont(&mut self, tid: Tid, sig: i32) -> Result<()> {
        self.resume(PTRACE_CONT, tid, sig)
    }

    /// `PTRACE_SYSCALL`: run to the next syscall entry or exit stop.
    pub fn cont_syscall(&mut self, tid: Tid, sig: i32) -> Result<()> {
        self.resume(PTRACE_SYSCALL, tid, sig)
    }

    /// `PTRACE_SINGLESTEP`.
    pub fn singlestep(&mut self, tid: Tid, sig: i32) -> Result<()> {
        self.resume(PTRACE_SINGLESTEP, tid, sig)
    }

    /// `PTRACE_DETACH` (the thread must be in a ptrace stop), delivering
    /// `sig` if it is in a signal-delivery stop. Forgets the thread.
    pub fn detach(&mut self, tid: Tid, sig: i32) -> Result<()> {
        let r = sys::ptrace_int(PTRACE_DETACH, tid, 0, sig as usize);
        if r.is_ok() {
            self.forget(tid);
        }
        r.map(|_| ())
    }

    /// Kills the whole process of `tid` (`SIGKILL`) and reaps every thread
    /// of it that this tracer traces. Waits at most the stop timeout (30 s
    /// when none is set) per thread.
    pub fn kill(&mut self, tid: Tid) -> Result<()> {
        let tgid = self.tgid(tid).unwrap_or(tid);
        // SAFETY: plain kill(2); tgid is a traced process, which cannot be
        // reaped and recycled behind our back while we trace it.
        if unsafe { libc::kill(tgid, libc::SIGKILL) } < 0 && Errno::last() != Errno::ESRCH {
            return Err(PtraceError::Sys {
                what: format!("kill({tgid}, SIGKILL)"),
                errno: Errno::last(),
            });
        }
        let mut threads: Vec<Tid> = self
            .tracees
            .iter()
            .filter(|(t, tr)| **t == tid || **t == tgid || tr.tgid == Some(tgid))
            .map(|(t, _)| *t)
            .collect();
        // Reap whichever thread is done, in any order. Waiting for one
        // thread at a time deadlocks: the last thread of a pid namespace's
        // init to exit waits in zap_pid_ns_processes until every other
        // thread is reaped, and traced threads are reaped only by us.
        let timeout = self.stop_timeout.unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(20);
        while !threads.is_empty() {
            let mut progress = false;
            let mut i = 0;
            while i < threads.len() {
                let t = threads[i];
                match sys::waitpid(t, libc::WNOHANG) {
                    Ok(None) => i += 1,
                    Ok(Some(status)) => {
                        progress = true;
                        match self.decode(t, status) {
                            Ok(s) if !s.is_stopped() => {
                                threads.swap_remove(i);
                            }
                            // A stop on the way out (e.g. PTRACE_EVENT_EXIT).
                            Ok(_) => {
                                let _ = self.cont(t, 0);
                                i += 1;
                            }
                            Err(e) if e.is_gone() => {
                                self.forget(t);
                                threads.swap_remove(i);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Err(e) if e.is_gone() => {
                        self.forget(t);
                        threads.swap_remove(i);
                        progress = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            if threads.is_empty() || progress {
                pause = Duration::from_micros(20);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                let t = threads[0];
                return Err(PtraceError::Timeout {
                    tid: t,
                    after: timeout,
                    state: procfs::thread_state(t).unwrap_or_else(|| "?".into()),
                    wchan: procfs::wchan(t).unwrap_or_else(|| "?".into()),
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Drops the bookkeeping for `tid` (without any ptrace request).
    pub fn forget(&mut self, tid: Tid) {
        if let Some(t) = self.tracees.remove(&tid)
            && !t.events.is_empty()
        {
            tracing::warn!(tid, events = ?t.events, "ptrace: dropping uncollected events");
        }
    }

    // ---------------------------------------------------------------
    // Waiting.

    /// Blocks until `tid` reports (`waitpid(tid, __WALL)`).
    pub fn wait(&mut self, tid: Tid) -> Result<Stop> {
        let status = sys::waitpid(tid, 0)?.expect("blocking waitpid returns a status");
        self.decode(tid, status)
    }

    /// Like [`TraceCtx::wait`] with a deadline ([`PtraceError::Timeout`]
    /// names the thread's state and wchan, restore-pitfalls §1.5).
    pub fn wait_timeout(&mut self, tid: Tid, timeout: Duration) -> Result<Stop> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            if let Some(status) = sys::waitpid(tid, libc::WNOHANG)? {
                return self.decode(tid, status);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PtraceError::Timeout {
                    tid,
                    after: timeout,
                    state: procfs::thread_state(tid).unwrap_or_else(|| "?".into()),
                    wchan: procfs::wchan(tid).unwrap_or_else(|| "?".into()),
                });
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Waits with the stop timeout, if one is set.
    pub(super) fn wait_internal(&mut self, tid: Tid) -> Result<Stop> {
        match self.stop_timeout {
            Some(t) => self.wait_timeout(tid, t),
            None => self.wait(tid),
        }
    }

    fn event_msg(&self, tid: Tid) -> Result<u64> {
        let mut msg: libc::c_ulong = 0;
        // SAFETY: GETEVENTMSG writes one unsigned long to data.
        unsafe { sys::ptrace(PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut _ as usize)? };
        Ok(msg)
    }

    fn decode(&mut self, tid: Tid, status: sys::RawStatus) -> Result<Stop> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            let stop = if libc::WIFEXITED(status) {
                Stop::Exited {
                    code: libc::WEXITSTATUS(status),
                }
            } else {
                Stop::Killed {
                    signal: libc::WTERMSIG(status),
                    core_dumped: libc::WCOREDUMP(status),
                }
            };
            self.forget(tid);
            return Ok(stop);
        }
        if !libc::WIFSTOPPED(status) {
            return Err(PtraceError::Invalid(format!(
                "waitpid({tid}) returned status {status:#x}, not a stop"
            )));
        }
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        let stop = if sig == libc::SIGTRAP | 0x80 {
            Stop::Syscall
        } else {
            match event {
                0 => Stop::Signal(self.get_siginfo(tid)?),
                PTRACE_EVENT_STOP => {
                    if sig == libc::SIGTRAP {
                        Stop::Interrupt
                    } else {
                        Stop::GroupStop { signal: sig }
                    }
                }
                PTRACE_EVENT_CLONE | PTRACE_EVENT_FORK | PTRACE_EVENT_VFORK => {
                    let kind = match event {
                        PTRACE_EVENT_CLONE => CloneKind::Clone,
                        PTRACE_EVENT_FORK => CloneKind::Fork,
                        _ => CloneKind::Vfork,
                    };
                    let new_tid = self.event_msg(tid)? as Tid;
                    let opts = self.tracees.get(&tid).map(|t| t.opts).unwrap_or_default();
                    self.tracees.entry(new_tid).or_insert(Tracee {
                        opts,
                        // A clone event may be a thread or (exit_signal other
                        // than SIGCHLD) a process: looked up when needed.
                        tgid: if kind == CloneKind::Clone {
                            None
                        } else {
                            Some(new_tid)
                        },
                        state: State::Running,
                        events: Vec::new(),
                    });
                    Stop::Clone { kind, new_tid }
                }
                PTRACE_EVENT_EXEC => {
                    let former_tid = self.event_msg(tid)? as Tid;
                    if former_tid != tid
                        && let Some(t) = self.tracees.remove(&former_tid)
                    {
                        self.tracees.insert(tid, t);
                    }
                    if let Some(t) = self.tracees.get_mut(&tid) {
                        t.tgid = Some(tid);
                    }
                    self.insn_cache.remove(&tid);
                    Stop::Exec { former_tid }
                }
                PTRACE_EVENT_VFORK_DONE => Stop::VforkDone {
                    child: self.event_msg(tid)? as Tid,
                },
                PTRACE_EVENT_EXIT => Stop::Exit {
                    status: self.event_msg(tid)? as i32,
                },
                PTRACE_EVENT_SECCOMP => Stop::Seccomp {
                    data: self.event_msg(tid)?,
                },
                other => {
                    return Err(PtraceError::Invalid(format!(
                        "tid {tid}: unknown ptrace event {other} (status {status:#x})"
                    )));
                }
            }
        };
        match self.tracees.get_mut(&tid) {
            Some(t) => t.state = State::Stopped(stop),
            // A stop of a thread we did not know (auto-attached before its
            // parent's clone event was seen).
            None => {
                self.tracees.insert(
                    tid,
                    Tracee {
                        opts: Options::NONE,
                        tgid: None,
                        state: State::Stopped(stop),
                        events: Vec::new(),
                    },
                );
            }
        }
        Ok(stop)
    }

    pub(super) fn ensure_stopped(&self, tid: Tid) -> Result<()> {
        match self.tracees.get(&tid).map(|t| t.state) {
            Some(State::Running) => Err(PtraceError::NotStopped { tid }),
            _ => Ok(()),
        }
    }

    // ---------------------------------------------------------------
    // Registers, masks, siginfo.

    /// General purpose registers (`NT_PRSTATUS`), with `fs_base`/`gs_base`.
    pub fn get_regs(&mut self, tid: Tid) -> Result<Regs> {
        let mut regs = Regs::default();
        let len = std::mem::size_of::<Regs>();
        // SAFETY: regs is a repr(C) buffer of exactly len bytes.
        let got = unsafe {
            sys::regset(
                PTRACE_GETREGSET,
                tid,
                NT_PRSTATUS,
                (&mut regs as *mut Regs).cast(),
                len,
            )?
        };
        if got != len {
            return Err(PtraceError::Invalid(format!(
                "tid {tid}: NT_PRSTATUS is {got} bytes, expected {len}"
            )));
        }
        Ok(regs)
    }

    /// Sets the general purpose registers.
    pub fn set_regs(&mut self, tid: Tid, regs: &Regs) -> Result<()> {
        let mut copy = *regs;
        // SAFETY: copy is a repr(C) buffer of the regset's exact size; the
        // kernel only reads it.
        unsafe {
            sys::regset(
                PTRACE_SETREGSET,
                tid,
                NT_PRSTATUS,
                (&mut copy as *mut Regs).cast(),
                std::mem::size_of::<Regs>(),
            )?
        };
        Ok(())
    }

    /// The `NT_X86_XSTATE` regset, exactly as long as the kernel returns it.
    pub fn get_xstate(&mut self, tid: Tid) -> Result<Xstate> {
        let mut buf = vec![0u8; self.xstate_len.unwrap_or(64 * 1024)];
        // SAFETY: buf is valid for buf.len() bytes, which is a multiple of 8
        // as the regset requires.
        let got = unsafe {
            sys::regset(
                PTRACE_GETREGSET,
                tid,
                NT_X86_XSTATE,
                buf.as_mut_ptr(),
                buf.len(),
            )?
        };
        buf.truncate(got);
        self.xstate_len = Some(got);
        Xstate::from_bytes(buf)
    }

    /// Sets the `NT_X86_XSTATE` regset. Its length must be the kernel's
    /// (restore-pitfalls §2.1); its header must pass
    /// [`Xstate::validate`] or the kernel answers `EINVAL`.
    pub fn set_xstate(&mut self, tid: Tid, xstate: &Xstate) -> Result<()> {
        let want = match self.xstate_len {
            Some(n) => n,
            None => self.get_xstate(tid)?.len(),
        };
        if xstate.len() != want {
            return Err(PtraceError::XstateSize {
                tid,
                len: xstate.len(),
                want,
            });
        }
        let mut copy = xstate.as_bytes().to_vec();
        // SAFETY: copy is valid for its length; the kernel only reads it.
        unsafe {
            sys::regset(
                PTRACE_SETREGSET,
                tid,
                NT_X86_XSTATE,
                copy.as_mut_ptr(),
                copy.len(),
            )?
        };
        Ok(())
    }

    /// The thread's blocked-signal mask (bit `n - 1` for signal `n`).
    pub fn get_sigmask(&mut self, tid: Tid) -> Result<u64> {
        let mut mask = 0u64;
        // SAFETY: GETSIGMASK writes addr (= 8) bytes to data.
        unsafe { sys::ptrace(PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as usize)? };
        Ok(mask)
    }

    /// Sets the blocked-signal mask (the kernel drops `SIGKILL`/`SIGSTOP`).
    pub fn set_sigmask(&mut self, tid: Tid, mask: u64) -> Result<()> {
        let mut m = mask;
        // SAFETY: SETSIGMASK reads addr (= 8) bytes from data.
        unsafe { sys::ptrace(PTRACE_SETSIGMASK, tid, 8, &mut m as *mut u64 as usize)? };
        Ok(())
    }

    /// `PTRACE_GETSIGINFO`: the siginfo of the current stop.
    pub fn get_siginfo(&mut self, tid: Tid) -> Result<SigInfo> {
        let mut info = SigInfo::zeroed();
        // SAFETY: GETSIGINFO writes a 128-byte siginfo_t to data.
        unsafe {
            sys::ptrace(
                PTRACE_GETSIGINFO,
                tid,
                0,
                &mut info as *mut SigInfo as usize,
            )?
        };
        Ok(info)
    }

    /// `PTRACE_SETSIGINFO`: replaces the siginfo of a signal-delivery stop.
    pub fn set_siginfo(&mut self, tid: Tid, info: &SigInfo) -> Result<()> {
        let mut copy = *info;
        // SAFETY: SETSIGINFO reads a 128-byte siginfo_t from data.
        unsafe {
            sys::ptrace(
                PTRACE_SETSIGINFO,
                tid,
                0,
                &mut copy as *mut SigInfo as usize,
            )?
        };
        Ok(())
    }

    /// `PTRACE_PEEKSIGINFO`: the signals queued for the thread (`shared`
    /// false) or for its whole process (`shared` true), without dequeuing
    /// them (restore-pitfalls §7.1).
    pub fn peek_siginfo(&mut self, tid: Tid, shared: bool) -> Result<Vec<SigInfo>> {
        #[repr(C)]
        struct Args {
            off: u64,
            flags: u32,
            nr: i32,
        }
        const BATCH: usize = 32;
        let mut out = Vec::new();
        loop {
            let mut buf = [SigInfo::zeroed(); BATCH];
            let mut args = Args {
                off: out.len() as u64,
                flags: u32::from(shared),
                nr: BATCH as i32,
            };
            // SAFETY: addr points at the args struct, data at room for nr
            // siginfos.
            let n = unsafe {
                sys::ptrace(
                    PTRACE_PEEKSIGINFO,
                    tid,
                    &mut args as *mut Args as usize,
                    buf.as_mut_ptr() as usize,
                )?
            } as usize;
            out.extend_from_slice(&buf[..n.min(BATCH)]);
            if n < BATCH {
                return Ok(out);
            }
        }
    }

    /// `PTRACE_GET_RSEQ_CONFIGURATION` (restore-pitfalls §3.1).
    pub fn rseq_configuration(&mut self, tid: Tid) -> Result<RseqConfig> {
        let mut conf = RseqConfig::default();
        // SAFETY: the request writes at most addr bytes (the struct's size)
        // to data.
        unsafe {
            sys::ptrace(
                PTRACE_GET_RSEQ_CONFIGURATION,
                tid,
                std::mem::size_of::<RseqConfig>(),
                &mut conf as *mut RseqConfig as usize,
            )?
        };
        Ok(conf)
    }

    /// `PTRACE_GET_SYSCALL_INFO`: which syscall stop this is.
    pub fn syscall_info(&mut self, tid: Tid) -> Result<SyscallInfo> {
        let mut buf = [0u8; 128];
        // SAFETY: the request writes at most addr bytes to data.
        unsafe {
            sys::ptrace(
                PTRACE_GET_SYSCALL_INFO,
                tid,
                buf.len(),
                buf.as_mut_ptr() as usize,
            )?
        };
        Ok(SyscallInfo::parse(&buf))
    }

    /// `PTRACE_PEEKDATA`: one word of the tracee's memory.
    pub fn peek(&mut self, tid: Tid, addr: u64) -> Result<u64> {
        sys::peek(tid, addr)
    }

    /// `PTRACE_POKEDATA`: writes one word (also into read-only mappings, as
    /// a debugger does).
    pub fn poke(&mut self, tid: Tid, addr: u64, value: u64) -> Result<()> {
        sys::ptrace_int(PTRACE_POKEDATA, tid, addr as usize, value as usize)?;
        Ok(())
    }

    // ---------------------------------------------------------------
    // Whole processes.

    /// Seizes every thread of process `pid` with `opts` and stops each one
    /// with `PTRACE_INTERRUPT`, repeating until the set of threads is stable
    /// (threads may be created while we seize), then waits for every stop.
    /// Threads that exit meanwhile are left out. Clone events seen on the
    /// way (with `TRACECLONE`) add the new thread to the set; the cloning
    /// thread is let out of its clone and interrupted again. A thread that
    /// reports a signal-delivery stop instead of the interrupt is stopped
    /// with that signal in hand (any ptrace stop consumes a pending
    /// interrupt).
    ///
    /// Freeze the process's cgroup first if it creates threads busily (DESIGN
    /// "Snapshot"). On error the threads seized so far stay seized.
    pub fn seize_all_threads(&mut self, pid: Tid, opts: Options) -> Result<Vec<SeizedThread>> {
        self.seize_all_threads_frozen(pid, opts, &mut || Ok(()))
    }

    /// [`TraceCtx::seize_all_threads`] for a process whose cgroup is frozen:
    /// the first pass seizes and interrupts every thread while the set
    /// cannot change, then `thaw` runs (a task frozen by the v1 freezer
    /// gives no ptrace stop until it runs again; CRIU thaws the same way),
    /// then the stops are waited for as usual.
    pub fn seize_all_threads_frozen(
        &mut self,
        pid: Tid,
        opts: Options,
        thaw: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Vec<SeizedThread>> {
        let mut thawed = false;
        let timeout = self.stop_timeout.unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + timeout;
        let mut threads: BTreeMap<Tid, Option<Stop>> = BTreeMap::new();
        loop {
            let mut added = false;
            for t in procfs::list_tasks(pid)? {
                if threads.contains_key(&t) {
                    continue;
                }
                match self.seize(t, opts) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(Errno::ESRCH) => continue,
                    // Already ours: auto-attached through TRACECLONE.
                    Err(e)
                        if e.errno() == Some(Errno::EPERM)
                            && procfs::tracer_of(t).ok() == Some(self.me) =>
                    {
                        self.tracees.entry(t).or_insert(Tracee {
                            opts: opts | Options::TRACESYSGOOD,
                            tgid: Some(pid),
                            state: State::Running,
                            events: Vec::new(),
                        });
                    }
                    Err(e) => return Err(e),
                }
                if let Some(tr) = self.tracees.get_mut(&t) {
                    tr.tgid = Some(pid);
                }
                match self.interrupt(t) {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(Errno::ESRCH) => {}
                    Err(e) => return Err(e),
                }
                threads.insert(t, None);
                added = true;
            }
            if !thawed {
                thaw()?;
                thawed = true;
            }
            // Wait for every thread not stopped yet.
            while let Some(t) = threads.iter().find(|(_, s)| s.is_none()).map(|(t, _)| *t) {
                let left = deadline.saturating_duration_since(Instant::now());
                let stop = self.wait_timeout(t, left)?;
                match stop {
                    Stop::Exited { .. } | Stop::Killed { .. } => {
                        threads.remove(&t);
                    }
                    // Any ptrace stop consumes a pending PTRACE_INTERRUPT
                    // (ptrace_stop clears JOBCTL_TRAP_STOP). A thread caught
                    // inside clone is let out of it and interrupted again,
                    // so that its registers are not those of a half-done
                    // syscall.
                    Stop::Clone { new_tid, .. } => {
                        if let Some(tr) = self.tracees.get_mut(&new_tid) {
                            tr.tgid = Some(pid);
                        }
                        threads.entry(new_tid).or_insert(None);
                        self.cont(t, 0)?;
                        self.interrupt(t)?;
                    }
                    Stop::Syscall | Stop::VforkDone { .. } | Stop::Seccomp { .. } => {
                        self.cont(t, 0)?;
                        self.interrupt(t)?;
                    }
                    s => {
                        threads.insert(t, Some(s));
                    }
                }
            }
            if !added {
                break;
            }
        }
        Ok(threads
            .into_iter()
            .filter_map(|(tid, s)| s.map(|stop| SeizedThread { tid, stop }))
            .collect())
    }

    // ---------------------------------------------------------------
    // Shutdown.

    fn shutdown(&mut self) {
        let mut tids = self.tracees();
        let mut i = 0;
        while i < tids.len() {
            let tid = tids[i];
            i += 1;
            let Some(t) = self.tracees.get(&tid) else {
                continue;
            };
            if t.opts.contains(Options::EXITKILL) {
                // The kernel sends SIGKILL when this thread exits.
                if !t.events.is_empty() {
                    tracing::warn!(tid, events = ?t.events, "ptrace: tracee killed with uncollected events");
                }
                continue;
            }
            if !t.events.is_empty() {
                tracing::warn!(tid, events = ?t.events, "ptrace: detaching with uncollected events");
            }
            let mut state = t.state;
            if state == State::Running {
                if self.interrupt(tid).is_err() {
                    self.forget(tid);
                    continue;
                }
                state = loop {
                    match self.wait_timeout(tid, Duration::from_secs(10)) {
                        // These stops consumed the interrupt: ask again.
                        Ok(Stop::Clone { new_tid, .. }) => {
                            tids.push(new_tid);
                            let _ = self.cont(tid, 0);
                            let _ = self.interrupt(tid);
                        }
                        Ok(Stop::Syscall) => {
                            let _ = self.cont(tid, 0);
                            let _ = self.interrupt(tid);
                        }
                        Ok(s) if s.is_stopped() => break State::Stopped(s),
                        _ => break State::Running,
                    }
                };
            }
            match state {
                State::Stopped(Stop::Signal(info)) => {
                    let _ = self.detach(tid, info.signo());
                }
                State::Stopped(_) | State::AfterInjection => {
                    let _ = self.detach(tid, 0);
                }
                // Gone or stuck: the kernel detaches it when we exit.
                State::Running => {}
            }
            self.forget(tid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracer_handles_are_send_and_sync() {
        fn is<T: Send + Sync + Clone>() {}
        is::<Tracer>();
    }

    #[test]
    fn options_combine() {
        let o = Options::EXITKILL | Options::TRACECLONE;
        assert!(o.contains(Options::EXITKILL) && o.contains(Options::TRACECLONE));
        assert!(!o.contains(Options::TRACEEXEC));
        assert_eq!(o.0, 0x100008);
    }
}
