//! The one place where the compute device is chosen. CUDA slots in here behind a cargo feature later.

use candle_core::Device;

/// The device every tensor of the runtime lives on. CPU for now; `PRUNEKIT_DEVICE` is reserved for
/// the CUDA build.
pub fn default_device() -> Device {
    Device::Cpu
}
