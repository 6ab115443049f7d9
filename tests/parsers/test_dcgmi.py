from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from gpumedic.domain.diagnostics import DiagStatus, GpuDiagResult, HealthStatus
from gpumedic.parsers.dcgmi import parse_dcgmi_diag, parse_dcgmi_discovery, parse_dcgmi_health
from gpumedic.parsers.errors import ParseError

Corpus = Callable[[str], str]

A10G_FAIL = "dcgmi-diag-r3_A10G_x4_driver570.195.03_targeted-power-FAIL_01.txt"
B200_FAIL = "dcgmi-diag-r2_B200_x8_driver570.172.08_dcgm4.4.1_pcie-FAIL_01.txt"
L40S_FAIL = "dcgmi-diag_L40S_x4_driver570.148.08_dcgm4.2.3_pcie-FAIL-internal-error_01.txt"
V100_PASS = "dcgmi-diag-r3-v_V100_PCIE_16GB_driver560.35.03_pass-verbose_01.txt"
DCGM2_R1 = "dcgmi-diag-r1_GPU-unstated-AWS_dcgm2-blacklist_pass_01.txt"
DCGM2_R4 = "dcgmi-diag-r4_GPU-unstated-8gpu_dcgm2-blacklist-pulse-memtest_pass_01.txt"
MEMORY_FAIL = "dcgmi-diag-r2_GPU-unstated_memory-fail-thermal-warning_excerpt_01.txt"
REMAP_ERROR = "dcgmi-diag-r3_GPU-unstated_deployment-remap-pending_excerpt_01.txt"


# ------------------------------------------------------------------ diag, tables


def test_targeted_power_failure_names_gpu_1_and_unwraps_the_warning(corpus: Corpus) -> None:
    report = parse_dcgmi_diag(corpus(A10G_FAIL))
    assert report.passed is False
    assert report.failed_gpus == {1}
    assert (report.dcgm_version, report.driver_version) == ("3.3.9", "570.195.03")
    power = report.test("Targeted Power")
    assert power is not None and power.status is DiagStatus.FAIL
    assert power.category == "Stress"
    assert power.per_gpu == (
        GpuDiagResult(0, DiagStatus.PASS),
        GpuDiagResult(1, DiagStatus.FAIL),
        GpuDiagResult(2, DiagStatus.PASS),
        GpuDiagResult(3, DiagStatus.PASS),
    )
    assert power.warnings == (
        "GPU 1 Max power of 224.1 did not reach desired power minimum target_power_min_ratio of 224.2 "
        "for GPU 1 Verify that the clock speeds and GPU utilization are high.",
    )
    assert power.info[0] == "GPU 0 GPU 0 max power: 299.5 W average power usage: 299.0 W"
    eud = report.test("EUD Test")
    assert eud is not None and eud.status is DiagStatus.SKIP


def test_dcgm4_test_failure_with_every_gpu_passing_is_still_a_failure(corpus: Corpus) -> None:
    report = parse_dcgmi_diag(corpus(B200_FAIL))
    assert report.passed is False
    assert report.failed_gpus == frozenset()
    pcie = report.test("pcie")
    assert pcie is not None and pcie.status is DiagStatus.FAIL
    assert [r.status for r in pcie.per_gpu] == [DiagStatus.PASS] * 8
    assert pcie.warnings[0].startswith("There was an internal error during the test: 'Output of child process (11167)")
    assert report.dcgm_version == "4.4.1"
    memory = report.test("memory")
    assert memory is not None and len(memory.per_gpu) == 8


def test_dcgm4_table_cut_before_its_border_keeps_its_failure(corpus: Corpus) -> None:
    report = parse_dcgmi_diag(corpus(L40S_FAIL))
    assert report.passed is False
    pcie = report.test("pcie")
    assert pcie is not None and len(pcie.warnings) == 4
    assert pcie.warnings[0].endswith("Reset GPU. Restart DCGM. Rerun diagnostics.")


def test_verbose_pass_with_wrapped_info_rows(corpus: Corpus) -> None:
    report = parse_dcgmi_diag(corpus(V100_PASS))
    assert report.passed is True
    assert report.failed_gpus == frozenset()
    memory = report.test("GPU Memory")
    assert memory is not None and memory.info == ("GPU 0 Allocated 16435239282 bytes (97.1%)",)
    pcie = report.test("PCIe")
    assert pcie is not None
    assert pcie.info[0].startswith("GPU 0 GPU to Host bandwidth: 13.14 GB/s, GPU 0 Host to GPU bandwidth: 12.37 GB/s")
    assert len(report.tests) == 16


@pytest.mark.parametrize(("name", "tests"), [(DCGM2_R1, 9), (DCGM2_R4, 18)])
def test_dcgm2_blacklist_tables_pass(corpus: Corpus, name: str, tests: int) -> None:
    report = parse_dcgmi_diag(corpus(name))
    assert report.passed is True
    assert len(report.tests) == tests
    assert report.test("Blacklist") is not None


def test_memory_failure_excerpt_names_gpu_0(corpus: Corpus) -> None:
    report = parse_dcgmi_diag(corpus(MEMORY_FAIL))
    assert report.passed is False
    assert report.failed_gpus == {0}
    (memory,) = report.tests
    assert memory.warnings[0].startswith("GPU 0 Thermal violations totaling 13.3 seconds started at 9.7 seconds")


def test_deployment_error_row_fails_the_gpu_it_names(corpus: Corpus) -> None:
    report = parse_dcgmi_diag(corpus(REMAP_ERROR))
    assert report.passed is False
    assert report.failed_gpus == {3}
    (test,) = report.tests
    assert test.errors == ("GPU 3 has uncorrectable memory errors and row remappings are pending",)


def test_a_passing_table_cut_before_its_border_is_not_a_pass(corpus: Corpus) -> None:
    lines = corpus(V100_PASS).splitlines()
    with pytest.raises(ParseError, match="cut off"):
        parse_dcgmi_diag("\n".join(lines[:-1]))


def test_fail_anywhere_in_the_output_is_never_a_pass(corpus: Corpus) -> None:
    text = corpus(DCGM2_R1) + "Diagnostic run failed to write its log.\n"
    assert parse_dcgmi_diag(text).passed is False


def test_connection_failure_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="unable to establish a connection"):
        parse_dcgmi_diag("Error: unable to establish a connection to the specified host: localhost\n")


# -------------------------------------------------------------------- diag, JSON


def _dcgm3_json(status_gpu1: str) -> str:
    return json.dumps(
        {
            "DCGM GPU Diagnostic": {
                "test_categories": [
                    {
                        "category": "Deployment",
                        "tests": [
                            {"name": "Denylist", "results": [{"gpu_ids": "0,1", "status": "PASS"}]},
                            None,
                        ],
                    },
                    {
                        "category": "Stress",
                        "tests": [
                            {
                                "name": "SM Stress",
                                "results": [
                                    {"gpu_ids": "0", "status": "Pass"},
                                    {
                                        "gpu_ids": "1",
                                        "status": status_gpu1,
                                        "warnings": ["GPU 1 SM stress failed"],
                                        "info": "GPU 1 ran 10 s",
                                    },
                                ],
                            }
                        ],
                    },
                ],
                "version": "3.1.7",
            }
        },
        indent=4,
    )


def test_dcgm3_json_per_gpu_failure() -> None:
    report = parse_dcgmi_diag(_dcgm3_json("Fail"))
    assert report.passed is False
    assert report.failed_gpus == {1}
    assert report.dcgm_version == "3.1.7"
    stress = report.test("SM Stress")
    assert stress is not None and stress.status is DiagStatus.FAIL
    assert stress.warnings == ("GPU 1 SM stress failed",)
    assert stress.info == ("GPU 1 ran 10 s",)


def test_dcgm3_json_pass_after_a_leading_warning_line() -> None:
    text = "WARNING: something unrelated\n" + _dcgm3_json("Pass").replace("GPU 1 SM stress failed", "slow")
    report = parse_dcgmi_diag(text)
    assert report.passed is True
    assert [t.name for t in report.tests] == ["Denylist", "SM Stress"]


def test_dcgm4_json_entities_and_test_summary() -> None:
    document = {
        "DCGM Diagnostic": {
            "test_categories": [
                {
                    "category": "Hardware",
                    "tests": [
                        {
                            "name": "memory",
                            "results": [
                                {"entity_group": "GPU", "entity_group_id": 1, "entity_id": 0, "status": "Pass"},
                                {
                                    "entity_group": "GPU",
                                    "entity_group_id": 1,
                                    "entity_id": 5,
                                    "status": "Fail",
                                    "warnings": [
                                        {"error_category": 1, "error_id": 60, "error_severity": 2, "warning": "DBE"}
                                    ],
                                },
                            ],
                            "test_summary": {"status": "Fail"},
                        }
                    ],
                }
            ]
        },
        "entity_groups": [{"entity_group": "GPU", "entity_group_id": 1, "entities": []}],
        "metadata": {"version": "4.2.3", "Driver Version Detected": "570.148.08"},
    }
    report = parse_dcgmi_diag(json.dumps(document))
    assert report.passed is False
    assert report.failed_gpus == {5}
    assert (report.dcgm_version, report.driver_version) == ("4.2.3", "570.148.08")
    memory = report.test("memory")
    assert memory is not None and memory.warnings == ("DBE",)


def test_json_runtime_error_is_a_parse_error() -> None:
    text = json.dumps({"DCGM Diagnostic": {"runtime_error": "Unable to run diagnostic on unsupported GPU 0."}})
    with pytest.raises(ParseError, match="unsupported GPU 0"):
        parse_dcgmi_diag(text)


def test_truncated_json_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="malformed or cut off"):
        parse_dcgmi_diag(_dcgm3_json("Pass")[:-40])


def test_json_with_no_tests_is_not_a_pass() -> None:
    with pytest.raises(ParseError, match="no test results"):
        parse_dcgmi_diag('{"DCGM GPU Diagnostic": {"test_categories": [], "version": "3.3.9"}}')


def test_unknown_status_word_is_not_run_and_not_a_pass() -> None:
    report = parse_dcgmi_diag(_dcgm3_json("Incomplete"))
    stress = report.test("SM Stress")
    assert stress is not None and stress.status is DiagStatus.NOT_RUN
    assert report.passed is False


# ------------------------------------------------------------------------ health


def test_health_table_power_warning_with_wrapped_message(corpus: Corpus) -> None:
    check = parse_dcgmi_health(corpus("dcgmi-health-c_L4_dcgm4.6.1_power-system-warning_01.txt"))
    assert check.overall is HealthStatus.WARNING
    (incident,) = check.incidents
    assert (incident.entity_group, incident.gpu, incident.system, incident.health) == (
        "GPU",
        0,
        "Power system",
        HealthStatus.WARNING,
    )
    assert incident.message == (
        "Detected clocks event due to power violation in GPU 0. Monitor the power conditions. "
        "This GPU can still perform workload."
    )
    assert check.entity_health == (("GPU", 0, HealthStatus.WARNING),)


def test_health_table_healthy(corpus: Corpus) -> None:
    check = parse_dcgmi_health(corpus("dcgmi-health-g0-c_GB200_x4_dcgm4.5.2_healthy-despite-54e9-sbe_01.txt"))
    assert check.overall is HealthStatus.HEALTHY
    assert check.incidents == ()


def test_health_json_healthy(corpus: Corpus) -> None:
    check = parse_dcgmi_health(corpus("dcgmi-health-c-j_GPU-unstated-8gpu_healthy-despite-reset-required_01.json"))
    assert check.overall is HealthStatus.HEALTHY
    assert check.incidents == ()


def test_health_json_incidents_from_the_output_tree() -> None:
    document = {
        "body": {
            "Overall Health": {"value": "Failure"},
            "GPU": {
                "children": {
                    "1": {
                        "value": "Failure",
                        "children": {
                            "Errors": {
                                "children": {
                                    "Memory system": {
                                        "value": "Failure",
                                        "overflow": ["A DBE has occurred on GPU 1. Drain", "and reset the GPU."],
                                    }
                                }
                            }
                        },
                    }
                }
            },
        },
        "header": ["Health Monitor Report"],
    }
    check = parse_dcgmi_health(json.dumps(document, indent=8))
    assert check.overall is HealthStatus.FAILURE
    (incident,) = check.incidents
    assert (incident.gpu, incident.system, incident.health) == (1, "Memory system", HealthStatus.FAILURE)
    assert incident.message == "A DBE has occurred on GPU 1. Drain and reset the GPU."
    assert check.incidents_for_gpu(1) == (incident,)


def test_job_stats_overall_health_is_not_a_health_check(corpus: Corpus) -> None:
    with pytest.raises(ParseError, match="Health Monitor Report"):
        parse_dcgmi_health(corpus("dcgmi-stats-v-j_GPU-unstated-AWS_job-stats_01.txt"))


def test_health_watches_not_enabled_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="Health watches not enabled"):
        parse_dcgmi_health("Error: Health watches not enabled. Please enable watches. \n")


def test_cut_health_table_is_refused(corpus: Corpus) -> None:
    lines = corpus("dcgmi-health-c_L4_dcgm4.6.1_power-system-warning_01.txt").splitlines()
    with pytest.raises(ParseError, match="cut off"):
        parse_dcgmi_health("\n".join(lines[:-1]))


# --------------------------------------------------------------------- discovery


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dcgmi-discovery-list_H100_80GB_HBM3_1gpu_digitalocean_01.txt", "GPU-927d7444-b45a-7c49-8402-5e686e46a026"),
        ("dcgmi-discovery-l_V100_PCIE_16GB_with-cpus-section_01.txt", "GPU-ef97eb30-627e-f4cd-11b2-37b04ef508ba"),
        ("dcgmi-discovery-l_L4_dcgm4.6.1_active-connectx-cpus_01.txt", "GPU-0b5f4a6b-7a7a-6c41-0875-b8c8d963b0af"),
    ],
)
def test_discovery_lists_gpu_ids_with_uuids(corpus: Corpus, name: str, expected: str) -> None:
    assert parse_dcgmi_discovery(corpus(name)) == [(0, expected)]


def test_discovery_cut_inside_the_gpu_table_is_refused(corpus: Corpus) -> None:
    lines = corpus("dcgmi-discovery-list_H100_80GB_HBM3_1gpu_digitalocean_01.txt").splitlines()
    with pytest.raises(ParseError, match="announces 1 GPU"):
        parse_dcgmi_discovery("\n".join(lines[:5]))


@pytest.mark.parametrize(
    "name",
    ["dcgmi-dmon-c1-e230_GPU-unstated-8gpu_xid120-on-gpu1_01.txt", "dcgmi-stats-v-j_GPU-unstated-AWS_job-stats_01.txt"],
)
def test_other_dcgmi_outputs_are_refused_by_every_dcgmi_parser(corpus: Corpus, name: str) -> None:
    for parse in (parse_dcgmi_diag, parse_dcgmi_health, parse_dcgmi_discovery):
        with pytest.raises(ParseError):
            parse(corpus(name))
