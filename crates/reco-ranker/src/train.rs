//! Training the linear model: L2-regularised logistic regression on standardised features, by full-batch
//! gradient descent with a fixed step. Written here rather than pulled from a crate: it is forty lines, the
//! candidates (linfa-logistic, smartcore) bring ndarray or their own matrix stacks for a ten-feature problem, and
//! the model must come out in our file format with its features named.

use crate::{LinearModel, ModelFile, RankerError};

/// Training settings.
#[derive(Clone, Copy, Debug)]
pub struct TrainConfig {
    /// Weigh the classes equally (positives are rare among recalled candidates).
    pub balance: bool,
    pub l2: f64,
    pub iterations: usize,
    pub learning_rate: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            balance: false,
            l2: 1e-3,
            iterations: 500,
            learning_rate: 0.5,
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Fits a linear model that names `features`, from rows of those features and whether each row was a positive.
/// Features are standardised for the fit and the weights folded back, so the model scores raw feature values.
pub fn fit(
    version: &str,
    features: &[String],
    rows: &[Vec<f64>],
    labels: &[bool],
    cfg: TrainConfig,
) -> Result<LinearModel, RankerError> {
    let d = features.len();
    let n = rows.len();
    if n == 0 || labels.len() != n || rows.iter().any(|r| r.len() != d) {
        return Err(RankerError::Load {
            path: version.to_string(),
            reason: format!(
                "training needs rows of {d} features with one label each, got {n} rows"
            ),
        });
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let std: Vec<f64> = (0..d)
        .map(|j| {
            let v = rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n as f64;
            if v > 1e-12 { v.sqrt() } else { 1.0 }
        })
        .collect();
    let x: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| (0..d).map(|j| (r[j] - mean[j]) / std[j]).collect())
        .collect();
    // Balance the classes so a rare positive is not drowned by sampled negatives.
    let positives = labels.iter().filter(|l| **l).count().max(1) as f64;
    let negatives = (n as f64 - positives).max(1.0);
    let weight = |l: bool| match (cfg.balance, l) {
        (false, _) => 1.0,
        (true, true) => n as f64 / (2.0 * positives),
        (true, false) => n as f64 / (2.0 * negatives),
    };

    let (mut w, mut b) = (vec![0.0; d], 0.0);
    for _ in 0..cfg.iterations {
        let (mut gw, mut gb) = (vec![0.0; d], 0.0);
        for (xi, &yi) in x.iter().zip(labels) {
            let z = b + xi.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
            let err = (sigmoid(z) - if yi { 1.0 } else { 0.0 }) * weight(yi);
            gb += err;
            gw.iter_mut().zip(xi).for_each(|(g, xv)| *g += err * xv);
        }
        b -= cfg.learning_rate * gb / n as f64;
        for j in 0..d {
            w[j] -= cfg.learning_rate * (gw[j] / n as f64 + cfg.l2 * w[j]);
        }
    }
    let weights: Vec<f64> = (0..d).map(|j| w[j] / std[j]).collect();
    let bias = b - (0..d).map(|j| w[j] * mean[j] / std[j]).sum::<f64>();
    LinearModel::from_file(ModelFile {
        version: version.to_string(),
        kind: "linear".into(),
        bias,
        features: features.to_vec(),
        weights,
    })
}

/// Area under the ROC curve: the chance a random positive scores above a random negative (ties count half).
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    let (mut rank_sum, mut positives) = (0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        // Average ranks over ties.
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += avg;
                positives += 1.0;
            }
        }
        i = j + 1;
    }
    let negatives = scores.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_known_orderings() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[true, false]), 0.5);
    }

    #[test]
    fn logistic_regression_learns_which_feature_matters() {
        // The label follows feature 0; feature 1 is noise on a larger scale.
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..2000 {
            let a = rnd();
            let noise = rnd() * 100.0;
            rows.push(vec![a, noise]);
            labels.push(a + 0.1 * (rnd() - 0.5) > 0.5);
        }
        let names = vec!["cf_score".to_string(), "log_popularity".to_string()];
        let m = fit("t", &names, &rows, &labels, TrainConfig::default()).unwrap();
        let file = m.file();
        assert!(
            file.weights[0] > 0.0 && file.weights[0].abs() > 100.0 * file.weights[1].abs(),
            "{file:?}"
        );
        let scores: Vec<f64> = rows
            .iter()
            .map(|r| file.bias + r[0] * file.weights[0] + r[1] * file.weights[1])
            .collect();
        assert!(auc(&scores, &labels) > 0.95);
    }
}
