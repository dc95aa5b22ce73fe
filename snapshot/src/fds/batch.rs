//! Gadget batches with a label per entry, flushed when the data area is
//! full, and output buffers read back after each run.

use nix::errno::Errno;

use crate::ptrace::{Entry, Gadget, GadgetError, Tid, TraceCtx};

use super::FdError;

/// What an entry is for, for error messages.
#[derive(Clone, Debug)]
pub(super) struct Label {
    pub fd: i32,
    pub step: String,
}

/// Handle on an entry's result.
#[derive(Clone, Copy, Debug)]
pub(super) struct Res(usize);

/// Handle on an output buffer read back after the entry ran.
#[derive(Clone, Copy, Debug)]
pub(super) struct Out(usize);

pub(super) struct Batch<'a> {
    ctx: &'a mut TraceCtx,
    tid: Tid,
    gadget: &'a mut Gadget,
    entries: Vec<Entry>,
    labels: Vec<Label>,
    /// Output buffers of the pending entries: (out index, address, length).
    reads: Vec<(usize, u64, usize)>,
    /// Results of every entry flushed so far, by global index.
    results: Vec<i64>,
    outputs: Vec<Vec<u8>>,
    /// Index of `entries[0]`.
    base: usize,
}

impl<'a> Batch<'a> {
    pub(super) fn new(ctx: &'a mut TraceCtx, tid: Tid, gadget: &'a mut Gadget) -> Batch<'a> {
        Batch {
            ctx,
            tid,
            gadget,
            entries: Vec::new(),
            labels: Vec::new(),
            reads: Vec::new(),
            results: Vec::new(),
            outputs: Vec::new(),
            base: 0,
        }
    }

    /// Bytes of the gadget's data area.
    pub(super) fn data_size(&self) -> usize {
        self.gadget.layout().data_size as usize
    }

    /// Adds an entry built by `make` from the addresses of `ins` (copied
    /// into the data area) and of `outs` zeroed output buffers of the given
    /// lengths (read back after the run, see [`Batch::output`]). Runs the
    /// pending entries first if the data area cannot hold the buffers.
    pub(super) fn push(
        &mut self,
        fd: i32,
        step: impl Into<String>,
        ins: &[&[u8]],
        outs: &[usize],
        may_fail: bool,
        make: impl FnOnce(&[u64]) -> (i64, [u64; 6]),
    ) -> Result<(Res, Vec<Out>), FdError> {
        let step = step.into();
        let addrs = loop {
            match self.alloc(ins, outs) {
                Ok(a) => break a,
                Err(GadgetError::DataFull { used, want, size }) => {
                    if self.entries.is_empty() {
                        return Err(FdError::plan(
                            fd,
                            format!(
                                "{step}: needs {want} bytes of the gadget's data area ({used} of {size} used)"
                            ),
                        ));
                    }
                    self.flush()?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let (nr, args) = make(&addrs);
        let mut e = Entry::new(nr, args);
        if may_fail {
            e = e.may_fail();
        }
        let res = Res(self.base + self.entries.len());
        self.entries.push(e);
        self.labels.push(Label { fd, step });
        let mut out_handles = Vec::with_capacity(outs.len());
        for (i, &len) in outs.iter().enumerate() {
            let idx = self.outputs.len();
            self.outputs.push(Vec::new());
            self.reads.push((idx, addrs[ins.len() + i], len));
            out_handles.push(Out(idx));
        }
        Ok((res, out_handles))
    }

    /// A plain entry without buffers.
    pub(super) fn call(
        &mut self,
        fd: i32,
        step: impl Into<String>,
        nr: i64,
        args: [u64; 6],
    ) -> Result<Res, FdError> {
        Ok(self.push(fd, step, &[], &[], false, |_| (nr, args))?.0)
    }

    fn alloc(&mut self, ins: &[&[u8]], outs: &[usize]) -> Result<Vec<u64>, GadgetError> {
        let mut a = Vec::with_capacity(ins.len() + outs.len());
        for b in ins {
            a.push(self.gadget.data(b)?);
        }
        for &l in outs {
            a.push(self.gadget.data_zeroed(l)?);
        }
        Ok(a)
    }

    /// Runs the pending entries and reads their output buffers back.
    pub(super) fn flush(&mut self) -> Result<(), FdError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.entries);
        let labels = std::mem::take(&mut self.labels);
        let reads = std::mem::take(&mut self.reads);
        let r = self.gadget.run(self.ctx, self.tid, &entries);
        let results = match r {
            Ok(r) => r,
            Err(GadgetError::Failed(b)) => {
                let l = &labels[b.index];
                return Err(FdError::Restore {
                    fd: l.fd,
                    step: l.step.clone(),
                    errno: Errno::from_raw(b.errno),
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.base += entries.len();
        self.results.extend(results);
        for (idx, addr, len) in reads {
            self.outputs[idx] = self.gadget.read(addr, len)?;
        }
        Ok(())
    }

    /// The raw result of a flushed entry (`-errno` for a failure of an
    /// entry that may fail).
    pub(super) fn result(&self, r: Res) -> i64 {
        self.results[r.0]
    }

    /// An output buffer of a flushed entry.
    pub(super) fn output(&self, o: Out) -> &[u8] {
        &self.outputs[o.0]
    }
}
