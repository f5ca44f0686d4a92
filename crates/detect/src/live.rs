//! The multivariate model live in the twin: it learns the plant's normal behaviour from
//! the first rows of data (or starts from a model fitted with `twinguard detect fit`),
//! then scores the twin's newest values at a fixed period of data time.
//!
//! No I/O and no clock: the caller gives the time and each signal's newest value.

use serde::Serialize;

use crate::EpisodeClass;
use crate::multivariate::{Episodes, FitOptions, PcaModel, RowModel, RowStream, Score, Stream};

/// How the live model samples, learns and scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveOptions {
    /// Data time between two rows.
    pub period_ms: i64,
    /// Rows of normal operation learnt before watching.
    pub learn_rows: usize,
    pub fit: FitOptions,
    /// A signal whose newest value is older than this is missing, and the row is skipped.
    pub max_age_ms: i64,
}

#[derive(Debug)]
enum Phase {
    Learning(Vec<Vec<f64>>),
    Watching {
        model: Box<PcaModel>,
        stream: Stream,
        episodes: Episodes,
    },
    /// Watching with a model made elsewhere (an admitted ONNX graph).
    External {
        model: Box<dyn RowModel>,
        stream: RowStream,
        episodes: Episodes,
        /// The last row the model could not score, and why.
        last_error: Option<String>,
    },
    Failed(String),
}

/// What one tick produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Not time for a row yet, or a value was missing.
    Nothing,
    /// Learning goes on.
    Learnt { rows: usize },
    /// The model was fitted from the rows learnt; watching starts.
    Fitted,
    /// The rows learnt could not be fitted (for example every signal constant): nothing
    /// is watched, and the reason stays in the status.
    FitFailed(String),
    /// A row was scored. `contributors` (at most three, largest first) and `class` are
    /// the model's reading of the current episode, empty and normal outside one.
    Scored {
        score: Score,
        class: EpisodeClass,
        contributors: Vec<String>,
    },
}

/// What the live model is doing, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// "learning", "watching" or "failed".
    pub phase: &'static str,
    pub rows_learnt: usize,
    pub rows_needed: usize,
    /// Rows skipped because a value was missing or too old.
    pub rows_skipped: u64,
    pub rows_scored: u64,
    pub threshold: Option<f64>,
    pub components: Option<usize>,
    pub failure: Option<String>,
}

#[derive(Debug)]
pub struct Live {
    columns: Vec<String>,
    options: LiveOptions,
    phase: Phase,
    next_row_ms: Option<i64>,
    skipped: u64,
    scored: u64,
}

impl Live {
    /// A model that first learns `columns` for `options.learn_rows` rows.
    pub fn learning(columns: Vec<String>, options: LiveOptions) -> Live {
        Live {
            columns,
            options,
            phase: Phase::Learning(Vec::new()),
            next_row_ms: None,
            skipped: 0,
            scored: 0,
        }
    }

    /// Watching from the start with `model` (its columns are the signals it reads).
    pub fn watching(model: PcaModel, options: LiveOptions) -> Result<Live, String> {
        model.check()?;
        Ok(Live {
            columns: model.columns.clone(),
            options,
            phase: Phase::Watching {
                model: Box::new(model),
                stream: Stream::default(),
                episodes: Episodes::default(),
            },
            next_row_ms: None,
            skipped: 0,
            scored: 0,
        })
    }

    /// Watching from the start with a model made elsewhere (its columns are the signals
    /// it reads).
    pub fn watching_external(model: Box<dyn RowModel>, options: LiveOptions) -> Live {
        Live {
            columns: model.columns().to_vec(),
            options,
            phase: Phase::External {
                model,
                stream: RowStream::default(),
                episodes: Episodes::default(),
                last_error: None,
            },
            next_row_ms: None,
            skipped: 0,
            scored: 0,
        }
    }

    /// The alarm threshold of the model being watched with, once there is one.
    pub fn threshold(&self) -> Option<f64> {
        match &self.phase {
            Phase::Watching { model, .. } => Some(model.threshold),
            Phase::External { model, .. } => Some(model.threshold()),
            _ => None,
        }
    }

    /// The PCA model being watched with, once there is one (None for an external one).
    pub fn model(&self) -> Option<&PcaModel> {
        match &self.phase {
            Phase::Watching { model, .. } => Some(model),
            _ => None,
        }
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    pub fn status(&self) -> Status {
        let (phase, learnt, failure) = match &self.phase {
            Phase::Learning(rows) => ("learning", rows.len(), None),
            Phase::Watching { .. } => ("watching", self.options.learn_rows, None),
            Phase::External { last_error, .. } => {
                ("watching", self.options.learn_rows, last_error.clone())
            }
            Phase::Failed(why) => ("failed", self.options.learn_rows, Some(why.clone())),
        };
        let model = self.model();
        Status {
            phase,
            rows_learnt: learnt,
            rows_needed: self.options.learn_rows,
            rows_skipped: self.skipped,
            rows_scored: self.scored,
            threshold: self.threshold(),
            components: model.map(|m| m.eigenvalues.len()),
            failure,
        }
    }

    /// At data time `t_ms`, takes a row of the signals' newest values (`value` gives a
    /// signal's newest time and value) if a period has passed since the last one, and
    /// learns or scores it.
    pub fn tick(&mut self, t_ms: i64, value: impl Fn(&str) -> Option<(i64, f64)>) -> Output {
        let due = *self.next_row_ms.get_or_insert(t_ms);
        if t_ms < due {
            return Output::Nothing;
        }
        let period = self.options.period_ms.max(1);
        // The next row is due a whole number of periods after the first.
        self.next_row_ms = Some(due + ((t_ms - due) / period + 1) * period);
        let row: Option<Vec<f64>> = self
            .columns
            .iter()
            .map(|c| {
                value(c)
                    .filter(|(t, v)| t_ms - t <= self.options.max_age_ms && v.is_finite())
                    .map(|(_, v)| v)
            })
            .collect();
        let Some(row) = row else {
            self.skipped += 1;
            return Output::Nothing;
        };
        match &mut self.phase {
            Phase::Learning(rows) => {
                rows.push(row);
                if rows.len() < self.options.learn_rows {
                    return Output::Learnt { rows: rows.len() };
                }
                match PcaModel::fit(&self.columns, rows, self.options.fit) {
                    Ok(model) => {
                        self.phase = Phase::Watching {
                            model: Box::new(model),
                            stream: Stream::default(),
                            episodes: Episodes::default(),
                        };
                        Output::Fitted
                    }
                    Err(e) => {
                        let why = format!("the model could not be fitted: {e}");
                        self.phase = Phase::Failed(why.clone());
                        Output::FitFailed(why)
                    }
                }
            }
            Phase::Watching {
                model,
                stream,
                episodes,
            } => {
                let Some(score) = stream.push(model, &row) else {
                    return Output::Nothing;
                };
                self.scored += 1;
                let (class, top) = episodes.push(model, &score);
                scored(&self.columns, score, class, &top)
            }
            Phase::External {
                model,
                stream,
                episodes,
                last_error,
            } => {
                let score = match stream.push(model.as_ref(), &row) {
                    Ok(score) => score,
                    Err(why) => {
                        self.skipped += 1;
                        *last_error = Some(why);
                        return Output::Nothing;
                    }
                };
                self.scored += 1;
                let (class, top) = episodes.push_limits(f64::INFINITY, model.threshold(), &score);
                scored(&self.columns, score, class, &top)
            }
            Phase::Failed(_) => Output::Nothing,
        }
    }
}

/// A scored row, its top contributors named by their columns.
fn scored(columns: &[String], score: Score, class: EpisodeClass, top: &[usize]) -> Output {
    Output::Scored {
        score,
        class,
        contributors: top
            .iter()
            .filter_map(|&i| columns.get(i).cloned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    fn options() -> LiveOptions {
        LiveOptions {
            period_ms: 1000,
            learn_rows: 400,
            fit: FitOptions {
                explained_variance: 0.9,
                confidence: 0.99,
                lags: 0,
                smoothing: 3,
                folds: 0,
                ridge: 0.0,
                fold_block_rows: 0,
                relation_tolerance: 0.0,
                off_delay: 0,
                hold_constants: false,
            },
            max_age_ms: 3000,
        }
    }

    /// Four signals that move together and an independent one, with a little
    /// deterministic noise. (With only two correlated signals, a break between them is
    /// shared by both: it takes a third to tell which one left.)
    fn value(i: i64, name: &str, bias: f64) -> Option<(i64, f64)> {
        let x = (i as f64 * 0.05).sin();
        let noise = |k: i64| ((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0 - 0.5;
        let v = match name {
            "a" => x + 0.05 * noise(1),
            "b" => 2.0 * x + 0.1 * noise(2) + bias,
            "d" => -x + 0.05 * noise(4),
            "e" => 3.0 * x + 0.15 * noise(5),
            _ => 0.3 * noise(3),
        };
        Some((i * 1000, v))
    }

    #[test]
    fn it_learns_then_watches_and_names_the_signal_that_broke_away() {
        let columns: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut live = Live::learning(columns, options());
        let mut fitted_at = None;
        // Rows come once a period, whatever the tick rate; a missing value skips a row.
        for i in 0..900 {
            let t = i * 1000;
            let out = live.tick(t, |c| if i == 5 { None } else { value(i, c, 0.0) });
            if out == Output::Fitted {
                fitted_at = Some(i);
            }
            // A tick inside the same period takes no row.
            assert_eq!(live.tick(t + 500, |c| value(i, c, 0.0)), Output::Nothing);
        }
        assert_eq!(fitted_at, Some(400), "400 rows learnt, one skipped");
        let s = live.status();
        assert_eq!((s.phase, s.rows_skipped), ("watching", 1));
        assert!(s.rows_scored >= 498, "{s:?}");
        // Normal rows raise no alarm; `b` leaving its relation with `a` does, named first.
        let mut flagged = 0;
        let mut last = None;
        for i in 900..1000 {
            let bias = if i >= 950 { 1.5 } else { 0.0 };
            if let Output::Scored {
                score,
                class,
                contributors,
            } = live.tick(i * 1000, |c| value(i, c, bias))
            {
                if i < 950 {
                    assert!(!score.flag, "row {i}: {score:?}");
                } else if score.flag {
                    flagged += 1;
                    last = Some((class, contributors));
                }
            }
        }
        assert!(flagged >= 45, "{flagged}");
        let (class, contributors) = last.unwrap();
        assert_eq!(contributors[0], "b");
        assert_eq!(class, EpisodeClass::SensorFault);
    }

    #[test]
    fn constant_data_fails_to_fit_and_says_why() {
        let columns = vec!["a".to_string(), "b".to_string()];
        let mut live = Live::learning(
            columns,
            LiveOptions {
                learn_rows: 10,
                ..options()
            },
        );
        let mut out = Output::Nothing;
        for i in 0..10 {
            out = live.tick(i * 1000, |_| Some((i * 1000, 1.0)));
        }
        assert!(
            matches!(out, Output::FitFailed(ref why) if why.contains("constant")),
            "{out:?}"
        );
        assert_eq!(live.status().phase, "failed");
        assert_eq!(live.tick(20_000, |_| Some((20_000, 1.0))), Output::Nothing);
    }
    /// A model made elsewhere: the squared gap between `b` and twice `a`, scaled, as its
    /// score and `b`'s contribution; a non-finite input is an error it reports.
    #[derive(Debug)]
    struct Gap {
        columns: Vec<String>,
    }

    impl RowModel for Gap {
        fn columns(&self) -> &[String] {
            &self.columns
        }
        fn threshold(&self) -> f64 {
            1.0
        }
        fn smoothing(&self) -> usize {
            2
        }
        fn score(&self, row: &[f64]) -> Result<(f64, Vec<f64>), String> {
            if row[0] > 100.0 {
                return Err("a is out of the model's range".into());
            }
            let gap = (row[1] - 2.0 * row[0]) / 0.2;
            Ok((gap * gap, vec![0.0, gap * gap, 0.0]))
        }
    }

    #[test]
    fn an_external_model_watches_smooths_names_its_contributor_and_skips_rows_it_cannot_score() {
        let model = Gap {
            columns: vec!["a".into(), "b".into(), "c".into()],
        };
        let mut live = Live::watching_external(Box::new(model), options());
        assert_eq!(live.threshold(), Some(1.0));
        assert!(live.model().is_none());
        let mut flagged_at = None;
        let mut first_contributors = Vec::new();
        for i in 0..200 {
            let bias = if i >= 100 { 1.0 } else { 0.0 };
            let out = live.tick(i * 1000, |c| value(i, c, bias));
            if let Output::Scored {
                score,
                class,
                contributors,
            } = out
                && score.flag
                && flagged_at.is_none()
            {
                flagged_at = Some(i);
                first_contributors = contributors;
                assert_eq!(class, EpisodeClass::SensorFault);
            }
        }
        // Normal rows stay below the threshold; the break is flagged at once, and only
        // the signal the model blames is named.
        assert_eq!(flagged_at, Some(100));
        assert_eq!(first_contributors, vec!["b".to_string()]);
        assert_eq!(live.status().rows_scored, 200);
        // A row the model cannot score is skipped and the reason kept.
        let out = live.tick(200_000, |c| {
            Some((200_000, if c == "a" { 500.0 } else { 1.0 }))
        });
        assert_eq!(out, Output::Nothing);
        let status = live.status();
        assert_eq!(status.rows_skipped, 1);
        assert_eq!(
            status.failure.as_deref(),
            Some("a is out of the model's range")
        );
        assert_eq!(status.phase, "watching");
    }
}
