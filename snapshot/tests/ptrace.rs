//! The ptrace core against real processes: a small C program
//! (tests/ptrace/tracee.c) built with gcc at test time, static and dynamic.
//!
//! Every process a test starts is killed through a pidfd when the test ends,
//! pass or fail; tracees are seized with PTRACE_O_EXITKILL where a failing
//! test could leave them stopped.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use sprout_snapshot::ptrace::procfs::{self, MapKind};
use sprout_snapshot::ptrace::{
    ERESTARTSYS, Entry, Gadget, GadgetConfig, GadgetError, InjectMode, Options, PtraceError,
    Restart, SeizedThread, Stop, Tid, TraceCtx, Tracer, find_hole, interrupted_syscall, mem,
    prepare_for_resume,
};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Bins {
    static_bin: PathBuf,
    dynamic_bin: PathBuf,
}

fn compile(out: &Path, extra: &[&str]) {
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let mut gcc = Command::new("gcc")
        .args(["-O1", "-pthread", "-Wall", "-x", "c", "-", "-o"])
        .arg(&tmp)
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .expect("gcc");
    gcc.stdin
        .take()
        .unwrap()
        .write_all(include_bytes!("ptrace/tracee.c"))
        .unwrap();
    assert!(gcc.wait().unwrap().success(), "gcc failed");
    std::fs::rename(&tmp, out).unwrap();
}

fn bins() -> &'static Bins {
    static B: OnceLock<Bins> = OnceLock::new();
    B.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ptrace-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let b = Bins {
            static_bin: dir.join("tracee-static"),
            dynamic_bin: dir.join("tracee-dynamic"),
        };
        compile(&b.static_bin, &["-static"]);
        compile(&b.dynamic_bin, &[]);
        b
    })
}

fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// A child running the test program; killed and reaped (through its pidfd,
/// so never another process) when dropped.
struct Prog {
    _child: Child,
    pidfd: OwnedFd,
    pid: Tid,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    reaped: bool,
}

impl Prog {
    fn spawn(bin: &Path, mode: &str) -> Prog {
        let mut child = Command::new(bin)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as Tid;
        let pidfd = mem::pidfd_open(pid).unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Prog {
            stdin: child.stdin.take(),
            _child: child,
            pidfd,
            pid,
            lines: rx,
            reaped: false,
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("a line from the test program")
    }

    fn send(&mut self, s: &str) {
        let i = self.stdin.as_mut().unwrap();
        i.write_all(s.as_bytes()).unwrap();
        i.flush().unwrap();
    }

    /// Waits for the exit (only once nobody traces it) and returns the wait
    /// status.
    fn wait_exit(&mut self) -> i32 {
        let mut info: libc::siginfo_t = unsafe_zeroed();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // SAFETY: waitid on our own child's pidfd with a valid siginfo.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG,
                )
            };
            assert_eq!(r, 0, "waitid: {}", std::io::Error::last_os_error());
            // SAFETY: si_pid is valid for SIGCHLD-style infos from waitid.
            if unsafe { info.si_pid() } != 0 {
                self.reaped = true;
                // SAFETY: as above.
                let (code, status) = unsafe { (info.si_code, info.si_status()) };
                return if code == libc::CLD_EXITED {
                    status << 8
                } else {
                    status
                };
            }
            assert!(Instant::now() < deadline, "pid {} did not exit", self.pid);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs the counters check of `threads` mode: the sleeper's counter
    /// advances, the futexer wakes, and `q` makes it exit 0.
    fn check_continues(&mut self) {
        let counters = |p: &mut Prog| -> (u64, u64, u64) {
            p.send("p");
            let l = p.line();
            let v: Vec<u64> = l
                .split(' ')
                .map(|kv| kv.split('=').nth(1).unwrap().parse().unwrap())
                .collect();
            (v[0], v[1], v[2])
        };
        let (s0, w0, _) = counters(self);
        let deadline = Instant::now() + TIMEOUT;
        while counters(self).0 <= s0 {
            assert!(Instant::now() < deadline, "sleeper stuck");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.send("w");
        while counters(self).1 <= w0 {
            assert!(Instant::now() < deadline, "futexer did not wake");
            std::thread::sleep(Duration::from_millis(20));
            self.send("w");
        }
        self.send("q");
        assert_eq!(self.line(), "bye");
        assert_eq!(self.wait_exit(), 0, "the program must exit 0");
    }
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for plain C structs for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

impl Drop for Prog {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        pidfd_kill(&self.pidfd);
        // Reap it; ECHILD (already reaped by a tracer thread of this
        // process) is fine. A zombie whose threads are still traced cannot be
        // reaped until the tracer lets go, so do not wait forever.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut info: libc::siginfo_t = unsafe_zeroed();
            // SAFETY: waitid on our child's pidfd with a valid siginfo.
            let r = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG,
                )
            };
            // SAFETY: si_pid is valid for infos from waitid.
            if r != 0 || unsafe { info.si_pid() } != 0 || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Kills a process that is not our child when dropped.
struct KillOnDrop(OwnedFd);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        pidfd_kill(&self.0);
    }
}

/// Start tracers *after* the programs they trace: locals drop in reverse, so
/// the tracer lets go (and EXITKILL kills) before the program is reaped.
fn tracer() -> Tracer {
    let t = Tracer::spawn("test-tracer").unwrap();
    t.run(|ctx| ctx.set_stop_timeout(Some(TIMEOUT)));
    t
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn comm(pid: Tid, tid: Tid) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn in_syscall(pid: Tid, tid: Tid, nr: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
        .map(|s| s.split(' ').next() == Some(&nr.to_string()))
        .unwrap_or(false)
}

/// A `threads`-mode program with its three threads identified and asleep
/// in their syscalls.
struct Threads {
    prog: Prog,
    main: Tid,
    sleeper: Tid,
    futexer: Tid,
}

fn start_threads(bin: &Path, mode: &str) -> (Threads, Option<String>) {
    let prog = Prog::spawn(bin, mode);
    let mut first = None;
    let mut l = prog.line();
    if mode == "rseq" {
        first = Some(l);
        l = prog.line();
    }
    assert_eq!(l, format!("ready {}", prog.pid));
    let pid = prog.pid;
    let mut sleeper = 0;
    let mut futexer = 0;
    wait_until("named threads", || {
        for t in procfs::list_tasks(pid).unwrap() {
            match comm(pid, t).as_str() {
                "sleeper" => sleeper = t,
                "futexer" => futexer = t,
                _ => {}
            }
        }
        sleeper != 0 && futexer != 0
    });
    wait_until("threads in their syscalls", || {
        in_syscall(pid, pid, libc::SYS_read)
            && in_syscall(pid, sleeper, libc::SYS_nanosleep)
            && in_syscall(pid, futexer, libc::SYS_futex)
    });
    (
        Threads {
            prog,
            main: pid,
            sleeper,
            futexer,
        },
        first,
    )
}

/// Seizes every thread; retries until the sleeper is caught inside its
/// nanosleep (it spends microseconds per 200 ms outside it).
fn seize_all_in_syscalls(tracer: &Tracer, t: &Threads, opts: Options) -> Vec<SeizedThread> {
    let (pid, sleeper) = (t.main, t.sleeper);
    for _ in 0..20 {
        let seized = tracer.run(move |ctx| {
            let seized = ctx.seize_all_threads(pid, opts).unwrap();
            let regs = ctx.get_regs(sleeper).unwrap();
            if interrupted_syscall(&regs)
                == (Restart::Eintr {
                    nr: libc::SYS_nanosleep,
                })
            {
                return Some(seized);
            }
            for s in &seized {
                ctx.detach(s.tid, 0).unwrap();
            }
            None
        });
        if let Some(s) = seized {
            return s;
        }
        wait_until("sleeper back in nanosleep", || {
            in_syscall(pid, sleeper, libc::SYS_nanosleep)
        });
    }
    panic!("never caught the sleeper inside nanosleep");
}

#[test]
fn tracer_runs_closures_and_detaches_on_drop() {
    let tracer = tracer();
    // Closures run on the tracer thread and return their values.
    let tid = tracer.run(|ctx| ctx.tracer_tid());
    assert_eq!(tid, tracer.tid());
    assert_ne!(tid, nix::unistd::gettid().as_raw());
    // A panic comes back to the caller; the thread survives it.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracer.run(|_| panic!("boom"));
    }));
    assert!(r.is_err());
    // run() from the tracer thread itself is refused (it would deadlock).
    let t2 = tracer.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tracer.run(move |_| t2.run(|_| ()));
    }));
    assert!(r.is_err());
    assert_eq!(tracer.run(|_| 7), 7);

    // Without EXITKILL: detached on drop, the program carries on.
    let (mut t, _) = start_threads(&bins().static_bin, "threads");
    let pid = t.main;
    let seized = tracer.run(move |ctx| ctx.seize_all_threads(pid, Options::TRACECLONE).unwrap());
    assert_eq!(seized.len(), 3);
    assert!(
        seized.iter().all(|s| s.stop == Stop::Interrupt),
        "{seized:?}"
    );
    assert_eq!(procfs::tracer_of(pid).unwrap(), tracer.tid());
    // One thread left running, one in a stop: both must be detached.
    let sleeper = t.sleeper;
    tracer.run(move |ctx| ctx.cont(sleeper, 0).unwrap());
    drop(tracer);
    for tid in [t.main, t.sleeper, t.futexer] {
        assert_eq!(procfs::tracer_of(tid).unwrap(), 0);
    }
    t.prog.check_continues();

    // With EXITKILL: killed when the tracer thread goes.
    let mut p = Prog::spawn(&bins().static_bin, "idle");
    let tracer = self::tracer();
    assert_eq!(p.line(), format!("ready {}", p.pid));
    let pid = p.pid;
    let stop = tracer.run(move |ctx| {
        ctx.seize(pid, Options::EXITKILL).unwrap();
        ctx.interrupt(pid).unwrap();
        ctx.wait(pid).unwrap()
    });
    assert_eq!(stop, Stop::Interrupt);
    drop(tracer);
    assert_eq!(p.wait_exit(), libc::SIGKILL);
}

#[test]
fn seize_all_threads_while_threads_come_and_go() {
    let mut p = Prog::spawn(&bins().static_bin, "churn");
    assert_eq!(p.line(), format!("ready {}", p.pid));
    let tracer = tracer();
    let pid = p.pid;
    for round in 0..5 {
        tracer.run(move |ctx| {
            let seized = ctx
                .seize_all_threads(pid, Options::EXITKILL | Options::TRACECLONE)
                .unwrap();
            // Every thread there is now is in the set and in a ptrace stop.
            let tids: Vec<Tid> = seized.iter().map(|s| s.tid).collect();
            for t in procfs::list_tasks(pid).unwrap() {
                assert!(
                    tids.contains(&t),
                    "round {round}: tid {t} not seized ({seized:?})"
                );
                let state = procfs::thread_state(t).unwrap();
                assert!(state.starts_with('t'), "round {round}: tid {t} is {state}");
            }
            assert!(seized.iter().all(|s| s.stop.is_stopped()));
            for t in ctx.tracees() {
                ctx.detach(t, 0).unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(tracer);
    p.send("q");
    assert_eq!(p.line(), "bye");
    assert_eq!(p.wait_exit(), 0);
}

fn check_seize_all(prepare: bool) {
    let (mut t, _) = start_threads(&bins().static_bin, "threads");
    let tracer = tracer();
    let seized = seize_all_in_syscalls(&tracer, &t, Options::EXITKILL);
    let mut tids: Vec<Tid> = seized.iter().map(|s| s.tid).collect();
    tids.sort_unstable();
    let mut want = vec![t.main, t.sleeper, t.futexer];
    want.sort_unstable();
    assert_eq!(tids, want);
    assert!(
        seized.iter().all(|s| s.stop == Stop::Interrupt),
        "{seized:?}"
    );
    let (main, sleeper, futexer) = (t.main, t.sleeper, t.futexer);
    tracer.run(move |ctx| {
        for (tid, want) in [
            (
                main,
                Restart::Rewind {
                    nr: libc::SYS_read,
                    code: ERESTARTSYS,
                },
            ),
            (
                futexer,
                Restart::Rewind {
                    nr: libc::SYS_futex,
                    code: ERESTARTSYS,
                },
            ),
            (
                sleeper,
                Restart::Eintr {
                    nr: libc::SYS_nanosleep,
                },
            ),
        ] {
            let mut regs = ctx.get_regs(tid).unwrap();
            assert_eq!(interrupted_syscall(&regs), want, "tid {tid}");
            assert_ne!(regs.fs_base, 0, "TLS base of tid {tid}");
            if prepare {
                // Resume as a restored thread would: from rewritten registers.
                let before = regs;
                assert_eq!(prepare_for_resume(&mut regs), want);
                assert_eq!(regs.orig_rax, u64::MAX);
                if let Restart::Rewind { nr, .. } = want {
                    assert_eq!((regs.rip, regs.rax), (before.rip - 2, nr as u64));
                }
                ctx.set_regs(tid, &regs).unwrap();
            }
            ctx.detach(tid, 0).unwrap();
        }
        assert!(ctx.tracees().is_empty());
    });
    t.prog.check_continues();
}

#[test]
fn seize_all_threads_classifies_interrupted_syscalls() {
    check_seize_all(false);
}

#[test]
fn prepared_registers_resume_correctly() {
    check_seize_all(true);
}

#[test]
fn single_syscall_injection() {
    let (mut t, _) = start_threads(&bins().static_bin, "threads");
    let tracer = tracer();
    seize_all_in_syscalls(&tracer, &t, Options::EXITKILL);
    let (pid, sleeper, futexer) = (t.main, t.sleeper, t.futexer);
    let msg = b"hello from an injected write\n";
    tracer.run(move |ctx| {
        let before: Vec<_> = [pid, sleeper, futexer]
            .iter()
            .map(|&tid| (ctx.get_regs(tid).unwrap(), ctx.get_sigmask(tid).unwrap()))
            .collect();
        assert_eq!(
            ctx.syscall(pid, libc::SYS_getpid, [0; 6]).unwrap(),
            pid as i64
        );
        assert_eq!(
            ctx.syscall(futexer, libc::SYS_gettid, [0; 6]).unwrap(),
            futexer as i64
        );
        assert_eq!(
            ctx.syscall(futexer, libc::SYS_getpid, [0; 6]).unwrap(),
            pid as i64
        );
        assert_eq!(
            ctx.syscall(sleeper, libc::SYS_gettid, [0; 6]).unwrap(),
            sleeper as i64
        );
        // A signal that arrives for an injected-into thread is not lost:
        // SIGSTOP (which no mask blocks) queued while the thread sits in a
        // ptrace stop is dequeued when the injection resumes it, and set
        // aside for the caller.
        // SAFETY: a signal to a thread of our own child.
        let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, sleeper, libc::SIGSTOP) };
        assert_eq!(r, 0);
        assert_eq!(
            ctx.syscall(sleeper, libc::SYS_getppid, [0; 6]).unwrap(),
            std::process::id() as i64
        );
        match ctx.take_events(sleeper).as_slice() {
            [Stop::Signal(info)] => {
                assert_eq!(info.signo(), libc::SIGSTOP);
                assert_eq!(info.pid(), std::process::id() as i32);
            }
            e => panic!("{e:?}"),
        }
        // Errors come back as -errno.
        assert_eq!(
            ctx.syscall(pid, libc::SYS_close, [u64::MAX, 0, 0, 0, 0, 0])
                .unwrap(),
            -(libc::EBADF as i64)
        );
        // mmap a page, fill it from outside, read it back, write it to stdout.
        let page = ctx
            .syscall(
                pid,
                libc::SYS_mmap,
                [
                    0,
                    4096,
                    (libc::PROT_READ | libc::PROT_WRITE) as u64,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .unwrap();
        assert!(page > 0, "mmap: {page}");
        let page = page as u64;
        mem::write_mem(pid, page, msg).unwrap();
        assert_eq!(mem::read_vec(pid, page, msg.len()).unwrap(), msg);
        ctx.poke(pid, page + 1024, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(ctx.peek(pid, page + 1024).unwrap(), 0x1122_3344_5566_7788);
        let n = ctx
            .syscall(
                sleeper,
                libc::SYS_write,
                [1, page, msg.len() as u64, 0, 0, 0],
            )
            .unwrap();
        assert_eq!(n, msg.len() as i64);
        // Through an explicit instruction address, catching the exit.
        let insn = ctx.syscall_insn(pid).unwrap();
        assert_eq!(
            ctx.syscall_at(
                pid,
                insn,
                InjectMode::CatchExit,
                libc::SYS_munmap,
                [page, 4096, 0, 0, 0, 0]
            )
            .unwrap(),
            0
        );
        assert!(
            !procfs::read_maps(pid)
                .unwrap()
                .iter()
                .any(|m| m.contains(page)),
            "the injected munmap left the page"
        );
        // Registers and masks are as they were; after the CatchExit
        // injection (which ends in a syscall-exit stop) the main thread's
        // come back with the restart fix-up applied: read() re-executes.
        for (i, &tid) in [pid, sleeper, futexer].iter().enumerate() {
            let mut want = before[i].0;
            if tid == pid {
                prepare_for_resume(&mut want);
                assert_eq!(want.rax, libc::SYS_read as u64);
            }
            assert_eq!(ctx.get_regs(tid).unwrap(), want, "regs of {tid}");
            assert_eq!(ctx.get_sigmask(tid).unwrap(), before[i].1, "mask of {tid}");
        }
        // A running thread cannot take an injection.
        ctx.cont(sleeper, 0).unwrap();
        assert!(matches!(
            ctx.syscall(sleeper, libc::SYS_getpid, [0; 6]),
            Err(PtraceError::NotStopped { .. })
        ));
        ctx.interrupt(sleeper).unwrap();
        assert_eq!(ctx.wait(sleeper).unwrap(), Stop::Interrupt);
        for tid in [pid, sleeper, futexer] {
            assert!(ctx.take_events(tid).is_empty());
            ctx.detach(tid, 0).unwrap();
        }
    });
    assert_eq!(t.prog.line(), "hello from an injected write");
    t.prog.check_continues();
}

fn install(ctx: &mut TraceCtx, tid: Tid, config: GadgetConfig) -> Gadget {
    let maps = procfs::read_maps(tid).unwrap();
    let at = find_hole(&maps, &maps, config.size()).unwrap();
    let g = Gadget::install(ctx, tid, at, config).unwrap();
    let maps = procfs::read_maps(tid).unwrap();
    let code = maps.iter().find(|m| m.contains(at)).unwrap();
    assert!(code.exec && !code.write, "code page {code:?}");
    assert!(maps.iter().any(|m| m.contains(g.layout().data) && m.write));
    g
}

#[test]
fn gadget_batches_and_early_stop() {
    let (mut t, _) = start_threads(&bins().static_bin, "threads");
    let tracer = tracer();
    let pid = t.main;
    tracer.run(move |ctx| {
        // As the restorer will (restore-pitfalls §9.1): seccomp suspended.
        ctx.seize(pid, Options::EXITKILL | Options::SUSPEND_SECCOMP)
            .unwrap();
        ctx.interrupt(pid).unwrap();
        assert_eq!(ctx.wait(pid).unwrap(), Stop::Interrupt);
        let before = (ctx.get_regs(pid).unwrap(), ctx.get_sigmask(pid).unwrap());
        let mut g = install(ctx, pid, GadgetConfig::default());

        // 1000 syscalls in one PTRACE_CONT.
        let entries: Vec<Entry> = (0..1000)
            .map(|i| {
                Entry::new(
                    if i % 2 == 0 {
                        libc::SYS_getpid
                    } else {
                        libc::SYS_gettid
                    },
                    [0; 6],
                )
            })
            .collect();
        let r = g.run(ctx, pid, &entries).unwrap();
        assert_eq!(r, vec![pid as i64; 1000]);

        // Pointer arguments from the data area, an output buffer read back.
        let msg = g.data(b"written by the gadget\n").unwrap();
        let uts = g.data_zeroed(std::mem::size_of::<libc::utsname>()).unwrap();
        let r = g
            .run(
                ctx,
                pid,
                &[
                    Entry::new(libc::SYS_write, [1, msg, 22, 0, 0, 0]),
                    Entry::new(libc::SYS_uname, [uts, 0, 0, 0, 0, 0]),
                ],
            )
            .unwrap();
        assert_eq!(r, vec![22, 0]);
        assert_eq!(&g.read(uts, 5).unwrap(), b"Linux");
        assert_eq!(g.data_used(), 0, "reset after the run");

        // Early stop: index, errno and the results before it.
        let e = g
            .run(
                ctx,
                pid,
                &[
                    Entry::new(libc::SYS_getpid, [0; 6]),
                    Entry::new(libc::SYS_close, [u64::MAX, 0, 0, 0, 0, 0]).may_fail(),
                    Entry::new(libc::SYS_getpid, [0; 6]),
                    Entry::new(libc::SYS_close, [9999, 0, 0, 0, 0, 0]),
                    Entry::new(libc::SYS_getpid, [0; 6]),
                ],
            )
            .unwrap_err();
        let GadgetError::Failed(b) = e else {
            panic!("{e}")
        };
        assert_eq!((b.index, b.errno), (3, libc::EBADF));
        assert_eq!(b.entry.nr, libc::SYS_close);
        assert_eq!(
            b.completed,
            vec![pid as i64, -(libc::EBADF as i64), pid as i64]
        );

        // Batches longer than the table run in several CONTs; indices are
        // the batch's.
        let mut small = install(
            ctx,
            pid,
            GadgetConfig {
                entries: 16,
                data_size: 4096,
                stacks: 1,
                stack_size: 4096,
            },
        );
        let mut long: Vec<Entry> = (0..100)
            .map(|_| Entry::new(libc::SYS_getpid, [0; 6]))
            .collect();
        assert_eq!(small.run(ctx, pid, &long).unwrap().len(), 100);
        long[50] = Entry::new(libc::SYS_close, [9999, 0, 0, 0, 0, 0]);
        match small.run(ctx, pid, &long) {
            Err(GadgetError::Failed(b)) => assert_eq!((b.index, b.completed.len()), (50, 50)),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            small.data(&[0; 5000]),
            Err(GadgetError::DataFull { .. })
        ));

        assert_eq!(
            (ctx.get_regs(pid).unwrap(), ctx.get_sigmask(pid).unwrap()),
            before
        );
        let (base, size) = (g.layout().base, g.layout().size);
        g.remove(ctx, pid).unwrap();
        small.remove(ctx, pid).unwrap();
        assert!(
            !procfs::read_maps(pid)
                .unwrap()
                .iter()
                .any(|m| m.start < base + size && base < m.end),
            "gadget still mapped"
        );
        // remove() ends in a syscall-exit stop: registers come back
        // prepared for resuming (read() rewound).
        let mut want = before.0;
        prepare_for_resume(&mut want);
        assert_eq!(
            (ctx.get_regs(pid).unwrap(), ctx.get_sigmask(pid).unwrap()),
            (want, before.1)
        );
        assert!(ctx.take_events(pid).is_empty());
        ctx.detach(pid, 0).unwrap();
    });
    assert_eq!(t.prog.line(), "written by the gadget");
    t.prog.check_continues();
}

#[test]
fn gadget_survives_unmapping_everything_else() {
    let mut p = Prog::spawn(&bins().static_bin, "idle");
    let tracer = tracer();
    assert_eq!(p.line(), format!("ready {}", p.pid));
    let pid = p.pid;
    let stop = tracer.run(move |ctx| {
        ctx.seize(pid, Options::EXITKILL).unwrap();
        ctx.interrupt(pid).unwrap();
        assert_eq!(ctx.wait(pid).unwrap(), Stop::Interrupt);
        let mut g = install(ctx, pid, GadgetConfig::default());
        let l = *g.layout();
        // glibc registered an rseq area in the TLS about to go away; the
        // kernel would fault writing to it on the next return to user mode
        // (restore-pitfalls §0.2): unregister it first.
        let rseq = ctx.rseq_configuration(pid).unwrap();
        assert_ne!(rseq.rseq_abi_pointer, 0);
        let mut victims = vec![Entry::new(
            libc::SYS_rseq,
            [
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                1, // RSEQ_FLAG_UNREGISTER
                rseq.signature as u64,
                0,
                0,
            ],
        )];
        victims.extend(
            procfs::read_maps(pid)
                .unwrap()
                .iter()
                .filter(|m| {
                    m.kind != MapKind::Vsyscall && !(m.start < l.base + l.size && l.base < m.end)
                })
                .map(|m| Entry::new(libc::SYS_munmap, [m.start, m.len(), 0, 0, 0, 0])),
        );
        assert!(victims.len() >= 6, "{victims:?}");
        let r = g.run(ctx, pid, &victims).unwrap();
        assert!(r.iter().all(|&x| x == 0), "{r:?}");
        let left = procfs::read_maps(pid).unwrap();
        assert!(
            left.iter()
                .all(|m| m.kind == MapKind::Vsyscall
                    || (l.base <= m.start && m.end <= l.base + l.size)),
            "{left:?}"
        );
        // No vDSO any more: injections go through the gadget's own syscall.
        assert!(ctx.syscall(pid, libc::SYS_getpid, [0; 6]).is_err());
        assert_eq!(
            ctx.syscall_at(
                pid,
                l.syscall_insn(),
                InjectMode::Step,
                libc::SYS_getpid,
                [0; 6]
            )
            .unwrap(),
            pid as i64
        );
        // The gadget still runs batches; the last entry ends the process.
        match g.run(
            ctx,
            pid,
            &[
                Entry::new(libc::SYS_getpid, [0; 6]),
                Entry::new(libc::SYS_exit_group, [42, 0, 0, 0, 0, 0]),
            ],
        ) {
            Err(GadgetError::Exited { stop }) => *stop,
            r => panic!("{r:?}"),
        }
    });
    assert_eq!(stop, Stop::Exited { code: 42 });
    // The tracer thread (our thread group) reaped it.
    p.reaped = true;
}

#[test]
fn gadget_runs_on_several_threads() {
    let (mut t, _) = start_threads(&bins().static_bin, "threads");
    let tracer = tracer();
    seize_all_in_syscalls(&tracer, &t, Options::EXITKILL);
    let (pid, sleeper, futexer) = (t.main, t.sleeper, t.futexer);
    tracer.run(move |ctx| {
        let before: Vec<_> = [pid, sleeper, futexer]
            .iter()
            .map(|&tid| ctx.get_regs(tid).unwrap())
            .collect();
        let mut g = install(
            ctx,
            pid,
            GadgetConfig {
                stacks: 2,
                ..GadgetConfig::default()
            },
        );
        let gettid = [Entry::new(libc::SYS_gettid, [0; 6]); 10];
        for round in 0..3 {
            for tid in [futexer, sleeper] {
                assert_eq!(
                    g.run(ctx, tid, &gettid).unwrap(),
                    vec![tid as i64; 10],
                    "round {round}"
                );
            }
        }
        // Two stacks, both taken: a third thread must wait for one.
        assert!(matches!(
            g.run(ctx, pid, &gettid),
            Err(GadgetError::NoStack { .. })
        ));
        g.release_thread(sleeper);
        assert_eq!(g.run(ctx, pid, &gettid).unwrap(), vec![pid as i64; 10]);
        g.remove(ctx, futexer).unwrap();
        for (i, &tid) in [pid, sleeper, futexer].iter().enumerate() {
            let mut want = before[i];
            if tid == futexer {
                prepare_for_resume(&mut want);
            }
            assert_eq!(ctx.get_regs(tid).unwrap(), want);
            ctx.detach(tid, 0).unwrap();
        }
    });
    t.prog.check_continues();
}

#[test]
fn xstate_sigmask_pending_signals_robust_list() {
    let (mut t, _) = start_threads(&bins().static_bin, "threads");
    let tracer = tracer();
    let (pid, sleeper, futexer) = (t.main, t.sleeper, t.futexer);
    // Blocked in every thread, so they stay queued: one for the main thread
    // only, one for the process.
    // SAFETY: signals to our own child, by pid and tid.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGUSR1), 0);
        assert_eq!(libc::kill(pid, libc::SIGUSR2), 0);
    }
    seize_all_in_syscalls(&tracer, &t, Options::EXITKILL);
    tracer.run(move |ctx| {
        // xstate: exact length, header, an XMM register round trip.
        let orig = ctx.get_xstate(futexer).unwrap();
        assert!(orig.len() >= 576, "{}", orig.len());
        assert_eq!(orig.xcomp_bv(), 0);
        assert_eq!(orig.xcr0() & 0b11, 0b11, "x87 and SSE are always enabled");
        orig.validate(orig.xcr0()).unwrap();
        let pattern: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        let mut x = orig.clone();
        x.set_xmm(5, pattern);
        ctx.set_xstate(futexer, &x).unwrap();
        let back = ctx.get_xstate(futexer).unwrap();
        assert_eq!(back.xmm(5), pattern);
        assert_eq!(back.len(), orig.len());
        // The wrong length is refused before the kernel sees it.
        let mut short = orig.clone().into_vec();
        short.truncate(orig.len() - 64);
        let short = sprout_snapshot::ptrace::Xstate::from_bytes(short).unwrap();
        assert!(matches!(
            ctx.set_xstate(futexer, &short),
            Err(PtraceError::XstateSize { .. })
        ));
        ctx.set_xstate(futexer, &orig).unwrap();
        assert_eq!(ctx.get_xstate(futexer).unwrap().xmm(5), orig.xmm(5));

        // Signal mask round trip; SIGKILL and SIGSTOP cannot be blocked.
        let bit = |s: i32| 1u64 << (s - 1);
        let m = ctx.get_sigmask(sleeper).unwrap();
        assert_eq!(
            m & (bit(libc::SIGUSR1) | bit(libc::SIGUSR2)),
            bit(libc::SIGUSR1) | bit(libc::SIGUSR2)
        );
        ctx.set_sigmask(sleeper, m | bit(libc::SIGHUP)).unwrap();
        assert_eq!(ctx.get_sigmask(sleeper).unwrap(), m | bit(libc::SIGHUP));
        ctx.set_sigmask(sleeper, u64::MAX).unwrap();
        assert_eq!(
            ctx.get_sigmask(sleeper).unwrap(),
            !bit(libc::SIGKILL) & !bit(libc::SIGSTOP)
        );
        ctx.set_sigmask(sleeper, m).unwrap();

        // Pending signals: private queue of the main thread, shared queue.
        let private = ctx.peek_siginfo(pid, false).unwrap();
        assert_eq!(
            private.iter().map(|i| i.signo()).collect::<Vec<_>>(),
            vec![libc::SIGUSR1]
        );
        assert_eq!(private[0].code(), libc::SI_TKILL);
        let shared = ctx.peek_siginfo(pid, true).unwrap();
        assert_eq!(
            shared.iter().map(|i| i.signo()).collect::<Vec<_>>(),
            vec![libc::SIGUSR2]
        );
        assert!(ctx.peek_siginfo(futexer, false).unwrap().is_empty());

        // Every glibc thread registers a robust list.
        for tid in [pid, sleeper, futexer] {
            let (head, len) = mem::get_robust_list(tid).unwrap();
            assert!(head != 0 && len == 24, "{tid}: {head:#x} {len}");
        }
        for tid in [pid, sleeper, futexer] {
            ctx.detach(tid, 0).unwrap();
        }
    });
    t.prog.check_continues();
}

#[test]
fn rseq_configuration_is_glibcs() {
    let (mut t, first) = start_threads(&bins().dynamic_bin, "rseq");
    let tracer = tracer();
    // "rseq=0x... size=N"
    let first = first.unwrap();
    let area = u64::from_str_radix(
        first
            .split(' ')
            .next()
            .unwrap()
            .trim_start_matches("rseq=0x"),
        16,
    )
    .unwrap();
    seize_all_in_syscalls(&tracer, &t, Options::EXITKILL);
    let (pid, sleeper, futexer) = (t.main, t.sleeper, t.futexer);
    let confs = tracer.run(move |ctx| {
        let c: Vec<_> = [pid, sleeper, futexer]
            .iter()
            .map(|&tid| ctx.rseq_configuration(tid).unwrap())
            .collect();
        for tid in [pid, sleeper, futexer] {
            ctx.detach(tid, 0).unwrap();
        }
        c
    });
    assert_eq!(confs[0].rseq_abi_pointer, area, "{first}: {confs:?}");
    for c in &confs {
        assert_eq!(c.signature, 0x5305_3053, "{confs:?}");
        assert!(c.rseq_abi_size >= 20, "{confs:?}");
        assert_ne!(c.rseq_abi_pointer, 0);
    }
    // Each thread has its own area, in its own TLS.
    assert_ne!(confs[1].rseq_abi_pointer, confs[2].rseq_abi_pointer);
    t.prog.check_continues();
}

#[test]
fn clone3_set_tid_in_new_pid_namespace() {
    const WANT: i32 = 4242;
    let mut p = Prog::spawn(&bins().static_bin, "pidns");
    let tracer = tracer();
    let init: Tid = p.line().parse().unwrap();
    let _kill = KillOnDrop(mem::pidfd_open(init).unwrap());
    wait_until("the namespace's init in pause()", || {
        in_syscall(init, init, libc::SYS_pause)
    });
    assert_eq!(
        procfs::status_field(init, "NSpid").unwrap(),
        format!("{init}\t1")
    );
    let (new_tid, tid_in_ns, gone) = tracer.run(move |ctx| {
        ctx.seize(init, Options::EXITKILL | Options::TRACECLONE)
            .unwrap();
        ctx.interrupt(init).unwrap();
        assert_eq!(ctx.wait(init).unwrap(), Stop::Interrupt);
        let mut g = install(ctx, init, GadgetConfig::default());
        let set_tid = g.data(&WANT.to_le_bytes()).unwrap();
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        // struct clone_args: flags, pidfd, child_tid, parent_tid,
        // exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
        let args: Vec<u8> = [flags, 0, 0, 0, 0, 0, 0, 0, set_tid, 1, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let args = g.data(&args).unwrap();
        let r = g
            .run(
                ctx,
                init,
                &[Entry::new(libc::SYS_clone3, [args, 88, 0, 0, 0, 0])],
            )
            .unwrap();
        assert_eq!(
            r,
            vec![WANT as i64],
            "clone3 returns the tid in the namespace"
        );
        let events = ctx.take_events(init);
        let new_tid = match events.as_slice() {
            [Stop::Clone { new_tid, .. }] => *new_tid,
            e => panic!("{e:?}"),
        };
        // The new thread reports its first stop before running user code.
        assert_eq!(ctx.wait(new_tid).unwrap(), Stop::Interrupt);
        let regs = ctx.get_regs(new_tid).unwrap();
        assert_eq!(
            regs.rip,
            g.layout().code + 0x22,
            "right after the gadget's syscall"
        );
        let nspid = procfs::status_field(new_tid, "NSpid").unwrap();
        // Our registers, our code: the thread runs a batch on its own stack.
        let r = g
            .run(ctx, new_tid, &[Entry::new(libc::SYS_gettid, [0; 6])])
            .unwrap();
        let gone = match g.run(ctx, new_tid, &[Entry::new(libc::SYS_exit, [0; 6])]) {
            Err(GadgetError::Exited { stop }) => *stop,
            r => panic!("{r:?}"),
        };
        ctx.kill(init).unwrap();
        assert!(ctx.tracees().is_empty(), "{:?}", ctx.tracees());
        (new_tid, (nspid, r[0]), gone)
    });
    assert_eq!(tid_in_ns.0, format!("{new_tid}\t{WANT}"));
    assert_eq!(tid_in_ns.1, WANT as i64);
    assert_eq!(gone, Stop::Exited { code: 0 });
    // The intermediate process sees its child die and exits.
    assert_eq!(p.wait_exit(), 0);
}
