//! Budgets carved from the deadline. A request has one deadline: the smaller of the platform's total budget and
//! the caller's `grpc-timeout` (less a margin to send the answer back). Each stage gets the smaller of its
//! configured budget and what is left before the deadline once later stages' minimums are set aside.

use std::time::{Duration, Instant};

/// Time kept back from a caller's `grpc-timeout` to encode and send the answer.
pub const RESPONSE_MARGIN: Duration = Duration::from_millis(2);

/// The deadline of one request.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// From the platform's total budget and the caller's timeout, if it sent one.
    pub fn new(start: Instant, total: Duration, caller: Option<Duration>) -> Self {
        let budget = match caller {
            Some(c) => total.min(c.saturating_sub(RESPONSE_MARGIN)),
            None => total,
        };
        Self { at: start + budget }
    }

    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The budget of a stage configured with `budget` when later stages need `reserve`.
    pub fn carve(&self, budget: Duration, reserve: Duration) -> Duration {
        budget.min(self.remaining().saturating_sub(reserve))
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("100u"), Some(Duration::from_micros(100)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None, "at most 8 digits");
    }

    #[test]
    fn caller_deadline_shrinks_the_plan() {
        let start = Instant::now();
        let total = Duration::from_millis(200);
        let d = Deadline::new(start, total, None);
        assert_eq!(d.at - start, total);
        let d = Deadline::new(start, total, Some(Duration::from_millis(40)));
        assert_eq!(d.at - start, Duration::from_millis(38));
        let d = Deadline::new(start, total, Some(Duration::from_secs(5)));
        assert_eq!(
            d.at - start,
            total,
            "a generous caller does not extend the platform's budget"
        );
    }

    #[test]
    fn carving_keeps_the_reserve_for_later_stages() {
        let start = Instant::now();
        let d = Deadline::new(
            start,
            Duration::from_secs(3600),
            Some(Duration::from_millis(32)),
        );
        // 30 ms left, 20 reserved: at most 10 for this stage, whatever its own budget.
        let b = d.carve(Duration::from_millis(50), Duration::from_millis(20));
        assert!(b <= Duration::from_millis(10));
        assert_eq!(
            d.carve(Duration::from_millis(5), Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
