//! Scorers, as the benchmarks define them.

use serde::Serialize;

/// A point-wise confusion matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    pub tp: u64,
    pub tn: u64,
    pub fp: u64,
    pub fn_: u64,
}

impl Confusion {
    /// Counts `truth` against `predicted`, point by point (the shorter length decides).
    pub fn of(truth: &[bool], predicted: &[bool]) -> Confusion {
        let mut c = Confusion::default();
        for (&t, &p) in truth.iter().zip(predicted) {
            match (t, p) {
                (true, true) => c.tp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fp += 1,
                (true, false) => c.fn_ += 1,
            }
        }
        c
    }

    pub fn add(&mut self, other: Confusion) {
        self.tp += other.tp;
        self.tn += other.tn;
        self.fp += other.fp;
        self.fn_ += other.fn_;
    }

    /// SKAB's F1: TP / (TP + (FN + FP) / 2).
    pub fn f1(&self) -> f64 {
        ratio(
            self.tp as f64,
            self.tp as f64 + (self.fn_ + self.fp) as f64 / 2.0,
        )
    }

    /// False alarm rate, %: FP / (FP + TN).
    pub fn far(&self) -> f64 {
        100.0 * ratio(self.fp as f64, (self.fp + self.tn) as f64)
    }

    /// Missed alarm rate, %: FN / (FN + TP).
    pub fn mar(&self) -> f64 {
        100.0 * ratio(self.fn_ as f64, (self.fn_ + self.tp) as f64)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// One series for the NAB score: timestamps (seconds, sorted), true changepoints and
/// predicted ones.
#[derive(Debug, Clone)]
pub struct NabSeries {
    pub times_s: Vec<i64>,
    pub truth: Vec<bool>,
    pub predicted: Vec<bool>,
}

/// NAB scores for the three profiles (percent of the way from the null detector to the
/// perfect one), and the counts of the average-delay metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Nab {
    pub standard: f64,
    pub low_fp: f64,
    pub low_fn: f64,
    pub missed: u64,
    pub false_positives: u64,
}

/// (A_tp, A_fp, A_fn) of the Standard, LowFP and LowFN profiles.
const PROFILES: [(f64, f64, f64); 3] = [(1.0, -0.11, -1.0), (1.0, -0.22, -1.0), (1.0, -0.11, -2.0)];

/// The NAB changepoint score as SKAB computes it: a window of `window_s` to the right of
/// each true changepoint (a window overlapping the previous one starts where that one
/// ends); in each window the first predicted changepoint is a true positive, credited
/// A_fp + (A_tp - A_fp)(1 - tanh(x)/tanh(pi/2))/2 with x running from -pi/2 to pi/2 over
/// the window (SKAB's "improved" scale, 1,000 steps); a window without one is a false
/// negative (A_fn); a prediction outside every window is a false positive (A_fp). Totals
/// are summed over all series, then scaled: 100 (S - S_null) / (S_perfect - S_null).
pub fn nab(series: &[NabSeries], window_s: i64) -> Nab {
    let mut totals = [[0.0f64; 3]; 3]; // [score, null, perfect][profile]
    let (mut missed, mut fps) = (0u64, 0u64);
    for s in series {
        let mut windows: Vec<(i64, i64)> = s
            .times_s
            .iter()
            .zip(&s.truth)
            .filter(|(_, t)| **t)
            .map(|(&t, _)| (t, t + window_s))
            .collect();
        for i in 1..windows.len() {
            let prev_end = windows.get(i - 1).map_or(i64::MIN, |w| w.1);
            if let Some(w) = windows.get_mut(i)
                && prev_end >= w.0
            {
                w.0 = prev_end;
            }
        }
        let predictions: Vec<i64> = s
            .times_s
            .iter()
            .zip(&s.predicted)
            .filter(|(_, p)| **p)
            .map(|(&t, _)| t)
            .collect();
        let mut detections: Vec<Option<i64>> = vec![None; windows.len()];
        let mut false_positives = 0u64;
        for &t in &predictions {
            match windows.iter().position(|&(a, b)| t >= a && t <= b) {
                Some(i) => {
                    if let Some(d) = detections.get_mut(i)
                        && d.is_none()
                    {
                        *d = Some(t);
                    }
                }
                None => false_positives += 1,
            }
        }
        let fns = detections.iter().filter(|d| d.is_none()).count() as u64;
        missed += fns;
        fps += false_positives;
        for (p, &(a_tp, a_fp, a_fn)) in PROFILES.iter().enumerate() {
            let mut score = a_fp * false_positives as f64 + a_fn * fns as f64;
            for (d, &(a, b)) in detections.iter().zip(&windows) {
                if let Some(t) = d {
                    score += scaled(a_tp, a_fp, *t, a, b);
                }
            }
            let n = windows.len() as f64;
            if let Some(row) = totals.get_mut(0).and_then(|r| r.get_mut(p)) {
                *row += score;
            }
            if let Some(row) = totals.get_mut(1).and_then(|r| r.get_mut(p)) {
                *row += n * a_fn;
            }
            if let Some(row) = totals.get_mut(2).and_then(|r| r.get_mut(p)) {
                *row += n * a_tp;
            }
        }
    }
    let scaled_total = |p: usize| {
        let get = |k: usize| totals.get(k).and_then(|r| r.get(p)).copied().unwrap_or(0.0);
        let (s, null, perfect) = (get(0), get(1), get(2));
        if perfect > null {
            100.0 * (s - null) / (perfect - null)
        } else {
            0.0
        }
    };
    Nab {
        standard: scaled_total(0),
        low_fp: scaled_total(1),
        low_fn: scaled_total(2),
        missed,
        false_positives: fps,
    }
}

/// The credit of a detection at `t` in window [a, b].
fn scaled(a_tp: f64, a_fp: f64, t: i64, a: i64, b: i64) -> f64 {
    const STEPS: usize = 1000;
    let span = (b - a).max(1) as f64;
    let event = (((t - a) as f64 / span) * STEPS as f64) as usize;
    let event = event.min(STEPS - 1);
    let x = -std::f64::consts::FRAC_PI_2 + std::f64::consts::PI * event as f64 / (STEPS - 1) as f64;
    (a_tp - a_fp) / 2.0 * -(x.tanh()) / std::f64::consts::FRAC_PI_2.tanh()
        + (a_tp - a_fp) / 2.0
        + a_fp
}

/// Predicted changepoints from point-wise predictions, as SKAB's notebooks derive them:
/// |diff(prediction)|, the first point never one.
pub fn changepoints(predicted: &[bool]) -> Vec<bool> {
    std::iter::once(false)
        .chain(predicted.windows(2).map(|w| w.first() != w.last()))
        .take(predicted.len())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]
    use super::*;

    #[test]
    fn f1_far_and_mar_follow_skabs_definitions() {
        let c = Confusion::of(
            &[true, true, true, false, false, false, false, false],
            &[true, true, false, true, false, false, false, false],
        );
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                tn: 4,
                fp: 1,
                fn_: 1
            }
        );
        assert!((c.f1() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.far() - 20.0).abs() < 1e-12);
        assert!((c.mar() - 100.0 / 3.0).abs() < 1e-12);
        // The leaderboard's perfect and null rows.
        let perfect = Confusion::of(&[true, false], &[true, false]);
        assert_eq!(
            (perfect.f1(), perfect.far(), perfect.mar()),
            (1.0, 0.0, 0.0)
        );
        let null = Confusion::of(&[true, false], &[false, false]);
        assert_eq!((null.f1(), null.far(), null.mar()), (0.0, 0.0, 100.0));
    }

    fn series(truth: &[usize], predicted: &[usize]) -> NabSeries {
        let n = 400;
        NabSeries {
            times_s: (0..n as i64).collect(),
            truth: (0..n).map(|i| truth.contains(&i)).collect(),
            predicted: (0..n).map(|i| predicted.contains(&i)).collect(),
        }
    }

    #[test]
    fn nab_gives_the_leaderboards_perfect_and_null_rows() {
        let perfect = nab(&[series(&[50, 200], &[50, 200])], 60);
        assert_eq!(
            (perfect.standard, perfect.low_fp, perfect.low_fn),
            (100.0, 100.0, 100.0)
        );
        assert_eq!((perfect.missed, perfect.false_positives), (0, 0));
        let null = nab(&[series(&[50, 200], &[])], 60);
        assert_eq!((null.standard, null.low_fp, null.low_fn), (0.0, 0.0, 0.0));
        assert_eq!(null.missed, 2);
    }

    #[test]
    fn nab_credits_early_detections_more_and_charges_false_positives() {
        // At the window's start: full credit; at its end: A_fp. In the middle: halfway.
        assert!((scaled(1.0, -0.11, 0, 0, 60) - 1.0).abs() < 1e-12);
        assert!((scaled(1.0, -0.11, 60, 0, 60) - -0.11).abs() < 1e-12);
        let mid = scaled(1.0, -0.11, 30, 0, 60);
        assert!((mid - (1.0 - 0.11) / 2.0).abs() < 0.01, "{mid}");
        let early = nab(&[series(&[100], &[105])], 60).standard;
        let late = nab(&[series(&[100], &[150])], 60).standard;
        assert!(early > late && late > 0.0, "{early} {late}");
        let with_fp = nab(&[series(&[100], &[105, 300])], 60);
        assert_eq!(with_fp.false_positives, 1);
        assert!((early - with_fp.standard - 100.0 * 0.11 / 2.0).abs() < 1e-9);
        // Only the first detection in a window counts; the rest are not false positives.
        let twice = nab(&[series(&[100], &[105, 110])], 60);
        assert_eq!((twice.standard, twice.false_positives), (early, 0));
    }

    #[test]
    fn overlapping_windows_are_cut_on_the_right() {
        // Windows [100,160] and [120,180] become [100,160] and [160,180]: a prediction at
        // 165 belongs to the second.
        let s = nab(&[series(&[100, 120], &[101, 165])], 60);
        assert_eq!((s.missed, s.false_positives), (0, 0));
    }

    #[test]
    fn changepoints_are_where_the_prediction_changes() {
        assert_eq!(
            changepoints(&[true, true, false, false, true]),
            vec![false, false, true, false, true]
        );
        assert!(changepoints(&[]).is_empty());
    }
}
