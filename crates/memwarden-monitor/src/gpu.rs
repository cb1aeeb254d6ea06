//! GPU memory per process through NVML.
//!
//! `libnvidia-ml.so` is loaded at run time: on a machine without an NVIDIA driver, or in a
//! container without the library, [`GpuMonitor::open`] returns the reason and the run goes
//! on with GPU figures reported as unavailable. It is never an error.

use std::collections::HashMap;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

/// A GPU as NVML names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Total memory.
    pub total_bytes: u64,
}

/// One reading of GPU memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuReading {
    /// GPU memory used by each process id, summed over devices.
    pub by_pid: HashMap<u32, u64>,
    /// GPU memory used by each process id on each device, by device index.
    pub by_device_pid: Vec<HashMap<u32, u64>>,
    /// Memory in use on each device by anyone, by device index.
    pub device_used_bytes: Vec<u64>,
}

/// An open NVML session.
pub struct GpuMonitor {
    nvml: Nvml,
    devices: Vec<GpuInfo>,
}

impl std::fmt::Debug for GpuMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuMonitor")
            .field("devices", &self.devices)
            .finish()
    }
}

impl GpuMonitor {
    /// Loads NVML and lists the devices; `Err` carries a sentence saying why GPU memory is
    /// unavailable (`MEMWARDEN_NO_GPU=1` also disables it, for runs that must not touch
    /// the driver).
    pub fn open() -> Result<GpuMonitor, String> {
        if std::env::var_os("MEMWARDEN_NO_GPU").is_some_and(|v| v != "0") {
            return Err("disabled by MEMWARDEN_NO_GPU".to_owned());
        }
        let nvml = Nvml::init().map_err(|e| format!("NVML could not be loaded: {e}"))?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML lists no devices: {e}"))?;
        if count == 0 {
            return Err("NVML found no GPU".to_owned());
        }
        let mut devices = Vec::new();
        for index in 0..count {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| format!("GPU {index}: {e}"))?;
            devices.push(GpuInfo {
                index,
                name: device.name().unwrap_or_else(|_| "unknown".to_owned()),
                total_bytes: device.memory_info().map(|m| m.total).unwrap_or(0),
            });
        }
        Ok(GpuMonitor { nvml, devices })
    }

    /// The devices found when NVML was opened.
    pub fn devices(&self) -> &[GpuInfo] {
        &self.devices
    }

    /// Reads the memory of every process using a GPU (compute and graphics contexts).
    pub fn read(&self) -> GpuReading {
        let mut reading = GpuReading::default();
        for info in &self.devices {
            let mut per_pid = HashMap::new();
            let mut used = 0;
            if let Ok(device) = self.nvml.device_by_index(info.index) {
                used = device.memory_info().map(|m| m.used).unwrap_or(0);
                let compute = device.running_compute_processes().unwrap_or_default();
                let graphics = device.running_graphics_processes().unwrap_or_default();
                for process in compute.into_iter().chain(graphics) {
                    if let UsedGpuMemory::Used(bytes) = process.used_gpu_memory {
                        let slot = per_pid.entry(process.pid).or_insert(0);
                        *slot = (*slot).max(bytes);
                    }
                }
            }
            for (&pid, &bytes) in &per_pid {
                *reading.by_pid.entry(pid).or_insert(0) += bytes;
            }
            reading.by_device_pid.push(per_pid);
            reading.device_used_bytes.push(used);
        }
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_never_panics_and_explains_absence() {
        match GpuMonitor::open() {
            Ok(gpu) => {
                assert!(!gpu.devices().is_empty());
                let reading = gpu.read();
                assert_eq!(reading.device_used_bytes.len(), gpu.devices().len());
            }
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
