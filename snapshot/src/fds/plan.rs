//! The fd shuffle of a restore: a parallel assignment of fds sequenced into
//! `dup3`/`fcntl`/`close` steps.
//!
//! After the objects are created they sit at whatever numbers the kernel
//! chose, which may be the dumped numbers of *other* records; the sandbox's
//! stdio sit at 0-2 and may be both sources (a `Stdio` record at another
//! number) and targets. Every target must end up holding what its source
//! held **before** any step ran: a parallel copy, sequenced as in Boissinot
//! et al., "Revisiting Out-of-SSA Translation" (CGO 2009), Algorithm 1, with
//! a fresh free fd per cycle. `dup3` onto an fd atomically closes what was
//! there, so a target is only written once nothing still needs its old
//! contents.

use std::collections::{BTreeSet, HashMap, HashSet};

/// `target ← source`: after the shuffle, fd `dst` refers to the open file
/// description fd `src` referred to before it, with `FD_CLOEXEC` =
/// `cloexec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy {
    /// Target fd number.
    pub dst: i32,
    /// Source fd number (several copies may share one).
    pub src: i32,
    /// `FD_CLOEXEC` of the target.
    pub cloexec: bool,
}

/// One step of the shuffle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `dup3(from, to, cloexec ? O_CLOEXEC : 0)`.
    Dup {
        /// Source.
        from: i32,
        /// Target (closed first by the kernel if open).
        to: i32,
        /// `O_CLOEXEC` on the target.
        cloexec: bool,
    },
    /// `fcntl(fd, F_SETFD, cloexec ? FD_CLOEXEC : 0)` (a target that
    /// already holds its source).
    SetCloexec {
        /// The fd.
        fd: i32,
        /// The flag.
        cloexec: bool,
    },
    /// `close(fd)`: a source or temporary that is no target.
    Close(i32),
}

/// Sequences `copies` (targets unique, every source in `open`) for a fd
/// table where `open` are the open fds and `keep` fds that must not be
/// touched (never a target, never closed, never a temporary). Every fd of
/// `open` that is neither a target nor in `keep` is closed at the end.
/// Temporaries are the lowest numbers not open, not targets and not kept.
pub fn plan_moves(
    copies: &[Copy],
    open: &BTreeSet<i32>,
    keep: &BTreeSet<i32>,
) -> Result<Vec<Op>, String> {
    let mut dsts = HashSet::new();
    for c in copies {
        if c.dst < 0 || c.src < 0 {
            return Err(format!("negative fd in {c:?}"));
        }
        if !dsts.insert(c.dst) {
            return Err(format!("fd {} is the target of two copies", c.dst));
        }
        if keep.contains(&c.dst) {
            return Err(format!("fd {} is a target and reserved", c.dst));
        }
        if !open.contains(&c.src) {
            return Err(format!("source fd {} of fd {} is not open", c.src, c.dst));
        }
        if keep.contains(&c.src) {
            return Err(format!("source fd {} of fd {} is reserved", c.src, c.dst));
        }
    }
    let mut ops = Vec::new();
    // Where the value first held by a source can be found now.
    let mut loc: HashMap<i32, i32> = HashMap::new();
    // The source of each non-identity target.
    let mut pred: HashMap<i32, i32> = HashMap::new();
    let mut cloexec: HashMap<i32, bool> = HashMap::new();
    let mut todo = Vec::new();
    for c in copies {
        cloexec.insert(c.dst, c.cloexec);
        if c.dst == c.src {
            continue;
        }
        loc.insert(c.src, c.src);
        pred.insert(c.dst, c.src);
        todo.push(c.dst);
    }
    // Targets whose current contents nobody needs.
    let mut ready: Vec<i32> = todo
        .iter()
        .copied()
        .filter(|d| !loc.contains_key(d))
        .collect();
    // Deterministic order: lowest target first.
    ready.sort_unstable_by(|a, b| b.cmp(a));
    todo.sort_unstable_by(|a, b| b.cmp(a));
    let mut done: HashSet<i32> = HashSet::new();
    let mut now_open: BTreeSet<i32> = open.clone();
    let mut next_free = 0i32;
    let mut fresh = |now_open: &BTreeSet<i32>| -> i32 {
        while now_open.contains(&next_free)
            || dsts.contains(&next_free)
            || keep.contains(&next_free)
        {
            next_free += 1;
        }
        next_free
    };
    while !todo.is_empty() {
        while let Some(b) = ready.pop() {
            let a = pred[&b];
            let c = loc[&a];
            ops.push(Op::Dup {
                from: c,
                to: b,
                cloexec: cloexec[&b],
            });
            now_open.insert(b);
            done.insert(b);
            loc.insert(a, b);
            if a == c && pred.contains_key(&a) && !done.contains(&a) {
                ready.push(a);
            }
        }
        let Some(b) = todo.pop() else { break };
        if done.contains(&b) {
            continue;
        }
        // Every target left is a source whose value has not moved yet: a
        // cycle. Park b's value in a fresh fd.
        let n = fresh(&now_open);
        ops.push(Op::Dup {
            from: b,
            to: n,
            cloexec: true,
        });
        now_open.insert(n);
        loc.insert(b, n);
        ready.push(b);
    }
    for c in copies {
        if c.dst == c.src {
            ops.push(Op::SetCloexec {
                fd: c.dst,
                cloexec: c.cloexec,
            });
        }
    }
    for fd in now_open {
        if !dsts.contains(&fd) && !keep.contains(&fd) {
            ops.push(Op::Close(fd));
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `ops` on a simulated fd table (fd → (object, cloexec)) and
    /// checks every rule: no dup from a closed fd or onto itself, targets
    /// hold their sources' original objects, nothing else is left open but
    /// `keep`, kept fds untouched.
    fn check(copies: &[Copy], open: &[i32], keep: &[i32]) -> Vec<Op> {
        let open_set: BTreeSet<i32> = open.iter().copied().chain(keep.iter().copied()).collect();
        let keep_set: BTreeSet<i32> = keep.iter().copied().collect();
        let ops = plan_moves(copies, &open_set, &keep_set).unwrap();
        // Object ids: the fd number each started at.
        let mut table: HashMap<i32, (i32, bool)> =
            open_set.iter().map(|&fd| (fd, (fd, false))).collect();
        for op in &ops {
            match *op {
                Op::Dup { from, to, cloexec } => {
                    assert_ne!(from, to, "{ops:?}");
                    assert!(!keep_set.contains(&to), "wrote a kept fd: {ops:?}");
                    let obj = table
                        .get(&from)
                        .unwrap_or_else(|| panic!("dup from closed {from}: {ops:?}"))
                        .0;
                    table.insert(to, (obj, cloexec));
                }
                Op::SetCloexec { fd, cloexec } => {
                    table.get_mut(&fd).unwrap().1 = cloexec;
                }
                Op::Close(fd) => {
                    assert!(!keep_set.contains(&fd), "closed a kept fd: {ops:?}");
                    assert!(
                        table.remove(&fd).is_some(),
                        "closed a closed fd {fd}: {ops:?}"
                    );
                }
            }
        }
        let mut want: HashMap<i32, (i32, bool)> =
            copies.iter().map(|c| (c.dst, (c.src, c.cloexec))).collect();
        for &k in keep {
            want.insert(k, (k, false));
        }
        assert_eq!(table, want, "copies {copies:?} open {open:?} → {ops:?}");
        ops
    }

    fn c(dst: i32, src: i32) -> Copy {
        Copy {
            dst,
            src,
            cloexec: dst % 2 == 0,
        }
    }

    #[test]
    fn simple_moves_and_closes() {
        // Temps 3,4,5 to 7, 20, 100; stdio 0-2 stay; 4 is not needed.
        let ops = check(
            &[c(0, 0), c(1, 1), c(2, 2), c(7, 3), c(20, 5), c(100, 4)],
            &[0, 1, 2, 3, 4, 5],
            &[],
        );
        assert!(ops.contains(&Op::Close(3)));
        assert_eq!(
            ops.iter().filter(|o| matches!(o, Op::Dup { .. })).count(),
            3
        );
    }

    #[test]
    fn chains_are_ordered() {
        // 3 → 4 → 5 → 6: 6 first, then 5 (4's value, after it moved)...
        let ops = check(&[c(4, 3), c(5, 4), c(6, 5)], &[3, 4, 5], &[]);
        assert_eq!(
            ops,
            vec![
                Op::Dup {
                    from: 5,
                    to: 6,
                    cloexec: true
                },
                Op::Dup {
                    from: 4,
                    to: 5,
                    cloexec: false
                },
                Op::Dup {
                    from: 3,
                    to: 4,
                    cloexec: true
                },
                Op::Close(3),
            ]
        );
    }

    #[test]
    fn cycles_use_a_free_temporary() {
        // 3 ↔ 4, and 5 → 6 → 7 → 5; 8 is reserved, 9 open and unused.
        let ops = check(
            &[c(3, 4), c(4, 3), c(6, 5), c(7, 6), c(5, 7)],
            &[3, 4, 5, 6, 7, 9],
            &[8],
        );
        // Temporaries avoid open, target and kept fds.
        for op in &ops {
            if let Op::Dup { to, .. } = op {
                assert!(![8, 9].contains(to));
            }
        }
        assert!(ops.contains(&Op::Close(9)));
        // One temporary per cycle.
        assert_eq!(
            ops.iter().filter(|o| matches!(o, Op::Dup { .. })).count(),
            5 + 2
        );
    }

    #[test]
    fn fan_out_and_stdio_sources() {
        // fd 1 (sandbox stdout) also at 10; fd 1 itself becomes a pipe
        // created at 3; a dup of the pipe at 0; stdio 2 kept.
        check(
            &[c(10, 1), c(1, 3), c(0, 3), c(2, 2), c(11, 3)],
            &[0, 1, 2, 3],
            &[],
        );
        // A source copied to many targets, one of them itself.
        check(&[c(5, 5), c(6, 5), c(7, 5), c(3, 5)], &[5], &[]);
    }

    #[test]
    fn refuses_bad_input() {
        let open: BTreeSet<i32> = [3, 4].into();
        let none = BTreeSet::new();
        assert!(plan_moves(&[c(5, 3), c(5, 4)], &open, &none).is_err());
        assert!(plan_moves(&[c(5, 9)], &open, &none).is_err());
        let keep: BTreeSet<i32> = [5].into();
        assert!(plan_moves(&[c(5, 3)], &open, &keep).is_err());
        assert!(plan_moves(&[c(6, 5)], &open, &keep).is_err());
    }

    #[test]
    fn random_permutations() {
        // A small deterministic PRNG (xorshift) over many shapes.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        for _ in 0..3000 {
            let n_open = 1 + rnd(12) as i32;
            let open: Vec<i32> = (0..n_open).map(|i| i * (1 + rnd(2) as i32)).collect();
            let mut open: Vec<i32> = open
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let keep: Vec<i32> = if rnd(3) == 0 {
                vec![open.pop().unwrap_or(0) + 1]
            } else {
                vec![]
            };
            let keep: Vec<i32> = keep.into_iter().filter(|k| !open.contains(k)).collect();
            let n_copies = rnd(14) as usize;
            let mut copies = Vec::new();
            let mut used = HashSet::new();
            for _ in 0..n_copies {
                let dst = rnd(16) as i32;
                if keep.contains(&dst) || !used.insert(dst) || open.is_empty() {
                    continue;
                }
                let src = open[rnd(open.len() as u64) as usize];
                copies.push(Copy {
                    dst,
                    src,
                    cloexec: rnd(2) == 0,
                });
            }
            check(&copies, &open, &keep);
        }
    }
}
