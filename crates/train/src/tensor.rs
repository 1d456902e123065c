//! A dense f32 tensor: a shape of at most two dimensions and row-major data.

use crate::error::{Error, Result};

/// A tensor shape: `[]` (scalar), `[n]` (vector) or `[rows, cols]` (row-major matrix).
///
/// A vector `[n]` is treated as one row of `n` columns by ops that want a matrix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A scalar (one element).
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }
    /// A vector of `n`.
    pub fn vector(n: usize) -> Shape {
        Shape(vec![n])
    }
    /// A `rows x cols` matrix.
    pub fn matrix(rows: usize, cols: usize) -> Shape {
        Shape(vec![rows, cols])
    }
    /// From dimensions; more than two is an error.
    pub fn from_dims(dims: &[usize]) -> Result<Shape> {
        if dims.len() > 2 {
            return Err(Error::Invalid {
                what: "shape",
                reason: format!("{dims:?} has more than two dimensions"),
            });
        }
        Ok(Shape(dims.to_vec()))
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// Rows: the first dimension of a matrix, 1 for a vector or scalar.
    pub fn rows(&self) -> usize {
        match self.0.as_slice() {
            [r, _] => *r,
            _ => 1,
        }
    }
    /// Columns: the last dimension, 1 for a scalar.
    pub fn cols(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// Whether this is a vector (one dimension).
    pub fn is_vector(&self) -> bool {
        self.0.len() == 1
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Shape,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and its data; the lengths must agree.
    pub fn new(shape: Shape, data: Vec<f32>) -> Result<Tensor> {
        if shape.numel() != data.len() {
            return Err(Error::BufferLen {
                what: format!("tensor of shape {shape}"),
                want: shape.numel(),
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }
    /// A `rows x cols` matrix from row-major data.
    pub fn matrix(rows: usize, cols: usize, data: Vec<f32>) -> Result<Tensor> {
        Tensor::new(Shape::matrix(rows, cols), data)
    }
    /// A vector.
    pub fn vector(data: Vec<f32>) -> Tensor {
        Tensor {
            shape: Shape::vector(data.len()),
            data,
        }
    }
    /// A scalar.
    pub fn scalar(v: f32) -> Tensor {
        Tensor {
            shape: Shape::scalar(),
            data: vec![v],
        }
    }
    /// Zeros of a shape.
    pub fn zeros(shape: Shape) -> Tensor {
        let data = vec![0.0; shape.numel()];
        Tensor { shape, data }
    }
    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// The data, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// The data, mutable (the shape is fixed).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    /// Shape and data.
    pub fn into_parts(self) -> (Shape, Vec<f32>) {
        (self.shape, self.data)
    }
}
