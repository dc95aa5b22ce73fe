//! Tests of the seccomp module: compile() on its own (structure, and what the
//! compiled filters decide, via the BPF interpreter), then the same programs
//! installed in forked children against the real kernel.

use super::*;
use serde_json::{Value, json};

fn profile(value: Value) -> LinuxSeccomp {
    serde_json::from_value(value).expect("test profile parses")
}

fn compile(value: Value) -> SeccompProgram {
    SeccompProgram::compile(&profile(value)).expect("test profile compiles")
}

fn compile_err(value: Value) -> SeccompError {
    SeccompProgram::compile(&profile(value)).expect_err("test profile must not compile")
}

fn nr(name: &str) -> i64 {
    syscall_number(name).unwrap_or_else(|| panic!("no syscall {name}"))
}

fn args(a0: u64, a1: u64) -> [u64; 6] {
    [a0, a1, 0, 0, 0, 0]
}

const NO_ARGS: [u64; 6] = [0; 6];
const PRIO_PROCESS: u64 = libc::PRIO_PROCESS as u64;
const PRIO_PGRP: u64 = libc::PRIO_PGRP as u64;
const PRIO_USER: u64 = libc::PRIO_USER as u64;
const QUERY_PERSONALITY: u64 = 0xffff_ffff;
const EXDEV: u16 = libc::EXDEV as u16;
const EACCES: u16 = libc::EACCES as u16;
const ENOTTY: u16 = libc::ENOTTY as u16;
const ENOSYS: u16 = libc::ENOSYS as u16;

fn roles(prog: &SeccompProgram) -> Vec<(FilterRole, Verdict)> {
    prog.filters().map(|f| (f.role, f.verdict)).collect()
}

/// The profile of the brief: an allow list, two ERRNO rules with argument
/// conditions and different errnos, everything else `default`.
fn two_errno_rules_profile(default: &str, default_errno: Option<u32>) -> Value {
    let mut p = json!({
        "defaultAction": default,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            { "names": ["exit_group", "exit", "getppid", "getpid", "rt_sigreturn"],
              "action": "SCMP_ACT_ALLOW" },
            { "names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": PRIO_PGRP, "op": "SCMP_CMP_EQ" }] },
            { "names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOTTY,
              "args": [{ "index": 0, "value": QUERY_PERSONALITY, "op": "SCMP_CMP_EQ" }] },
            { "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES,
              "args": [{ "index": 0, "value": PRIO_PROCESS, "op": "SCMP_CMP_EQ" }] }
        ]
    });
    if let Some(e) = default_errno {
        p["defaultErrnoRet"] = json!(e);
    }
    p
}

// ---------------------------------------------------------------------------
// compile(): structure
// ---------------------------------------------------------------------------

#[test]
fn allow_list_with_errno_default_is_one_filter() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["read", "write", "getpid"], "action": "SCMP_ACT_ALLOW" }]
    }));
    assert_eq!(prog.filter_count(), 1);
    assert_eq!(roles(&prog), [(FilterRole::Default, Verdict::Errno(1))]);
    assert_eq!(prog.flags(), 0);
    assert!(prog.unknown_syscalls().is_empty());
    assert_eq!(prog.evaluate(nr("getpid"), NO_ARGS), Verdict::Allow);
    assert_eq!(prog.evaluate(nr("mount"), NO_ARGS), Verdict::Errno(1));
}

#[test]
fn default_allow_needs_no_default_filter() {
    let prog = compile(json!({ "defaultAction": "SCMP_ACT_ALLOW" }));
    assert_eq!(prog.filter_count(), 0);
    assert_eq!(prog.evaluate(nr("mount"), NO_ARGS), Verdict::Allow);

    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["getpid"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["mount", "umount2"], "action": "SCMP_ACT_ERRNO" }
        ]
    }));
    assert_eq!(roles(&prog), [(FilterRole::Rules, Verdict::Errno(1))]);
    assert_eq!(prog.evaluate(nr("umount2"), NO_ARGS), Verdict::Errno(1));
    assert_eq!(prog.evaluate(nr("getpid"), NO_ARGS), Verdict::Allow);
    assert_eq!(prog.evaluate(nr("gettid"), NO_ARGS), Verdict::Allow);
}

#[test]
fn one_filter_per_distinct_action_and_data() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [
            { "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 },
            { "names": ["umount2"], "action": "SCMP_ACT_ERRNO" },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            { "names": ["getppid"], "action": "SCMP_ACT_TRAP" },
            { "names": ["getpid"], "action": "SCMP_ACT_LOG" },
            { "names": ["gettid"], "action": "SCMP_ACT_KILL" },
            { "names": ["getuid"], "action": "SCMP_ACT_KILL_THREAD" },
            { "names": ["getgid"], "action": "SCMP_ACT_TRACE" },
            { "names": ["geteuid"], "action": "SCMP_ACT_TRACE", "errnoRet": 4242 },
            { "names": ["getegid"], "action": "SCMP_ACT_KILL_PROCESS" }
        ]
    }));
    // The rule filters in reverse order of first appearance; the default
    // filter comes last instead of first because it blocks seccomp(2), which
    // no rule names.
    assert_eq!(
        roles(&prog),
        [
            (FilterRole::Rules, Verdict::KillProcess),
            (FilterRole::Rules, Verdict::Trace(4242)),
            (FilterRole::Rules, Verdict::Trace(1)),
            (FilterRole::Rules, Verdict::KillThread),
            (FilterRole::Rules, Verdict::Log),
            (FilterRole::Rules, Verdict::Trap),
            (FilterRole::Rules, Verdict::Errno(38)),
            (FilterRole::Rules, Verdict::Errno(1)),
            (FilterRole::Default, Verdict::KillProcess),
        ]
    );
    for (name, verdict) in [
        ("read", Verdict::Allow),
        ("mount", Verdict::Errno(1)),
        ("umount2", Verdict::Errno(1)),
        ("clone3", Verdict::Errno(38)),
        ("getppid", Verdict::Trap),
        ("getpid", Verdict::Log),
        ("gettid", Verdict::KillThread),
        ("getuid", Verdict::KillThread),
        ("getgid", Verdict::Trace(1)),
        ("geteuid", Verdict::Trace(4242)),
        ("getegid", Verdict::KillProcess),
        ("close", Verdict::KillProcess),
    ] {
        assert_eq!(prog.evaluate(nr(name), NO_ARGS), verdict, "{name}");
    }
}

#[test]
fn unknown_syscalls_are_skipped_and_listed() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            { "names": ["_llseek", "getpid", "socketcall", "no_such_call"],
              "action": "SCMP_ACT_ALLOW" },
            { "names": ["fstat64", "_llseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            { "names": ["mmap2"], "action": "SCMP_ACT_KILL" }
        ]
    }));
    assert_eq!(
        prog.unknown_syscalls(),
        ["_llseek", "socketcall", "no_such_call", "fstat64", "mmap2"]
    );
    // Rules whose names are all unknown make no filter.
    assert_eq!(roles(&prog), [(FilterRole::Default, Verdict::Errno(1))]);
    assert_eq!(prog.evaluate(nr("getpid"), NO_ARGS), Verdict::Allow);
    assert_eq!(prog.evaluate(nr("read"), NO_ARGS), Verdict::Errno(1));
}

#[test]
fn notify_is_rejected_with_a_clear_error() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["getpid"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["mount"], "action": "SCMP_ACT_NOTIFY" }
        ]
    }));
    assert!(matches!(
        err,
        SeccompError::NotifyUnsupported {
            place: ProfilePlace::Rule(1)
        }
    ));
    let msg = err.to_string();
    assert!(
        msg.contains("syscalls[1]") && msg.contains("SCMP_ACT_NOTIFY"),
        "{msg}"
    );
    assert!(
        msg.contains("not supported") && msg.contains("listener"),
        "{msg}"
    );

    let err = compile_err(json!({ "defaultAction": "SCMP_ACT_NOTIFY" }));
    assert!(matches!(
        err,
        SeccompError::NotifyUnsupported {
            place: ProfilePlace::Default
        }
    ));

    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "listenerPath": "/run/agent.sock"
    }));
    assert!(
        matches!(err, SeccompError::ListenerUnsupported { .. }),
        "{err}"
    );

    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]
    }));
    assert!(matches!(err, SeccompError::UnsupportedFlag { .. }), "{err}");
}

#[test]
fn bad_argument_index_is_rejected() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            { "names": ["getpid"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 6, "value": 0, "op": "SCMP_CMP_EQ" }] }
        ]
    }));
    assert!(
        matches!(err, SeccompError::ArgIndexOutOfRange { rule: 1, index: 6 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("argument index 6"), "{err}");
    // Index 5 is the last valid one.
    compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["personality"], "action": "SCMP_ACT_ALLOW",
                       "args": [{ "index": 5, "value": 0, "op": "SCMP_CMP_EQ" }] }]
    }));
}

#[test]
fn errno_ret_is_checked() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getpid"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1 }]
    }));
    assert!(matches!(
        err,
        SeccompError::ErrnoNotAllowed {
            place: ProfilePlace::Rule(0),
            action: LinuxSeccompAction::ScmpActAllow
        }
    ));
    let err = compile_err(json!({ "defaultAction": "SCMP_ACT_KILL", "defaultErrnoRet": 1 }));
    assert!(matches!(
        err,
        SeccompError::ErrnoNotAllowed {
            place: ProfilePlace::Default,
            ..
        }
    ));
    let err = compile_err(json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 4096 }));
    assert!(
        matches!(
            err,
            SeccompError::ErrnoOutOfRange {
                value: 4096,
                max: 4095,
                ..
            }
        ),
        "{err:?}"
    );
    // TRACE data is not an errno: any 16-bit value.
    let prog = compile(json!({ "defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 65535 }));
    assert_eq!(roles(&prog), [(FilterRole::Default, Verdict::Trace(65535))]);
    let err = compile_err(json!({ "defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 65536 }));
    assert!(
        matches!(err, SeccompError::ErrnoOutOfRange { .. }),
        "{err:?}"
    );
    // defaultErrnoRet applies to the default action; errnoRet 0 is allowed
    // (the call "succeeds" without running).
    let prog = compile(json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 0 }));
    assert_eq!(prog.evaluate(nr("getpid"), NO_ARGS), Verdict::Errno(0));
    let prog = compile(json!({ "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38 }));
    assert_eq!(prog.evaluate(nr("getpid"), NO_ARGS), Verdict::Errno(38));
}

#[test]
fn empty_syscall_name_is_rejected() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getpid", ""], "action": "SCMP_ACT_ALLOW" }]
    }));
    assert!(
        matches!(err, SeccompError::EmptySyscallName { rule: 0 }),
        "{err:?}"
    );
}

#[test]
fn architectures() {
    for archs in [
        json!([]),
        json!(["SCMP_ARCH_X86_64"]),
        json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        json!(["SCMP_ARCH_NATIVE"]),
    ] {
        compile(json!({ "defaultAction": "SCMP_ACT_ERRNO", "architectures": archs }));
    }
    compile(json!({ "defaultAction": "SCMP_ACT_ERRNO" }));
    for archs in [
        json!(["SCMP_ARCH_X86"]),
        json!(["SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
    ] {
        let err = compile_err(json!({ "defaultAction": "SCMP_ACT_ERRNO", "architectures": archs }));
        assert!(
            matches!(err, SeccompError::UnsupportedArchitectures { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("SCMP_ARCH_X86_64"), "{err}");
    }
}

#[test]
fn flags_are_mapped() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                  "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]
    }));
    assert_eq!(
        prog.flags(),
        libc::SECCOMP_FILTER_FLAG_TSYNC
            | libc::SECCOMP_FILTER_FLAG_LOG
            | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
}

// ---------------------------------------------------------------------------
// compile(): what the filters decide
// ---------------------------------------------------------------------------

#[test]
fn same_index_conditions_are_ored() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
            { "index": 0, "value": 0, "op": "SCMP_CMP_EQ" },
            { "index": 0, "value": 8, "op": "SCMP_CMP_EQ" },
            { "index": 0, "value": QUERY_PERSONALITY, "op": "SCMP_CMP_EQ" }
        ]}]
    }));
    let p = nr("personality");
    for allowed in [0, 8, QUERY_PERSONALITY] {
        assert_eq!(
            prog.evaluate(p, args(allowed, 0)),
            Verdict::Allow,
            "{allowed:#x}"
        );
    }
    for denied in [1, 0x20000, u64::MAX] {
        assert_eq!(
            prog.evaluate(p, args(denied, 0)),
            Verdict::Errno(1),
            "{denied:#x}"
        );
    }
}

#[test]
fn different_index_conditions_are_anded() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getpriority"], "action": "SCMP_ACT_ALLOW", "args": [
            { "index": 0, "value": PRIO_PROCESS, "op": "SCMP_CMP_EQ" },
            { "index": 1, "value": 0, "op": "SCMP_CMP_EQ" }
        ]}]
    }));
    let g = nr("getpriority");
    assert_eq!(prog.evaluate(g, args(PRIO_PROCESS, 0)), Verdict::Allow);
    assert_eq!(prog.evaluate(g, args(PRIO_PROCESS, 1)), Verdict::Errno(1));
    assert_eq!(prog.evaluate(g, args(PRIO_PGRP, 0)), Verdict::Errno(1));
}

#[test]
fn a_repeated_index_ors_all_conditions_like_runc() {
    // runc: once any index repeats, every condition becomes a rule of its own.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getpriority"], "action": "SCMP_ACT_ALLOW", "args": [
            { "index": 0, "value": PRIO_PROCESS, "op": "SCMP_CMP_EQ" },
            { "index": 0, "value": PRIO_PGRP, "op": "SCMP_CMP_EQ" },
            { "index": 1, "value": 7, "op": "SCMP_CMP_EQ" }
        ]}]
    }));
    let g = nr("getpriority");
    assert_eq!(prog.evaluate(g, args(PRIO_PROCESS, 1)), Verdict::Allow);
    assert_eq!(prog.evaluate(g, args(PRIO_PGRP, 1)), Verdict::Allow);
    assert_eq!(prog.evaluate(g, args(PRIO_USER, 7)), Verdict::Allow);
    assert_eq!(prog.evaluate(g, args(PRIO_USER, 1)), Verdict::Errno(1));
}

#[test]
fn comparisons_use_all_64_bits() {
    let rule = |op: &str, value: u64| {
        compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{ "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "args": [
                { "index": 1, "value": value, "op": op }
            ]}]
        }))
    };
    let g = nr("getpriority");
    let hit = |prog: &SeccompProgram, a1: u64| prog.evaluate(g, args(0, a1)) == Verdict::Errno(1);
    let big = 0x1_0000_0000_u64;

    let prog = rule("SCMP_CMP_EQ", big + 5);
    assert!(hit(&prog, big + 5) && !hit(&prog, 5) && !hit(&prog, big));
    let prog = rule("SCMP_CMP_NE", big + 5);
    assert!(!hit(&prog, big + 5) && hit(&prog, 5) && hit(&prog, big));
    let prog = rule("SCMP_CMP_GT", 0xffff_ffff);
    assert!(hit(&prog, big) && hit(&prog, u64::MAX) && !hit(&prog, 0xffff_ffff));
    let prog = rule("SCMP_CMP_GE", big);
    assert!(hit(&prog, big) && !hit(&prog, big - 1));
    let prog = rule("SCMP_CMP_LT", big);
    assert!(hit(&prog, big - 1) && hit(&prog, 0) && !hit(&prog, big) && !hit(&prog, big + 1));
    let prog = rule("SCMP_CMP_LE", big + 1);
    assert!(hit(&prog, big + 1) && hit(&prog, 2) && !hit(&prog, big + 2));
    // Unsigned, as in libseccomp: -1 is the largest value.
    let prog = rule("SCMP_CMP_GT", 100);
    assert!(hit(&prog, u64::MAX));
}

#[test]
fn masked_eq_is_libseccomps() {
    // (arg & value) == (valueTwo & value), on 64 bits.
    let masked = |mask: u64, datum: Option<u64>| {
        let mut arg = json!({ "index": 1, "value": mask, "op": "SCMP_CMP_MASKED_EQ" });
        if let Some(d) = datum {
            arg["valueTwo"] = json!(d);
        }
        compile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{ "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "args": [arg] }]
        }))
    };
    let g = nr("getpriority");
    let hit = |prog: &SeccompProgram, a1: u64| prog.evaluate(g, args(0, a1)) == Verdict::Errno(1);

    let prog = masked(0xffff_0000_0000_ff00, Some(0x1234_0000_0000_1200));
    assert!(hit(&prog, 0x1234_0000_0000_1200));
    assert!(hit(&prog, 0x1234_5678_9abc_12ff));
    assert!(!hit(&prog, 0x1235_0000_0000_1200));
    assert!(!hit(&prog, 0x1234_0000_0000_1300));
    // Docker's clone rule: no namespace flag set.
    let prog = masked(0x7e02_0000, Some(0));
    assert!(hit(&prog, libc::SIGCHLD as u64));
    assert!(!hit(&prog, libc::CLONE_NEWUSER as u64));
    // A missing valueTwo is 0.
    let prog = masked(0x7e02_0000, None);
    assert!(hit(&prog, 0) && !hit(&prog, libc::CLONE_NEWNS as u64));
    // Datum bits outside the mask are ignored (libseccomp masks the datum).
    let prog = masked(0xff, Some(0x1_0000_00ff));
    assert!(hit(&prog, 0xff) && hit(&prog, 0xabff) && !hit(&prog, 0xfe));
}

#[test]
fn errno_rule_beats_allow_rule_for_the_same_call() {
    for (first, second) in [
        ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"),
        ("SCMP_ACT_ERRNO", "SCMP_ACT_ALLOW"),
    ] {
        let rule = |action: &str| {
            let mut r = json!({ "names": ["getppid"], "action": action });
            if action == "SCMP_ACT_ERRNO" {
                r["errnoRet"] = json!(EACCES);
            }
            r
        };
        for default in ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS"] {
            let prog = compile(json!({
                "defaultAction": default,
                "syscalls": [rule(first), rule(second)]
            }));
            assert_eq!(
                prog.evaluate(nr("getppid"), NO_ARGS),
                Verdict::Errno(EACCES),
                "{first} then {second}, default {default}"
            );
        }
    }
    // The same with argument conditions: the ALLOW rule covers all calls,
    // the ERRNO rule some.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [
            { "names": ["getpriority"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES,
              "args": [{ "index": 0, "value": PRIO_USER, "op": "SCMP_CMP_EQ" }] }
        ]
    }));
    let g = nr("getpriority");
    assert_eq!(prog.evaluate(g, args(PRIO_USER, 0)), Verdict::Errno(EACCES));
    assert_eq!(prog.evaluate(g, args(PRIO_PGRP, 0)), Verdict::Allow);
}

#[test]
fn between_equal_actions_the_rule_listed_first_wins() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES,
              "args": [{ "index": 0, "value": PRIO_USER, "op": "SCMP_CMP_EQ" }] },
            { "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOTTY }
        ]
    }));
    let g = nr("getpriority");
    assert_eq!(prog.evaluate(g, args(PRIO_USER, 0)), Verdict::Errno(EACCES));
    assert_eq!(prog.evaluate(g, args(PRIO_PGRP, 0)), Verdict::Errno(ENOTTY));
    // More restrictive actions win whatever the order.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["getpriority"], "action": "SCMP_ACT_LOG" },
            { "names": ["getpriority"], "action": "SCMP_ACT_ERRNO" },
            { "names": ["getpriority"], "action": "SCMP_ACT_TRAP",
              "args": [{ "index": 0, "value": PRIO_USER, "op": "SCMP_CMP_EQ" }] },
            { "names": ["getpriority"], "action": "SCMP_ACT_KILL_PROCESS",
              "args": [{ "index": 1, "value": 1, "op": "SCMP_CMP_EQ" }] }
        ]
    }));
    assert_eq!(prog.evaluate(g, args(PRIO_PGRP, 0)), Verdict::Errno(1));
    assert_eq!(prog.evaluate(g, args(PRIO_USER, 0)), Verdict::Trap);
    assert_eq!(prog.evaluate(g, args(PRIO_USER, 1)), Verdict::KillProcess);
}

#[test]
fn the_profile_from_the_brief_decides_every_call() {
    let prog = compile(two_errno_rules_profile(
        "SCMP_ACT_ERRNO",
        Some(EXDEV.into()),
    ));
    assert_eq!(
        roles(&prog),
        [
            (FilterRole::Rules, Verdict::Errno(EACCES)),
            (FilterRole::Rules, Verdict::Errno(ENOTTY)),
            (FilterRole::Default, Verdict::Errno(EXDEV)),
        ]
    );
    let (p, g) = (nr("personality"), nr("getpriority"));
    for (call, a, verdict) in [
        (nr("getppid"), NO_ARGS, Verdict::Allow),
        (nr("gettid"), NO_ARGS, Verdict::Errno(EXDEV)),
        (p, args(QUERY_PERSONALITY, 0), Verdict::Errno(ENOTTY)),
        (p, args(0, 0), Verdict::Errno(EXDEV)),
        (
            p,
            args(QUERY_PERSONALITY | 1 << 32, 0),
            Verdict::Errno(EXDEV),
        ),
        (g, args(PRIO_PROCESS, 0), Verdict::Errno(EACCES)),
        (g, args(PRIO_PGRP, 0), Verdict::Allow),
        (g, args(PRIO_USER, 0), Verdict::Errno(EXDEV)),
    ] {
        assert_eq!(prog.evaluate(call, a), verdict, "{call} {a:?}");
    }
}

#[test]
fn x32_and_out_of_range_syscalls_get_enosys() {
    let x32 = |name: &str| i64::from(X32_SYSCALL_BIT) | nr(name);
    for default in ["SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_LOG"] {
        let prog = compile(json!({
            "defaultAction": default,
            "syscalls": [{ "names": ["getpid"], "action": "SCMP_ACT_ALLOW" }]
        }));
        assert_eq!(
            prog.evaluate(x32("getpid"), NO_ARGS),
            Verdict::Errno(ENOSYS),
            "{default}"
        );
        assert_eq!(
            prog.evaluate(-1, NO_ARGS),
            Verdict::Errno(ENOSYS),
            "{default}"
        );
    }
    // A deny list cannot be bypassed through the x32 numbers.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["mount"], "action": "SCMP_ACT_KILL_PROCESS" }]
    }));
    assert_eq!(prog.evaluate(nr("mount"), NO_ARGS), Verdict::KillProcess);
    assert_eq!(prog.evaluate(x32("mount"), NO_ARGS), Verdict::Errno(ENOSYS));
    assert_eq!(
        prog.evaluate(x32("getpid"), NO_ARGS),
        Verdict::Errno(ENOSYS)
    );
    assert_eq!(prog.evaluate(nr("getpid"), NO_ARGS), Verdict::Allow);
}

// ---------------------------------------------------------------------------
// compile(): install order and limits
// ---------------------------------------------------------------------------

#[test]
fn the_filter_that_blocks_seccomp_is_installed_last() {
    // seccomp not named: the default filter blocks it and goes last.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            { "names": ["getpid"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }
        ]
    }));
    assert_eq!(
        roles(&prog),
        [
            (FilterRole::Rules, Verdict::Errno(38)),
            (FilterRole::Default, Verdict::Errno(1))
        ]
    );
    // seccomp allowed: natural order (default first).
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            { "names": ["getpid", "seccomp"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }
        ]
    }));
    assert_eq!(
        roles(&prog),
        [
            (FilterRole::Default, Verdict::Errno(1)),
            (FilterRole::Rules, Verdict::Errno(38))
        ]
    );
    // seccomp denied by a rule: that rule's filter goes last.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            { "names": ["seccomp", "mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13 }
        ]
    }));
    assert_eq!(
        roles(&prog),
        [
            (FilterRole::Default, Verdict::Errno(1)),
            (FilterRole::Rules, Verdict::Errno(38)),
            (FilterRole::Rules, Verdict::Errno(13)),
        ]
    );
    // A seccomp rule that depends on the (unknowable) pointer argument counts
    // as blocking.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            { "names": ["seccomp"], "action": "SCMP_ACT_ERRNO",
              "args": [{ "index": 2, "value": 0, "op": "SCMP_CMP_EQ" }] }
        ]
    }));
    assert_eq!(prog.filters().last().unwrap().verdict, Verdict::Errno(1));
    // LOG lets the call through: no reordering needed.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["seccomp"], "action": "SCMP_ACT_LOG" },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 }
        ]
    }));
    assert_eq!(
        roles(&prog),
        [
            (FilterRole::Rules, Verdict::Errno(38)),
            (FilterRole::Rules, Verdict::Log)
        ]
    );
}

#[test]
fn two_filters_blocking_seccomp_are_rejected() {
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["seccomp"], "action": "SCMP_ACT_ERRNO" },
            { "names": ["seccomp"], "action": "SCMP_ACT_KILL_PROCESS",
              "args": [{ "index": 0, "value": 1, "op": "SCMP_CMP_EQ" }] }
        ]
    }));
    assert!(
        matches!(err, SeccompError::SeccompCallBlocked { .. }),
        "{err:?}"
    );
    // A rule on another operation than SECCOMP_SET_MODE_FILTER does not block.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["seccomp"], "action": "SCMP_ACT_ERRNO" },
            { "names": ["seccomp"], "action": "SCMP_ACT_KILL_PROCESS",
              "args": [{ "index": 0, "value": 0, "op": "SCMP_CMP_EQ" }] }
        ]
    }));
    assert_eq!(prog.filters().last().unwrap().verdict, Verdict::Errno(1));
}

#[test]
fn oversized_profiles_are_rejected() {
    let many: Vec<Value> = (0..1200)
        .map(|i| json!({ "index": 1, "value": i, "op": "SCMP_CMP_EQ" }))
        .collect();
    let err = compile_err(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["getpriority"], "action": "SCMP_ACT_ALLOW", "args": many }]
    }));
    assert!(
        matches!(
            err,
            SeccompError::Compile { .. } | SeccompError::FilterTooLarge { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("default-action filter"), "{err}");
}

/// A profile of the shape and size of Docker's default: defaultAction ERRNO
/// (EPERM), an allow list of ~340 syscalls, conditional rules, an explicit
/// EPERM list and clone3 -> ENOSYS.
fn docker_like_profile() -> Value {
    let denied = [
        "acct",
        "add_key",
        "bpf",
        "clock_adjtime",
        "clock_settime",
        "clone",
        "clone3",
        "create_module",
        "delete_module",
        "finit_module",
        "get_kernel_syms",
        "get_mempolicy",
        "init_module",
        "ioperm",
        "iopl",
        "kcmp",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "mbind",
        "mount",
        "move_pages",
        "name_to_handle_at",
        "nfsservctl",
        "open_by_handle_at",
        "perf_event_open",
        "personality",
        "pivot_root",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
        "query_module",
        "quotactl",
        "reboot",
        "request_key",
        "set_mempolicy",
        "setns",
        "settimeofday",
        "socket",
        "swapon",
        "swapoff",
        "sysfs",
        "_sysctl",
        "umount2",
        "unshare",
        "uselib",
        "userfaultfd",
        "ustat",
        "vm86",
        "vm86old",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
    ];
    let mut allowed: Vec<&str> = syscall_table::all_syscalls()
        .map(|(name, _)| name)
        .filter(|name| !denied.contains(name))
        .collect();
    allowed.sort_unstable();
    allowed.extend(["_llseek", "_newselect", "fstat64", "mmap2", "socketcall"]);
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            { "names": allowed, "action": "SCMP_ACT_ALLOW" },
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
                { "index": 0, "value": 0, "op": "SCMP_CMP_EQ" },
                { "index": 0, "value": 8, "op": "SCMP_CMP_EQ" },
                { "index": 0, "value": 131072, "op": "SCMP_CMP_EQ" },
                { "index": 0, "value": 131080, "op": "SCMP_CMP_EQ" },
                { "index": 0, "value": QUERY_PERSONALITY, "op": "SCMP_CMP_EQ" }
            ]},
            { "names": ["socket"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 40, "op": "SCMP_CMP_NE" }] },
            { "names": ["clone"], "action": "SCMP_ACT_ALLOW",
              "args": [{ "index": 0, "value": 2114060288u64, "valueTwo": 0,
                         "op": "SCMP_CMP_MASKED_EQ" }] },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            { "names": ["bdflush", "kexec_file_load", "pciconfig_read", "ustat", "uselib"],
              "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }
        ]
    })
}

#[test]
fn docker_like_profile_compiles() {
    let prog = compile(docker_like_profile());
    // seccomp is allowed, so the default filter keeps its place.
    assert_eq!(
        roles(&prog),
        [
            (FilterRole::Default, Verdict::Errno(1)),
            (FilterRole::Rules, Verdict::Errno(1)),
            (FilterRole::Rules, Verdict::Errno(38)),
        ]
    );
    assert_eq!(
        prog.unknown_syscalls(),
        [
            "_llseek",
            "_newselect",
            "fstat64",
            "mmap2",
            "socketcall",
            "bdflush",
            "pciconfig_read"
        ]
    );
    let total: usize = prog.filters().map(|f| f.instructions).sum();
    assert!(total < MAX_FILTER_INSNS, "{total} instructions");
    let p = nr("personality");
    for (call, a, verdict) in [
        (nr("read"), NO_ARGS, Verdict::Allow),
        (nr("io_pgetevents"), NO_ARGS, Verdict::Allow),
        (nr("mount"), NO_ARGS, Verdict::Errno(1)),
        (nr("clone3"), NO_ARGS, Verdict::Errno(38)),
        (nr("clone"), args(libc::SIGCHLD as u64, 0), Verdict::Allow),
        (
            nr("clone"),
            args(libc::CLONE_NEWNET as u64, 0),
            Verdict::Errno(1),
        ),
        (nr("socket"), args(libc::AF_INET as u64, 0), Verdict::Allow),
        (
            nr("socket"),
            args(libc::AF_VSOCK as u64, 0),
            Verdict::Errno(1),
        ),
        (p, args(8, 0), Verdict::Allow),
        (p, args(QUERY_PERSONALITY, 0), Verdict::Allow),
        (p, args(1, 0), Verdict::Errno(1)),
        (500, NO_ARGS, Verdict::Errno(1)),
    ] {
        assert_eq!(prog.evaluate(call, a), verdict, "{call} {a:?}");
    }
}

#[test]
fn errors_name_the_problem() {
    let info = FilterInfo {
        role: FilterRole::Default,
        verdict: Verdict::Errno(1),
        instructions: 10,
    };
    let msg = SeccompError::Install {
        index: 1,
        count: 3,
        filter: info,
        errno: libc::EACCES,
    }
    .to_string();
    assert!(msg.contains("filter 2 of 3"), "{msg}");
    assert!(
        msg.contains("SCMP_ACT_ERRNO(1)") && msg.contains("no_new_privs"),
        "{msg}"
    );
    let msg = SeccompError::ThreadSync {
        index: 0,
        count: 1,
        filter: info,
        tid: 1234,
    }
    .to_string();
    assert!(
        msg.contains("thread 1234") && msg.contains("TSYNC"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------
// The real kernel: install in a forked child, make one raw syscall, report.
// ---------------------------------------------------------------------------

/// What became of a child that installed a program and made one syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The syscall returned a non-negative value.
    Returned,
    /// The syscall failed with this errno (set by a filter, or by the
    /// syscall itself when it ran).
    Errno(i32),
    /// SIGSYS was delivered to the child's handler (SECCOMP_RET_TRAP).
    Trapped,
    /// The child was killed by this signal (SIGSYS: SECCOMP_RET_KILL_*).
    Killed(i32),
    /// Setting up failed: `prctl(PR_SET_NO_NEW_PRIVS)` or `install()`.
    SetupFailed(&'static str, i32),
}

const EXIT_TRAPPED: i32 = 199;
const EXIT_NNP_FAILED: i32 = 200;
const EXIT_INSTALL_FAILED: i32 = 201;
const EXIT_INSTALL_EACCES: i32 = 202;
const EXIT_CAPSET_FAILED: i32 = 203;

extern "C" fn exit_on_sigsys(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(EXIT_TRAPPED) }
}

/// `struct __user_cap_header_struct` of <linux/capability.h>.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of <linux/capability.h>.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChildSetup {
    /// prctl(PR_SET_NO_NEW_PRIVS) before install (the normal case).
    NoNewPrivs,
    /// Drop every capability, do not set no_new_privs: install must fail.
    NoPrivilege,
}

/// Forks; the child installs `prog`, calls `syscall(nr, args...)` and exits
/// with a code that encodes the result. The test harness is multi-threaded,
/// so the child does async-signal-safe work only: no allocation, no locks.
fn run_in_child(prog: &SeccompProgram, setup: ChildSetup, nr: i64, a: [u64; 6]) -> Outcome {
    // SAFETY: fork has no memory-safety preconditions; the child below only
    // makes raw syscalls and calls install(), which does not allocate.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: all calls are async-signal-safe syscalls on valid,
        // stack-owned arguments; the child never returns (it _exits).
        unsafe {
            // No core files for the SIGSYS deaths (core_pattern may be "core").
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = exit_on_sigsys as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGSYS);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            match setup {
                ChildSetup::NoNewPrivs => {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                        libc::_exit(EXIT_NNP_FAILED);
                    }
                }
                ChildSetup::NoPrivilege => {
                    let mut header = CapHeader {
                        version: LINUX_CAPABILITY_VERSION_3,
                        pid: 0,
                    };
                    let data = [CapData::default(); 2];
                    if libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) != 0 {
                        libc::_exit(EXIT_CAPSET_FAILED);
                    }
                }
            }
            match prog.install() {
                Ok(()) => {}
                Err(SeccompError::Install { errno, .. }) if errno == libc::EACCES => {
                    libc::_exit(EXIT_INSTALL_EACCES)
                }
                Err(_) => libc::_exit(EXIT_INSTALL_FAILED),
            }
            let rc = libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
            let errno = *libc::__errno_location();
            libc::_exit(if rc >= 0 { 0 } else { errno.clamp(1, 198) });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        return Outcome::Killed(libc::WTERMSIG(status));
    }
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    match libc::WEXITSTATUS(status) {
        0 => Outcome::Returned,
        EXIT_TRAPPED => Outcome::Trapped,
        EXIT_NNP_FAILED => Outcome::SetupFailed("prctl(PR_SET_NO_NEW_PRIVS)", 0),
        EXIT_INSTALL_FAILED => Outcome::SetupFailed("install", 0),
        EXIT_INSTALL_EACCES => Outcome::SetupFailed("install", libc::EACCES),
        EXIT_CAPSET_FAILED => Outcome::SetupFailed("capset", 0),
        errno => Outcome::Errno(errno),
    }
}

fn kernel(prog: &SeccompProgram, nr: i64, a: [u64; 6]) -> Outcome {
    run_in_child(prog, ChildSetup::NoNewPrivs, nr, a)
}

const KILLED: Outcome = Outcome::Killed(libc::SIGSYS);
const ESRCH: Outcome = Outcome::Errno(libc::ESRCH);

/// Checks each case against the kernel and against evaluate().
fn check(prog: &SeccompProgram, cases: &[(&str, [u64; 6], Verdict, Outcome)]) {
    for &(name, a, verdict, outcome) in cases {
        let call = if let Some(x32) = name.strip_prefix("x32:") {
            i64::from(X32_SYSCALL_BIT) | nr(x32)
        } else {
            nr(name)
        };
        assert_eq!(prog.evaluate(call, a), verdict, "evaluate {name} {a:x?}");
        assert_eq!(kernel(prog, call, a), outcome, "kernel {name} {a:x?}");
    }
}

#[test]
fn kernel_errno_default_with_allow_list_and_errno_rules() {
    let prog = compile(two_errno_rules_profile(
        "SCMP_ACT_ERRNO",
        Some(EXDEV.into()),
    ));
    let exdev = Outcome::Errno(libc::EXDEV);
    check(
        &prog,
        &[
            ("getppid", NO_ARGS, Verdict::Allow, Outcome::Returned),
            ("gettid", NO_ARGS, Verdict::Errno(EXDEV), exdev),
            ("umask", NO_ARGS, Verdict::Errno(EXDEV), exdev),
            (
                "personality",
                args(QUERY_PERSONALITY, 0),
                Verdict::Errno(ENOTTY),
                Outcome::Errno(libc::ENOTTY),
            ),
            ("personality", args(0, 0), Verdict::Errno(EXDEV), exdev),
            (
                "getpriority",
                args(PRIO_PROCESS, 0),
                Verdict::Errno(EACCES),
                Outcome::Errno(libc::EACCES),
            ),
            (
                "getpriority",
                args(PRIO_PGRP, 0),
                Verdict::Allow,
                Outcome::Returned,
            ),
            (
                "getpriority",
                args(PRIO_USER, 0),
                Verdict::Errno(EXDEV),
                exdev,
            ),
            (
                "x32:getpid",
                NO_ARGS,
                Verdict::Errno(ENOSYS),
                Outcome::Errno(libc::ENOSYS),
            ),
        ],
    );
}

#[test]
fn kernel_kill_process_default() {
    let prog = compile(two_errno_rules_profile("SCMP_ACT_KILL_PROCESS", None));
    // seccomp is not allowed: the default filter must be installed last, or
    // installing the next filter would kill the child.
    assert_eq!(prog.filters().last().unwrap().role, FilterRole::Default);
    check(
        &prog,
        &[
            ("getppid", NO_ARGS, Verdict::Allow, Outcome::Returned),
            // The SIGSYS handler is not run: KILL cannot be caught.
            ("gettid", NO_ARGS, Verdict::KillProcess, KILLED),
            (
                "personality",
                args(QUERY_PERSONALITY, 0),
                Verdict::Errno(ENOTTY),
                Outcome::Errno(libc::ENOTTY),
            ),
            ("personality", args(8, 0), Verdict::KillProcess, KILLED),
            (
                "getpriority",
                args(PRIO_PROCESS, 0),
                Verdict::Errno(EACCES),
                Outcome::Errno(libc::EACCES),
            ),
            (
                "getpriority",
                args(PRIO_PGRP, 0),
                Verdict::Allow,
                Outcome::Returned,
            ),
            (
                "getpriority",
                args(PRIO_USER, 0),
                Verdict::KillProcess,
                KILLED,
            ),
        ],
    );
}

#[test]
fn kernel_trap_kill_thread_and_log() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            { "names": ["exit_group", "getpid"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["getppid"], "action": "SCMP_ACT_TRAP" },
            { "names": ["gettid"], "action": "SCMP_ACT_KILL" },
            { "names": ["getuid"], "action": "SCMP_ACT_KILL_THREAD" },
            { "names": ["getgid"], "action": "SCMP_ACT_LOG" }
        ]
    }));
    check(
        &prog,
        &[
            ("getpid", NO_ARGS, Verdict::Allow, Outcome::Returned),
            ("getppid", NO_ARGS, Verdict::Trap, Outcome::Trapped),
            ("gettid", NO_ARGS, Verdict::KillThread, KILLED),
            ("getuid", NO_ARGS, Verdict::KillThread, KILLED),
            // LOG lets the call run (the default filter allows it, as named).
            ("getgid", NO_ARGS, Verdict::Log, Outcome::Returned),
            (
                "getegid",
                NO_ARGS,
                Verdict::Errno(1),
                Outcome::Errno(libc::EPERM),
            ),
        ],
    );
    // LOG and TRAP as default actions.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_LOG",
        "syscalls": [{ "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES }]
    }));
    check(
        &prog,
        &[
            ("getpid", NO_ARGS, Verdict::Log, Outcome::Returned),
            (
                "getppid",
                NO_ARGS,
                Verdict::Errno(EACCES),
                Outcome::Errno(libc::EACCES),
            ),
        ],
    );
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_TRAP",
        "syscalls": [{ "names": ["exit_group", "getpid", "seccomp"], "action": "SCMP_ACT_ALLOW" }]
    }));
    check(
        &prog,
        &[
            ("getpid", NO_ARGS, Verdict::Allow, Outcome::Returned),
            ("getppid", NO_ARGS, Verdict::Trap, Outcome::Trapped),
        ],
    );
}

#[test]
fn kernel_errno_rule_beats_allow_rule() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [
            { "names": ["exit_group", "getppid"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES },
            { "names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOTTY },
            { "names": ["getpid"], "action": "SCMP_ACT_ALLOW" }
        ]
    }));
    check(
        &prog,
        &[
            (
                "getppid",
                NO_ARGS,
                Verdict::Errno(EACCES),
                Outcome::Errno(libc::EACCES),
            ),
            (
                "getpid",
                NO_ARGS,
                Verdict::Errno(ENOTTY),
                Outcome::Errno(libc::ENOTTY),
            ),
            ("gettid", NO_ARGS, Verdict::KillProcess, KILLED),
        ],
    );
}

#[test]
fn kernel_argument_conditions() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EXDEV,
        "syscalls": [
            { "names": ["exit_group"], "action": "SCMP_ACT_ALLOW" },
            // Same index: ORed.
            { "names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
                { "index": 0, "value": QUERY_PERSONALITY, "op": "SCMP_CMP_EQ" },
                { "index": 0, "value": 0, "op": "SCMP_CMP_EQ" }
            ]},
            // Different indexes: ANDed. (pid 0x7fff_fff0 does not exist: ESRCH
            // shows the call ran.)
            { "names": ["getpriority"], "action": "SCMP_ACT_ALLOW", "args": [
                { "index": 0, "value": PRIO_PROCESS, "op": "SCMP_CMP_EQ" },
                { "index": 1, "value": 0x7fff_0000, "op": "SCMP_CMP_GE" }
            ]},
            // 64-bit masked equality and comparison.
            { "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES, "args": [
                { "index": 1, "value": 0xffff_0000_0000_ff00u64,
                  "valueTwo": 0x1234_0000_0000_1200u64, "op": "SCMP_CMP_MASKED_EQ" }
            ]},
            { "names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOTTY, "args": [
                { "index": 1, "value": 0xffff_ffff_ffff_fff0u64, "op": "SCMP_CMP_GT" }
            ]}
        ]
    }));
    let exdev = Outcome::Errno(libc::EXDEV);
    let eacces = Outcome::Errno(libc::EACCES);
    check(
        &prog,
        &[
            (
                "personality",
                args(QUERY_PERSONALITY, 0),
                Verdict::Allow,
                Outcome::Returned,
            ),
            ("personality", args(0, 0), Verdict::Allow, Outcome::Returned),
            ("personality", args(8, 0), Verdict::Errno(EXDEV), exdev),
            (
                "getpriority",
                args(PRIO_PROCESS, 0x7fff_fff0),
                Verdict::Allow,
                ESRCH,
            ),
            (
                "getpriority",
                args(PRIO_PROCESS, 5),
                Verdict::Errno(EXDEV),
                exdev,
            ),
            (
                "getpriority",
                args(PRIO_PGRP, 0x7fff_fff0),
                Verdict::Errno(EXDEV),
                exdev,
            ),
            (
                "getpriority",
                args(PRIO_PROCESS, 0x1234_5678_7fff_12ab),
                Verdict::Errno(EACCES),
                eacces,
            ),
            (
                "getpriority",
                args(PRIO_USER, 0x1234_0000_ffff_12ff),
                Verdict::Errno(EACCES),
                eacces,
            ),
            // Masked high half differs: the ERRNO rule does not match, the
            // ALLOW rule does (arg1 >= 0x7fff0000 on 64 bits); the kernel sees
            // who = 0x7fff1200, no such process.
            (
                "getpriority",
                args(PRIO_PROCESS, 0x1235_0000_7fff_1200),
                Verdict::Allow,
                ESRCH,
            ),
            (
                "getpriority",
                args(PRIO_PROCESS, u64::MAX),
                Verdict::Errno(ENOTTY),
                Outcome::Errno(libc::ENOTTY),
            ),
            (
                "getpriority",
                args(PRIO_PROCESS, 0xffff_ffff_ffff_fff0),
                Verdict::Allow,
                ESRCH,
            ),
        ],
    );
}

#[test]
fn kernel_flags() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                  "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "syscalls": [
            { "names": ["exit_group", "getppid"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES }
        ]
    }));
    assert_eq!(prog.filter_count(), 2);
    check(
        &prog,
        &[
            ("getppid", NO_ARGS, Verdict::Allow, Outcome::Returned),
            (
                "getpid",
                NO_ARGS,
                Verdict::Errno(EACCES),
                Outcome::Errno(libc::EACCES),
            ),
            (
                "gettid",
                NO_ARGS,
                Verdict::Errno(1),
                Outcome::Errno(libc::EPERM),
            ),
        ],
    );
}

#[test]
fn kernel_seccomp_denied_by_a_rule() {
    // The rule filter denying seccomp(2) must be the last one installed.
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [
            { "names": ["exit_group", "getppid", "seccomp"], "action": "SCMP_ACT_ALLOW" },
            { "names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES },
            { "names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOTTY }
        ]
    }));
    assert_eq!(prog.filter_count(), 3);
    check(
        &prog,
        &[
            ("getppid", NO_ARGS, Verdict::Allow, Outcome::Returned),
            (
                "getpid",
                NO_ARGS,
                Verdict::Errno(ENOTTY),
                Outcome::Errno(libc::ENOTTY),
            ),
            (
                "seccomp",
                NO_ARGS,
                Verdict::Errno(EACCES),
                Outcome::Errno(libc::EACCES),
            ),
            ("gettid", NO_ARGS, Verdict::KillProcess, KILLED),
        ],
    );
}

#[test]
fn kernel_docker_like_profile() {
    let prog = compile(docker_like_profile());
    check(
        &prog,
        &[
            ("getppid", NO_ARGS, Verdict::Allow, Outcome::Returned),
            (
                "clone3",
                NO_ARGS,
                Verdict::Errno(38),
                Outcome::Errno(libc::ENOSYS),
            ),
            // mount(NULL, ...) would fail with EFAULT if it ran.
            (
                "mount",
                NO_ARGS,
                Verdict::Errno(1),
                Outcome::Errno(libc::EPERM),
            ),
            (
                "personality",
                args(QUERY_PERSONALITY, 0),
                Verdict::Allow,
                Outcome::Returned,
            ),
            (
                "personality",
                args(1, 0),
                Verdict::Errno(1),
                Outcome::Errno(libc::EPERM),
            ),
            // AF_VSOCK socket creation is denied; AF_UNIX with a bad type runs
            // (and fails with EINVAL).
            (
                "socket",
                args(40, 1),
                Verdict::Errno(1),
                Outcome::Errno(libc::EPERM),
            ),
            (
                "socket",
                args(1, 0xffff),
                Verdict::Allow,
                Outcome::Errno(libc::EINVAL),
            ),
        ],
    );
}

#[test]
fn kernel_install_without_privilege_fails_with_eacces() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{ "names": ["exit_group", "getppid"], "action": "SCMP_ACT_ALLOW" }]
    }));
    assert_eq!(
        run_in_child(&prog, ChildSetup::NoPrivilege, nr("getppid"), NO_ARGS),
        Outcome::SetupFailed("install", libc::EACCES)
    );
}

#[test]
fn kernel_empty_program_installs_nothing() {
    let prog = compile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["getppid"], "action": "SCMP_ACT_ALLOW" }]
    }));
    assert_eq!(prog.filter_count(), 0);
    assert_eq!(kernel(&prog, nr("gettid"), NO_ARGS), Outcome::Returned);
}
