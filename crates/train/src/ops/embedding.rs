//! `embedding(table, ids)`: gather rows; the gradient scatter-adds into the table.

use crate::error::{shape_err, Error, Result};
use crate::tape::{Backward, GradBuf, Tape, Var};
use crate::tensor::Shape;

struct EmbeddingBack {
    table: Var,
    ids: Vec<u32>,
}

impl Tape<'_> {
    /// Rows `ids` of `table[V, D]` → `[ids.len(), D]`. An id `>= V` is an error. When the table
    /// is a constant or frozen, no gradient is kept.
    pub fn embedding(&mut self, table: Var, ids: &[u32]) -> Result<Var> {
        let s = self.shape(table).clone();
        if s.dims().len() != 2 {
            return Err(shape_err("embedding", format!("table {s} is not a matrix")));
        }
        let (n_rows, d) = (s.rows(), s.cols());
        let tv = self.value(table);
        let mut y = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let i = id as usize;
            if i >= n_rows {
                return Err(Error::Index {
                    op: "embedding",
                    index: i,
                    size: n_rows,
                });
            }
            y.extend_from_slice(&tv[i * d..(i + 1) * d]);
        }
        let back = EmbeddingBack {
            table,
            ids: ids.to_vec(),
        };
        Ok(self.push_op(Shape::matrix(ids.len(), d), y, &[table], back))
    }
}

impl Backward for EmbeddingBack {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn backward(&self, tape: &Tape<'_>, _out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let d = tape.shape(self.table).cols();
        grads.with(self.table, |acc, _| {
            for (r, &id) in self.ids.iter().enumerate() {
                let i = id as usize;
                for (a, v) in acc[i * d..(i + 1) * d]
                    .iter_mut()
                    .zip(&g[r * d..(r + 1) * d])
                {
                    *a += v;
                }
            }
        });
        Ok(())
    }
}
