//! Token budgets derived from the cost model: the pivot forward size and the SLO budgets.

use crate::{cost::CostModel, cost::IterationShape, TimeUs};

/// Per-cost-model table of predicted iteration times by token count, built once.
///
/// Entry `n − 1` holds the highest predicted time of the reference iteration for any token count
/// up to `n` (a running maximum, so the table is monotone even if the cost model is not). The
/// reference iteration is one prefill chunk of `n` tokens after `context` cached tokens that
/// completes its prompt: the shape the budget is spent on. It is only the starting point of a
/// batch's budget; the policy checks every batch it builds against its exact shape.
#[derive(Debug, Clone)]
pub struct BudgetTable {
    key: usize,
    max_time: Vec<TimeUs>,
    pivot: u32,
}

/// Identity of a cost model object, to notice when a table was built for another one.
pub fn model_key(cost: &dyn CostModel) -> usize {
    cost as *const dyn CostModel as *const u8 as usize
}

impl BudgetTable {
    /// Builds the table for token counts `1..=max_tokens`. The pivot is the smallest count whose
    /// throughput (tokens per predicted µs) is within `tolerance` of the best in the table.
    pub fn new(cost: &dyn CostModel, max_tokens: u32, context: u32, tolerance: f64) -> Self {
        let max_tokens = max_tokens.max(1);
        let mut max_time = Vec::with_capacity(max_tokens as usize);
        let mut throughput = Vec::with_capacity(max_tokens as usize);
        let mut running = 0;
        for n in 1..=max_tokens {
            let mut shape = IterationShape::default();
            shape.add_prefill(context, n, true);
            let t = cost.iteration_us(&shape).max(1);
            running = running.max(t);
            max_time.push(running);
            throughput.push(n as f64 / t as f64);
        }
        let best = throughput.iter().copied().fold(0.0, f64::max);
        let floor = best * (1.0 - tolerance.clamp(0.0, 1.0));
        let pivot = throughput
            .iter()
            .position(|&x| x >= floor)
            .map_or(max_tokens, |i| i as u32 + 1);
        Self {
            key: model_key(cost),
            max_time,
            pivot,
        }
    }

    /// Whether this table was built for `cost`.
    pub fn is_for(&self, cost: &dyn CostModel) -> bool {
        self.key == model_key(cost)
    }

    /// The pivot forward size `S_pf`.
    pub fn pivot(&self) -> u32 {
        self.pivot
    }

    /// Largest token count in the table.
    pub fn max_tokens(&self) -> u32 {
        self.max_time.len() as u32
    }

    /// The SLO budget `S_b`: the largest token count whose reference iteration is predicted to
    /// take at most `limit_us` (0 when not even one token fits).
    pub fn slo_budget(&self, limit_us: TimeUs) -> u32 {
        self.max_time.partition_point(|&t| t <= limit_us) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::LinearCostModel;

    fn linear(base: f64, per_token: f64) -> LinearCostModel {
        LinearCostModel {
            knots: Vec::new(),
            base_us: base,
            per_token_us: per_token,
            per_kv_token_us: 0.0,
            per_logit_row_us: 0.0,
            layers: 1,
            kv_bytes_per_token: 1,
            wide: None,
        }
    }

    #[test]
    fn slo_budget_is_the_largest_count_within_the_limit() {
        let t = BudgetTable::new(&linear(1000.0, 10.0), 4096, 0, 0.05);
        // 1000 + 10·n ≤ 5000  ⇔  n ≤ 400.
        assert_eq!(t.slo_budget(5000), 400);
        assert_eq!(t.slo_budget(999), 0);
        assert_eq!(t.slo_budget(u64::MAX), 4096);
    }

    #[test]
    fn pivot_is_where_throughput_saturates() {
        // Throughput n/(1000+10n) tends to 0.1; at 4096 tokens it is 0.0976. Within 5% of that
        // (≥ 0.0927) first at n = 1000·0.0927/(1 − 0.927) ≈ 1268.
        let t = BudgetTable::new(&linear(1000.0, 10.0), 4096, 0, 0.05);
        let best = 4096.0 / (1000.0 + 40960.0);
        let p = t.pivot() as f64;
        assert!(p / (1000.0 + 10.0 * p) >= best * 0.95);
        let q = p - 1.0;
        assert!(q / (1000.0 + 10.0 * q) < best * 0.95);
        assert!((1200..1350).contains(&t.pivot()), "{}", t.pivot());
    }
}
