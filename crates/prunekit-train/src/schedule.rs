//! Learning-rate schedules, as a function of the step.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// cosine decay from the base rate to `min_factor * base` over `total_steps`
    Cosine {
        total_steps: usize,
        min_factor: f64,
    },
    /// multiply by `gamma` every `step_size` steps
    Step {
        step_size: usize,
        gamma: f64,
    },
}

impl LrSchedule {
    pub fn lr_at(&self, base: f64, step: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine {
                total_steps,
                min_factor,
            } => {
                let t = (step as f64 / total_steps.max(1) as f64).min(1.0);
                let min = base * min_factor;
                min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Step { step_size, gamma } => {
                base * gamma.powi((step / step_size.max(1)) as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_base_and_ends_at_min() {
        let s = LrSchedule::Cosine {
            total_steps: 100,
            min_factor: 0.0,
        };
        assert_eq!(s.lr_at(0.1, 0), 0.1);
        assert!((s.lr_at(0.1, 50) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(0.1, 100).abs() < 1e-12);
        assert!(s.lr_at(0.1, 500).abs() < 1e-12);
    }

    #[test]
    fn step_decays_by_gamma() {
        let s = LrSchedule::Step {
            step_size: 10,
            gamma: 0.5,
        };
        assert_eq!(s.lr_at(1.0, 9), 1.0);
        assert_eq!(s.lr_at(1.0, 10), 0.5);
        assert_eq!(s.lr_at(1.0, 25), 0.25);
    }
}
