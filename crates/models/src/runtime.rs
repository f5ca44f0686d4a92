//! Runs an admitted ONNX graph with tract, a pure-Rust ONNX runtime: one row of twin
//! signals in, the graph's first output back. [`OnnxDetector`] reads that output as the
//! manifest's [`OnnxInterface`] says (a reconstruction or a score).
//!
//! The graph is loaded from bytes already bounded and verified (its file's digest is the
//! signed one); tract decodes and optimises it for a `[1, n]` float input once, at load.
//! A panic inside the runtime is caught and reported as the model's error, so a graph
//! tract mishandles cannot take the twin down.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::manifest::OnnxInterface;
use crate::{MAX_FILE, ModelError};

/// An ONNX graph ready to run on rows of `inputs` floats.
pub struct Graph {
    plan: Arc<TypedRunnableModel>,
    inputs: usize,
    outputs: usize,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

fn caught<T>(what: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e:#}")),
        Err(_) => Err(format!("{what}: the ONNX runtime failed (it panicked)")),
    }
}

impl Graph {
    /// Loads the graph in `path` for rows of `inputs` values, and runs it once on zeros
    /// to learn (and check) the width of its first output.
    pub fn load(path: &Path, inputs: usize) -> Result<Graph, ModelError> {
        let bytes = crate::read_bounded(path, MAX_FILE)?;
        Graph::from_bytes(&bytes, inputs).map_err(|e| ModelError::invalid(path, e))
    }

    /// See [`Graph::load`].
    pub fn from_bytes(bytes: &[u8], inputs: usize) -> Result<Graph, String> {
        if inputs == 0 {
            return Err("a graph needs at least one input value".into());
        }
        let plan = caught("tract cannot run this ONNX graph", || {
            let model = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
            let declared = model.input_outlets()?.len();
            if declared != 1 {
                anyhow::bail!("it has {declared} inputs; twinguard feeds exactly one");
            }
            model
                .with_input_fact(0, f32::fact([1, inputs]).into())?
                .into_optimized()?
                .into_runnable()
        })?;
        let mut graph = Graph {
            plan,
            inputs,
            outputs: 0,
        };
        let out = graph.run(&vec![0.0; inputs])?;
        if out.is_empty() {
            return Err("its first output is empty".into());
        }
        graph.outputs = out.len();
        Ok(graph)
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The width of the first output.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The first output (flattened) for one row.
    pub fn run(&self, row: &[f32]) -> Result<Vec<f32>, String> {
        if row.len() != self.inputs {
            return Err(format!(
                "a row of {} values for a graph of {} inputs",
                row.len(),
                self.inputs
            ));
        }
        caught("the ONNX graph failed to run", || {
            let input = Tensor::from_shape(&[1, self.inputs], row)?;
            let outputs = self.plan.run(tvec!(input.into()))?;
            let first = outputs
                .first()
                .ok_or_else(|| anyhow::anyhow!("it produced no output"))?;
            let values = first.cast_to::<f32>()?;
            Ok(values
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect())
        })
    }
}

/// An admitted ONNX graph in the role of an anomaly detector.
#[derive(Debug)]
pub struct OnnxDetector {
    graph: Graph,
    interface: OnnxInterface,
}

impl OnnxDetector {
    /// Loads the graph at `path` under `interface`, refusing a graph whose output does
    /// not fit it.
    pub fn load(path: &Path, interface: &OnnxInterface) -> Result<OnnxDetector, ModelError> {
        interface
            .check()
            .map_err(|e| ModelError::invalid(path, e))?;
        let graph = Graph::load(path, interface.columns.len())?;
        if interface.output == "reconstruction" && graph.outputs() != graph.inputs() {
            return Err(ModelError::invalid(
                path,
                format!(
                    "its output has {} values; a reconstruction of its {} inputs needs as many",
                    graph.outputs(),
                    graph.inputs()
                ),
            ));
        }
        Ok(OnnxDetector {
            graph,
            interface: interface.clone(),
        })
    }

    pub fn interface(&self) -> &OnnxInterface {
        &self.interface
    }

    /// One row's raw (unsmoothed) score and each column's contribution to it (all zero
    /// for a graph that outputs its score directly: it does not say why).
    pub fn score(&self, row: &[f64]) -> Result<(f64, Vec<f64>), String> {
        let input: Vec<f32> = row.iter().map(|v| *v as f32).collect();
        let out = self.graph.run(&input)?;
        if self.interface.output == "score" {
            let s = out.first().copied().map(f64::from).unwrap_or(f64::NAN);
            if !s.is_finite() {
                return Err(format!("the graph's score is {s}"));
            }
            return Ok((s, vec![0.0; row.len()]));
        }
        let scale = self.interface.scale.as_deref();
        let terms: Vec<f64> = row
            .iter()
            .zip(&out)
            .enumerate()
            .map(|(j, (x, y))| {
                let s = scale.and_then(|s| s.get(j)).copied().unwrap_or(1.0);
                let e = (x - f64::from(*y)) / s;
                e * e
            })
            .collect();
        let total: f64 = terms.iter().sum();
        if !total.is_finite() {
            return Err(format!("the graph's reconstruction error is {total}"));
        }
        Ok((total, terms))
    }
}
