"""The functional core: health verdicts, the Xid catalog, policy, forecasts, remediation.

Nothing in this package performs I/O, reads the clock or imports Prefect.
"""
