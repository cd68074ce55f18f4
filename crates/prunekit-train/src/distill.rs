//! Knowledge distillation from a dense teacher: the student's loss becomes
//! `(1 - alpha) * task loss + alpha * soft`, where for class outputs (classification, binary,
//! ranking, next item, language modelling: logits over the last axis)
//! `soft = T^2 * KL(softmax(teacher / T) || softmax(student / T))` (Hinton et al. 2015; the T^2
//! keeps the soft term's gradient scale independent of T), and for regression outputs
//! `soft = MSE(student, teacher)` (distilling the teacher's outputs; T is not used); so also for
//! a detector's dense output map (objectness, box and class logits per cell).

use candle_core::Tensor;
use prunekit_graph::ops::activation::log_softmax;
use prunekit_graph::{Executor, Graph};

use crate::loss::mse;
use crate::trainer::{StepCx, StepHook};
use crate::{Result, TrainError};
use prunekit_data::TaskKind;

/// Distillation settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// softmax temperature T (> 0)
    pub temperature: f64,
    /// weight of the soft (teacher) term, in [0, 1]; the task loss gets 1 - alpha
    pub alpha: f64,
}

impl DistillConfig {
    pub fn check(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(TrainError::Invalid(format!(
                "distillation temperature {} must be positive",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(TrainError::Invalid(format!(
                "distillation alpha {} is outside [0, 1]",
                self.alpha
            )));
        }
        Ok(())
    }
}

/// KL(softmax(t / T) || softmax(s / T)) averaged over the rows (every position of logits
/// [B, .., C]: per sample for [B, C], per token for [B, T, V]), times T^2.
pub fn kd_loss(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> candle_core::Result<Tensor> {
    let t = temperature;
    let ls = log_softmax(&student.affine(1.0 / t, 0.0)?)?;
    let lt = log_softmax(&teacher.affine(1.0 / t, 0.0)?.detach())?;
    let pt = lt.exp()?;
    let classes = student.dim(candle_core::D::Minus1)?.max(1);
    let rows = (student.elem_count() / classes) as f64;
    (pt * (lt - ls)?)?.sum_all()? * (t * t / rows.max(1.0))
}

/// A training hook that distils `teacher` (run in eval mode) into the model being trained.
pub struct Distillation {
    pub teacher: Graph,
    pub config: DistillConfig,
    exec: Executor,
}

impl Distillation {
    pub fn new(teacher: Graph, config: DistillConfig) -> Result<Self> {
        config.check()?;
        Ok(Self {
            teacher,
            config,
            exec: Executor::new(0),
        })
    }
}

impl StepHook for Distillation {
    fn extra_loss(&mut self, _g: &Graph, cx: &StepCx) -> Result<Option<Tensor>> {
        let t = self.exec.eval(&self.teacher, cx.inputs)?.remove(0);
        if t.dims() != cx.output.dims() {
            return Err(TrainError::Invalid(format!(
                "the teacher's outputs {:?} differ from the student's {:?}",
                t.dims(),
                cx.output.dims()
            )));
        }
        let a = self.config.alpha;
        let soft = match cx.task.kind {
            TaskKind::Regression | TaskKind::Detection { .. } => mse(cx.output, &t.detach())?,
            _ => kd_loss(cx.output, &t, self.config.temperature)?,
        };
        // the loop adds this to the task loss L: L + extra = (1 - a) L + a * soft
        Ok(Some(((soft * a)? - (cx.task_loss * a)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn kd_loss_is_zero_for_equal_logits_and_matches_the_formula() {
        let s = Tensor::new(&[[1.0f64, 2.0, 0.5], [0.0, -1.0, 3.0]], &Device::Cpu).unwrap();
        let z = kd_loss(&s, &s, 2.0).unwrap().to_scalar::<f64>().unwrap();
        assert!(z.abs() < 1e-12);
        let t = Tensor::new(&[[0.0f64, 1.0, 2.0], [1.0, 1.0, 1.0]], &Device::Cpu).unwrap();
        let got = kd_loss(&s, &t, 2.0).unwrap().to_scalar::<f64>().unwrap();
        let sm = |v: &[f64]| -> Vec<f64> {
            let e: Vec<f64> = v.iter().map(|x| (x / 2.0).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        let (sv, tv) = (s.to_vec2::<f64>().unwrap(), t.to_vec2::<f64>().unwrap());
        let mut want = 0.0;
        for (a, b) in sv.iter().zip(&tv) {
            let (p, q) = (sm(b), sm(a));
            want += p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>();
        }
        want *= 4.0 / 2.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn kd_gradient_matches_finite_differences() {
        let s0 = vec![0.3f64, -0.2, 1.1, 0.5, 0.0, -0.7];
        let t = Tensor::new(&[[0.0f64, 1.0, 2.0], [1.0, -1.0, 0.5]], &Device::Cpu).unwrap();
        let f = |v: &[f64]| {
            let s = Tensor::from_vec(v.to_vec(), (2, 3), &Device::Cpu).unwrap();
            kd_loss(&s, &t, 3.0).unwrap().to_scalar::<f64>().unwrap()
        };
        let var =
            Var::from_tensor(&Tensor::from_vec(s0.clone(), (2, 3), &Device::Cpu).unwrap()).unwrap();
        let g = kd_loss(var.as_tensor(), &t, 3.0)
            .unwrap()
            .backward()
            .unwrap();
        let grad: Vec<f64> = g
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..s0.len() {
            let (mut a, mut b) = (s0.clone(), s0.clone());
            a[i] += 1e-6;
            b[i] -= 1e-6;
            let fd = (f(&a) - f(&b)) / 2e-6;
            assert!((fd - grad[i]).abs() < 1e-7, "{i}: {fd} vs {}", grad[i]);
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        for (t, a) in [(0.0, 0.5), (-1.0, 0.5), (2.0, 1.5), (f64::NAN, 0.5)] {
            assert!(DistillConfig {
                temperature: t,
                alpha: a
            }
            .check()
            .is_err());
        }
    }
}
