//! Reverse-mode autograd on a define-by-run tape.
//!
//! Every op that has an input needing a gradient pushes a `Record` onto this
//! thread's tape: its output and a closure that, given the gradient of the
//! output, adds the gradients of the inputs. Tensor ids increase as tensors are
//! made, so the tape is already in topological order and [`Tensor::backward`] is just
//! a reverse walk: no graph sort (the idea of dfdx's tape).
//!
//! Leaves (parameters, and inputs marked `requires_grad`) accumulate their
//! gradient across backward calls until `zero_grad`; intermediate gradients live
//! only for one backward pass. Inside [`no_grad`] nothing is recorded.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::tensor::Tensor;

/// A backward closure: given the op's output tensor (for ops whose
/// gradient reads their own output) and the gradient of that output, adds
/// the inputs' gradients.
type BackwardFn = Box<dyn FnOnce(&Tensor, &[f32], &mut Grads)>;

struct Record {
    output: Tensor,
    backward: BackwardFn,
}

thread_local! {
    static TAPE: RefCell<Vec<Record>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: Cell<u64> = const { Cell::new(0) };
    static RECORDING: Cell<bool> = const { Cell::new(true) };
}

pub(crate) fn next_id() -> u64 {
    NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    })
}

/// Runs `f` without recording anything (inference mode). Nests.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    let was = RECORDING.with(|r| r.replace(false));
    let out = f();
    RECORDING.with(|r| r.set(was));
    out
}

pub fn is_recording() -> bool {
    RECORDING.with(|r| r.get())
}

/// Drops everything recorded so far (e.g. after a forward pass whose loss
/// will not be back-propagated).
pub fn clear() {
    TAPE.with(|t| t.borrow_mut().clear());
}

/// How many ops are on the tape; useful to check that inference records none.
pub fn len() -> usize {
    TAPE.with(|t| t.borrow().len())
}

impl Tensor {
    /// Makes the output of an op. If we are recording and any input needs a
    /// gradient, the output needs one too and `backward` goes on the tape;
    /// otherwise `backward` is dropped unused.
    ///
    /// `backward(dout, grads)` receives the gradient of this output and must
    /// add each input's gradient with [`Grads::add`] or [`Grads::accumulate`].
    /// It is public so that other crates can define ops of their own.
    pub fn from_op(
        data: Vec<f32>,
        shape: &[usize],
        inputs: &[&Tensor],
        backward: impl FnOnce(&[f32], &mut Grads) + 'static,
    ) -> Tensor {
        Tensor::from_op_with_output(data, shape, inputs, move |_, dout, grads| {
            backward(dout, grads)
        })
    }

    /// As [`Tensor::from_op`], for an op whose backward reads its own
    /// output (relu after an add, say): `backward(output, dout, grads)`
    /// receives the output tensor, which the tape holds anyway, so the op
    /// need not save a copy of it.
    pub fn from_op_with_output(
        data: Vec<f32>,
        shape: &[usize],
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor, &[f32], &mut Grads) + 'static,
    ) -> Tensor {
        assert_eq!(
            data.len(),
            crate::tensor::numel(shape),
            "op output: {} values for shape {shape:?}",
            data.len()
        );
        let track = is_recording() && inputs.iter().any(|t| t.needs_grad());
        let out = Tensor::new_node(data, shape.to_vec(), true);
        if track {
            out.0.requires_grad.set(true);
            let record = Record {
                output: out.clone(),
                backward: Box::new(backward),
            };
            TAPE.with(|t| t.borrow_mut().push(record));
        }
        out
    }

    /// Back-propagates from this scalar: fills `grad()` of every leaf that
    /// needs one, adding to what is already there. Consumes the tape.
    pub fn backward(&self) {
        assert_eq!(
            self.numel(),
            1,
            "backward: loss must be a scalar, got shape {:?}",
            self.shape()
        );
        assert!(
            self.needs_grad(),
            "backward: the loss does not depend on anything that requires a gradient"
        );
        let records = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
        let mut grads = Grads {
            map: HashMap::new(),
        };
        grads.map.insert(self.id(), vec![1.0]);
        for record in records.into_iter().rev() {
            if let Some(dout) = grads.map.remove(&record.output.id()) {
                (record.backward)(&record.output, &dout, &mut grads);
                crate::buffers::give(dout);
            }
        }
        for (_, g) in grads.map.drain() {
            crate::buffers::give(g);
        }
    }
}

/// Gradients being gathered during one backward pass.
pub struct Grads {
    map: HashMap<u64, Vec<f32>>,
}

impl Grads {
    /// Gives `f` the gradient buffer of `t` (zeros if new) to add into.
    /// Does nothing if `t` needs no gradient, so ops can skip work for, say,
    /// the input image of the first conv.
    pub fn accumulate(&mut self, t: &Tensor, f: impl FnOnce(&mut [f32])) {
        if !t.needs_grad() {
            return;
        }
        let n = t.numel();
        if t.0.is_op_output {
            f(self
                .map
                .entry(t.id())
                .or_insert_with(|| crate::buffers::zeroed(n)));
        } else {
            let mut g = t.0.grad.borrow_mut();
            f(g.get_or_insert_with(|| crate::buffers::zeroed(n)));
        }
    }

    /// Adds an owned gradient to `t`'s; the first contribution is moved in
    /// rather than added to zeros.
    pub fn add_owned(&mut self, t: &Tensor, g: Vec<f32>) {
        if !t.needs_grad() {
            return;
        }
        assert_eq!(
            g.len(),
            t.numel(),
            "Grads::add: gradient length {} for shape {:?}",
            g.len(),
            t.shape()
        );
        let fresh = if t.0.is_op_output {
            !self.map.contains_key(&t.id())
        } else {
            t.0.grad.borrow().is_none()
        };
        if !fresh {
            self.add(t, &g);
            crate::buffers::give(g);
            return;
        }
        if t.0.is_op_output {
            self.map.insert(t.id(), g);
        } else {
            *t.0.grad.borrow_mut() = Some(g);
        }
    }

    /// Adds `g` to the gradient of `t`.
    pub fn add(&mut self, t: &Tensor, g: &[f32]) {
        assert_eq!(
            g.len(),
            t.numel(),
            "Grads::add: gradient length {} for shape {:?}",
            g.len(),
            t.shape()
        );
        if !t.needs_grad() {
            return;
        }
        let fresh = if t.0.is_op_output {
            !self.map.contains_key(&t.id())
        } else {
            t.0.grad.borrow().is_none()
        };
        if fresh {
            // 0 + v, as adding into zeros gives (−0.0 becomes +0.0), in one
            // pass instead of a fill and an add.
            let mut buf = crate::buffers::take(g.len()); // overwritten whole
            crate::ops::elementwise::update_with(&mut buf, g, |_, v| 0.0 + v);
            return self.add_owned(t, buf);
        }
        self.accumulate(t, |buf| {
            crate::ops::elementwise::update_with(buf, g, |b, v| b + v)
        });
    }
}
