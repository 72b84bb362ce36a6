//! log_softmax and cross_entropy over the last dimension of (N, C) logits.

use crate::tensor::Tensor;

/// Row-wise log-softmax, shifted by the row maximum so exp never overflows.
fn log_softmax_rows(x: &[f32], c: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        out.extend(row.iter().map(|v| v - lse));
    }
    out
}

fn check_logits(op: &str, t: &Tensor) -> (usize, usize) {
    let s = t.shape();
    assert!(
        s.len() == 2 && s[1] > 0,
        "{op}: want logits of shape (N, C), got {s:?}"
    );
    (s[0], s[1])
}

impl Tensor {
    /// log(softmax(x)) along the last dimension of (N, C).
    pub fn log_softmax(&self) -> Tensor {
        let (_, c) = check_logits("log_softmax", self);
        let out = log_softmax_rows(&self.data(), c);
        let saved = out.clone();
        let a = self.clone();
        Tensor::from_op(out, self.shape(), &[self], move |dout, grads| {
            // dx = dy − softmax · Σ dy, per row; softmax = exp(log_softmax).
            grads.accumulate(&a, |gx| {
                for ((g, d), ls) in gx.chunks_mut(c).zip(dout.chunks(c)).zip(saved.chunks(c)) {
                    let total: f32 = d.iter().sum();
                    for j in 0..c {
                        g[j] += d[j] - ls[j].exp() * total;
                    }
                }
            });
        })
    }

    /// Mean over the batch of −log softmax(x)\[label\]: PyTorch's
    /// `F.cross_entropy(logits, labels)`. Panics on a label ≥ C.
    pub fn cross_entropy(&self, labels: &[usize]) -> Tensor {
        let (n, c) = check_logits("cross_entropy", self);
        assert_eq!(
            labels.len(),
            n,
            "cross_entropy: {} labels for logits {:?}",
            labels.len(),
            self.shape()
        );
        if let Some(bad) = labels.iter().find(|&&l| l >= c) {
            panic!("cross_entropy: label {bad} out of range for {c} classes");
        }
        let logp = log_softmax_rows(&self.data(), c);
        let loss = -labels
            .iter()
            .enumerate()
            .map(|(i, &l)| logp[i * c + l])
            .sum::<f32>()
            / n as f32;
        let labels = labels.to_vec();
        let a = self.clone();
        Tensor::from_op(vec![loss], &[], &[self], move |dout, grads| {
            // d/dx of the mean NLL is (softmax − onehot) / N.
            let scale = dout[0] / n as f32;
            grads.accumulate(&a, |gx| {
                for (i, (g, lp)) in gx.chunks_mut(c).zip(logp.chunks(c)).enumerate() {
                    for j in 0..c {
                        let onehot = if j == labels[i] { 1.0 } else { 0.0 };
                        g[j] += scale * (lp[j].exp() - onehot);
                    }
                }
            });
        })
    }
}
