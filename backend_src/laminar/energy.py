"""GPU energy from NVML's total-energy counters (millijoules since the driver loaded)."""
from __future__ import annotations

import torch


def _nvml_handle(pynvml, index: int):
    """NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES, so match torch's device by PCI address."""
    props = torch.cuda.get_device_properties(index)
    if hasattr(props, "pci_bus_id"):
        address = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(address)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class EnergyMeter:
    """Sums the energy counters of the given CUDA devices; reads None where NVML is unavailable.

    Counters are cumulative, so callers take differences around the window they measure.
    """

    def __init__(self, devices: list[torch.device]) -> None:
        self.handles = []
        indices = [d.index or 0 for d in devices if d.type == "cuda"]
        if not indices:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handles = [_nvml_handle(pynvml, i) for i in indices]
            for h in self.handles:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            self._nvml = pynvml
        except Exception:  # no NVML library, or a GPU without the energy counter
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def read_joules(self) -> float | None:
        if not self.handles:
            return None
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles) / 1000.0
