//! Attribution: how the credit for one conversion is shared among the touches before it.
//! **Pure**: times come in as milliseconds, money as integer micro-units, and every share is
//! an integer, so the shares always add up to exactly what is shared.

use std::fmt;
use std::str::FromStr;

/// How credit is shared among the touches within the lookback window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Model {
    /// All of it to the first touch.
    FirstTouch,
    /// All of it to the last touch.
    LastTouch,
    /// Equal shares.
    Linear,
    /// Halved for every half-life a touch is older than the conversion.
    TimeDecay,
    /// 40% first, 40% last, 20% shared by the touches in between.
    PositionBased,
}

impl Model {
    pub const ALL: [Model; 5] = [
        Model::FirstTouch,
        Model::LastTouch,
        Model::Linear,
        Model::TimeDecay,
        Model::PositionBased,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Model::FirstTouch => "first_touch",
            Model::LastTouch => "last_touch",
            Model::Linear => "linear",
            Model::TimeDecay => "time_decay",
            Model::PositionBased => "position_based",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Model {
    type Err = String;

    fn from_str(text: &str) -> Result<Model, String> {
        Model::ALL.into_iter().find(|m| m.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = Model::ALL.iter().map(|m| m.as_str()).collect();
            format!("unknown attribution model `{text}`; write one of {}", names.join(", "))
        })
    }
}

/// Money is shared in cents (10,000 micro-units), so shares read like prices; what is left
/// below a cent goes with the first extra cent.
pub const CENT: i64 = 10_000;

/// One conversion counts as this many units of credit, so a third of a conversion is 333.
pub const CONVERSION: i64 = 1_000;

/// The weight of each touch (times in ms, oldest first) for a conversion at `converted_at`.
/// Integer weights keep the shares exact; time decay scales `2^(-age / half_life)` to 2^40.
pub fn weights(model: Model, touches: &[i64], converted_at: i64, half_life_ms: i64) -> Vec<u128> {
    let n = touches.len();
    if n == 0 {
        return Vec::new();
    }
    match model {
        Model::FirstTouch => (0..n).map(|i| u128::from(i == 0)).collect(),
        Model::LastTouch => (0..n).map(|i| u128::from(i == n - 1)).collect(),
        Model::Linear => vec![1; n],
        Model::TimeDecay => touches
            .iter()
            .map(|at| {
                let age = (converted_at - at).max(0) as f64;
                let weight = (-age / half_life_ms.max(1) as f64).exp2() * (1u64 << 40) as f64;
                // A touch many half-lives old still counts a little: never zero.
                (weight.round() as u128).max(1)
            })
            .collect(),
        Model::PositionBased => match n {
            1 => vec![1],
            2 => vec![1, 1],
            // First and last 2 parts each of 5, the middle one part shared: 40 / 20 / 40.
            _ => {
                let middle = (n - 2) as u128;
                (0..n)
                    .map(|i| if i == 0 || i == n - 1 { 2 * middle } else { 1 })
                    .collect()
            }
        },
    }
}

/// Shares `total` in proportion to `weights`: each gets the whole units of its exact share,
/// and the units left over go one each to the largest remainders (the earlier touch on a tie).
/// The shares add up to `total` exactly. No weights (or all zero): nothing to share with.
pub fn split(total: i64, weights: &[u128]) -> Vec<i64> {
    let sum: u128 = weights.iter().sum();
    if sum == 0 {
        return vec![0; weights.len()];
    }
    let negative = total < 0;
    let magnitude = u128::from(total.unsigned_abs());
    let mut shares: Vec<u128> = weights.iter().map(|w| magnitude * w / sum).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest remainder first; `sort_by_key` is stable, so ties keep the earlier touch first.
    order.sort_by_key(|&i| std::cmp::Reverse(magnitude * weights[i] % sum));
    let given: u128 = shares.iter().sum();
    for &i in order.iter().take((magnitude - given) as usize) {
        shares[i] += 1;
    }
    shares
        .into_iter()
        .map(|s| if negative { -(s as i64) } else { s as i64 })
        .collect()
}

/// Shares money (micro-units) in whole cents; the part below a cent goes to the touch the
/// first left-over cent went to (or the largest share).
pub fn split_money(total: i64, weights: &[u128]) -> Vec<i64> {
    let cents = total / CENT;
    let below = total % CENT;
    let mut shares: Vec<i64> = split(cents, weights).into_iter().map(|c| c * CENT).collect();
    if below != 0
        && let Some(first) = largest(weights)
    {
        shares[first] += below;
    }
    shares
}

fn largest(weights: &[u128]) -> Option<usize> {
    let max = weights.iter().copied().max()?;
    weights.iter().position(|w| *w == max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn shares(model: Model, touches: &[i64], at: i64, total: i64) -> Vec<i64> {
        split_money(total, &weights(model, touches, at, 7 * DAY))
    }

    #[test]
    fn every_model_shares_exactly_what_converted() {
        let touches = [0, DAY, 3 * DAY, 10 * DAY, 11 * DAY, 13 * DAY, 13 * DAY + 1];
        for total in [0, 1, 99, 100_000_000, 33_333_333, 123_456_789_012, 7 * CENT + 3] {
            for model in Model::ALL {
                for n in 1..=touches.len() {
                    let got = shares(model, &touches[..n], 14 * DAY, total);
                    assert_eq!(got.iter().sum::<i64>(), total, "{model} {n} touches {total}");
                    let credit = split(CONVERSION, &weights(model, &touches[..n], 14 * DAY, DAY));
                    assert_eq!(credit.iter().sum::<i64>(), CONVERSION, "{model} {n} touches");
                }
            }
        }
    }

    #[test]
    fn the_models_share_100_dollars_over_three_touches_as_a_marketer_would() {
        let touches = [0, 7 * DAY, 14 * DAY];
        let dollars = |v: Vec<i64>| v.into_iter().map(|m| m as f64 / 1e6).collect::<Vec<_>>();
        let total = 100_000_000;
        assert_eq!(
            dollars(shares(Model::FirstTouch, &touches, 14 * DAY, total)),
            [100.0, 0.0, 0.0]
        );
        assert_eq!(
            dollars(shares(Model::LastTouch, &touches, 14 * DAY, total)),
            [0.0, 0.0, 100.0]
        );
        // 33.333...: the left-over cent goes to the first touch.
        assert_eq!(
            dollars(shares(Model::Linear, &touches, 14 * DAY, total)),
            [33.34, 33.33, 33.33]
        );
        // Weights 1/4, 1/2, 1 of a 7-day half-life: 100 * 1/7, 2/7, 4/7.
        assert_eq!(
            dollars(shares(Model::TimeDecay, &touches, 14 * DAY, total)),
            [14.29, 28.57, 57.14]
        );
        assert_eq!(
            dollars(shares(Model::PositionBased, &touches, 14 * DAY, total)),
            [40.0, 20.0, 40.0]
        );
        let four = [0, DAY, 2 * DAY, 3 * DAY];
        assert_eq!(
            dollars(shares(Model::PositionBased, &four, 3 * DAY, total)),
            [40.0, 10.0, 10.0, 40.0]
        );
        assert_eq!(
            dollars(shares(Model::PositionBased, &four[..2], 3 * DAY, total)),
            [50.0, 50.0]
        );
    }

    #[test]
    fn ties_go_to_the_earlier_touch_and_refunds_share_like_revenue() {
        assert_eq!(split(2, &[1, 1, 1]), [1, 1, 0]);
        assert_eq!(split(-2, &[1, 1, 1]), [-1, -1, 0]);
        assert_eq!(split(5, &[]), Vec::<i64>::new());
        // Less than a cent: it goes to the largest weight, whole.
        assert_eq!(split_money(3, &[1, 2]), [0, 3]);
    }

    #[test]
    fn models_are_named_as_the_api_writes_them() {
        for model in Model::ALL {
            assert_eq!(model.as_str().parse::<Model>(), Ok(model));
        }
        assert!("u_shaped".parse::<Model>().unwrap_err().contains("position_based"));
    }
}
