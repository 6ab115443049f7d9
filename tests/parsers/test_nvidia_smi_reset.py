from __future__ import annotations

from collections.abc import Callable

import pytest

from gpumedic.parsers.errors import ParseError
from gpumedic.parsers.nvidia_smi_reset import parse_gpu_reset

Corpus = Callable[[str], str]


def test_successful_reset(corpus: Corpus) -> None:
    outcome = parse_gpu_reset(corpus("nvidia-smi-gpu-reset_success_A100-MIG_01.txt"))
    assert outcome.success is True
    assert outcome.in_use_refused is False
    assert outcome.pci_bus_ids == ("0000:c1:00.0",)
    assert outcome.message == "GPU 00000000:C1:00.0 was successfully reset."


def test_old_wording_in_use_refusal(corpus: Corpus) -> None:
    outcome = parse_gpu_reset(corpus("nvidia-smi-gpu-reset_refused-in-use-old-format_A100-MIG_01.txt"))
    assert (outcome.success, outcome.in_use_refused) == (False, True)
    assert outcome.pci_bus_ids == ("0000:c1:00.0",)
    assert "currently in use by another process" in outcome.message


def test_new_wording_in_use_by_another_client(corpus: Corpus) -> None:
    outcome = parse_gpu_reset(corpus("nvidia-smi-gpu-reset_refused-in-use-by-another-client_GPU-unstated-vm_01.txt"))
    assert (outcome.success, outcome.in_use_refused) == (False, True)
    assert outcome.pci_bus_ids == ("0000:00:06.0",)


def test_a_refusal_for_another_reason_is_a_failure_but_not_in_use() -> None:
    outcome = parse_gpu_reset("The following GPUs could not be reset:\n  GPU 00000000:3B:00.0: Not Supported\n")
    assert (outcome.success, outcome.in_use_refused) == (False, False)


def test_one_success_and_one_refusal_is_not_a_success() -> None:
    text = (
        "GPU 00000000:3B:00.0 was successfully reset.\n"
        "The following GPUs could not be reset:\n  GPU 00000000:5D:00.0: In use by another client\n"
    )
    outcome = parse_gpu_reset(text)
    assert (outcome.success, outcome.in_use_refused) == (False, True)
    assert outcome.pci_bus_ids == ("0000:3b:00.0", "0000:5d:00.0")


def test_unknown_text_in_reset_output_is_refused() -> None:
    with pytest.raises(ParseError, match="not one the tool is known to print"):
        parse_gpu_reset("GPU 00000000:C1:00.0 was successfully reset.\nSegmentation fault\n")


def test_driver_failure_is_not_a_reset_outcome(corpus: Corpus) -> None:
    with pytest.raises(ParseError, match="couldn't communicate with the NVIDIA driver"):
        parse_gpu_reset(corpus("nvidia-smi-error_has-failed-couldnt-communicate-with-driver_01.txt"))
