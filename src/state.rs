//! A model's whole state as named tensors, for checkpoints: its parameters
//! and buffers under their own names, each parameter's SGD momentum as
//! `momentum.NAME`, and each sparse layer's mask update state under the
//! layer's name.
//!
//! ```text
//! NAME                  f32, the parameter's or buffer's shape
//! momentum.NAME         f32, the parameter's shape (absent before the first step)
//! LAYER.mask            u8, the weight's shape (1 = active)
//! LAYER.strength        f64, the weight's shape: accumulated since the last update
//! LAYER.strength_samples, LAYER.passes    u64, shape []
//! LAYER.decided_strength f64, the weight's shape: what the last update read
//!                       (zeros before the first)
//! LAYER.decided_samples u64, shape []
//! LAYER.rng             u64, shape [4]: the layer's random stream
//! ```

use sparse_conv::dsconv::DSConvState;
use sparse_conv::Model;
use tensor::optim::Sgd;

use crate::checkpoint::{Tensors, Values, Writer};

/// Writes `model`'s and `opt`'s state (see the module docs).
pub fn write_state(out: &mut Writer, model: &dyn Model, opt: &Sgd) {
    // The tensors go to a writer of their own, so that their count, which
    // comes first, is the count of what was written.
    let mut w = Writer::default();
    let params = model.named_parameters();
    for (name, t) in params.iter().chain(&model.named_buffers()) {
        w.tensor(name, t.shape(), &Values::F32(t.to_vec()));
    }
    for ((name, t), b) in params.iter().zip(opt.buffers()) {
        if let Some(b) = b {
            w.tensor(
                &format!("momentum.{name}"),
                t.shape(),
                &Values::F32(b.clone()),
            );
        }
    }
    for (name, l) in model.sparse_layers() {
        let s = l.state();
        let shape = l.weight().shape();
        let mask = s.mask.iter().map(|&m| m as u8).collect();
        w.tensor(&format!("{name}.mask"), shape, &Values::U8(mask));
        w.tensor(&format!("{name}.strength"), shape, &Values::F64(s.strength));
        let mut decided = s.decided_strength;
        decided.resize(l.mask().len(), 0.0);
        w.tensor(
            &format!("{name}.decided_strength"),
            shape,
            &Values::F64(decided),
        );
        let scalars = [
            ("strength_samples", s.strength_samples),
            ("passes", s.passes),
            ("decided_samples", s.decided_samples),
        ];
        for (what, v) in scalars {
            w.tensor(&format!("{name}.{what}"), &[], &Values::U64(vec![v]));
        }
        w.tensor(&format!("{name}.rng"), &[4], &Values::U64(s.rng.to_vec()));
    }
    out.u64(w.tensors);
    out.buf.extend_from_slice(&w.buf);
}

/// Reads back what [`write_state`] wrote into `model` and `opt`, which must
/// be the same network. Every tensor the model has must be there with its
/// shape, and nothing else; the error names the first that is not.
pub fn read_state(t: &mut Tensors, model: &mut dyn Model, opt: &mut Sgd) -> Result<(), String> {
    let params = model.named_parameters();
    for (name, p) in params.iter().chain(&model.named_buffers()) {
        *p.data_mut() = t.take_f32(name, p.shape())?;
    }
    // Momentum buffers are made on the first step, for every parameter at
    // once: all or none.
    let present = params
        .iter()
        .filter(|(n, _)| t.contains(&format!("momentum.{n}")))
        .count();
    let mut buffers = Vec::with_capacity(params.len());
    for (name, p) in &params {
        let key = format!("momentum.{name}");
        buffers.push(if present > 0 {
            Some(t.take_f32(&key, p.shape())?)
        } else {
            None
        });
    }
    opt.set_buffers(buffers)?;
    for (name, layer) in model.sparse_layers_mut() {
        let shape = layer.weight().shape().to_vec();
        let mask = t.take_u8(&format!("{name}.mask"), &shape)?;
        let strength = t.take_f64(&format!("{name}.strength"), &shape)?;
        let samples = t.take_u64(&format!("{name}.strength_samples"), &[])?;
        let passes = t.take_u64(&format!("{name}.passes"), &[])?;
        let rng = t.take_u64(&format!("{name}.rng"), &[4])?;
        let decided_strength = t.take_f64(&format!("{name}.decided_strength"), &shape)?;
        let decided_samples = t.take_u64(&format!("{name}.decided_samples"), &[])?;
        let state = DSConvState {
            mask: mask.iter().map(|&m| m != 0).collect(),
            strength,
            strength_samples: samples[0],
            passes: passes[0],
            decided_strength,
            decided_samples: decided_samples[0],
            rng: rng.try_into().expect("shape [4] was checked"),
        };
        layer
            .restore(state, Some(&mut *opt))
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}
