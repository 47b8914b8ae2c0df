//! When to look at an object again.

use std::time::Duration;

/// `d` ± 10 %, so objects created together are not requeued together.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..1.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d < Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
