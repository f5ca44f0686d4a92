//! A small fully connected network (ReLU hidden layers, one linear output) trained with
//! Adam on mean squared error: the regressor behind the RUL model. Matrices hold one
//! sample per column.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

/// A deterministic generator (SplitMix64) for initial weights and shuffling, so that a
/// seed gives the same model on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// A uniformly shuffled copy of 0..n.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// One layer: `weights` (outputs × inputs, column-major) and `bias`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Layer {
    fn matrix(&self) -> DMatrix<f32> {
        DMatrix::from_column_slice(self.outputs, self.inputs, &self.weights)
    }
}

/// The network: hidden layers with ReLU, then one linear output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mlp {
    pub layers: Vec<Layer>,
}

/// How a network is trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    /// Epochs without a better validation loss before training stops (the best weights
    /// are kept).
    pub patience: usize,
}

impl Mlp {
    /// He-initialised layers of the given widths (`sizes[0]` inputs, last one output).
    pub fn new(sizes: &[usize], rng: &mut Rng) -> Mlp {
        let layers = sizes
            .windows(2)
            .map(|w| {
                let (inputs, outputs) = (
                    w.first().copied().unwrap_or(1),
                    w.get(1).copied().unwrap_or(1),
                );
                let scale = (2.0 / inputs.max(1) as f64).sqrt();
                Layer {
                    inputs,
                    outputs,
                    weights: (0..inputs * outputs)
                        .map(|_| (rng.normal() * scale) as f32)
                        .collect(),
                    bias: vec![0.0; outputs],
                }
            })
            .collect();
        Mlp { layers }
    }

    /// Whether the layers fit together and end in one output.
    pub fn check(&self, inputs: usize) -> Result<(), String> {
        let mut width = inputs;
        for (i, l) in self.layers.iter().enumerate() {
            if l.inputs != width
                || l.weights.len() != l.inputs * l.outputs
                || l.bias.len() != l.outputs
            {
                return Err(format!("layer {i} does not fit its neighbours"));
            }
            if l.weights.iter().chain(&l.bias).any(|w| !w.is_finite()) {
                return Err(format!(
                    "layer {i} has a weight that is not a finite number"
                ));
            }
            width = l.outputs;
        }
        if width != 1 || self.layers.is_empty() {
            return Err("the network must end in one output".into());
        }
        Ok(())
    }

    /// The outputs for the samples in `x` (one per column).
    pub fn predict(&self, x: &DMatrix<f32>) -> Vec<f32> {
        let mut a = x.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, l) in self.layers.iter().enumerate() {
            let mut z = l.matrix() * &a;
            let b = DVector::from_column_slice(&l.bias);
            for mut col in z.column_iter_mut() {
                col += &b;
            }
            if i < last {
                z.apply(|v| *v = v.max(0.0));
            }
            a = z;
        }
        a.row(0).iter().copied().collect()
    }

    /// Trains on `x` (samples as columns) toward `y`, keeping the weights with the lowest
    /// mean squared error on the validation pair `(vx, vy)`; `epoch_done(epoch, validation_mse)` reports
    /// progress. Returns the best validation MSE.
    pub fn train(
        &mut self,
        x: &DMatrix<f32>,
        y: &[f32],
        (vx, vy): (&DMatrix<f32>, &[f32]),
        options: TrainOptions,
        rng: &mut Rng,
        mut epoch_done: impl FnMut(usize, f64),
    ) -> f64 {
        let n = x.ncols();
        let mut adam = Adam::new(self);
        let mut best = (f64::INFINITY, self.clone());
        let mut since_best = 0;
        for epoch in 0..options.epochs {
            let order = rng.permutation(n);
            for batch in order.chunks(options.batch.max(1)) {
                let bx = x.select_columns(batch);
                let by: Vec<f32> = batch
                    .iter()
                    .map(|&i| y.get(i).copied().unwrap_or(0.0))
                    .collect();
                let grads = self.gradients(&bx, &by);
                adam.step(self, &grads, options.learning_rate);
            }
            let mse = mse(&self.predict(vx), vy);
            epoch_done(epoch + 1, mse);
            if mse < best.0 {
                best = (mse, self.clone());
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= options.patience {
                    break;
                }
            }
        }
        *self = best.1;
        best.0
    }

    /// Gradients of the mean squared error over the batch, per layer (weights, bias).
    fn gradients(&self, x: &DMatrix<f32>, y: &[f32]) -> Vec<(DMatrix<f32>, DVector<f32>)> {
        let b = x.ncols() as f32;
        let last = self.layers.len().saturating_sub(1);
        // Forward, keeping each layer's input and pre-activation.
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut pre = Vec::with_capacity(self.layers.len());
        let mut a = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            let mut z = l.matrix() * &a;
            let bias = DVector::from_column_slice(&l.bias);
            for mut col in z.column_iter_mut() {
                col += &bias;
            }
            inputs.push(a);
            let mut next = z.clone();
            if i < last {
                next.apply(|v| *v = v.max(0.0));
            }
            pre.push(z);
            a = next;
        }
        // Backward.
        let mut delta = a;
        for (j, d) in delta.iter_mut().enumerate() {
            *d = 2.0 * (*d - y.get(j).copied().unwrap_or(0.0)) / b;
        }
        let mut grads = vec![(DMatrix::zeros(0, 0), DVector::zeros(0)); self.layers.len()];
        for i in (0..self.layers.len()).rev() {
            let (Some(l), Some(input)) = (self.layers.get(i), inputs.get(i)) else {
                continue;
            };
            let gw = &delta * input.transpose();
            let gb = delta.column_sum();
            if i > 0 {
                let mut back = l.matrix().transpose() * &delta;
                if let Some(z) = pre.get(i - 1) {
                    back.zip_apply(z, |d, z| {
                        if z <= 0.0 {
                            *d = 0.0;
                        }
                    });
                }
                delta = back;
            }
            if let Some(g) = grads.get_mut(i) {
                *g = (gw, gb);
            }
        }
        grads
    }
}

/// Mean squared error.
pub fn mse(p: &[f32], y: &[f32]) -> f64 {
    let n = p.len().min(y.len()).max(1) as f64;
    p.iter()
        .zip(y)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
        .sum::<f64>()
        / n
}

/// Adam's moment estimates for every weight and bias.
struct Adam {
    m: Vec<(Vec<f32>, Vec<f32>)>,
    v: Vec<(Vec<f32>, Vec<f32>)>,
    t: i32,
}

impl Adam {
    fn new(net: &Mlp) -> Adam {
        let zeros: Vec<(Vec<f32>, Vec<f32>)> = net
            .layers
            .iter()
            .map(|l| (vec![0.0; l.weights.len()], vec![0.0; l.bias.len()]))
            .collect();
        Adam {
            m: zeros.clone(),
            v: zeros,
            t: 0,
        }
    }

    fn step(&mut self, net: &mut Mlp, grads: &[(DMatrix<f32>, DVector<f32>)], lr: f64) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        self.t += 1;
        let c1 = 1.0 - B1.powi(self.t);
        let c2 = 1.0 - B2.powi(self.t);
        let lr = lr as f32;
        let update = |w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((w, g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = B1 * *m + (1.0 - B1) * g;
                *v = B2 * *v + (1.0 - B2) * g * g;
                *w -= lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
            }
        };
        for (((l, (gw, gb)), (mw, mb)), (vw, vb)) in net
            .layers
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            update(&mut l.weights, gw.as_slice(), mw, vw);
            update(&mut l.bias, gb.as_slice(), mb, vb);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    /// The analytic gradients agree with finite differences.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Rng::new(7);
        let net = Mlp::new(&[3, 4, 2, 1], &mut rng);
        let x = DMatrix::from_fn(3, 5, |_, _| rng.normal() as f32);
        let y: Vec<f32> = (0..5).map(|_| rng.normal() as f32).collect();
        let grads = net.gradients(&x, &y);
        let loss = |n: &Mlp| mse(&n.predict(&x), &y);
        for (li, (gw, _)) in grads.iter().enumerate() {
            for k in 0..net.layers[li].weights.len() {
                let mut a = net.clone();
                let mut b = net.clone();
                a.layers[li].weights[k] += 1e-2;
                b.layers[li].weights[k] -= 1e-2;
                let numeric = (loss(&a) - loss(&b)) / 2e-2;
                let analytic = f64::from(gw.as_slice()[k]);
                assert!(
                    (numeric - analytic).abs() < 1e-2 + 0.05 * analytic.abs(),
                    "layer {li} weight {k}: {numeric} vs {analytic}"
                );
            }
        }
    }

    /// It learns a smooth function of its inputs.
    #[test]
    fn it_learns_a_function() {
        let mut rng = Rng::new(1);
        let f = |a: f32, b: f32| (a * 2.0).sin() + 0.5 * b;
        let sample = |rng: &mut Rng, n: usize| {
            let x = DMatrix::from_fn(2, n, |_, _| (rng.unit() * 2.0 - 1.0) as f32);
            let y: Vec<f32> = (0..n).map(|j| f(x[(0, j)], x[(1, j)])).collect();
            (x, y)
        };
        let (x, y) = sample(&mut rng, 2000);
        let (vx, vy) = sample(&mut rng, 500);
        let mut net = Mlp::new(&[2, 32, 16, 1], &mut rng);
        let options = TrainOptions {
            epochs: 200,
            batch: 64,
            learning_rate: 3e-3,
            patience: 30,
        };
        let best = net.train(&x, &y, (&vx, &vy), options, &mut rng, |_, _| {});
        assert!(best < 0.01, "validation MSE {best}");
        assert!(net.check(2).is_ok());
    }
}
