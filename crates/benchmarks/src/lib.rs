//! Public benchmark data sets, read exactly as their own protocols say, and the scorers
//! those protocols define. The scorers come first and are tested on their own: a result
//! is only as good as the arithmetic that produced it.
//!
//! - [`batadal`]: the BATADAL water network: the competition's S score on training set 2.
//! - [`score`]: point-wise F1/FAR/MAR and the NAB changepoint score (SKAB's definitions).
//! - [`skab`]: the Skoltech Anomaly Benchmark: loader and the leaderboard protocol.
//! - [`tep`]: the Tennessee Eastman process: detection and false-alarm rates per fault.

pub mod batadal;
pub mod score;
pub mod skab;
pub mod tep;

/// An error reading a data set, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}, line {line}: {message}")]
    At {
        path: String,
        line: usize,
        message: String,
    },
}

/// Cell `i` of `record` as a finite number, or why not (naming the column by `header`).
pub(crate) fn number(
    record: &csv::StringRecord,
    header: &[String],
    i: usize,
) -> Result<f64, String> {
    let cell = record.get(i).unwrap_or("").trim();
    cell.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| {
            format!(
                "column {:?}: {cell:?} is not a number",
                header.get(i).map(String::as_str).unwrap_or("?")
            )
        })
}
