//! The `Tensor` handle: an f32 array, contiguous and row-major, plus the
//! bookkeeping autograd needs (an id, whether it requires a gradient, and for
//! leaves the accumulated gradient).
//!
//! A `Tensor` is a cheap reference-counted handle, like a PyTorch tensor: cloning
//! it shares the same data. Images are NCHW.

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::fmt;
use std::rc::Rc;

use crate::rng::Rng;
use crate::tape;

pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: RefCell<Vec<f32>>,
    /// Only leaves keep a gradient between backward calls; intermediate
    /// gradients live in the tape's scratch map during one backward pass.
    pub(crate) grad: RefCell<Option<Vec<f32>>>,
    pub(crate) requires_grad: Cell<bool>,
    /// True for tensors made by an op on the tape, false for leaves.
    pub(crate) is_op_output: bool,
}

/// A dropped tensor's buffers go back to [`crate::buffers`] for the next op
/// of the same size.
impl Drop for Node {
    fn drop(&mut self) {
        crate::buffers::give(std::mem::take(self.data.get_mut()));
        if let Some(g) = self.grad.get_mut().take() {
            crate::buffers::give(g);
        }
    }
}

#[derive(Clone)]
pub struct Tensor(pub(crate) Rc<Node>);

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A leaf tensor. Panics if `data.len()` does not match `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Tensor {
        assert_eq!(
            data.len(),
            numel(shape),
            "Tensor::from_vec: {} values cannot have shape {shape:?}",
            data.len()
        );
        Tensor::new_node(data, shape.to_vec(), false)
    }

    pub(crate) fn new_node(data: Vec<f32>, shape: Vec<usize>, is_op_output: bool) -> Tensor {
        Tensor(Rc::new(Node {
            id: tape::next_id(),
            shape,
            data: RefCell::new(data),
            grad: RefCell::new(None),
            requires_grad: Cell::new(false),
            is_op_output,
        }))
    }

    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::from_vec(vec![0.0; numel(shape)], shape)
    }

    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor::from_vec(vec![value; numel(shape)], shape)
    }

    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_vec(vec![value], &[])
    }

    /// Uniform in [lo, hi) from a seeded generator.
    pub fn uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Tensor {
        Tensor::from_vec(
            (0..numel(shape)).map(|_| rng.uniform(lo, hi)).collect(),
            shape,
        )
    }

    /// Standard normal from a seeded generator.
    pub fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::from_vec((0..numel(shape)).map(|_| rng.normal()).collect(), shape)
    }

    /// Marks a leaf as needing its gradient (parameters, or inputs under study).
    pub fn requires_grad(self) -> Tensor {
        self.set_requires_grad(true);
        self
    }

    pub fn set_requires_grad(&self, on: bool) {
        assert!(
            !self.0.is_op_output,
            "requires_grad can only be set on a leaf tensor"
        );
        self.0.requires_grad.set(on);
    }

    pub fn needs_grad(&self) -> bool {
        self.0.requires_grad.get()
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    pub fn data(&self) -> Ref<'_, Vec<f32>> {
        self.0.data.borrow()
    }

    /// Mutable access to the values, for optimisers and masks. Changing the
    /// values of a tensor that an op on the tape has saved changes what its
    /// backward sees, as in PyTorch's in-place ops; do it between steps.
    pub fn data_mut(&self) -> RefMut<'_, Vec<f32>> {
        self.0.data.borrow_mut()
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.data().clone()
    }

    /// The single value of a one-element tensor (a loss).
    pub fn item(&self) -> f32 {
        assert_eq!(
            self.numel(),
            1,
            "item: tensor of shape {:?} is not a scalar",
            self.shape()
        );
        self.data()[0]
    }

    /// The accumulated gradient of a leaf, if a backward pass has reached it.
    pub fn grad(&self) -> Option<Vec<f32>> {
        self.0.grad.borrow().clone()
    }

    pub fn grad_ref(&self) -> Ref<'_, Option<Vec<f32>>> {
        self.0.grad.borrow()
    }

    pub fn grad_mut(&self) -> RefMut<'_, Option<Vec<f32>>> {
        self.0.grad.borrow_mut()
    }

    pub fn zero_grad(&self) {
        if let Some(g) = self.0.grad.borrow_mut().take() {
            crate::buffers::give(g);
        }
    }

    /// A new leaf with a copy of the values and no history.
    pub fn detach(&self) -> Tensor {
        Tensor::from_vec(self.to_vec(), self.shape())
    }

    pub fn same_tensor(&self, other: &Tensor) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.data();
        let shown: Vec<f32> = data.iter().take(8).copied().collect();
        write!(f, "Tensor(shape={:?}, data={shown:?}", self.shape())?;
        if data.len() > 8 {
            write!(f, "...")?;
        }
        write!(f, ", requires_grad={})", self.needs_grad())
    }
}
