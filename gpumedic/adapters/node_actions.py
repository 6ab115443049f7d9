"""Repair actions on one node over SSH: GPU reset, reboot with wait-until-back, DCGM diagnostics.

Every call has its own deadline; a node that hangs is a failed step (TransientError), never
a hung workflow. GPUs are addressed by PCI bus id rather than index: nvidia-smi renumbers
indices when a GPU disappears, and resetting the wrong GPU is not an option.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gpumedic.adapters.errors import PermanentError, TransientError
from gpumedic.adapters.ssh import SshConnection, SshEndpoint, SshSettings
from gpumedic.domain.diagnostics import DiagReport, ResetOutcome
from gpumedic.parsers import ParseError
from gpumedic.parsers.dcgmi import parse_dcgmi_diag
from gpumedic.parsers.nvidia_smi_reset import parse_gpu_reset

# DCGM's own run times: level 1 seconds, level 2 about two minutes, level 3 about 15 minutes.
DIAG_TIMEOUT_S = {1: 120.0, 2: 600.0, 3: 2400.0, 4: 7200.0}


class NodeActions:
    def __init__(self, node: str, endpoint: SshEndpoint, settings: SshSettings) -> None:
        self.node = node
        self.endpoint = endpoint
        self.settings = settings

    def _connection(self) -> SshConnection:
        return SshConnection(self.node, self.endpoint, self.settings)

    def boot_id(self, timeout_s: float = 30.0) -> str:
        with self._connection() as conn:
            result = conn.run(["cat", "/proc/sys/kernel/random/boot_id"], timeout_s=timeout_s)
        boot_id = result.stdout.strip()
        if not result.ok or len(boot_id) != 36:
            raise TransientError(f"{self.node}: could not read the boot id: {result.stdout[:120]!r}")
        return boot_id

    def reset_gpu(self, pci_bus_id: str, timeout_s: float = 120.0) -> ResetOutcome:
        """`nvidia-smi --gpu-reset -i BUS`; the driver itself refuses while processes hold the GPU."""
        with self._connection() as conn:
            result = conn.run(["nvidia-smi", "--gpu-reset", "-i", pci_bus_id], timeout_s=timeout_s)
        try:
            outcome = parse_gpu_reset(result.stdout)
        except ParseError as err:
            raise TransientError(f"{self.node}: GPU reset of {pci_bus_id} gave no readable answer: {err}") from err
        if outcome.in_use_refused:
            raise TransientError(f"{self.node}: GPU {pci_bus_id} is still in use, reset refused: {outcome.message}")
        if not outcome.success:
            raise PermanentError(f"{self.node}: GPU reset of {pci_bus_id} failed: {outcome.message}")
        return outcome

    def reboot(self, timeout_s: float = 30.0) -> str:
        """Ask the node to reboot; returns the boot id it had, to recognise it coming back."""
        old = self.boot_id()
        try:
            with self._connection() as conn:
                conn.run(["systemctl", "reboot"], timeout_s=timeout_s)
        except TransientError:
            pass  # the connection dropping is what a reboot looks like
        return old

    def wait_until_back(
        self, old_boot_id: str, timeout_s: float = 900.0, poll_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> str:
        """Wait for a *new* boot id: the node really rebooted and answers SSH again."""
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            try:
                current = self.boot_id(timeout_s=min(30.0, timeout_s))
                if current != old_boot_id:
                    return current
                last_error = "boot id unchanged: the node has not rebooted yet"
            except TransientError as err:
                last_error = str(err)
            sleep(poll_s)
        raise TransientError(f"{self.node}: not back from reboot within {timeout_s:.0f}s ({last_error})")

    def run_diagnostics(self, level: int = 2, timeout_s: float | None = None) -> DiagReport:
        """`dcgmi diag -r LEVEL -j`, parsed into pass/fail per test and per GPU."""
        if level not in DIAG_TIMEOUT_S:
            raise PermanentError(f"DCGM diagnostic level must be one of {sorted(DIAG_TIMEOUT_S)}, not {level}")
        with self._connection() as conn:
            result = conn.run(["dcgmi", "diag", "-r", str(level), "-j"], timeout_s=timeout_s or DIAG_TIMEOUT_S[level])
        try:
            return parse_dcgmi_diag(result.stdout)
        except ParseError as err:
            # An unreadable diagnostic is not a pass: the caller keeps the node out of service.
            raise TransientError(f"{self.node}: dcgmi diag -r {level} gave no readable result: {err}") from err
